"""The figure-eight three-body choreography for one period with the Hermite integrator."""

from simdiff.scene import Scene
from simdiff.sims.nbody import Model
from simdiff.sims.nbody.initial import FIGURE_EIGHT_PERIOD, figure_eight
from simdiff.sims.nbody.tasks import diagnostics_metrics


def scene(*, steps: int = 1000, integrator: str = "hermite", periods: float = 1.0) -> Scene:
    mass, x, v = figure_eight()
    model = Model(mass, x, v, dt=periods * FIGURE_EIGHT_PERIOD / steps, integrator=integrator)
    return Scene(
        name="nbody_figure_eight",
        simulator="nbody",
        model=model,
        steps=steps,
        # How far the orbit is from closing after the integrated time.
        loss=lambda r: ((r.final.body_x - r.initial.body_x) ** 2).sum(),
        metrics=diagnostics_metrics,
        train={"precision": "float64"},
        description="figure-eight choreography, one period, Hermite",
        render_every=5,
    )
