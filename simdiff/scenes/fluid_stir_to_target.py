"""Stir-to-target: a paddle trajectory that pushes a dye blob into the right third of a closed
box (``mode="target"``), or mixes a left and a right dye (``mode="mix"``).
``--set checkpoint=K`` keeps one state every K steps in backward (bounded memory).
"""

import torch

from simdiff.scene import Scene
from simdiff.sims.fluid import Model, Paddle
from simdiff.sims.fluid.tasks import PaddleTrajectory, stir_objective


def scene(
    *, resolution: int = 32, steps: int = 60, mode: str = "target", checkpoint: int | None = None
) -> Scene:
    n = (resolution, resolution)
    x = (torch.arange(resolution, dtype=torch.float64) + 0.5) / resolution
    X, Y = torch.meshgrid(x, x, indexing="ij")
    if mode == "target":
        dye = ((X - 0.35).abs() < 0.1) & ((Y - 0.5).abs() < 0.12)
        dye = dye.double()[None]
        region = (X > 0.65).double()
    elif mode == "mix":
        dye = torch.stack([(X < 0.5).double(), (X >= 0.5).double()])
        region = None
    else:
        raise ValueError(f"mode={mode!r}; allowed: target, mix")
    paddle = Paddle(
        center=(0.5 if mode == "mix" else 0.15, 0.5), half_size=(0.05, 0.15), max_speed=1.0
    )
    model = Model(
        n, dx=1.0 / resolution, dt=0.6 / resolution, dye=dye, paddle=paddle, advection="maccormack"
    )
    goal = "move the dye blob into the right third" if region is not None else "mix two dyes"
    return Scene(
        name="fluid_stir_to_target" if region is not None else "fluid_stir_mix",
        simulator="fluid",
        model=model,
        steps=steps,
        loss=lambda r: r.final.dye.new_zeros(()),
        description=f"paddle trajectory to {goal} ({steps} steps)",
        default_backend="torch",
        render_every=1,
        train={"lr": 0.1, "iters": 40},
        design=lambda sim: PaddleTrajectory(steps, 2, paddle.max_speed),
        objective=stir_objective(steps, region=region, checkpoint_every=checkpoint),
        render_options={} if region is None else {"target": region.numpy(),
                                                  "labels": ["dye", "target third"]},
    )
