"""Inverse problem: infer three hidden masses from observed positions over time."""

import torch

from simdiff.backend import resolve_backend
from simdiff.rollout import rollout
from simdiff.scene import Scene
from simdiff.sims.nbody import Model, NBody
from simdiff.sims.nbody.initial import figure_eight
from simdiff.sims.nbody.tasks import MassFit, diagnostics_metrics, infer_masses_objective

HIDDEN = (1.0, 0.8, 1.25)


def scene(*, observations: int = 20, every: int = 25, dt: float = 2e-3, noise: float = 0.0,
          seed: int = 0) -> Scene:
    _, x, v = figure_eight()
    hidden = torch.tensor(HIDDEN, dtype=torch.float64)
    truth = NBody(Model(hidden, x, v, dt=dt, integrator="hermite"),
                  resolve_backend("warp", precision="float64"))
    state, observed = truth.initial_state(), []
    with torch.no_grad():
        for _ in range(observations):
            state = rollout(truth, state, None, every).final
            observed.append(state.body_x)
    observed = torch.stack(observed, 1)  # [1, T, N, 3]
    gen = torch.Generator().manual_seed(seed)
    observed = observed + noise * torch.randn(observed.shape, generator=gen, dtype=torch.float64)
    model = Model(torch.ones(3, dtype=torch.float64), x, v, dt=dt, integrator="hermite")
    return Scene(
        name="nbody_infer_masses",
        simulator="nbody",
        model=model,
        steps=observations * every,
        loss=lambda r: r.final.body_x.new_zeros(()),
        metrics=diagnostics_metrics,
        description=f"infer hidden masses {HIDDEN} from {observations} noisy position snapshots",
        render_every=5,
        train={"precision": "float64", "lr": 0.05, "iters": 60},
        design=lambda sim: MassFit(torch.ones(3, dtype=torch.float64)),
        truth=lambda sim: MassFit(hidden),
        objective=infer_masses_objective(observed, hidden, every),
        render_options={"observed": observed[0].numpy()},
    )
