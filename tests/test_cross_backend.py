"""Taichi and Warp agree on every shipped scene: final states, the loss and its gradients.

Each scene runs at toy size in float64 on both backends; the loss is the scene's task loss plus a
random projection of the final state, differentiated along random directions of every checked
quantity (model fields, initial state, actions) and, for inverse problems, of the design
parameters (``simdiff.gradcheck.compare_backends``). The two backends are independent kernels of
one model, so agreement to round-off checks forward and adjoint at once.

Tolerances (relative to the compared values' magnitude) are round-off amplified by the horizon:
atomic scatters (MPM, Taichi's N-body backward) sum in a different order on each backend.
"""

import pytest

from simdiff.gradcheck import compare_backends
from simdiff.scene import list_scenes, load_scene

# Scene -> (scene options that make it small, horizon in steps).
TOY = {
    "walker_small": ({}, 40),
    "walker_large": ({}, 25),
    "walker_3d": ({}, 25),
    "walker_goals": ({"steps": 40, "period": 20, "window": 10}, 40),
    "quad_goals_3d": ({"steps": 20, "period": 10, "window": 5}, 20),
    "mpm_walker_goals": ({"steps": 6, "grid_size": 32, "period": 3, "window": 3}, 6),
    "nbody_figure_eight": ({"steps": 10, "periods": 0.1}, 10),  # IAS15: t = 0.63
    "nbody_infer_masses": ({"observations": 3, "every": 5}, 15),
    "nbody_periodic_orbit": ({"steps": 60}, 30),
    "nbody_plummer": ({"n": 48, "steps": 8}, 8),
    "nbody_pythagorean": ({"steps": 10, "t_end": 0.5}, 10),  # IAS15: t = 0.5
    "nbody_solar_system": ({"planets": 3, "steps": 30}, 30),
    "nbody_targeting": ({"steps": 40}, 40),
    "fluid_smoke_to_image": ({"resolution": 16, "steps": 6}, 6),
    "fluid_stir_to_target": ({"resolution": 16, "steps": 6}, 6),
    "fluid_obstacle_design": ({"resolution": 16, "steps": 12}, 12),
    "fluid_plume_3d": ({"resolution": 8, "steps": 4}, 4),
    "mpm_crawler": ({"steps": 6, "grid_size": 32}, 6),
    "mpm_identify": ({"observations": 3, "every": 4}, 12),  # long enough to land: E matters
    "mpm_plasticine": ({"steps": 6}, 6),
    "mpm_throw": ({"steps": 8}, 8),
    "mpm_jelly_3d": ({"steps": 2, "grid_size": 16, "substeps": 4}, 2),
    "mpm_sand_pile": ({"steps": 3, "grid_size": 32, "dt": 8e-4, "substeps": 10}, 3),
}
# Taichi has no 3D MPM gradients (simdiff.sims.mpm.simulator): only the forward is compared here;
# Warp's 3D gradients are checked against central differences in tests/test_mpm_warp.py.
FORWARD_ONLY_ON_TAICHI = {"mpm_jelly_3d"}

RTOL = {"mass_spring": 1e-9, "nbody": 1e-9, "mpm": 1e-7, "fluid": 1e-7}


def test_every_shipped_scene_has_a_toy_size():
    assert sorted(TOY) == sorted(list_scenes())


@pytest.mark.parametrize("name", sorted(TOY))
def test_taichi_and_warp_agree(name):
    options, horizon = TOY[name]
    scene = load_scene(name, **options)
    rtol = RTOL[scene.simulator]
    gradients = name not in FORWARD_ONLY_ON_TAICHI
    results = compare_backends(scene, steps=horizon, rtol=rtol, gradients=gradients)
    assert {"loss", *(f"final_{n}" for n in ("particle_x", "body_x", "velocity", "x"))} & {
        r.quantity for r in results}
    if gradients:
        derivatives = [r for r in results if r.quantity.startswith(("d/d", "design"))]
        assert derivatives and any(abs(r.first) > 0 for r in derivatives), "nothing differentiated"
    bad = [f"{r.quantity}: {r.first:.12g} vs {r.second:.12g} (rel {r.relative_difference:.2e})"
           for r in results if not r.ok]
    assert not bad, f"{name}: taichi and warp disagree beyond rtol={rtol}:\n" + "\n".join(bad)


# One scene per simulator, batched: three slightly different worlds with their own actions.
BATCHED = ("walker_small", "mpm_crawler", "fluid_stir_to_target", "nbody_targeting")


@pytest.mark.parametrize("name", BATCHED)
def test_backends_agree_on_batched_worlds(name):
    options, horizon = TOY[name]
    scene = load_scene(name, **options)
    rtol = RTOL[scene.simulator]
    results = compare_backends(scene, steps=min(horizon, 12), rtol=rtol, batch=3)
    derivatives = [r for r in results if r.quantity.startswith("d/d")]
    assert derivatives and any(abs(r.first) > 0 for r in derivatives)
    bad = [f"{r.quantity}: {r.first:.12g} vs {r.second:.12g}" for r in results if not r.ok]
    assert not bad, f"{name} (3 worlds): backends disagree beyond rtol={rtol}:\n" + "\n".join(bad)
