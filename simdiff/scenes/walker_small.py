"""A small 2D walker: 20 masses, 49 springs, two legs with one muscle each.

Task: move the center of mass as far as possible to the right within the horizon.

Robot parameters: :data:`~simdiff.sims.mass_spring.builder.SHAPE_KEEPING` (DiffTaichi's robots
scaled to 0.1 m cells: stiffness 1.5e4 N/m, stroke 0.15, drag 15/s, gravity -4.8 m/s^2). Why:
with the builder's generic defaults the body was 3x softer for its weight, its muscles stroked
2.7x further and it was damped 15x less, so trained gaits crumpled (cells down to 15% of their
rest area under random full-stroke actuation, inverted cells in trained gaits); with these a
random full-stroke gait keeps every cell between 0.65x and 1.35x its rest area.

Measured 2026-12-02 (``simdiff train walker_small``, mlp, 80 iterations, then ``simdiff run`` of
the best controller, every 4th step checked): these parameters walk 0.069 m with 0 inverted
cells, the gradient norm peaking at 1.1e3 (iterations 25-39) and settling at ~0.1; the older
ones (``--set stiffness=1e4 --set actuation=0.4 --set drag=1 --set gravity=-9.8``) walk 0.24 m
with 33% of cell-steps inverted (a crumpled body sliding), gradient norms up to 3.4e13 and 6 of
58 iterations non-finite (skipped by the trainer).
"""

from simdiff.scene import Scene, vary_worlds
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
        # In a batch, every world but the first has its own spring stiffness (within 20%).
        worlds=vary_worlds(param_spread={"spring_params": (0, 0.2)}),
    )
