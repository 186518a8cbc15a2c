"""A 3D walker: a body two cubes deep on two legs, 48 masses, 284 springs, 2 muscles.

Task: move the center of mass as far as possible along +x within the horizon.
"""

from simdiff.scene import Scene, vary_worlds
from simdiff.sims.mass_spring.builder import robot_from_ascii
from simdiff.sims.mass_spring.tasks import locomotion_loss, locomotion_metrics

ART = """
#####
0...1
"""


def scene(*, steps: int = 680, dt: float = 0.0035, depth: int = 2, **robot) -> Scene:
    return Scene(
        name="walker_3d",
        simulator="mass_spring",
        model=robot_from_ascii(ART, dim=3, depth=depth, dt=dt, **robot),
        steps=steps,
        loss=locomotion_loss,
        metrics=locomotion_metrics,
        description="3D walker, 48 masses, 284 springs, 2 muscles; walk along +x",
        default_backend="warp",
        train={"controller": "mlp", "lr": 0.01, "iters": 80},
        # In a batch, every world but the first has its own spring stiffness (within 20%).
        worlds=vary_worlds(param_spread={"spring_params": (0, 0.2)}),
    )
