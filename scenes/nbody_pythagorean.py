"""Burrau's Pythagorean three-body problem with adaptive Hermite steps (close encounters)."""

from simdiff.scene import Scene
from simdiff.sims.nbody import Model
from simdiff.sims.nbody.initial import pythagorean
from simdiff.sims.nbody.tasks import diagnostics_metrics


def scene(*, steps: int = 3000, eta: float = 0.02, criterion: str = "aarseth") -> Scene:
    mass, x, v = pythagorean()
    model = Model(mass, x, v, dt=0.01, integrator="hermite", eta=eta, criterion=criterion)
    return Scene(
        name="nbody_pythagorean",
        simulator="nbody",
        model=model,
        steps=steps,
        loss=lambda r: r.final.body_x.new_zeros(()),
        metrics=diagnostics_metrics,
        train={"precision": "float64"},
        description="Pythagorean 3-4-5 problem, adaptive Hermite (Aarseth criterion)",
        default_backend="warp",
        render_every=6,
    )
