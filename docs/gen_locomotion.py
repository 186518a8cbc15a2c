"""Generate ``docs/locomotion-ablation.md`` from the output of the locomotion ablation sweep.

    simdiff sweep sweeps/locomotion_ablation_quick.yaml            # train every run
    python docs/gen_locomotion.py runs/sweep_locomotion_ablation_quick --evaluate
    python docs/gen_locomotion.py --render                          # rewrite from the data

Collecting reads the sweep folder: ``sweep.json`` (the spec), ``summary.csv`` (one row per run:
its parameters, status, time) and each run's ``metrics.jsonl`` (loss, gradient norm and the
training figures of every iteration). ``--evaluate`` also runs ``simdiff evaluate SCENE
--weights RUN/best_controller.pt --json RUN/eval.json --no-video`` on every finished run that
has no ``eval.json`` yet (the held-out goal schedule, the same for every run). The rows are
stored in ``docs/ablations/locomotion.json`` with the date, the machine and the load average,
and the page is written from that file (do not edit the page by hand).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "docs" / "ablations" / "locomotion.json"
PAGE = ROOT / "docs" / "locomotion-ablation.md"
FACTORS = ("activation", "batch", "optimizer", "lr", "seed")
EVALUATED = ("velocity_error", "jump_height_error", "crawl_violation", "inverted_cells")


def _history(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _evaluate(scene: str, run_dir: Path, options: dict) -> None:
    target = run_dir / "eval.json"
    weights = run_dir / "best_controller.pt"
    if target.exists() or not weights.exists():
        return
    command = [sys.executable, "-m", "simdiff.cli", "evaluate", scene, "--weights",
               str(weights), "--json", str(target), "--no-video", "--out",
               str(run_dir / "evaluate")]
    for key, value in options.items():
        command += ["--set", f"{key}={json.dumps(value)}"]
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def collect(folder: Path, *, evaluate: bool) -> dict:
    """The ablation's rows from a sweep folder (see the module docstring)."""
    spec = json.loads((folder / "sweep.json").read_text())["spec"]
    fixed = spec.get("fixed", {})
    scene = fixed.get("scene", "walker_goals")
    rows = []
    with open(folder / "summary.csv", newline="") as f:
        for entry in csv.DictReader(f):
            run_dir = folder / "runs" / entry["run"]
            config = {}
            if (run_dir / "config.json").exists():
                config = json.loads((run_dir / "config.json").read_text())
            if evaluate and entry["status"] == "done":
                _evaluate(scene, run_dir, dict(config.get("scene_options") or {}))
            history = _history(run_dir)
            finite = [h for h in history if h.get("grad_finite", True)]
            row = {
                "run": entry["run"], "status": entry["status"],
                "activation": (config.get("controller_options") or {}).get("activation", "sin"),
                "batch": config.get("batch"), "optimizer": config.get("optimizer"),
                "lr": config.get("lr"), "seed": config.get("seed"),
                "iterations": len(history),
                "train_seconds": sum(h.get("seconds", 0.0) for h in history),
                "first_loss": history[0]["loss"] if history else None,
                "final_loss": history[-1]["loss"] if history else None,
                "best_loss": min((h["loss"] for h in finite), default=None),
                "skipped": len(history) - len(finite),
                "max_grad_norm": max((h.get("grad_norm", 0.0) for h in finite), default=None),
            }
            eval_path = run_dir / "eval.json"
            if eval_path.exists():
                figures = json.loads(eval_path.read_text())
                row.update({k: figures.get(k) for k in EVALUATED})
            rows.append(row)
    from simdiff.locomotion import held_out_schedule
    from simdiff.scene import load_scene

    goals = load_scene(scene, **(fixed.get("set") or {})).goals
    held = held_out_schedule(goals, 4).goals  # what `simdiff evaluate` scores (4 worlds)
    moving = held[..., 1] <= 0  # jump periods are judged by their height
    return {
        "vmax": goals.vmax,
        "standing_velocity_error": float(held[..., 0].abs()[moving].mean()),
        "tasks": list(goals.tasks),
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPU cores",
        "load_average": os.getloadavg()[0],
        "scene": scene,
        "fixed": fixed,
        "seeds": spec.get("seeds"),
        "rows": rows,
    }


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def render(data: dict) -> str:
    """The page's Markdown."""
    fixed = data["fixed"]
    columns = ["activation", "batch", "optimizer", "lr", "seed", "iterations", "train_seconds",
               "first_loss", "final_loss", "best_loss", "skipped", "max_grad_norm",
               *EVALUATED]
    lines = [
        "# Locomotion ablations",
        "",
        ("Generated by `python docs/gen_locomotion.py` from the output of "
        "`simdiff sweep sweeps/locomotion_ablation_quick.yaml` (do not edit by hand)."),
        "",
        (f"The goal-conditioned {data['scene']} (Fang et al. 2022, section 6) trained one factor "
        "at a time from the paper's setting (sin activations, 8 worlds, Adam at lr 0.01): "
        "tanh instead of sin, 1 or 32 worlds instead of 8, SGD, Lion or AdEMAMix instead of "
        f"Adam. Every run: {fixed.get('iters')} iterations of {fixed.get('steps')} steps, "
        f"goals drawn per world and iteration; measured {data['date']} on {data['machine']} "
        f"shared with other jobs (load average {data['load_average']:.1f} at the end), so "
        "`train_seconds` is wall-clock under that load. This budget is far shorter than the "
        "full spec (`sweeps/locomotion_ablation.yaml`, 200 iterations of 1,000 steps, two "
        "seeds): the table ranks the factors by how fast they start learning, not by where "
        f"they converge. Goals: {', '.join(data['tasks'])} only (the scene's first "
        "curriculum stage), in training, validation and evaluation."),
        "",
        ("Columns: `first_loss`, `final_loss`, `best_loss` are the training loss (a fresh draw "
        "of goals every iteration, so noisy); `skipped` counts iterations whose gradient was "
        "not finite (never applied); the last four columns are `simdiff evaluate` of the "
        "best iteration's controller on the held-out schedule (4 worlds: walk at four speeds, "
        f"then the other tasks of the goals): `velocity_error` [m/s] (vmax = {data['vmax']:g}; "
        f"a robot standing still scores {data['standing_velocity_error']:.3g}), "
        "`jump_height_error` [m], "
        "`crawl_violation` (fraction of crawl steps above the bar) and `inverted_cells` "
        "(fraction of cell-steps with a non-positive signed area)."),
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in data["rows"]:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    unevaluated = [r for r in data["rows"] if r.get("velocity_error") is None]
    if unevaluated:
        names = ", ".join(f"{r['activation']}/{r['batch']}/{r['optimizer']}" for r in unevaluated)
        lines += ["", f"Not evaluated on the held-out schedule (blank columns): {names}."]
    failed = [r["run"] for r in data["rows"] if r["status"] != "done"]
    if failed:
        lines += ["", f"Runs not finished: {', '.join(failed)}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", help="the sweep's output folder")
    parser.add_argument("--evaluate", action="store_true",
                        help="run simdiff evaluate on runs without eval.json")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite the page from docs/ablations/locomotion.json")
    args = parser.parse_args(argv)
    if not args.render:
        if not args.folder:
            parser.error("give the sweep's output folder, or --render")
        data = collect(Path(args.folder), evaluate=args.evaluate)
        DATA.parent.mkdir(parents=True, exist_ok=True)
        DATA.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {DATA}")
    PAGE.write_text(render(json.loads(DATA.read_text())))
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
