"""The command line on toy sizes: every verb runs, writes what it says, and fails clearly."""

import json

import imageio.v3 as iio
import pytest

from simdiff.cli import main


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "walker_small" in out and "walker_3d" in out and "mlp" in out and "sinusoid" in out


@pytest.mark.parametrize("scene", ["walker_small", "walker_3d"])
def test_run_writes_a_video(tmp_path, capsys, scene):
    path = tmp_path / f"{scene}.gif"
    assert main(["run", scene, "--steps", "40", "--controller", "sinusoid", "--out", str(path)]) == 0
    assert f"wrote {path}" in capsys.readouterr().out
    frames = iio.imread(path)
    assert frames.shape[0] == 11  # steps 0, 4, ..., 40
    assert frames[0].std() > 0


def test_train_then_resume(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "walker_small", "--steps", "60", "--controller", "sinusoid", "--iters", "2",
            "--out", str(out), "--quiet", "--checkpoint-every", "1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for name in ("metrics.jsonl", "checkpoint.pt", "controller.pt", "best_controller.pt", "loss.png",
                 "walker_small.mp4"):
        assert (out / name).is_file(), name
        assert f"wrote {out / name}" in printed
    assert main(args) == 2  # the folder holds a run: refused, nothing overwritten
    assert "already holds a training run" in capsys.readouterr().err
    more = args[:args.index("--iters")] + ["--iters", "3"] + args[args.index("--iters") + 2:]
    assert main(more + ["--resume", str(out / "checkpoint.pt"), "--no-video"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2]


def test_gradcheck_passes_on_a_shipped_scene(capsys):
    assert main(["gradcheck", "walker_small", "--horizon", "30"]) == 0
    out = capsys.readouterr().out
    assert out.count(" ok") == 12 and "gradcheck passed" in out


def test_bad_inputs_exit_with_a_message(tmp_path, capsys):
    assert main(["run", "no_such_scene"]) == 2
    assert "scene 'no_such_scene' not found" in capsys.readouterr().err
    assert main(["run", "walker_small", "--backend", "warp", "--set", "dt=0.5"]) == 2
    assert "exceeds the spring stability limit" in capsys.readouterr().err
    assert main(["run", "walker_small", "--device", "tpu"]) == 2
    assert "device='tpu' is unknown" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_text("garbage")
    assert main(["train", "walker_small", "--steps", "10", "--iters", "1", "--out",
                 str(tmp_path / "o"), "--resume", str(bad), "--quiet"]) == 2
    assert "unreadable or corrupt" in capsys.readouterr().err


@pytest.mark.parametrize("what, backend", [("mass_spring", "warp"), ("nbody", "all")])
def test_bench_runs_at_toy_size(tmp_path, capsys, what, backend):
    out = tmp_path / "bench.json"
    assert main(["bench", what, "--backend", backend, "--quick", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert {r["config"] for r in rows} >= {"warp"} and len({r["config"] for r in rows}) >= 2
    assert all(r.get("vs_baseline", 1) > 0 for r in rows)
    printed = capsys.readouterr().out
    assert "vs_baseline" in printed
    assert ("taichi and warp side by side" in printed) == (backend == "all")
    if backend == "all":  # the ratio column is warp / taichi of the same row
        table = printed.split("side by side")[1].splitlines()[2:]
        by = {(r["config"], r["n"], r["mode"]): r.get("pairs_per_second") for r in rows}
        first = table[0].split()
        n, mode = int(first[0]), first[1]
        expected = by[("warp", n, mode)] / by[("taichi", n, mode)]
        assert float(first[-1]) == pytest.approx(expected, rel=1e-3)


def test_nbody_run_writes_video_and_energy_plot(tmp_path, capsys):
    path = tmp_path / "eight.gif"
    assert main(["run", "nbody_figure_eight", "--steps", "100", "--out", str(path)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {path}" in printed and "energy_error=" in printed
    assert iio.imread(path).shape[0] == 101  # IAS15: a frame per output interval
    energy_plot = tmp_path / "eight_energy.png"
    assert f"wrote {energy_plot}" in printed and iio.imread(energy_plot).ndim == 3


def test_nbody_inverse_problem_trains_from_the_cli(tmp_path, capsys):
    out = tmp_path / "masses"
    assert main(["train", "nbody_infer_masses", "--set", "observations=4", "--iters", "15",
                 "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert (out / "nbody_infer_masses.mp4").is_file() and "mass_error=" in printed
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["mass_error"] < rows[0]["mass_error"]


def test_gradcheck_on_an_nbody_scene(capsys):
    assert main(["gradcheck", "nbody_pythagorean", "--set", "t_end=0.5", "--set", "steps=10",
                 "--horizon", "10"]) == 0
    assert "gradcheck passed" in capsys.readouterr().out


def test_gradcheck_on_a_fluid_scene(capsys):
    # The check starts the flow off its kinks (at rest, advection samples on grid nodes).
    assert main(["gradcheck", "fluid_smoke_to_image", "--horizon", "6", "--backend", "warp"]) == 0
    assert "gradcheck passed" in capsys.readouterr().out
