"""Sand pile (MPM): a column of Drucker-Prager sand collapses into a pile on a rough ground.

``simdiff run mpm_sand_pile`` renders the collapse with the true (hidden) friction angle
(``--set friction_angle=25``), in a domain ``domain`` = 2 m wide, which the runout (about 1 m at
35 degrees) does not reach; ``grid_size`` counts nodes per meter. The loss of a
plain rollout is the pile's spread (the standard deviation of the sand's horizontal positions)
and the metrics report the flank angle (about 0.7 times the friction angle after the collapse:
the flow overshoots the static angle of repose) and the runout.

``simdiff train mpm_sand_pile`` is an inverse problem: recover the sand's friction angle
(hidden, ``friction_angle``) from the positions of its grains observed at a few times of the
collapse, starting from ``start`` degrees.

Default backend Warp, measured on a 1 m domain (1,216 particles, 64^2 grid, 40 steps of 50
substeps, float32, 2 shared CPU cores, kernels compiled beforehand, same script for both): a
rollout takes 1.12 s on Warp against 1.85 s on Taichi (1.65x), forward and backward (loss in
the initial velocities) 3.9 s against 6.0 s (1.55x). Both backends give the same states and
gradients (``tests/test_mpm_sand.py``, ``tests/test_cross_backend.py``).

Gradient check: `initial_particle_x` and `initial_particle_v` come out "non-smooth here" at the
defaults (100 steps, float64, both backends). The Drucker-Prager return mapping switches grains
between elastic and plastic at the yield surface, and the rough ground switches them between
sticking and sliding; the collapse crosses both for hundreds of grains, so the loss has kinks
closer together than any finite-difference step. Measured: central differences in the initial
positions wander between 0.66 and 1.18 as the step goes from 1.8e-5 to 4.4e-9 (autodiff
0.778); in the initial velocities they sit within 4e-4 of autodiff (-3.4558e-4) at steps
1.6e-8 to 1e-9, then round-off takes over. Autodiff agrees between Taichi and Warp to 7 digits
for both, and `particle_E` and `particle_nu` (smooth) pass on both backends to 1e-6.
"""

import math

import torch

from simdiff.backend import resolve_backend
from simdiff.rollout import Rollout, world_metrics
from simdiff.scene import Scene
from simdiff.sims.mpm import MPM, Body, Ground, Material, build_model
from simdiff.sims.mpm.builder import check_grid_size
from simdiff.sims.mpm.tasks import (
    FrictionAngleFit,
    identify_friction_objective,
    observe_positions,
    pile_angle,
)


def scene(*, steps: int = 40, grid_size: int = 64, substeps: int = 50, dt: float = 4e-4,
          friction_angle: float = 35.0, width: float = 0.25, height: float = 0.3,
          start: float = 25.0, observations: int = 4, domain: float = 2.0) -> Scene:
    check_grid_size(grid_size)
    if not domain >= 1.0:
        raise ValueError(f"domain={domain} m must be at least 1 (the column's room to spread)")
    # grid_size nodes per meter; the domain is wider than the runout of the collapse, whose
    # flow would otherwise reach the walls (0.93 m of a 1 m domain at 25 degrees).
    dx = 1 / grid_size
    column = Body((domain / 2 - width / 2, 3 * dx), (width, height), material=Material.SAND,
                  E=200.0, nu=0.3, friction_angle=friction_angle)
    model = build_model([column], grid_size=round(domain * grid_size), dx=dx, dt=dt,
                        substeps=substeps, ground=Ground(friction=math.inf))
    observations = min(observations, steps)
    every = steps // observations
    with torch.no_grad():
        observed, _ = observe_positions(MPM(model, resolve_backend("warp", precision="float64")),
                                        observations, every)

    def spread(result: Rollout):
        return result.mean(result.final.particle_x[..., 0].std(1))

    def metrics(result: Rollout) -> dict[str, float]:
        x = result.final.particle_x.detach()  # [B, n, 2]
        return {**world_metrics("pile_angle_deg", [pile_angle(w, model.dx, model.ground_height)
                                                   for w in x]),
                **world_metrics("runout", x[..., 0].amax(1) - x[..., 0].amin(1)),
                "friction_angle_deg": float(model.particle_friction_angle.detach()[0])}

    return Scene(
        name="mpm_sand_pile",
        simulator="mpm",
        model=model,
        steps=steps,
        loss=spread,
        metrics=metrics,
        train={"precision": "float64", "lr": 0.1, "iters": 25},
        design=lambda sim: FrictionAngleFit(start),
        truth=lambda sim: FrictionAngleFit(friction_angle),
        objective=identify_friction_objective(observed, friction_angle, every),
        description=f"a sand column ({friction_angle:g} degrees) collapses into a pile, "
                    f"{model.particle_count} particles",
        default_backend="warp",
        render_every=1,
        render_options={"observed": observed.numpy(), "observed_times":
                        [(k + 1) * every * model.control_dt for k in range(observations)],
                        "bounds": (0.0, domain, -0.05, 0.3 * domain), "size": 640},
    )
