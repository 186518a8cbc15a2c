"""The locomotion ablation: the quick sweep spec expands to the one-factor-at-a-time runs, and
the docs page's table is generated from a sweep folder's real files (docs/gen_locomotion.py)."""

import csv
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_locomotion",
                                                  ROOT / "docs" / "gen_locomotion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_spec_varies_one_factor_at_a_time():
    from simdiff.sweep import load_spec

    runs = load_spec(ROOT / "sweeps" / "locomotion_ablation_quick.yaml").expand()
    argv = [" ".join(run.argv) for run in runs]
    assert len(runs) == 7
    baseline = [a for a in argv if "--batch 8 " in a and "--optimizer adam " in a
                and '"sin"' in a]
    assert len(baseline) == 1
    # Every other run differs from the baseline in exactly one of the factors.
    factors = ('activation="tanh"', "--batch 1 ", "--batch 32 ", "--optimizer sgd ",
               "--optimizer lion ", "--optimizer ademamix ")
    assert sorted(sum(f in a for f in factors) for a in argv) == [0] + [1] * 6


def test_table_is_generated_from_the_sweep_output(tmp_path):
    gen = _generator()
    folder = tmp_path / "sweep"
    (folder / "runs" / "r0").mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps({"spec": {
        "fixed": {"scene": "walker_goals", "steps": 500, "iters": 2}, "seeds": 1}}))
    with open(folder / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["run", "status"])
        writer.writeheader()
        writer.writerow({"run": "r0", "status": "done"})
    run = folder / "runs" / "r0"
    (run / "config.json").write_text(json.dumps({
        "batch": 8, "optimizer": "lion", "lr": 0.001, "seed": 0,
        "controller_options": {"activation": "tanh"}}))
    history = [{"loss": 0.5, "seconds": 2.0, "grad_norm": 3.0, "grad_finite": True},
               {"loss": float("nan"), "seconds": 2.5, "grad_norm": float("inf"),
                "grad_finite": False},
               {"loss": 0.25, "seconds": 1.5, "grad_norm": 1.0, "grad_finite": True}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(h) for h in history) + "\n")
    (run / "eval.json").write_text(json.dumps({"velocity_error": 0.0123,
                                               "inverted_cells": 0.0}))
    data = gen.collect(folder, evaluate=False)
    row = data["rows"][0]
    assert (row["activation"], row["batch"], row["optimizer"]) == ("tanh", 8, "lion")
    assert (row["iterations"], row["skipped"], row["train_seconds"]) == (3, 1, 6.0)
    assert (row["first_loss"], row["best_loss"], row["max_grad_norm"]) == (0.5, 0.25, 3.0)
    assert row["velocity_error"] == 0.0123 and row["jump_height_error"] is None
    page = gen.render(data)
    assert "| tanh | 8 | lion | 0.001 | 0 | 3 | 6 | 0.5 | 0.25 | 0.25 | 1 | 3 | 0.0123 |" in page
