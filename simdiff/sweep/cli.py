"""``simdiff sweep SPEC``: run a sweep locally or on Ray and print its summary table."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_sweep_parser"]


def _cmd_sweep(args: argparse.Namespace) -> int:
    from simdiff.files import check_output_folder
    from simdiff.sweep import SpecError, SweepError, load_spec, run_sweep

    try:
        spec = load_spec(args.spec, out=args.out)
        check_output_folder(spec.out, "sweep")
        result = run_sweep(spec, engine=args.engine, address=args.address,
                           workers=args.workers, progress=not args.quiet)
    except (SpecError, SweepError) as err:
        print(f"simdiff sweep: error: {err}", file=sys.stderr)
        return 2
    print((result.out / "summary.md").read_text())
    done = sum(r["status"] == "done" for r in result.records)
    print(f"{done}/{len(result.records)} runs done ({len(result.skipped)} already before), "
          f"{len(result.failed)} failed")
    for run_id in result.failed:
        print(f"  failed: {run_id} (see {result.out / 'runs' / run_id / 'output.log'})")
    print(f"wrote {result.out / 'summary.csv'}")
    print(f"wrote {result.out / 'summary.md'}")
    return 1 if result.failed else 0


def add_sweep_parser(sub) -> None:
    """Register ``simdiff sweep`` on the top-level subparsers."""
    p = sub.add_parser("sweep", help="run a command over parameters and seeds (local or Ray)")
    p.add_argument("spec", help="sweep spec, .yaml/.json/.py (see simdiff/sweep/spec.py)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local worker processes (default) or Ray tasks")
    p.add_argument("--address", default=None,
                   help="Ray cluster address (default: a local Ray instance)")
    p.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: cores / the spec's num_cpus)")
    p.add_argument("--out", default=None, help="output folder (default: the spec's 'out')")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (default: show it)")
    p.set_defaults(func=_cmd_sweep)
