"""Batched worlds from the user's side: a scene's ``worlds`` hook (seeded, world 0 as built),
``simdiff run --batch`` (a tiled video of the worlds) and ``simdiff train --batch`` (per-world
figures in the metrics log)."""

import json

import imageio.v3 as iio
import pytest
import torch

from simdiff.backend import resolve_backend
from simdiff.cli import main
from simdiff.scene import initial_worlds, load_scene, make_simulator
from simdiff.sims.mpm.state import PARAM_COLUMNS


def test_vary_worlds_keeps_world_zero_and_is_seeded():
    scene = load_scene("mpm_crawler", steps=2, grid_size=32)
    sim = make_simulator(scene, resolve_backend("warp", precision="float64"), batch_size=3)
    state, params = initial_worlds(scene, sim, seed=7)
    again_state, again = initial_worlds(scene, sim, seed=7)
    other_state, other = initial_worlds(scene, sim, seed=8)
    e = PARAM_COLUMNS.index("E")
    youngs = params.particle[:, :, e]
    assert params.particle.shape[0] == 3  # per world now
    torch.testing.assert_close(youngs[0], sim.params().particle[:, e])  # world 0 as built
    assert not torch.equal(youngs[1], youngs[0]) and not torch.equal(youngs[2], youngs[1])
    ratio = youngs[1:] / youngs[0]
    assert bool(((ratio > 0.8) & (ratio < 1.2)).all())
    assert torch.equal(again.particle, params.particle)
    assert not torch.equal(other.particle, params.particle)
    # Every column but E is the scene's in every world.
    rest = [k for k in range(params.particle.shape[-1]) if k != e]
    torch.testing.assert_close(params.particle[..., rest],
                               sim.params().particle[..., rest].expand(3, -1, -1))
    assert torch.equal(state.particle_x, again_state.particle_x)
    assert torch.equal(state.particle_x, other_state.particle_x)  # the state is not varied


def test_vary_worlds_state_noise_recomputes_derived_fields():
    scene = load_scene("nbody_pythagorean", steps=2)
    sim = make_simulator(scene, resolve_backend("warp", precision="float64"), batch_size=2)
    state, _ = initial_worlds(scene, sim, seed=0)
    single = sim.initial_state()
    assert torch.equal(state.body_x[0], single.body_x[0])
    shift = (state.body_x[1] - single.body_x[0]).abs().max()
    assert 1e-9 < float(shift) < 1e-4
    assert not torch.equal(state.body_a[1], single.body_a[0])  # accelerations follow x


def test_run_batch_writes_a_tiled_video(tmp_path):
    out1, out4 = tmp_path / "one", tmp_path / "four"
    common = ["run", "mpm_crawler", "--steps", "2", "--set", "grid_size=32"]
    assert main([*common, "--out", str(out1)]) == 0
    assert main([*common, "--batch", "4", "--out", str(out4)]) == 0
    one = iio.imread(out1 / "mpm_crawler.mp4", index=0)
    four = iio.imread(out4 / "mpm_crawler.mp4", index=0)
    # Four worlds tile 2 x 2 with a gap (the encoder may pad sizes to a multiple of 16).
    assert four.shape[0] >= 2 * one.shape[0] - 16 and four.shape[1] >= 2 * one.shape[1] - 16


def test_train_batch_logs_per_world_figures(tmp_path):
    out = tmp_path / "run"
    code = main(["train", "mpm_crawler", "--steps", "2", "--set", "grid_size=32", "--iters", "2",
                 "--batch", "3", "--out", str(out), "--no-video", "--quiet"])
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    per_world = [k for k in rows[0] if k.endswith("_per_world")]
    assert per_world and all(len(rows[0][k]) == 3 for k in per_world)
    assert json.loads((out / "config.json").read_text())["batch"] == 3


@pytest.mark.parametrize("bad", ["0", "-2"])
def test_batch_below_one_is_one_line_and_exit_code_2(tmp_path, capsys, bad):
    code = main(["run", "mpm_crawler", "--steps", "2", "--batch", bad,
                 "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"batch_size={bad} must be an integer >= 1" in err
