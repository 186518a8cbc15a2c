"""A Plummer sphere (N-body units) evolved with leapfrog and softening for 6 time units: about
two crossing times (2 sqrt(2) each), long enough to watch its stars orbit through the core and
a few escape."""

from simdiff.scene import Scene
from simdiff.sims.nbody import Model
from simdiff.sims.nbody.initial import plummer
from simdiff.sims.nbody.tasks import diagnostics_metrics


def scene(*, n: int = 1024, steps: int = 1200, dt: float = 5e-3, softening: float = 0.02) -> Scene:
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
        render_every=6,
    )
