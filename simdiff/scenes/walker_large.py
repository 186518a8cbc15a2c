"""A larger 2D walker: 63 masses, 182 springs, four two-cell legs with a muscle each.

Task: move the center of mass as far as possible to the right within the horizon.
"""

from simdiff.scene import Scene, vary_worlds
from simdiff.sims.mass_spring.builder import robot_from_ascii
from simdiff.sims.mass_spring.tasks import locomotion_loss, locomotion_metrics

ART = """
############
############
00.11..22.33
00.11..22.33
"""


def scene(*, steps: int = 680, dt: float = 0.004, **robot) -> Scene:
    return Scene(
        name="walker_large",
        simulator="mass_spring",
        model=robot_from_ascii(ART, dt=dt, **robot),
        steps=steps,
        loss=locomotion_loss,
        metrics=locomotion_metrics,
        description="2D walker, 63 masses, 182 springs, 4 muscles; walk right",
        default_backend="warp",
        train={"controller": "mlp", "lr": 0.01, "iters": 80},
        # In a batch, every world but the first has its own spring stiffness (within 20%).
        worlds=vary_worlds(param_spread={"spring_params": (0, 0.2)}),
    )
