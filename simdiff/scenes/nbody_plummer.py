"""A Plummer sphere (N-body units) evolved with leapfrog and softening."""

from simdiff.scene import Scene
from simdiff.sims.nbody import Model
from simdiff.sims.nbody.initial import plummer
from simdiff.sims.nbody.tasks import diagnostics_metrics


def scene(*, n: int = 1024, steps: int = 200, dt: float = 5e-3, softening: float = 0.02) -> Scene:
    mass, x, v = plummer(n)
    model = Model(mass, x, v, dt=dt, integrator="leapfrog", softening=softening)
    return Scene(
        name="nbody_plummer",
        simulator="nbody",
        model=model,
        steps=steps,
        loss=lambda r: r.final.body_x.new_zeros(()),
        metrics=diagnostics_metrics,
        train={"precision": "float64"},
        description=f"Plummer sphere of {n} bodies, leapfrog, softening {softening}",
        # Many bodies: compute-bound, where Taichi's multi-threaded kernels win.
        default_backend="taichi" if n >= 512 else "warp",
        render_every=4,
    )
