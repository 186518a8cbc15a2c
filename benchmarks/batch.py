"""``simdiff bench batch``: world-steps per second of batched worlds on every simulator.

Each workload's own script measures B worlds per launch against B = 1 and against a Python loop
over B single-world rollouts in the same run (see their docstrings for the workloads):
``batch_mass_spring.py`` (walker_small, 680 steps, its MLP), ``batch_mpm.py`` (mpm_crawler),
``batch_fluid.py`` (smoke plume at 64^2) and ``batch_nbody.py`` (random three-body systems,
Hermite). This script runs them in turn, prints one table, checks the targets below, and with
``--json PATH`` writes every row (``workload``, ``backend``, ``batch``, ``mode``,
``world_steps_per_s``, ``speedup_vs_b1``, ``vs_loop``, ``peak_rss_mb``).

Targets on 2 CPU cores (:data:`TARGETS`): walker_small forward+backward with its MLP at
B = 64 at least 25x the world-steps/s of B = 1; three-body at B = 256 at least 50x;
mpm_crawler at B = 8 at least 2x; fluid 64^2 at B = 16 at least 3x.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

WORKLOADS = {
    # workload: (script, function, backends, batch sizes (full), batch sizes (quick))
    "mass_spring": ("batch_mass_spring", "mass_spring_batch", ("warp", "taichi"),
                    (1, 4, 16, 64, 256), (1, 4)),
    "mpm": ("batch_mpm", "mpm_batch", ("warp", "taichi"), (1, 2, 4, 8), (1, 2)),
    "fluid": ("batch_fluid", "fluid_batch", ("torch", "warp"), (1, 4, 16), (1, 2)),
    "nbody": ("batch_nbody", "nbody_batch", ("warp", "taichi"), (1, 4, 16, 64, 256), (1, 4)),
}

TARGETS = {
    # workload: (batch, mode, minimum speedup_vs_b1)
    "mass_spring": (64, "forward_backward", 25.0),
    "nbody": (256, None, 50.0),
    "mpm": (8, None, 2.0),
    "fluid": (16, None, 3.0),
}


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"simdiff_bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _mode(row: dict) -> str:
    """Modes as one spelling (the scripts write ``forward+backward`` or ``forward_backward``)."""
    return str(row.get("mode", "")).replace("+", "_")


def measure(*, workloads=tuple(WORKLOADS), backend: str = "all", quick: bool = False) -> list[dict]:
    """Every workload's rows, with ``workload``, ``mode`` and ``vs_loop`` spelled alike."""
    rows = []
    for workload in workloads:
        script, function, backends, full, toy = WORKLOADS[workload]
        chosen = tuple(b for b in backends if backend in ("all", b))
        if not chosen:
            continue
        print(f"measuring batch [{workload}: {', '.join(chosen)}] ...", flush=True)
        found = getattr(_module(script), function)(batches=toy if quick else full,
                                                   backends=chosen, quick=quick)
        for row in found:
            vs_loop = row.get("vs_loop", row.get("speedup_vs_loop"))
            rows.append({**row, "workload": workload, "mode": _mode(row), "vs_loop": vs_loop})
    return rows


def check_targets(rows: list[dict]) -> list[str]:
    """One line per target: the measured figure against it, met or not."""
    lines = []
    for workload, (batch, mode, minimum) in TARGETS.items():
        found = [r for r in rows if r["workload"] == workload and r.get("batch") == batch
                 and (mode is None or r["mode"] == mode) and r.get("speedup_vs_b1")]
        for row in found:
            met = "met" if row["speedup_vs_b1"] >= minimum else "NOT met"
            lines.append(f"{workload} [{row['backend']}, {row['mode']}] B={batch}: "
                         f"{row['speedup_vs_b1']:.1f}x B=1 (target {minimum:g}x): {met}")
    return lines


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="all")
    p.add_argument("--quick", action="store_true", help="toy sizes (a smoke test, not figures)")
    p.add_argument("--workload", action="append", choices=list(WORKLOADS),
                   help="only these workloads (repeatable; default: all)")
    p.add_argument("--json", help="write every row as JSON to this path")
    args = p.parse_args(argv)
    rows = measure(workloads=tuple(args.workload or WORKLOADS), backend=args.backend,
                   quick=args.quick)
    columns = ["workload", "backend", "mode", "batch", "world_steps_per_s", "speedup_vs_b1",
               "vs_loop", "peak_rss_mb"]
    print("  ".join(f"{c:>17}" for c in columns))
    for row in rows:
        print("  ".join(f"{_fmt(row.get(c)):>17}" for c in columns))
    for line in check_targets(rows):
        print(line)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
