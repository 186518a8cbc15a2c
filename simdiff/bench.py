"""``simdiff bench``: runs a benchmark of ``benchmarks/`` once per configuration, each in its
own process (so peak memory is its own), and prints its figures with the ratio to the baseline
measured in the same run.

A benchmark module defines ``CONFIGS`` (the simdiff configurations), ``BASELINE``, optional
``REFERENCES`` (other programs measured beside them), ``KEYS``
(the columns that identify a row, e.g. body count), ``METRIC`` and ``HIGHER_IS_BETTER``, and a
command line ``--config NAME [--quick] [--device D]`` that prints its rows as a JSON list, and
optionally ``summarize(rows)``, a text printed after the table, and ``finish(rows, out)``, which
returns the rows with figures computed across them (e.g. one configuration's time to reach
another's result) and may draw plots beside the JSON file ``out``.

Where a benchmark measures both kernel backends (``taichi`` and ``warp`` configurations), a
second table puts them side by side per row key with the ratio ``warp / taichi`` of the metric;
``simdiff bench`` without a name runs every simulator's benchmark (:data:`SIMULATOR_BENCHMARKS`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

__all__ = ["SIMULATOR_BENCHMARKS", "SavedBytes", "list_benchmarks", "peak_rss_mb", "run_all",
           "run_benchmark", "saved_bytes", "time_iterations"]

SIMULATOR_BENCHMARKS = ("mass_spring", "mpm", "fluid", "nbody")
"""The benchmarks of the four simulators, run by ``simdiff bench`` without a name."""

_ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far [MiB] (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_iterations(iteration, iters: int) -> tuple[float, list[float]]:
    """Seconds of a first call of ``iteration`` (which compiles kernels, or loads them from the
    cache) and of ``iters`` calls after it, sorted (the median is ``times[iters // 2]``)."""
    started = time.perf_counter()
    iteration()
    first = time.perf_counter() - started
    times = []
    for _ in range(iters):
        started = time.perf_counter()
        iteration()
        times.append(time.perf_counter() - started)
    return first, sorted(times)


class SavedBytes:
    """What autograd saved for backward in a :func:`saved_bytes` block.

    Attributes:
        bytes: Bytes of the distinct storages saved (a storage saved by several nodes, such
            as parameters every step reads, counts once).
        tensors: Number of tensors saved (with repeats).
    """

    def __init__(self) -> None:
        self.bytes = 0
        self.tensors = 0
        self._seen: dict[int, weakref.ref] = {}

    def _pack(self, tensor):
        self.tensors += 1
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        known = self._seen.get(key)
        # A storage freed and another made at the same address counts again.
        if known is None or known() is None:
            self._seen[key] = weakref.ref(tensor)
            self.bytes += storage.nbytes()
        return tensor

    @property
    def mb(self) -> float:
        """:attr:`bytes` in MiB."""
        return self.bytes / 2**20


@contextlib.contextmanager
def saved_bytes() -> Iterator[SavedBytes]:
    """Measure the tensors autograd saves for backward while the block runs (the forward
    pass): what a gradient holds in memory until backward, counted from the saved tensors
    themselves (``torch.autograd.graph.saved_tensors_hooks``), not from the process's RSS.

    A checkpointed segment (``torch.utils.checkpoint``) saves its inputs here and nothing
    else; what it recomputes in backward is held one segment at a time and is not counted.
    """
    import torch

    record = SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(record._pack, lambda tensor: tensor):
        yield record


def _folder() -> Path:
    return Path(os.environ.get("SIMDIFF_BENCHMARKS", _ROOT / "benchmarks"))


def list_benchmarks() -> list[str]:
    """Names of the benchmark scripts (``benchmarks/NAME.py``; ``batch_*.py`` are the parts
    of ``batch``)."""
    return sorted(p.stem for p in _folder().glob("*.py")
                  if not p.stem.startswith(("_", "batch_")))


def _load(script: Path):
    spec = importlib.util.spec_from_file_location(f"simdiff_bench_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_benchmark(
    what: str,
    *,
    backend: str = "all",
    device: str = "cpu",
    quick: bool = False,
    extra_args: list[str] | None = None,
    out: str | Path | None = None,
) -> int:
    """Measure ``what`` on ``backend`` (``taichi``, ``warp`` or ``all``) against its baseline."""
    script = _folder() / f"{what}.py"
    if not script.is_file():
        raise FileNotFoundError(f"benchmark {what!r} not found at {script}")
    bench = _load(script)
    if not hasattr(bench, "CONFIGS"):  # a benchmark that drives its own runs (``batch``)
        return bench.main([*(["--quick"] if quick else []), "--backend", backend,
                           *(extra_args or []), *(["--json", str(out)] if out else [])])
    configs = [c for c in bench.CONFIGS if backend == "all" or c == backend]
    configs += [*getattr(bench, "REFERENCES", []), bench.BASELINE]
    rows: list[dict] = []
    for config in configs:
        cmd = [sys.executable, str(script), "--config", config, "--device", device,
               *(["--quick"] if quick else []), *(extra_args or [])]
        print(f"measuring {what} [{config}] ...", flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return 1
        rows += json.loads(done.stdout.strip().splitlines()[-1])
    metric, higher = bench.METRIC, bench.HIGHER_IS_BETTER
    baseline = {tuple(r.get(k) for k in bench.KEYS): r[metric]
                for r in rows if r["config"] == bench.BASELINE}
    for row in rows:
        base = baseline.get(tuple(row.get(k) for k in bench.KEYS))
        if base and row.get(metric):
            row["vs_baseline"] = row[metric] / base if higher else base / row[metric]
    if hasattr(bench, "finish"):  # a benchmark's own figures across rows, and its plots
        rows = bench.finish(rows, out)
    # Lists (learning curves) stay in the JSON file; the table shows numbers and names.
    columns = list(dict.fromkeys(["config", *bench.KEYS, metric,
                                  *(k for r in rows for k, v in r.items()
                                    if not isinstance(v, (list, dict)))]))
    print(f"\n{what} on {device}; vs_baseline: how many times better than {bench.BASELINE}")
    print("  ".join(f"{c:>14}" for c in columns))
    for row in rows:
        print("  ".join(f"{_fmt(row.get(c)):>14}" for c in columns))
    print(_side_by_side(rows, bench.KEYS, metric, higher))
    if hasattr(bench, "summarize"):  # a benchmark's own conclusion, e.g. a crossover size
        print(bench.summarize(rows))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(rows, indent=2))
        print(f"wrote {out}")
    return 0


def run_all(*, backend: str = "all", device: str = "cpu", quick: bool = False,
            extra_args: list[str] | None = None, out: str | Path | None = None) -> int:
    """Every simulator's benchmark in turn (``out`` gets one JSON file per benchmark)."""
    failed = 0
    for what in SIMULATOR_BENCHMARKS:
        print(f"\n=== {what} ===", flush=True)
        path = None if out is None else Path(out).with_name(f"{Path(out).stem}_{what}.json")
        failed += run_benchmark(what, backend=backend, device=device, quick=quick,
                                extra_args=extra_args, out=path) != 0
    return 1 if failed else 0


def _side_by_side(rows: list[dict], keys, metric: str, higher: bool) -> str:
    """Taichi (or, for the fluid, torch) and Warp rows of the same key in one line, with
    ``warp / taichi``; '' if the benchmark did not measure both."""
    configs = {row["config"] for row in rows}
    first = "taichi" if "taichi" in configs else "torch"
    by_backend: dict[str, dict[tuple, float]] = {first: {}, "warp": {}}
    for row in rows:
        if row["config"] in by_backend and row.get(metric):
            by_backend[row["config"]][tuple(row.get(k) for k in keys)] = row[metric]
    shared = [k for k in by_backend[first] if k in by_backend["warp"]]
    if not shared:
        return ""
    better = "higher" if higher else "lower"
    lines = [f"\n{first} and warp side by side ({metric}, {better} is better)",
             "  ".join(f"{c:>14}" for c in [*keys, first, "warp", f"warp/{first}"])]
    for key in shared:
        t, w = by_backend[first][key], by_backend["warp"][key]
        lines.append("  ".join(f"{_fmt(v):>14}" for v in [*key, t, w, w / t]))
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
