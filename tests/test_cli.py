"""The command line on toy sizes: every verb runs, writes what it says, and fails clearly."""

import io
import json
import re
import sys

import imageio.v3 as iio
import pytest

from simdiff.cli import main


def _options(parser, name="simdiff"):
    """(command, option, help) of every option of every verb and sub-verb."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for verb, sub in action.choices.items():
                yield from _options(sub, f"{name} {verb}")
        elif action.option_strings and not isinstance(action, argparse._HelpAction):
            yield name, action.option_strings[0], action.help or ""


def test_every_option_states_its_default_and_the_top_level_help_is_for_users(capsys):
    from simdiff.cli import build_parser

    missing = [f"{c} {o}" for c, o, h in _options(build_parser()) if "default" not in h]
    assert missing == []
    assert len(list(_options(build_parser()))) > 60  # every verb was walked
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "differentiable simulation" in text and "example:" in text
    assert "argument parsing only" not in text  # not the module's docstring for developers
    for verb in ("list", "show", "run", "train", "gradcheck", "bench", "design", "rl", "sweep"):
        assert re.search(rf"\n    {verb}\s", text), verb


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "walker_small" in out and "walker_3d" in out and "mlp" in out and "sinusoid" in out


@pytest.mark.parametrize("scene", ["walker_small", "walker_3d"])
def test_run_writes_a_video_and_its_metrics_into_a_folder(tmp_path, capsys, scene):
    out = tmp_path / "run"
    assert main(["run", scene, "--steps", "40", "--controller", "sinusoid", "--out", str(out),
                 "--video", "gif"]) == 0
    printed = capsys.readouterr().out
    path = out / f"{scene}.gif"
    assert f"wrote {path}" in printed and f"wrote {out / 'metrics.json'}" in printed
    frames = iio.imread(path)
    assert frames.shape[0] == 11  # steps 0, 4, ..., 40
    assert frames[0].std() > 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["scene"] == scene and record["steps"] == 40
    assert record["controller"] == "sinusoid"
    # The figures printed are the figures stored.
    loss = next(word for word in printed.split() if word.startswith("loss="))
    assert float(loss.split("=")[1]) == pytest.approx(record["metrics"]["loss"], rel=1e-3)


def test_run_out_names_a_folder_checked_before_any_work(tmp_path, capsys, monkeypatch):
    # A video path, as --out took before, says what to pass instead.
    assert main(["run", "walker_small", "--out", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert f"--out {tmp_path / 'x.mp4'} names a .mp4 file" in err
    assert f"pass --out {tmp_path / 'x'} (and --video mp4" in err
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "x").exists()
    assert main(["run", "walker_small", "--out", str(tmp_path / "x.gif")]) == 2
    assert f"pass --out {tmp_path / 'x'} (and --video gif" in capsys.readouterr().err
    # A folder holding another kind of run is refused, and left as it was.
    train = tmp_path / "train"
    train.mkdir()
    (train / "config.json").write_text("{}")
    assert main(["run", "no_such_scene", "--out", str(train)]) == 2  # refused before the scene
    assert "holds a training run; a rollout would mix its files" in capsys.readouterr().err
    assert sorted(p.name for p in train.iterdir()) == ["config.json"]
    (tmp_path / "file").write_text("")
    assert main(["run", "no_such_scene", "--out", str(tmp_path / "file" / "sub")]) == 2
    assert "cannot be created: " in capsys.readouterr().err
    # By default a run goes beside, not into, the scene's training run (renders/train_SCENE,
    # or the demo's renders/walker_small).
    monkeypatch.chdir(tmp_path)
    (tmp_path / "renders" / "walker_small").mkdir(parents=True)
    (tmp_path / "renders" / "walker_small" / "checkpoint.pt").write_text("")
    assert main(["run", "walker_small", "--steps", "2", "--backend", "warp"]) == 0
    assert (tmp_path / "renders" / "run_walker_small" / "walker_small.mp4").is_file()


@pytest.mark.parametrize("argv, name", [
    (["run", "walker_small"], "x.mp4"),
    (["train", "walker_small"], "x.gif"),
    (["design", "mbb_beam"], "x.png"),
    (["rl", "train"], "x.pt"),
    (["rl", "eval"], "x.md"),
    (["bench", "nbody"], "x.json"),
])
def test_every_verb_takes_a_folder_for_out(tmp_path, capsys, argv, name):
    """A file's name is refused before any work, in one line saying what to pass instead."""
    assert main([*argv, "--out", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"--out takes a folder (its files are written inside it): pass --out {tmp_path / 'x'}" \
        in err
    assert list(tmp_path.iterdir()) == []


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
    # Weights alone replay the controller they were trained for (the run's config names it).
    replay = tmp_path / "replay"
    assert main(["run", "walker_small", "--steps", "60", "--weights",
                 str(out / "best_controller.pt"), "--out", str(replay)]) == 0
    assert json.loads((replay / "metrics.json").read_text())["controller"] == "sinusoid"


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, as a user's is."""

    def isatty(self) -> bool:
        return True


def test_run_and_gradcheck_show_progress_bars_on_a_terminal_only(tmp_path, monkeypatch, capsys):
    argv = ["run", "walker_small", "--steps", "40", "--backend", "warp"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert "it/s" not in capsys.readouterr().err  # not a terminal (as under tests): no bar
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    # The bar redraws at most every 0.1 s and is cleared at the end: its total is what shows.
    assert "walker_small" in terminal.getvalue() and "/40 [" in terminal.getvalue()
    assert "loss=" in capsys.readouterr().out  # the figures are still printed whole
    terminal.seek(0)
    terminal.truncate()
    assert main([*argv, "--out", str(tmp_path / "c"), "--quiet"]) == 0
    assert "/40 [" not in terminal.getvalue()
    assert main(["gradcheck", "walker_small", "--steps", "3", "--backend", "warp"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warp ")]
    assert len(rows) == 6  # one row a quantity, each whole (the bar is cleared around it)
    assert "gradcheck warp" in terminal.getvalue() and "/6 [" in terminal.getvalue()


def test_gradcheck_passes_on_a_shipped_scene(capsys):
    assert main(["gradcheck", "walker_small", "--steps", "30"]) == 0
    out = capsys.readouterr().out
    assert out.count(" ok") == 12 and "gradcheck passed" in out


@pytest.mark.parametrize("verb", ["run", "train"])
def test_steps_on_a_scene_without_a_horizon_says_so(tmp_path, capsys, verb):
    assert main([verb, "nbody_infer_masses", "--steps", "5", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "has no option 'steps' (it has no horizon: its length follows from its other " \
        "options, so --steps does not apply); its options: dt, every," in err


def test_gradcheck_takes_steps_and_refuses_zero(capsys):
    assert main(["gradcheck", "walker_small", "--steps", "0"]) == 2
    assert "--steps 0 must be >= 1 (steps rolled out)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one option for the horizon: --horizon is gone
        main(["gradcheck", "walker_small", "--horizon", "3"])
    assert "unrecognized arguments: --horizon" in capsys.readouterr().err


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
    out = tmp_path / "bench"
    assert main(["bench", what, "--backend", backend, "--quick", "--out", str(out)]) == 0
    rows = json.loads((out / f"bench_{what}.json").read_text())
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
    out = tmp_path / "eight"
    assert main(["run", "nbody_figure_eight", "--steps", "100", "--out", str(out),
                 "--video", "gif"]) == 0
    printed = capsys.readouterr().out
    path = out / "nbody_figure_eight.gif"
    assert f"wrote {path}" in printed and "energy_error=" in printed
    assert iio.imread(path).shape[0] == 101  # IAS15: a frame per output interval
    energy_plot = out / "nbody_figure_eight_energy.png"
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
                 "--steps", "10"]) == 0
    assert "gradcheck passed" in capsys.readouterr().out


def test_gradcheck_on_a_fluid_scene(capsys):
    # The check starts the flow off its kinks (at rest, advection samples on grid nodes).
    assert main(["gradcheck", "fluid_smoke_to_image", "--steps", "6", "--backend", "warp"]) == 0
    assert "gradcheck passed" in capsys.readouterr().out


def test_bench_nbody_systems_takes_systems_and_end_time(tmp_path, capsys):
    """`--systems` and `--t-end` reach the benchmark (over --quick's sizes); another
    benchmark refuses them."""
    pytest.importorskip("rebound")
    out = tmp_path / "systems.json"
    assert main(["bench", "nbody_systems", "--quick", "--systems", "3", "--t-end", "0.05",
                 "--json", str(out)]) == 0
    row = json.loads(out.read_text())[0]
    assert (row["systems"], row["t_end"]) == (3, 0.05)
    assert row["simdiff_systems_per_s"] > 0 and row["rebound_systems_per_s"] > 0
    with pytest.raises(SystemExit, match="--t-end applies to `simdiff bench nbody_systems`"):
        main(["bench", "nbody", "--t-end", "1"])
