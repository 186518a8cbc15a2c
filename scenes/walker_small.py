"""A small 2D walker: 20 masses, 49 springs, two legs with one muscle each.

Task: move the center of mass as far as possible to the right within the horizon.

Robot parameters: :data:`~simdiff.sims.mass_spring.builder.SHAPE_KEEPING` (DiffTaichi's robots
scaled to 0.1 m cells: stiffness 1.5e4 N/m, stroke 0.15, drag 15/s, gravity -4.8 m/s^2). Why:
with the builder's generic defaults the body was 3x softer for its weight, its muscles stroked
2.7x further and it was damped 15x less, so trained gaits crumpled (cells down to 15% of their
rest area under random full-stroke actuation, inverted cells in trained gaits); with these a
random full-stroke gait keeps every cell between 0.65x and 1.35x its rest area.
"""

from simdiff.scene import Scene
from simdiff.sims.mass_spring.builder import SHAPE_KEEPING, robot_from_ascii
from simdiff.sims.mass_spring.tasks import locomotion_loss, locomotion_metrics

ART = """
######
00..11
"""


def scene(*, steps: int = 680, dt: float = 0.004, **robot) -> Scene:
    return Scene(
        name="walker_small",
        simulator="mass_spring",
        model=robot_from_ascii(ART, dt=dt, **{**SHAPE_KEEPING, **robot}),
        steps=steps,
        loss=locomotion_loss,
        metrics=locomotion_metrics,
        description="2D walker, 20 masses, 49 springs, 2 muscles; walk right",
        default_backend="warp",
        train={"controller": "mlp", "lr": 0.01, "iters": 80},
    )
