"""Burrau's Pythagorean three-body problem to t = 70 (close encounters), IAS15 by default.

In a batch (``simdiff run nbody_pythagorean --batch 4``) every world but the first starts with
positions displaced by about 1e-6: the problem is chaotic, and the worlds part ways.

Gradient check: `initial_body_v` can come out "non-smooth here" (on Warp at the defaults).
IAS15 chooses its substeps and its predictor-corrector iterations from the state, choices
autodiff holds fixed, and the chaotic problem amplifies their switching: central differences
wander by 1e-3 (relative) between steps of 1e-9 and 1.6e-8, and are round-off below. Autodiff
agrees between Taichi and Warp to 7 digits (4.861547e-02) and with Taichi's central difference
at 1e-9 to 3e-5; the other quantities agree on both backends.
"""

from simdiff.scene import Scene, vary_worlds
from simdiff.sims.nbody import Model
from simdiff.sims.nbody.initial import pythagorean
from simdiff.sims.nbody.tasks import diagnostics_metrics


def scene(*, steps: int = 700, t_end: float = 70.0, integrator: str = "ias15",
          tolerance: float = 1e-9, eta: float = 0.02, criterion: str = "aarseth") -> Scene:
    mass, x, v = pythagorean()
    if integrator == "ias15":
        # IAS15 chooses its own steps; a simulator step is an output interval of dt.
        model = Model(mass, x, v, dt=t_end / steps, integrator="ias15", tolerance=tolerance)
        what = f"IAS15, tolerance {tolerance:g}"
    else:
        model = Model(mass, x, v, dt=0.01, integrator=integrator, eta=eta, criterion=criterion)
        what = f"adaptive {integrator} (eta {eta:g}, {criterion})"
    return Scene(
        name="nbody_pythagorean",
        simulator="nbody",
        model=model,
        steps=steps,
        loss=lambda r: r.final.body_x.new_zeros(()),
        metrics=diagnostics_metrics,
        train={"precision": "float64"},
        description=f"Pythagorean 3-4-5 problem, {what}",
        default_backend="warp",
        render_every=2,
        worlds=vary_worlds(state_noise={"body_x": 1e-6}),
    )
