"""The figure-eight three-body choreography, IAS15 by default (REBOUND's accuracy)."""

from simdiff.scene import Scene
from simdiff.sims.nbody import Model
from simdiff.sims.nbody.initial import FIGURE_EIGHT_PERIOD, figure_eight
from simdiff.sims.nbody.tasks import diagnostics_metrics


def scene(*, steps: int = 200, integrator: str = "ias15", periods: float = 1.0,
          tolerance: float = 1e-9) -> Scene:
    mass, x, v = figure_eight()
    # IAS15 chooses its own steps; a simulator step is then an output interval of dt.
    model = Model(mass, x, v, dt=periods * FIGURE_EIGHT_PERIOD / steps, integrator=integrator,
                  tolerance=tolerance)
    return Scene(
        name="nbody_figure_eight",
        simulator="nbody",
        model=model,
        steps=steps,
        # How far each world's orbit is from closing after the integrated time.
        loss=lambda r: r.mean(((r.final.body_x - r.initial.body_x) ** 2).sum((1, 2))),
        metrics=diagnostics_metrics,
        train={"precision": "float64"},
        description=f"figure-eight choreography, {periods:g} period(s), {integrator}",
        default_backend="warp",
        render_every=1 if integrator == "ias15" else 5,
    )
