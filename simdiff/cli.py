"""The ``simdiff`` command line: argument parsing only; the work is in the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]


def _backend_args(p: argparse.ArgumentParser, *, allow_all: bool = False) -> None:
    # torch: the fluid's step in vectorized torch (the other simulators refuse it).
    choices = ["taichi", "warp", "torch", "all"] if allow_all else ["taichi", "warp", "torch"]
    p.add_argument("--backend", choices=choices, default=None,
                   help="kernel backend (default: the scene's, measured fastest for its size)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")


def _batch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=1,
                   help="worlds simulated at once; the scene says how they differ (default: 1)")
    p.add_argument("--health", choices=["stop", "mask"], default="stop",
                   help="a failed world stops the run, or is frozen and left out of the loss "
                        "(default: stop)")


def _scene_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("scene", help="scene name (see `simdiff list`) or path to a scene file")
    p.add_argument("--steps", type=int, default=None, help="override the scene's horizon")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="scene option, e.g. --set friction=0.5 (repeatable; values parsed as JSON)")


def _scene_options(args: argparse.Namespace) -> dict:
    options = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    if args.steps is not None:
        options["steps"] = args.steps
    return options


def _key_values(items: list[str], flag: str) -> dict:
    """``KEY=VALUE`` items as a dict, values parsed as JSON where they parse."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _cmd_list_catalog(args: argparse.Namespace) -> int:
    """Scenes read from their files (simulator, what trains, backend), nothing built: no
    torch, no backend, well under a second."""
    import shutil

    from simdiff.catalog import format_list

    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    print(format_list(width=width))
    return 0


def _list_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simdiff list", description=(
        "List the scenes (simulator, what `simdiff train` optimizes, default backend, "
        "description) and the controllers, read from their files without building them."))
    p.set_defaults(func=_cmd_list_catalog, command="list")
    return p


def _cmd_show(args: argparse.Namespace) -> int:
    from simdiff.catalog import describe_scene

    print(describe_scene(args.scene, **_scene_options(args)))
    return 0


def _evaluate(scene, sim, controller, *, seed: int = 0, health: str = "stop"
              ) -> tuple[dict, object]:
    """One recorded rollout of the scene (with the design of an inverse problem) and its
    figures."""
    import torch

    from simdiff.rollout import rollout
    from simdiff.scene import initial_worlds
    from simdiff.threads import intra_op_threads, threads_for

    with torch.no_grad(), intra_op_threads(threads_for(sim.initial_state())):
        if scene.objective is not None:
            loss, result, extra = scene.objective(sim, controller, record_every=scene.render_every)
        else:
            state, params = initial_worlds(scene, sim, seed=seed)
            result = rollout(sim, state, controller, scene.steps, params=params, health=health,
                             record_every=scene.render_every)
            loss, extra = scene.loss(result), {}
    return {"loss": float(loss), **scene.metrics(result), **extra}, result


def _figures(metrics: dict) -> str:
    """``name=value`` pairs of a rollout's scalar figures (per-world lists are left to the
    metrics log)."""
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))


def _cmd_run(args: argparse.Namespace) -> int:
    import torch

    from simdiff.backend import resolve_backend
    from simdiff.files import check_creatable, load_data
    from simdiff.render.rollout import write_rollout_plots, write_rollout_video
    from simdiff.scene import load_controller, load_scene, make_simulator
    from simdiff.train import check_rollout_size

    if args.out:
        check_creatable(args.out, "--out", folder=False)
    weights = load_data(args.weights, "controller weights") if args.weights else None
    scene = load_scene(args.scene, **_scene_options(args))
    precision = args.precision or scene.train.get("precision", "float32")
    backend = resolve_backend(args.backend or scene.default_backend, args.device, precision)
    sim = make_simulator(scene, backend, batch_size=args.batch)
    check_rollout_size(sim, scene.steps, backward=False, record_every=scene.render_every,
                       force=args.force)
    controller, caption = None, None
    if scene.design is not None:
        # An inverse problem shows what it is about: the hidden answer, or the fitted one; the
        # initial guess only where there is no answer, and then says so.
        if weights is not None:
            build, caption = scene.design, f"fitted ({Path(args.weights).name})"
        elif scene.truth is not None:
            build, caption = scene.truth, "true parameters (hidden)"
        else:
            build, caption = scene.design, "initial guess (untrained)"
        controller = build(sim).to(backend.torch_dtype)
        print(f"rendering the {caption}")
    elif args.controller:
        torch.manual_seed(args.seed)
        controller = load_controller(args.controller, sim, scene).to(backend.torch_dtype)
    if controller is not None and weights is not None:
        try:
            controller.load_state_dict(weights)
        except (RuntimeError, TypeError, KeyError) as err:
            first = str(err).strip().splitlines()[0]
            raise ValueError(f"--weights {args.weights} do not fit this controller ({first})") \
                from None
    metrics, result = _evaluate(scene, sim, controller, seed=args.seed, health=args.health)
    print(_figures(metrics))
    out = Path(args.out or f"renders/{scene.name}.mp4")
    write_rollout_video(scene, result, out, caption=caption)
    print(f"wrote {out}")
    for path in write_rollout_plots(scene, result, out.with_suffix("")):
        print(f"wrote {path}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from simdiff.files import check_creatable
    from simdiff.render import plot_loss
    from simdiff.render.rollout import write_rollout_plots, write_rollout_video
    from simdiff.train import TrainConfig, train

    out = check_creatable(args.out or f"renders/train_{Path(args.scene).stem}")

    config = TrainConfig(
        scene=args.scene,
        controller=args.controller,
        iters=args.iters,
        backend=args.backend,
        device=args.device,
        precision=args.precision,
        optimizer=args.optimizer,
        lr=args.lr,
        clip=args.clip,
        grad_normalize=args.grad_normalize,
        backprop_window=args.backprop_window,
        seed=args.seed,
        batch=args.batch,
        health=args.health,
        rollout_checkpoint=args.rollout_checkpoint,
        checkpoint_every=args.checkpoint_every,
        scene_options=_scene_options(args),
        controller_options=_key_values(args.controller_set, "--controller-set"),
    )
    result = train(config, out, resume=args.resume, progress=not args.quiet, force=args.force)
    written = [out / "metrics.jsonl", out / "checkpoint.pt", out / "controller.pt"]
    if result.metrics:
        first, last = result.metrics[0], result.metrics[-1]
        best = min(result.metrics, key=lambda row: row["loss"])
        print(f"loss {first['loss']:.4g} -> {last['loss']:.4g} over {len(result.metrics)} "
              f"iterations; best {best['loss']:.4g} at iteration {best['iteration']}")
        written.append(out / "best_controller.pt")
        written.append(plot_loss(result.metrics, out / "loss.png", title=f"{result.scene.name}"))
    if not args.no_video:
        figures, final = _evaluate(result.scene, result.simulator, result.best_controller(),
                                   seed=config.seed, health=config.health)
        print("best iteration: " + _figures(figures))
        caption = "fitted (best iteration)" if result.scene.design is not None else None
        written.append(write_rollout_video(result.scene, final, out / f"{result.scene.name}.mp4",
                                           caption=caption))
        written += write_rollout_plots(result.scene, final, out / result.scene.name)
    for path in written:
        print(f"wrote {path}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from simdiff.backend import resolve_backend
    from simdiff.locomotion import evaluate_goals, held_out_schedule
    from simdiff.render.goals import annotate_goals
    from simdiff.render.rollout import render_rollout
    from simdiff.render.video import write_video
    from simdiff.scene import SceneError, load_controller, load_scene, make_simulator

    scene = load_scene(args.scene, **_scene_options(args))
    if scene.goals is None:
        raise SceneError(f"scene {scene.name!r} is not goal-conditioned (it has no goals); "
                         f"evaluate needs one such as walker_goals")
    precision = args.precision or scene.train.get("precision", "float32")
    backend = resolve_backend(args.backend or scene.default_backend, args.device, precision)
    name = args.controller or scene.train.get("controller", "goal_mlp")

    def build(batch_size: int):
        sim = make_simulator(scene, backend, batch_size=batch_size)
        torch.manual_seed(0)
        options = (scene.train.get("controller_options", {})
                   if name == scene.train.get("controller") else {})
        controller = load_controller(name, sim, scene, **options).to(backend.torch_dtype)
        if args.weights:
            controller.load_state_dict(torch.load(args.weights, map_location="cpu",
                                                  weights_only=True))
        return sim, controller

    sim, controller = build(args.batch)
    figures, result = evaluate_goals(sim, controller, held_out_schedule(scene.goals, args.batch),
                                     record_every=1)
    cells = getattr(scene.model, "cells", None)
    if cells is not None:
        from simdiff.sims.mass_spring.tasks import inverted_cells

        positions = torch.stack([result.frames[t].particle_x for t in sorted(result.frames)])
        figures["inverted_cells"] = float(inverted_cells(positions, cells).mean())
    print(" ".join(f"{k}={v:.4g}" for k, v in figures.items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"scene": scene.name, **figures}, indent=2))
        print(f"wrote {args.json}")
    if not args.no_video:
        space = scene.goals
        script = [("walk", space.vmax), ("stand", 0.0), ("walk", -space.vmax)]
        if space.dim == 2:
            script += [("jump", space.jump_range[1]), ("crawl", 0.5 * space.vmax)]
        else:
            script += [("turn", space.turn_max), ("turn", -space.turn_max)]
        script = [(task, value) for task, value in script if task in space.tasks]
        one, controller = build(1)
        _, shown = evaluate_goals(one, controller, space.schedule(script),
                                  record_every=scene.render_every)
        steps = sorted(shown.frames)
        frames = annotate_goals(render_rollout(scene, shown), steps, shown)
        out = Path(args.out or f"renders/{scene.name}_goals.mp4")
        print(f"wrote {write_video(frames, out)}")
    return 0


def _cmd_gradcheck(args: argparse.Namespace) -> int:
    from simdiff.gradcheck import Verdict, backends_for, check_gradients
    from simdiff.scene import load_scene

    if args.horizon < 1:
        raise ValueError(f"horizon={args.horizon} must be >= 1 (steps rolled out)")
    scene = load_scene(args.scene, **_scene_options(args))
    backends = backends_for(scene) if args.backend in (None, "all") else [args.backend]
    counts = {verdict: 0 for verdict in Verdict}
    print(f"{'backend':<8} {'quantity':<22} {'autodiff':>14} {'finite diff':>14} {'rel err':>9}")
    for backend in backends:
        for r in check_gradients(scene, backend, steps=args.horizon, device=args.device,
                                 batch=args.batch):
            rel = r.error / max(abs(r.finite_difference), 1e-30)
            counts[r.verdict] += 1
            mark = {Verdict.OK: "ok", Verdict.MISMATCH: "MISMATCH",
                    Verdict.NON_SMOOTH: "non-smooth here"}[r.verdict]
            print(f"{backend:<8} {r.quantity:<22} {r.autodiff:>14.6e} {r.finite_difference:>14.6e} "
                  f"{rel:>9.1e} {mark}")
            if r.evidence and r.verdict is not Verdict.OK:
                print(f"         {r.evidence}")
    mismatches, rough = counts[Verdict.MISMATCH], counts[Verdict.NON_SMOOTH]
    note = (f" ({rough} quantities non-smooth at this point: finite differences cannot check "
            "them there)") if rough else ""
    print(f"gradcheck FAILED: {mismatches} mismatches{note}" if mismatches
          else f"gradcheck passed{note}")
    return 1 if mismatches else 0


_DIFFTAICHI_WORKLOADS = {"mass_spring": "mass_spring", "mpm": "mpm", "fluid": "smoke"}


def _cmd_bench(args: argparse.Namespace) -> int:
    from simdiff.bench import run_all, run_benchmark

    out = args.out
    if args.difftaichi is not None:
        from simdiff.difftaichi import compare, format_rows

        if args.what is not None and args.what not in _DIFFTAICHI_WORKLOADS:
            raise SystemExit(f"--difftaichi compares {', '.join(_DIFFTAICHI_WORKLOADS)}; "
                             f"got {args.what!r}")
        workloads = None if args.what is None else [_DIFFTAICHI_WORKLOADS[args.what]]
        rows = compare(args.difftaichi, workloads, rounds=args.rounds, iters=args.iters or 1,
                       backend=args.backend or "all")
        print(format_rows(rows))
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(rows, indent=2))
            print(f"wrote {out}")
        return 0
    extra = []
    if args.iters is not None:
        extra += ["--iters", str(args.iters)]
    if args.budget is not None:
        if args.what != "locomotion":
            raise SystemExit("--budget applies to `simdiff bench locomotion` only")
        extra += ["--budget", str(args.budget)]
    if args.what is None:
        return run_all(backend=args.backend or "all", device=args.device, quick=args.quick,
                       extra_args=extra, out=out)
    return run_benchmark(args.what, backend=args.backend or "all", device=args.device,
                         quick=args.quick, extra_args=extra, out=out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simdiff", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list scenes (simulator, what trains) and controllers",
                       description=_list_parser().description)
    p.set_defaults(func=_cmd_list_catalog)

    p = sub.add_parser("show", help="a scene's description, simulator, backend, whether it "
                                    "trains, and its options with types and defaults")
    _scene_args(p)
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("run", help="roll a scene out and write its video")
    _scene_args(p)
    _backend_args(p)
    p.add_argument("--controller", help="controller name or file (default: no actuation)")
    p.add_argument("--weights", help="controller weights (controller.pt from `simdiff train`); "
                   "for an inverse problem, the fitted design (default: its true hidden "
                   "parameters where it has them, else its initial guess)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default=None, choices=["float32", "float64"],
                   help="default: the scene's (float64 for N-body), else float32")
    p.add_argument("--out", help="video path, .mp4 or .gif (default: renders/SCENE.mp4)")
    p.add_argument("--force", action="store_true",
                   help="run even if the recorded frames' estimated memory exceeds this machine's")
    _batch_args(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("train", help="train a controller through the physics")
    _scene_args(p)
    _backend_args(p)
    p.add_argument("--controller", help="controller name or file (default: the scene's)")
    p.add_argument("--iters", type=int, help="iterations (default: the scene's)")
    p.add_argument("--out", help="output folder (default: renders/train_SCENE)")
    p.add_argument("--resume", help="checkpoint.pt to continue from")
    p.add_argument("--optimizer", default="adam",
                   help="optimizer name: torch.optim's (adam, sgd, ...) or pytorch-optimizer's "
                        "(lion, ademamix, grams, adamp, cautious-lion, ...)")
    p.add_argument("--lr", type=float,
                   help="learning rate (default: the scene's; on --resume, the checkpoint's)")
    p.add_argument("--clip", type=float, default=1.0, help="max gradient norm, 0 disables")
    p.add_argument("--grad-normalize", action="store_true",
                   help="rescale every gradient to norm --clip (not only larger ones)")
    p.add_argument("--controller-set", action="append", default=[], metavar="KEY=VALUE",
                   help="controller option, e.g. --controller-set activation=tanh (repeatable)")
    p.add_argument("--backprop-window", type=int, default=None, metavar="W",
                   help="truncate backpropagation to windows of W steps (default: whole horizon)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the initial weights (default 0; on --resume, the checkpoint's)")
    p.add_argument("--precision", default=None, choices=["float32", "float64"],
                   help="default: the scene's (float64 for N-body), else float32")
    p.add_argument("--force", action="store_true",
                   help="run even if the rollout's estimated memory exceeds this machine's")
    p.add_argument("--checkpoint-every", type=int, default=10, help="iterations between checkpoints")
    p.add_argument("--rollout-checkpoint", type=int, default=None,
                   help="keep one state every K steps and recompute in backward (bounded memory)")
    p.add_argument("--no-video", action="store_true", help="skip the final video")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _batch_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="held-out goal schedules of a goal-conditioned scene")
    _scene_args(p)
    _backend_args(p)
    p.add_argument("--weights", help="controller weights (best_controller.pt of `simdiff train`)")
    p.add_argument("--controller", help="controller name or file (default: the scene's)")
    p.add_argument("--batch", type=int, default=4, help="worlds (held-out commands) at once")
    p.add_argument("--precision", default=None, choices=["float32", "float64"])
    p.add_argument("--json", help="also write the figures as JSON to this path")
    p.add_argument("--out", help="goal-switching video (default: renders/SCENE_goals.mp4)")
    p.add_argument("--no-video", action="store_true", help="skip the goal-switching video")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("gradcheck", help="autodiff against float64 finite differences")
    _scene_args(p)
    _backend_args(p, allow_all=True)
    p.add_argument("--horizon", type=int, default=100, help="steps rolled out (default: 100)")
    p.add_argument("--batch", type=int, default=1,
                   help="worlds rolled out at once, each slightly different (default: 1)")
    p.set_defaults(func=_cmd_gradcheck)

    p = sub.add_parser("bench", help="measure speed against baselines run beside it")
    from simdiff.bench import list_benchmarks

    p.add_argument("what", nargs="?", default=None, choices=list_benchmarks(),
                   help="benchmark name (default: every simulator's benchmark)")
    _backend_args(p, allow_all=True)
    p.add_argument("--iters", type=int, default=None, help="timed repetitions per configuration")
    p.add_argument("--budget", type=float, default=None,
                   help="locomotion: wall-clock seconds of training per method (default 1200)")
    p.add_argument("--quick", action="store_true", help="toy sizes (a smoke test, not figures)")
    p.add_argument("--out", "--json", dest="out", help="also write the results as JSON to this path")
    p.add_argument("--difftaichi", metavar="DIR",
                   help="DiffTaichi's examples/ folder: time its mass_spring.py, diffmpm.py and "
                        "smoke_taichi.py (patched to run on the CPU, headless) interleaved with "
                        "simdiff's mass_spring, mpm and fluid, and report the ratios")
    p.add_argument("--rounds", type=int, default=3,
                   help="with --difftaichi: interleaved rounds of --iters iterations each")
    p.set_defaults(func=_cmd_bench)

    from simdiff.rl.cli import add_rl_parser

    add_rl_parser(sub)

    from simdiff.design.cli import register as register_design

    register_design(sub)

    from simdiff.sweep.cli import add_sweep_parser

    add_sweep_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a bad input or refused action is one line on stderr and exit code 2
    (``SIMDIFF_TRACEBACK=1`` shows the traceback instead)."""
    import os

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["list"]:  # answered from the scene files: before torch is imported
        args = _list_parser().parse_args(argv[1:])
        return args.func(args)
    from simdiff.backend import BackendError
    from simdiff.sims.base import SimulationError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (BackendError, ValueError, TypeError, SimulationError, FileExistsError) as err:
        # ValueError covers SceneError, ValidationError, CheckpointError, DataFileError and
        # SpecError; FileExistsError a folder holding another run or locked by another process.
        if os.environ.get("SIMDIFF_TRACEBACK"):
            raise
        command = " ".join([args.command, *[getattr(args, k) for k in ("rl_command",)
                                            if getattr(args, k, None)]])
        text = " ".join(str(err).split()) or type(err).__name__
        print(f"simdiff {command}: error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
