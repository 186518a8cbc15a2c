"""N-body inverse problems converge: hidden masses, a closing orbit, a launch to a target."""

import pytest

from simdiff.train import TrainConfig, train


def _train(tmp_path, scene, iters, **options):
    result = train(TrainConfig(scene=scene, iters=iters, scene_options=options), tmp_path / scene,
                   progress=False)
    return result.metrics


def test_mass_inference_recovers_hidden_masses(tmp_path):
    rows = _train(tmp_path, "nbody_infer_masses", 50, observations=8, every=25)
    assert rows[0]["mass_error"] == pytest.approx(0.25)  # starts from unit masses
    assert rows[-1]["mass_error"] < 0.02
    assert rows[-1]["loss"] < 1e-2 * rows[0]["loss"]


def test_mass_inference_with_noisy_observations(tmp_path):
    rows = _train(tmp_path, "nbody_infer_masses", 50, observations=8, every=25, noise=1e-3)
    assert rows[-1]["mass_error"] < 0.05


def test_targeting_reaches_the_target(tmp_path):
    rows = _train(tmp_path, "nbody_targeting", 40, steps=200)
    assert rows[0]["miss_distance"] > 0.3
    assert rows[-1]["miss_distance"] < 0.02


def test_periodic_orbit_search_closes_the_orbit(tmp_path):
    rows = _train(tmp_path, "nbody_periodic_orbit", 40, steps=300)
    assert rows[-1]["loss"] < 0.1 * rows[0]["loss"]
