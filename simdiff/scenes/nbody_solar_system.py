"""The Sun and eight planets on circular coplanar orbits (AU, years), Hermite, 20 years."""

from simdiff.scene import Scene
from simdiff.sims.nbody import Model
from simdiff.sims.nbody.initial import SOLAR_G, solar_system
from simdiff.sims.nbody.tasks import diagnostics_metrics


def scene(*, steps: int = 4000, dt: float = 5e-3, planets: int = 8) -> Scene:
    (mass, x, v), names = solar_system(planets)
    every = 4
    # Each trail about one orbit (Kepler: period [yr] = a^1.5 [AU]), at most 80 frames.
    periods = x.norm(dim=1) ** 1.5
    trail = [min(80, max(2, round(float(p) / (dt * every)))) for p in periods]
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
        render_every=every,
        # Orbits from 0.4 to 30 AU: a log-radius view shows the inner planets beside Neptune.
        render_options={"labels": names, "log_radius": 0.3, "length_unit": "AU",
                        "time_unit": "yr", "trail": trail},
    )
