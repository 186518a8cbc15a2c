"""3D smoke plume: the inflow speed that lifts the smoke's center of mass to a target height
after a given time (rendered as a volume projection along z).
``--set checkpoint=K`` keeps one state every K steps in backward (bounded memory).
"""

from simdiff.scene import Scene
from simdiff.sims.fluid import Inflow, Model
from simdiff.sims.fluid.tasks import InflowSpeed, plume_objective


def scene(
    *, resolution: int = 16, steps: int = 30, height: float = 0.35, checkpoint: int | None = None
) -> Scene:
    n = resolution
    lo, hi = (3 * n // 8, 1, 3 * n // 8), (5 * n // 8, 3, 5 * n // 8)
    max_speed = 1.0
    source = Inflow(lo, hi, velocity=(0.0, max_speed, 0.0), concentration=(1.0,))
    model = Model(
        (n, n, n),
        dx=1.0 / n,
        dt=0.9 / (n * max_speed),
        buoyancy=(0.5,),
        inflows=[source],
        open_sides=("y+",),
    )
    return Scene(
        name="fluid_plume_3d",
        simulator="fluid",
        model=model,
        steps=steps,
        loss=lambda r: r.final.dye.new_zeros(()),
        description=f"3D inflow speed that lifts the smoke to height {height} m",
        default_backend="torch",
        render_every=1,
        train={"lr": 0.1, "iters": 20},
        design=lambda sim: InflowSpeed(max_speed),
        objective=plume_objective(steps, height, checkpoint_every=checkpoint),
        render_options={"target_height": height},
    )
