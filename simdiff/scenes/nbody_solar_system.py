"""The Sun and eight planets on circular coplanar orbits (AU, years), Hermite, 20 years."""

from simdiff.scene import Scene
from simdiff.sims.nbody import Model
from simdiff.sims.nbody.initial import SOLAR_G, solar_system
from simdiff.sims.nbody.tasks import diagnostics_metrics


def scene(*, steps: int = 4000, dt: float = 5e-3, planets: int = 8) -> Scene:
    (mass, x, v), _ = solar_system(planets)
    model = Model(mass, x, v, dt=dt, integrator="hermite", gravitational_constant=SOLAR_G)
    return Scene(
        name="nbody_solar_system",
        simulator="nbody",
        model=model,
        steps=steps,
        loss=lambda r: r.final.body_x.new_zeros(()),
        metrics=diagnostics_metrics,
        train={"precision": "float64"},
        description="Sun and 8 planets, circular orbits, 20 years, Hermite",
        render_every=20,
    )
