"""Sweeps: the same table on local processes and on Ray, resumption without redoing finished
runs, failing runs recorded while the rest finish, and bad specs refused before anything runs.

Every sweep here is toy-sized (a 20-step walker, 2 iterations); most of the time is the one
backend initialization per worker process.
"""

import csv
import json
import shutil
import socket

import pytest

from simdiff.cli import main
from simdiff.sweep import SpecError, SweepError, parse_spec, run_sweep

# 40 steps: the shape-keeping walker (g = -4.8) lands after ~0.1 s; before that its centre of
# mass cannot move along x, and every run would have the same loss.
TRAIN = {"scene": "walker_small", "controller": "sinusoid", "steps": 40, "iters": 2,
         "checkpoint_every": 1, "no_video": True}


def _spec(out, **changes):
    data = {"command": "train", "out": str(out), "fixed": dict(TRAIN),
            "grid": {"lr": [0.01, 0.05]}, "seeds": [0, 1]}
    data.update(changes)
    return data


def _table(out, *, drop=("seconds",)):
    with open(out / "summary.csv") as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """A finished 2 learning rates x 2 seeds sweep on local worker processes."""
    out = tmp_path_factory.mktemp("sweeps") / "local"
    result = run_sweep(parse_spec(_spec(out)), workers=2, progress=False)
    return out, result


def test_local_sweep_runs_every_point_into_its_own_folder(local_sweep):
    out, result = local_sweep
    table = _table(out)
    assert [(r["lr"], r["seed"], r["status"]) for r in table] == [
        ("0.01", "0", "done"), ("0.01", "1", "done"), ("0.05", "0", "done"), ("0.05", "1", "done")]
    for row in table:
        run_dir = out / "runs" / row["run"]
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        # The table's metrics are the run's own log: final and best loss of its 2 iterations.
        assert len(rows) == 2
        assert float(row["final_loss"]) == rows[-1]["loss"]
        assert float(row["best_loss"]) == min(r["loss"] for r in rows)
        assert (run_dir / "checkpoint.pt").is_file()
        assert f"--seed {row['seed']}" in " ".join(json.loads((run_dir / "run.json").read_text())
                                                   ["argv"])
    # Different seeds and learning rates really are different runs.
    assert len({r["final_loss"] for r in table}) == 4
    assert (out / "summary.md").read_text().count("| done |") == 4
    assert result.failed == [] and result.skipped == []


def test_ray_gives_the_same_table(local_sweep, tmp_path):
    ray = pytest.importorskip("ray")
    out, _ = local_sweep
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run_sweep(parse_spec(_spec(tmp_path / "ray")), engine="ray", progress=False)
    finally:
        ray.shutdown()
    assert result.failed == []
    assert _table(tmp_path / "ray") == _table(out)


def test_interrupted_sweep_resumes_without_redoing_finished_runs(local_sweep, tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(local_sweep[0], out)
    runs = out / "runs"
    # Interrupted after its first checkpoint: one of two iterations done, record left "running".
    cut = runs / "lr=0.05_seed=1"
    record = json.loads((cut / "run.json").read_text())
    for path in cut.iterdir():
        if path.name not in ("run.json", "output.log"):
            path.unlink()
    argv = list(record["argv"])
    argv[argv.index("--iters") + 1] = "1"
    argv[argv.index("--out") + 1] = str(cut)
    assert main(argv) == 0
    first_row = (cut / "metrics.jsonl").read_text().splitlines()
    assert len(first_row) == 1
    (cut / "run.json").write_text(json.dumps({**record, "status": "running"}))
    # Interrupted before any checkpoint: a partial log that `train` would refuse to overwrite.
    early = runs / "lr=0.01_seed=1"
    record = json.loads((early / "run.json").read_text())
    for path in early.iterdir():
        if path.name not in ("run.json", "output.log"):
            path.unlink()
    (early / "metrics.jsonl").write_text('{"iteration": 0, "loss": 1.0}\n')
    (early / "run.json").write_text(json.dumps({**record, "status": "running"}))
    finished = {name: (runs / name / "metrics.jsonl").stat().st_mtime_ns
                for name in ("lr=0.01_seed=0", "lr=0.05_seed=0")}
    records_before = {name: (runs / name / "run.json").read_bytes() for name in finished}

    result = run_sweep(parse_spec(_spec(out)), workers=2, progress=False)

    assert sorted(result.skipped) == sorted(finished)
    for name, mtime in finished.items():
        assert (runs / name / "metrics.jsonl").stat().st_mtime_ns == mtime
        assert (runs / name / "run.json").read_bytes() == records_before[name]
    resumed = json.loads((cut / "run.json").read_text())
    assert resumed["status"] == "done" and resumed["attempts"] == 2
    assert resumed["argv"][-2:] == ["--resume", str(cut / "checkpoint.pt")]
    rows = (cut / "metrics.jsonl").read_text().splitlines()
    # Continued from the checkpoint: the first iteration's row (with its timing) is kept as is.
    assert len(rows) == 2 and rows[0] == first_row[0]
    restarted = json.loads((early / "run.json").read_text())
    assert restarted["status"] == "done" and "--resume" not in restarted["argv"]
    # Train resumes exactly, so the completed sweep's table is the uninterrupted one.
    assert _table(out) == _table(local_sweep[0])


def test_failing_run_is_reported_and_the_rest_finish(tmp_path, capsys):
    data = _spec(tmp_path / "out", grid={"lr": [0.01]}, runs=[
        {"controller": "sinusoid", "optimizer": "adam"},
        {"controller": "sinusoid", "optimizer": "adamm"},  # raises inside the command
        {"controller": "no_such_controller"}])  # the command exits with status 2
    del data["seeds"], data["fixed"]["controller"]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(data))
    assert main(["sweep", str(spec), "--workers", "2", "--quiet"]) == 1
    rows = {r["run"]: r for r in _table(tmp_path / "out")}
    assert rows["controller=sinusoid_optimizer=adam_lr=0.01"]["status"] == "done"
    assert rows["controller=sinusoid_optimizer=adam_lr=0.01"]["final_loss"] != ""
    failed = rows["controller=sinusoid_optimizer=adamm_lr=0.01"]
    assert failed["status"] == "failed" and "optimizer='adamm' is unknown" in failed["error"]
    failed = rows["controller=no_such_controller_lr=0.01"]
    assert failed["status"] == "failed" and failed["exit_code"] == "2"
    assert "no_such_controller" in failed["error"]
    assert "2 failed" in capsys.readouterr().out


@pytest.mark.parametrize("changes, message", [
    ({"command": "trian"}, "command 'trian' is unknown: `simdiff trian` does not exist"),
    ({"command": "rl"}, "command 'rl' is incomplete"),
    ({"command": "rl train", "fixed": {}}, "grid names 'lr', which `simdiff rl train` does not"),
    ({"fixed": {**TRAIN, "learning_rate": 0.1}}, "fixed names 'learning_rate', which"),
    ({"grid": {"lr": ["fast"]}}, "argument --lr: invalid float value: 'fast'"),
    ({"grid": {"lr": []}}, "grid parameter 'lr' must be a non-empty list"),
    ({"grid": {}}, "'grid' is empty"),
    ({"seeds": []}, "'seeds' must be a positive count or a non-empty list"),
    ({"fixed": {**TRAIN, "resume": "x.pt"}}, "sets 'resume', which the sweep sets itself"),
    ({"fixed": {**TRAIN, "lr": 0.1}}, "'lr' is given in both fixed and grid"),
    ({"grid": {"lr": [0.1, 0.1]}}, "same parameters"),
])
def test_bad_specs_are_refused_before_anything_runs(tmp_path, changes, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_spec(_spec(tmp_path / "out", **changes))
    assert not (tmp_path / "out").exists()


def test_a_folder_holding_another_sweep_is_refused(local_sweep, tmp_path, capsys):
    out, _ = local_sweep
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(SweepError, match=r"holds a different sweep \(it differs in: grid\)"):
        run_sweep(parse_spec(_spec(out, grid={"lr": [0.01, 0.02]})), progress=False)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(_spec(out, seeds=3)))
    assert main(["sweep", str(spec), "--quiet"]) == 2
    assert "differs in: seeds" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SweepError, match="is not a simdiff sweep folder"):
        run_sweep(parse_spec(_spec(tmp_path / "other")), progress=False)


def test_unreachable_ray_address_is_an_error_not_a_fallback(tmp_path, capsys):
    pytest.importorskip("ray")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(_spec(tmp_path / "out")))
    code = main(["sweep", str(spec), "--engine", "ray", "--address", f"127.0.0.1:{port}",
                 "--quiet"])
    assert code == 2
    assert f"Ray address '127.0.0.1:{port}' cannot be reached" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_shipped_specs_validate():
    from pathlib import Path

    from simdiff.sweep import load_spec

    root = Path(__file__).resolve().parents[1] / "sweeps"
    specs = sorted(root.glob("*.yaml")) + sorted(root.glob("*.py"))
    assert len(specs) >= 2
    for path in specs:
        assert load_spec(path).expand()


def test_resume_flag_follows_the_command(tmp_path):
    """`rl train --resume` finds its own checkpoint; `train --resume PATH` needs one to exist;
    without one, an interrupted run's partial output is cleared and the run starts over."""
    from simdiff.sweep.runner import _resumed_argv
    from simdiff.sweep.spec import command_parser

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text("{}")
    assert _resumed_argv(command_parser("rl train"), ["rl", "train"], run_dir) == ["rl", "train"]
    (run_dir / "policy.checkpoint.pt").write_text("partial")
    assert _resumed_argv(command_parser("rl train"), ["rl", "train"], run_dir)[-1] == "--resume"
    assert _resumed_argv(command_parser("train"), ["train"], run_dir) == ["train"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["run.json"]
    (run_dir / "checkpoint.pt").write_text("partial")
    assert _resumed_argv(command_parser("train"), ["train"], run_dir) == [
        "train", "--resume", str(run_dir / "checkpoint.pt")]
