"""Smoke-to-image: the initial velocity that carries a smoke blob into a target image.
``--set checkpoint=K`` keeps one state every K steps in backward (bounded memory).
"""

import torch

from simdiff.scene import Scene
from simdiff.sims.fluid import Model
from simdiff.sims.fluid.tasks import InitialVelocity, load_target, smoke_objective


def scene(
    *,
    resolution: int = 48,
    steps: int = 40,
    target: str = "ring",
    advection: str = "maccormack",
    checkpoint: int | None = None,
) -> Scene:
    n = (resolution, resolution)
    goal = load_target(target, n)
    x = (torch.arange(resolution) + 0.5) / resolution
    r = torch.hypot(x[:, None] - 0.5, x[None, :] - 0.5)
    smoke = (r < 0.2).double()[None] * goal.sum() / (r < 0.2).sum()  # as much smoke as target
    model = Model(n, dx=1.0 / resolution, dt=0.6 / steps, dye=smoke, advection=advection)
    return Scene(
        name="fluid_smoke_to_image",
        simulator="fluid",
        model=model,
        steps=steps,
        loss=lambda r: r.final.dye.new_zeros(()),
        description=f"initial velocity that shapes smoke into {target!r} after {steps} steps",
        default_backend="torch",
        render_every=1,
        train={"lr": 0.1, "iters": 60},
        design=lambda sim: InitialVelocity(n),
        objective=smoke_objective(goal, steps, checkpoint_every=checkpoint),
        render_options={"target": goal.numpy(), "target_image": goal.numpy()},
    )
