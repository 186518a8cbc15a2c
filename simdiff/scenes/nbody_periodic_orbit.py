"""Inverse problem: from a perturbed figure-eight, find an orbit that closes after one period
(the period is a free parameter within 10% of the figure-eight's)."""

from simdiff.scene import Scene
from simdiff.sims.nbody import Model
from simdiff.sims.nbody.initial import FIGURE_EIGHT_PERIOD, figure_eight
from simdiff.sims.nbody.tasks import (
    OrbitFit,
    diagnostics_metrics,
    periodic_orbit_objective,
    perturbed,
)


def scene(*, steps: int = 500, perturbation: float = 0.02, seed: int = 1) -> Scene:
    mass, x, v = figure_eight()
    x0, v0 = perturbed(x, perturbation, seed), perturbed(v, perturbation, seed + 1)
    model = Model(mass, x0, v0, dt=FIGURE_EIGHT_PERIOD / steps, integrator="hermite")
    return Scene(
        name="nbody_periodic_orbit",
        simulator="nbody",
        model=model,
        steps=steps,
        loss=lambda r: r.final.body_x.new_zeros(()),
        metrics=diagnostics_metrics,
        description="close a perturbed figure-eight: initial state and period as parameters",
        render_every=5,
        train={"precision": "float64", "lr": 3e-3, "iters": 150},
        design=lambda sim: OrbitFit(x0, v0, FIGURE_EIGHT_PERIOD),
        objective=periodic_orbit_objective(steps),
        render_options={"observed": x0[None].numpy(),
                        "observed_label": "start: the orbit should close here"},
    )
