"""``simdiff design``: design one problem, run the suite, or list the problems.

    simdiff design mbb_beam --param pixel --optimizer oc --iters 100 --out renders/mbb
    simdiff design suite --methods pixel-oc,cnn-lbfgs --iters 100 --out renders/suite
    simdiff design list
    simdiff design robot --iters 30 --out renders/bridge   # design through simulation
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["register"]


def register(sub) -> None:
    """Add the ``design`` verb to the subparsers ``sub`` of the simdiff command line."""
    p = sub.add_parser("design", help="structural topology optimization (pixels or a CNN)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("problem", help="a problem name or family (see `simdiff design list`), "
                                   "`suite`, `list` or `robot` (a mass-spring bridge whose "
                                   "stiffness layout the CNN designs through the simulator)")
    p.add_argument("--param", choices=["pixel", "cnn"], default="pixel",
                   help="what is optimized: the densities, or a CNN's weights (default: pixel)")
    p.add_argument("--optimizer", choices=["oc", "mma", "lbfgs", "adam"], default=None,
                   help="default: oc for pixels, lbfgs for the CNN")
    p.add_argument("--iters", type=int, default=100, help="compliance evaluations (default 100)")
    p.add_argument("--out", help="output folder (default renders/design_PROBLEM_PARAM_OPT, "
                                 "renders/design_suite)")
    p.add_argument("--solver", choices=["auto", "direct", "mgcg", "jacobi"], default="auto",
                   help="linear solver of the FEM (default: auto, by problem size)")
    p.add_argument("--seed", type=int, default=0, help="seed of the CNN's weights (default: 0)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate of adam and lbfgs (default: the optimizer's)")
    p.add_argument("--volfrac", type=float, default=None,
                   help="volume fraction (default: the problem's)")
    p.add_argument("--rmin", type=float, default=None,
                   help="filter radius in elements (default: the problem's)")
    p.add_argument("--penal", type=float, default=None,
                   help="SIMP penalty (default: the problem's)")
    p.add_argument("--problems", default=None,
                   help="suite: comma-separated problems (default: each family's smallest)")
    p.add_argument("--methods", default=None,
                   help="suite: comma-separated PARAM-OPTIMIZER (default "
                        "pixel-oc,pixel-mma,pixel-lbfgs,cnn-lbfgs)")
    p.add_argument("--workers", type=int, default=None, help="suite: processes (default: cores)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress lines (default: print them)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.problem == "list":
        return _list()
    if args.out is not None:
        _claim(Path(args.out))
    if args.problem == "suite":
        return _suite(args)
    if args.problem == "robot":
        return _robot(args)
    return _single(args)


def _claim(out: Path) -> None:
    """Check ``--out`` first: writable, and not another command's run (a training run's log
    and checkpoint would be replaced by the design's)."""
    from simdiff.files import check_output_folder

    check_output_folder(out, "design")


def _locked(out: Path):
    from simdiff.files import hold_lock

    _claim(out)
    return hold_lock(out, "design")


def _list() -> int:
    from simdiff.design.problems import SHORT_NAMES, SUITE

    print("families (smallest size):")
    for family, name in SHORT_NAMES.items():
        print(f"  {family:<28} {name}")
    print(f"all {len(SUITE) + 1} problems: " + ", ".join(["mbb_beam_60x20_0.5", *SUITE]))
    return 0


def _single(args: argparse.Namespace) -> int:
    from simdiff.design.optimizers import optimize
    from simdiff.design.problems import get_problem
    from simdiff.design.render import write_design_outputs

    overrides = {k: getattr(args, k) for k in ("volfrac", "rmin", "penal")
                 if getattr(args, k) is not None}
    problem = get_problem(args.problem, **overrides)
    optimizer = args.optimizer or ("oc" if args.param == "pixel" else "lbfgs")
    out = Path(args.out or f"renders/design_{problem.name}_{args.param}_{optimizer}")
    every = max(1, args.iters // 100)

    def report(i, c):
        if not args.quiet and (i % max(1, args.iters // 10) == 0 or i == args.iters - 1):
            print(f"iteration {i:>5}  compliance {c:.6g}", flush=True)

    with _locked(out):
        result = optimize(problem, args.param, optimizer, args.iters, seed=args.seed, lr=args.lr,
                          solver=args.solver, record_every=every, callback=report)
        print(f"{problem.name} ({problem.nelx}x{problem.nely}, volfrac {problem.volfrac}) "
              f"{args.param} + {optimizer}, solver {result.solver}: best compliance "
              f"{result.best_compliance:.6g} at iteration {result.best_iteration} of "
              f"{result.iterations}; volume {result.volume[result.best_iteration]:.6f}; "
              f"{result.seconds:.1f} s ({result.solve_seconds:.1f} s in solves)")
        written = write_design_outputs(result, out)
        metrics = out / "metrics.jsonl"
        metrics.write_text("".join(json.dumps(m) + "\n" for m in result.metrics()))
    for path in [*written, metrics]:
        print(f"wrote {path}")
    return 0


def _suite(args: argparse.Namespace) -> int:
    from simdiff.design.suite import DEFAULT_METHODS, default_problems, run_suite, write_tables

    problems = args.problems.split(",") if args.problems else default_problems()
    methods = args.methods.split(",") if args.methods else list(DEFAULT_METHODS)
    out = Path(args.out or "renders/design_suite")
    with _locked(out):
        rows = run_suite(problems, methods, args.iters, workers=args.workers, seed=args.seed,
                         solver=args.solver, image_dir=out / "designs",
                         progress=(lambda s: None) if args.quiet else print)
        paths = write_tables(rows, out, iters=args.iters)
    print(paths[1].read_text())
    for path in paths:
        print(f"wrote {path}")
    print(f"wrote {out / 'designs'}/ (one image per run)")
    failed = [r for r in rows if r["error"]]
    for r in failed:
        print(f"failed: {r['problem']} {r['method']}: {r['error']}")
    return 1 if failed else 0


def _robot(args: argparse.Namespace) -> int:
    from simdiff.design.robot import design_bridge

    out = Path(args.out or "renders/design_bridge")
    kwargs = {"iters": args.iters, "seed": args.seed}
    if args.volfrac is not None:
        kwargs["volfrac"] = args.volfrac
    if args.lr is not None:
        kwargs["lr"] = args.lr
    with _locked(out):
        result = design_bridge(out, progress=(lambda s: None) if args.quiet else print,
                               **kwargs)
    print(f"payload sag: uniform density {1e3 * result.uniform_sag:.3f} mm, CNN layout "
          f"{1e3 * result.best_sag:.3f} mm ({100 * (1 - result.best_sag / result.uniform_sag):.1f}% "
          f"less), {result.seconds:.0f} s")
    for path in result.paths:
        print(f"wrote {path}")
    return 0
