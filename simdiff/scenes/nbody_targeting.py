"""Inverse problem: the launch velocity that brings a light probe from (1, 0) to a target
point at time T, around a star with a Jupiter-like planet."""

import torch

from simdiff.scene import Scene
from simdiff.sims.nbody import Model
from simdiff.sims.nbody.tasks import LaunchFit, diagnostics_metrics, targeting_objective

TARGET = (-0.6, 1.1, 0.0)


def scene(*, steps: int = 500, t_final: float = 2.5) -> Scene:
    f64 = torch.float64
    mass = torch.tensor([1.0, 1e-3, 1e-9], dtype=f64)
    x = torch.tensor([[0.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 0.0, 0.0]], dtype=f64)
    v = torch.tensor([[0.0, 0.0, 0.0], [-0.7071, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=f64)
    model = Model(mass, x, v, dt=t_final / steps, integrator="hermite")
    target = torch.tensor(TARGET, dtype=f64)
    return Scene(
        name="nbody_targeting",
        simulator="nbody",
        model=model,
        steps=steps,
        loss=lambda r: ((r.final.body_x[:, 2] - target) ** 2).sum(-1).mean(),
        metrics=diagnostics_metrics,
        description=f"launch velocity that reaches {TARGET[:2]} at t={t_final}",
        render_every=5,
        train={"precision": "float64", "lr": 0.02, "iters": 80},
        design=lambda sim: LaunchFit(v[2]),
        objective=targeting_objective(2, target, steps),
        render_options={"target_point": list(TARGET)},
    )
