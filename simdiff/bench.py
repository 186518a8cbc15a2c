"""``simdiff bench``: runs a benchmark of ``benchmarks/`` once per configuration, each in its
own process (so peak memory is its own), and prints seconds per iteration, peak memory and the
ratio to the baseline measured in the same run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["run_benchmark"]

_ROOT = Path(__file__).resolve().parents[1]
_BASELINE = {"mass_spring": "torch"}


def run_benchmark(
    what: str,
    *,
    backend: str = "all",
    device: str = "cpu",
    iters: int = 5,
    steps: int = 680,
    out: str | Path | None = None,
) -> int:
    """Measure ``what`` on ``backend`` (``taichi``, ``warp`` or ``all``) against its baseline."""
    script = Path(os.environ.get("SIMDIFF_BENCHMARKS", _ROOT / "benchmarks")) / f"{what}.py"
    if not script.is_file():
        raise FileNotFoundError(f"benchmark {what!r} not found at {script}")
    configs = (["warp", "taichi"] if backend == "all" else [backend]) + [_BASELINE[what]]
    rows = []
    for config in configs:
        cmd = [sys.executable, str(script), "--config", config, "--iters", str(iters),
               "--steps", str(steps), "--device", device]
        print(f"measuring {what} [{config}] ...", flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = rows[-1]
    print(f"\n{what}: {base['particles']} particles, {base['springs']} springs, "
          f"{base['steps']} steps, median of {iters} iterations, device {device}")
    print("train MB: peak memory added by training iterations (kernel compilation included) "
          "over the process after imports")
    print(f"{'config':<8} {'s/iter':>8} {'first':>8} {'peak MB':>8} {'train MB':>8} {'speedup':>8}")
    for row in rows:
        row["speedup_vs_baseline"] = base["seconds_per_iter"] / row["seconds_per_iter"]
        print(f"{row['config']:<8} {row['seconds_per_iter']:>8.3f} {row['first_iter_seconds']:>8.2f} "
              f"{row['peak_rss_mb']:>8.0f} {row['rss_growth_mb']:>8.0f} "
              f"{row['speedup_vs_baseline']:>7.2f}x")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(rows, indent=2))
        print(f"wrote {out}")
    return 0
