"""Running several design methods over problems of the suite, in parallel processes, and
tabulating final compliance and the relative error to the best method on each problem (the
paper's comparison: ``error = c / min_methods(c) - 1``, on the best design each run evaluated).
"""

from __future__ import annotations

import csv
import math
import multiprocessing as mp
import os
import time
from pathlib import Path

__all__ = ["DEFAULT_METHODS", "default_problems", "run_suite", "write_tables"]

#: ``param-optimizer`` pairs compared by default (those of the paper's main table).
DEFAULT_METHODS = ("pixel-oc", "pixel-mma", "pixel-lbfgs", "cnn-lbfgs")


def default_problems() -> list[str]:
    """The smallest size of each problem family."""
    from simdiff.design.problems import SHORT_NAMES

    return [name for family, name in SHORT_NAMES.items() if family != "mbb_beam"] + \
        ["mbb_beam_96x32_0.5"]


def _run_one(task: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from simdiff.design.optimizers import optimize
    from simdiff.design.problems import get_problem
    from simdiff.design.render import design_image

    param, optimizer = task["method"].split("-")
    row = {"problem": task["problem"], "method": task["method"]}
    start = time.perf_counter()
    try:
        problem = get_problem(task["problem"])
        result = optimize(problem, param, optimizer, task["iters"], seed=task["seed"],
                          solver=task["solver"])
    except Exception as err:  # noqa: BLE001 - a failed run is a row, not a crashed suite
        row.update(compliance=float("nan"), iterations=0, seconds=time.perf_counter() - start,
                   error=f"{type(err).__name__}: {err}")
        return row
    row.update(compliance=result.best_compliance, iterations=result.iterations,
               volume=result.volume[result.best_iteration], seconds=result.seconds, error="")
    if task.get("image_dir"):
        from PIL import Image

        path = Path(task["image_dir"]) / f"{task['problem']}__{task['method']}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(design_image(result.design, mirror=problem.mirror, void=problem.void,
                                     width=240)).save(path)
    return row


def run_suite(problems: list[str], methods: list[str], iters: int, *, workers: int | None = None,
              seed: int = 0, solver: str = "auto", image_dir: str | Path | None = None,
              progress=print) -> list[dict]:
    """Every (problem, method) pair, ``workers`` processes at a time (default: the CPU count).
    Rows come back with ``relative_error`` filled in."""
    from simdiff.design.optimizers import OPTIMIZERS
    from simdiff.design.problems import get_problem
    from simdiff.sims.base import ValidationError

    for method in methods:
        param, _, optimizer = method.partition("-")
        if param not in ("pixel", "cnn") or optimizer not in OPTIMIZERS:
            raise ValidationError(f"method {method!r}: expected PARAM-OPTIMIZER with PARAM pixel "
                                  f"or cnn and OPTIMIZER one of {OPTIMIZERS}")
        if param == "cnn" and optimizer in ("oc", "mma"):
            raise ValidationError(f"method {method!r}: {optimizer} needs pixel densities")
    for name in problems:
        get_problem(name)  # unknown or invalid problems fail before anything runs
    tasks = [{"problem": p, "method": m, "iters": iters, "seed": seed, "solver": solver,
              "image_dir": str(image_dir) if image_dir else None}
             for p in problems for m in methods]
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    rows = []
    if workers == 1:
        for task in tasks:
            rows.append(_run_one(task))
            progress(_describe(rows[-1], len(rows), len(tasks)))
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            for row in pool.imap_unordered(_run_one, tasks):
                rows.append(row)
                progress(_describe(row, len(rows), len(tasks)))
    order = {(t["problem"], t["method"]): i for i, t in enumerate(tasks)}
    rows.sort(key=lambda r: order[(r["problem"], r["method"])])
    best: dict[str, float] = {}
    for r in rows:
        c = r["compliance"]
        if not math.isnan(c):
            best[r["problem"]] = min(best.get(r["problem"], float("inf")), c)
    for r in rows:
        b = best.get(r["problem"])
        r["relative_error"] = (r["compliance"] / b - 1.0) if b and not math.isnan(r["compliance"]) \
            else float("nan")
    return rows


def _describe(row: dict, done: int, total: int) -> str:
    status = row["error"] or f"compliance {row['compliance']:.5g}"
    return f"[{done}/{total}] {row['problem']} {row['method']}: {status} ({row['seconds']:.1f} s)"


def write_tables(rows: list[dict], out: str | Path, *, iters: int) -> list[Path]:
    """``results.csv`` (one row per run) and ``results.md`` (problems x methods, compliance and
    relative error to the best, with a summary of wins and median error)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fields = ["problem", "method", "compliance", "relative_error", "iterations", "volume",
              "seconds", "error"]
    csv_path = out / "results.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    cell = {(r["problem"], r["method"]): r for r in rows}
    lines = [(f"Final compliance (best design of {iters} evaluations) and relative error to "
              "the best method on each problem; **bold** marks the best."), "",
             "| problem | " + " | ".join(methods) + " |",
             "|---|" + "---|" * len(methods)]
    for p in problems:
        parts = []
        for m in methods:
            r = cell.get((p, m))
            if r is None or math.isnan(r["compliance"]):
                parts.append("failed" if r else "")
                continue
            text = f"{r['compliance']:.4g} ({100 * r['relative_error']:.1f}%)"
            parts.append(f"**{text}**" if r["relative_error"] == 0 else text)
        lines.append(f"| {p} | " + " | ".join(parts) + " |")
    wins = {m: sum(1 for p in problems if cell.get((p, m), {}).get("relative_error") == 0)
            for m in methods}
    med = {}
    for m in methods:
        errs = sorted(cell[(p, m)]["relative_error"] for p in problems
                      if (p, m) in cell and not math.isnan(cell[(p, m)]["relative_error"]))
        med[m] = errs[len(errs) // 2] if errs else float("nan")
    lines += ["", "| | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods),
              "| best on (problems) | " + " | ".join(str(wins[m]) for m in methods) + " |",
              "| median relative error | " + " | ".join(f"{100 * med[m]:.1f}%" for m in methods)
              + " |"]
    md_path = out / "results.md"
    md_path.write_text("\n".join(lines) + "\n")
    return [csv_path, md_path]
