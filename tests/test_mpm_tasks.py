"""MPM scenes end to end: training moves the crawler, the inverse problems recover their hidden
values, the CLI runs and renders them (toy sizes)."""

import json

import imageio.v3 as iio
import numpy as np
import pytest

from simdiff.cli import main
from simdiff.render import render_mpm
from simdiff.train import TrainConfig, train


def test_crawler_training_moves_the_center_of_mass_right(tmp_path):
    result = train(TrainConfig(scene="mpm_crawler", controller="sinusoid", iters=6, lr=0.1,
                               scene_options={"steps": 40}, rollout_checkpoint=10),
                   tmp_path, progress=False)
    distances = [row["distance"] for row in result.metrics]
    assert max(distances[1:]) > distances[0] + 0.005
    assert max(distances) > 0.01


@pytest.mark.slow
def test_throw_lands_on_the_target(tmp_path):
    result = train(TrainConfig(scene="mpm_throw"), tmp_path, progress=False)
    best = min(result.metrics, key=lambda row: row["loss"])
    first = result.metrics[0]
    assert first["miss_distance"] > 0.1
    assert best["miss_distance"] < 0.01


@pytest.mark.slow
def test_modulus_is_recovered(tmp_path):
    result = train(TrainConfig(scene="mpm_identify"), tmp_path, progress=False)
    best = min(result.metrics, key=lambda row: row["loss"])
    assert result.metrics[0]["modulus_error"] > 0.6
    assert best["modulus_error"] < 0.02


def test_cli_runs_and_renders_mpm_scenes(tmp_path, capsys):
    path = tmp_path / "crawler" / "mpm_crawler.gif"
    assert main(["run", "mpm_crawler", "--steps", "6", "--controller", "sinusoid",
                 "--out", str(path.parent), "--video", "gif"]) == 0
    assert f"wrote {path}" in capsys.readouterr().out
    frames = iio.imread(path)
    assert frames.shape[0] == 4  # steps 0, 2, 4, 6
    assert frames[0].std() > 0
    assert main(["run", "mpm_crawler", "--set", "dt=0.01"]) == 2
    assert "exceeds the stability limit" in capsys.readouterr().err


def test_render_mpm_2d_and_3d():
    rng = np.random.default_rng(0)
    x2 = 0.3 + 0.2 * rng.random((3, 50, 2))
    frames = render_mpm(x2, np.array([0] * 20 + [1] * 20 + [2] * 10), domain=1.0,
                        actuation=[np.where(np.arange(50) < 10, 0.8, np.nan)] * 3,
                        ground_height=0.1, tool=(0, (0.05,), np.full((3, 2), 0.6)),
                        target_point=(0.7, 0.1))
    assert len(frames) == 3 and frames[0].shape == (480, 480, 3)
    assert len({tuple(c) for c in frames[0].reshape(-1, 3)[::7]}) > 4  # sky, ground, materials
    x3 = 0.3 + 0.2 * rng.random((2, 50, 3))
    frames3 = render_mpm(x3, np.zeros(50, dtype=int), domain=1.0, ground_height=0.1, size=200)
    assert frames3[1].shape == (200, 200, 3) and frames3[1].std() > 0
    with pytest.raises(ValueError, match="positions"):
        render_mpm(np.full((1, 3, 2), np.nan), np.zeros(3), domain=1.0)


def test_render_mpm_draws_one_world_of_batched_frames():
    """Batched frames [T, B, n, 2] (with batched actuation and tool centers) draw world
    ``world``: the same image as that world's frames alone; world 0 by default."""
    rng = np.random.default_rng(1)
    x = 0.3 + 0.2 * rng.random((2, 3, 40, 2))
    act = np.where(np.arange(40) < 10, 1.0, np.nan) * rng.random((2, 3, 40))
    centers = 0.5 + 0.1 * rng.random((2, 3, 2))
    kinds = np.zeros(40, dtype=int)

    def draw(positions, actuation, tool_centers, **options):
        return render_mpm(positions, kinds, domain=1.0, actuation=actuation,
                          tool=(0, (0.05,), tool_centers), size=120, **options)

    for world in (0, 2):
        batched = draw(x, list(act), centers, world=world)
        alone = draw(x[:, world], list(act[:, world]), centers[:, world])
        assert all(np.array_equal(a, b) for a, b in zip(batched, alone))
    assert np.array_equal(draw(x, list(act), centers)[0], draw(x[:, 0], list(act[:, 0]),
                                                                centers[:, 0])[0])
    assert not np.array_equal(draw(x, list(act), centers, world=1)[0],
                              draw(x, list(act), centers, world=2)[0])
    with pytest.raises(ValueError, match=r"world=3 outside \[0, 3\)"):
        draw(x, None, centers, world=3)


def test_bench_mpm_runs_at_toy_size(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "mpm", "--quick", "--json", str(out)]) == 0
    rows = {(r["config"], r["part"]): r for r in json.loads(out.read_text())}
    assert set(rows) == {(c, p) for c in ("taichi", "warp", "torch") for p in "abc"}
    for config in ("taichi", "warp"):
        a, b = rows[config, "a"], rows[config, "b"]
        assert a["vs_baseline"] > 0 and a["particle_substeps_per_s"] > 0
        assert b["dim"] == 3 and b["particle_substeps_per_s"] > 0
        memory = rows[config, "c"]
        # A toy horizon keeps every control step (the default rule checkpoints long ones).
        assert memory["checkpoint"] is None and memory["saved_mb"] > 0
        assert 0 < memory["import_rss_mb"] <= memory["peak_rss_mb"]
    assert rows["torch", "c"]["peak_rss_mb"] > 0
    printed = capsys.readouterr().out
    assert "vs_baseline" in printed and "(b) 3D forward" in printed
    assert "(c) gradient at 20 substeps" in printed


def test_batch_benchmark_runs_at_toy_size():
    """``benchmarks/batch_mpm.py`` at toy size: a row per B and mode with positive figures,
    B = 1 the reference of ``speedup_vs_b1`` (speed itself is measured by the benchmark)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "batch_mpm.py"
    spec = importlib.util.spec_from_file_location("batch_mpm", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.mpm_batch(batches=(1, 2), backends=("warp",), quick=True)
    assert {(r["batch"], r["mode"]) for r in rows} == {
        (b, m) for b in (1, 2) for m in ("forward", "forward_backward")}
    for r in rows:
        assert r["world_steps_per_s"] > 0 and r["loop_world_steps_per_s"] > 0
        assert r["peak_rss_mb"] > 0 and r["vs_loop"] > 0
        if r["batch"] == 1:
            assert r["speedup_vs_b1"] == 1.0
    assert "world-steps/s" in bench.summarize(rows)
