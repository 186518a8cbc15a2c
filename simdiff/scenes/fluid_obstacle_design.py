"""Obstacle inverse design: the solid fraction of a design region (pixels, or a small CNN
with ``parameterization="cnn"``) that steers a dyed jet, blown from the left end of a channel,
into the upper of two outlets on the right.
``--set checkpoint=K`` keeps one state every K steps in backward (bounded memory).
"""

import torch

from simdiff.scene import Scene
from simdiff.sims.fluid import Inflow, Model
from simdiff.sims.fluid.tasks import CNNObstacle, PixelObstacle, jet_objective


def scene(
    *,
    resolution: int = 32,
    steps: int = 80,
    parameterization: str = "pixels",
    checkpoint: int | None = None,
) -> Scene:
    n0, n1 = 3 * resolution // 2, resolution
    walls = torch.zeros(n0, n1, dtype=torch.float64)
    q = n1 // 8
    walls[-2:, :] = 1
    walls[-2:, n1 - 3 * q : n1 - q] = 0  # upper outlet: the target
    walls[-2:, q : 3 * q] = 0  # lower outlet
    region = torch.zeros(n0, n1, dtype=torch.float64)
    region[n0 // 4 : 3 * n0 // 4, 1:-1] = 1
    target = torch.zeros(n0, n1, dtype=torch.float64)
    other = torch.zeros(n0, n1, dtype=torch.float64)
    target[3 * n0 // 4 :, n1 // 2 :] = 1
    other[3 * n0 // 4 :, : n1 // 2] = 1
    # A uniform wind through the whole left end carries a dyed jet in its middle.
    wind = Inflow(lo=(0, 0), hi=(2, n1), velocity=(1.0, 0.0), concentration=(0.0,))
    jet = Inflow(
        lo=(0, n1 // 2 - q // 2),
        hi=(2, n1 // 2 + q // 2),
        velocity=(1.0, 0.0),
        concentration=(1.0,),
    )
    model = Model(
        (n0, n1),
        dx=1.0 / n1,
        dt=0.8 / n1,
        inflows=[wind, jet],
        obstacle=walls,
        open_sides=("x+",),
        advection="maccormack",
    )
    build = {"pixels": PixelObstacle, "cnn": CNNObstacle}.get(parameterization)
    if build is None:
        raise ValueError(f"parameterization={parameterization!r}; allowed: pixels, cnn")
    return Scene(
        name="fluid_obstacle_design",
        simulator="fluid",
        model=model,
        steps=steps,
        loss=lambda r: r.final.dye.new_zeros(()),
        description=f"obstacle ({parameterization}) that steers a jet into the upper outlet",
        default_backend="torch",
        render_every=1,
        train={"lr": 0.05 if parameterization == "pixels" else 0.01, "iters": 30},
        design=lambda sim: build(region, walls),
        objective=jet_objective(steps, target, other, checkpoint_every=checkpoint),
        render_options={"target": target.numpy(), "avoid": other.numpy(),
                        "labels": ["dye", "upper outlet", "lower outlet"]},
    )
