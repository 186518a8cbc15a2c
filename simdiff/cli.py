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


def _batch_args(p: argparse.ArgumentParser, *, scene_default: bool = False) -> None:
    p.add_argument("--batch", type=int, default=None if scene_default else 1,
                   help="worlds simulated at once; the scene says how they differ (default: "
                        + ("the scene's, else 1)" if scene_default else "1)"))
    p.add_argument("--health", choices=["stop", "mask"], default="stop",
                   help="a failed world stops the run, or is frozen and left out of the loss "
                        "(default: stop)")


DESCRIPTION = """\
simdiff: differentiable simulation. Mass-spring robots, MPM soft bodies and sand, smoke
and fluids, and N-body gravity run as Taichi or Warp kernels inside PyTorch autograd, so a
controller, a design or a physical parameter is optimized by gradient descent through the
physics. A scene (shipped, or a Python file of your own) says what is simulated and what the
loss is; the verbs below roll it out, train through it and check its gradients."""

EPILOG = """\
example:
  simdiff show walker_small
  simdiff train walker_small --iters 20 --out runs/walker
  simdiff run walker_small --weights runs/walker/best_controller.pt --out runs/walker_video

`simdiff VERB --help` lists a verb's options, each with its default."""

GRADCHECK_STEPS = 100
"""Steps ``simdiff gradcheck`` rolls out when ``--steps`` is not given."""


def _scene_args(p: argparse.ArgumentParser, *,
                steps_help: str = "the scene's horizon, steps rolled out (default: the scene's)"
                ) -> None:
    p.add_argument("scene", help="scene name (see `simdiff list`) or path to a scene file")
    p.add_argument("--steps", type=int, default=None, help=steps_help)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="scene option, e.g. --set friction=0.5 (repeatable; values parsed as JSON; "
                        "default: the scene's; `simdiff show SCENE` lists them)")


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


def _progress_bar(total: int | None, desc: str, unit: str, *, quiet: bool):
    """A progress bar on stderr, shown only on a terminal (captured output stays clean) and
    not with ``--quiet``; cleared when closed."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                disable=quiet or not sys.stderr.isatty(), file=sys.stderr)


def _evaluate(scene, sim, controller, *, seed: int = 0, health: str = "stop",
              quiet: bool = True) -> tuple[dict, object]:
    """One recorded rollout of the scene (with the design of an inverse problem) and its
    figures; a bar counts its steps unless ``quiet``."""
    import torch

    from simdiff.rollout import reporting_progress, rollout
    from simdiff.scene import initial_worlds
    from simdiff.threads import intra_op_threads, threads_for

    # An inverse problem's objective runs rollouts of its own (observations, then the
    # design's): their steps are counted without a total.
    total = scene.steps if scene.objective is None else None
    with torch.no_grad(), intra_op_threads(threads_for(sim.initial_state())), \
            _progress_bar(total, scene.name, "step", quiet=quiet) as bar, \
            reporting_progress(bar.update):
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


def _controller_for(name: str | None, weights: str | None, scene) -> tuple[str, dict]:
    """The controller to build and its options: ``name`` (``--controller``), else the one that
    weights from ``simdiff train`` belong to, named with its options by that run's
    ``config.json`` beside them (plain JSON), else the scene's default; the scene's default
    controller gets the scene's ``controller_options``, as in training."""
    if name is None and weights is not None:
        try:
            config = json.loads((Path(weights).parent / "config.json").read_text())
        except (OSError, ValueError):
            config = None
        if isinstance(config, dict) and isinstance(config.get("controller"), str) \
                and config["controller"] != "design":
            return config["controller"], dict(config.get("controller_options") or {})
    name = name or scene.train.get("controller", "mlp")
    default = name == scene.train.get("controller")
    return name, dict(scene.train.get("controller_options", {})) if default else {}


def _load_weights(controller, weights, path) -> None:
    """Load ``weights`` (read from ``path``) into ``controller``, or one line saying why not."""
    try:
        controller.load_state_dict(weights)
    except (RuntimeError, TypeError, KeyError) as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"--weights {path} do not fit this controller ({first})") from None


def _cmd_run(args: argparse.Namespace) -> int:
    import torch

    from simdiff.backend import resolve_backend
    from simdiff.files import check_output_folder, hold_lock, load_data
    from simdiff.render.rollout import write_rollout_plots, write_rollout_video
    from simdiff.scene import load_controller, load_scene, make_simulator
    from simdiff.train import check_rollout_size

    out = args.out or f"renders/run_{Path(args.scene).stem}"
    video = Path(out).suffix.lower().lstrip(".")  # a video's path, as --out took before
    out = check_output_folder(out, "rollout", hint=" (and --video "
                              f"{video if video in ('mp4', 'gif') else args.video} for the "
                              "video's format)")
    weights = load_data(args.weights, "controller weights") if args.weights else None
    scene = load_scene(args.scene, **_scene_options(args))
    precision = args.precision or scene.train.get("precision", "float32")
    backend = resolve_backend(args.backend or scene.default_backend, args.device, precision)
    sim = make_simulator(scene, backend, batch_size=args.batch)
    check_rollout_size(sim, scene.steps, backward=False, record_every=scene.render_every,
                       force=args.force)
    controller, name, caption = None, None, None
    if scene.design is not None:
        # An inverse problem shows what it is about: the hidden answer, or the fitted one; the
        # initial guess only where there is no answer, and then says so.
        if weights is not None:
            build, caption = scene.design, f"fitted ({Path(args.weights).name})"
        elif scene.truth is not None:
            build, caption = scene.truth, "true parameters (hidden)"
        else:
            build, caption = scene.design, "initial guess (untrained)"
        controller, name = build(sim).to(backend.torch_dtype), "design"
        print(f"rendering the {caption}")
    elif args.controller or weights is not None:  # weights alone: the one they were trained for
        torch.manual_seed(args.seed)
        name, options = _controller_for(args.controller, args.weights, scene)
        controller = load_controller(name, sim, scene, **options).to(backend.torch_dtype)
    if controller is not None and weights is not None:
        _load_weights(controller, weights, args.weights)
    with hold_lock(out, "rollout"):  # from the rollout on: a second writer is refused first
        metrics, result = _evaluate(scene, sim, controller, seed=args.seed, health=args.health,
                                    quiet=args.quiet)
        print(_figures(metrics))
        written = [write_rollout_video(scene, result, out / f"{scene.name}.{args.video}",
                                       caption=caption)]
        written += write_rollout_plots(scene, result, out / scene.name)
        record = {"command": "run", "scene": scene.name, "simulator": scene.simulator,
                  "backend": backend.name, "device": backend.device, "precision": precision,
                  "steps": scene.steps, "batch": args.batch, "seed": args.seed,
                  "controller": name, "rendered": caption,
                  "weights": args.weights, "options": _scene_options(args),
                  "metrics": metrics}
        (out / "metrics.json").write_text(json.dumps(record, indent=2, default=float) + "\n")
        written.append(out / "metrics.json")
    for path in written:
        print(f"wrote {path}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from simdiff.bridge import return_free_memory
    from simdiff.files import check_output_folder
    from simdiff.render import plot_loss
    from simdiff.render.rollout import write_rollout_plots, write_rollout_video
    from simdiff.train import TrainConfig, train

    out = check_output_folder(args.out or f"renders/train_{Path(args.scene).stem}",
                              "training run")

    config = TrainConfig(
        scene=args.scene,
        controller=args.controller,
        iters=args.iters,
        backend=args.backend,
        device=args.device,
        precision=args.precision,
        optimizer=args.optimizer,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        clip=args.clip,
        grad_normalize=args.grad_normalize,
        backprop_window=args.backprop_window,
        seed=args.seed,
        batch=args.batch,
        health=args.health,
        rollout_checkpoint=args.rollout_checkpoint,
        checkpoint_every=args.checkpoint_every,
        validate_every=args.validate_every,
        scene_options=_scene_options(args),
        controller_options=_key_values(args.controller_set, "--controller-set"),
    )
    result = train(config, out, resume=args.resume, progress=not args.quiet, force=args.force)
    written = [out / "metrics.jsonl", out / "checkpoint.pt", out / "controller.pt"]
    if result.metrics:
        first, last = result.metrics[0], result.metrics[-1]
        best = result.best
        print(f"loss {first['loss']:.4g} -> {last['loss']:.4g} over {len(result.metrics)} "
              f"iterations; best at iteration {best.get('iteration')} ({best.get('on')} loss "
              f"{best.get('loss', float('nan')):.4g})")
        written.append(out / "best_controller.pt")
        # The run's freed heap (its rollouts' autograd graphs) goes back to the system before
        # matplotlib loads: 12 MB of the walker's, which matplotlib's 20-30 MB then reuses.
        return_free_memory()
        written.append(plot_loss(result.metrics, out / "loss.png", title=f"{result.scene.name}"))
    if not args.no_video and result.scene.goals is not None:
        # A goal-conditioned controller is shown following a change of command.
        from simdiff.scene import make_simulator

        one = make_simulator(result.scene, result.simulator.backend, batch_size=1)
        written.append(_goal_video(result.scene, one, result.best_controller(),
                                   out / f"{result.scene.name}.mp4")[0])
    elif not args.no_video:
        figures, final = _evaluate(result.scene, result.simulator, result.best_controller(),
                                   seed=config.seed, health=config.health, quiet=args.quiet)
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
    from simdiff.files import check_creatable, check_output_folder, hold_lock, load_data
    from simdiff.locomotion import evaluate_goals, held_out_schedule, period_figures
    from simdiff.scene import SceneError, load_controller, load_scene, make_simulator

    out = check_output_folder(args.out or f"renders/evaluate_{Path(args.scene).stem}",
                              "goal evaluation")
    if args.json:
        check_creatable(args.json, "--json", folder=False)
    scene = load_scene(args.scene, **_scene_options(args))
    if scene.goals is None:
        raise SceneError(f"scene {scene.name!r} is not goal-conditioned (it has no goals); "
                         f"evaluate needs one such as walker_goals")
    precision = args.precision or scene.train.get("precision", "float32")
    backend = resolve_backend(args.backend or scene.default_backend, args.device, precision)
    # Weights from `simdiff train` are replayed with the controller and options (activation,
    # clock frequency) their run's config.json names, as `simdiff run` does.
    name, options = _controller_for(args.controller, args.weights, scene)
    weights = load_data(args.weights, "controller weights") if args.weights else None

    def build(batch_size: int):
        sim = make_simulator(scene, backend, batch_size=batch_size)
        torch.manual_seed(0)
        controller = load_controller(name, sim, scene, **options).to(backend.torch_dtype)
        if weights is not None:
            _load_weights(controller, weights, args.weights)
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
    periods = period_figures(result)
    for entry in periods:
        measured = ", ".join(f"{v:+.4f}" for v in entry["velocity"])
        turn = f" yaw_rate={entry['yaw_rate']:+.4f} rad/s" if "yaw_rate" in entry else ""
        goal = ", ".join(f"{v:+.4g}" for v in entry["goal"])
        print(f"  period {entry['period']} world {entry['world']} {entry['task']}: goal "
              f"({goal}) velocity=({measured}) m/s{turn}")
    text = json.dumps({"command": "evaluate", "scene": scene.name, **figures,
                       "periods": periods}, indent=2) + "\n"
    with hold_lock(out, "goal evaluation"):
        (out / "evaluation.json").write_text(text)
    print(f"wrote {out / 'evaluation.json'}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
        print(f"wrote {args.json}")
    if not args.no_video:
        one, controller = build(1)
        video, scripted = _goal_video(scene, one, controller, out / f"{scene.name}.mp4",
                                      lock=out)
        for entry in scripted:
            turn = f" yaw_rate={entry['yaw_rate']:+.4f} rad/s" if "yaw_rate" in entry else ""
            goal = ", ".join(f"{v:+.4g}" for v in entry["goal"])
            print(f"  video period {entry['period']} {entry['task']}: goal ({goal}) "
                  f"velocity=({', '.join(f'{v:+.4f}' for v in entry['velocity'])}) m/s{turn}")
        print(f"wrote {video}")
    return 0


def _goal_script(space) -> list[tuple]:
    """The scripted commands of a goal video, one goal period each, of the space's tasks: 2D
    forward at the largest speed, stop, backward, a jump and a crawl; 3D forward along x, a
    turn left and right, forward along z, stop."""
    if space.dim == 2:
        script = [("walk", space.vmax), ("stand", 0.0), ("walk", -space.vmax),
                  ("jump", space.jump_range[1]), ("crawl", 0.5 * space.vmax)]
    else:
        script = [("walk", space.vmax), ("turn", space.turn_max), ("turn", -space.turn_max),
                  ("walk", 0.0, space.vmax), ("stand", 0.0)]
    return [task for task in script if task[0] in space.tasks]


def _goal_video(scene, sim, controller, path: Path, script=None, *, lock: Path | None = None):
    """The goal-switching video of one world (``sim`` of batch 1) following ``script``
    (default :func:`_goal_script`), the command drawn in every frame; returns the video's path
    and each period's measured figures (:func:`simdiff.locomotion.period_figures`), which are
    also written beside it as ``script.json``. ``lock``: the output folder's lock to hold
    while writing (the caller holds it already when None)."""
    import contextlib

    from simdiff.files import hold_lock
    from simdiff.locomotion import evaluate_goals, period_figures
    from simdiff.render.goals import annotate_goals
    from simdiff.render.rollout import render_rollout
    from simdiff.render.video import write_video

    schedule = scene.goals.schedule(script or _goal_script(scene.goals))
    _, shown = evaluate_goals(sim, controller, schedule, record_every=scene.render_every)
    scripted = period_figures(shown)
    frames = annotate_goals(render_rollout(scene, shown), sorted(shown.frames), shown)
    with hold_lock(lock, "goal evaluation") if lock is not None else contextlib.nullcontext():
        (path.parent / "script.json").write_text(json.dumps(scripted, indent=2) + "\n")
        return write_video(frames, path), scripted


def _cmd_gradcheck(args: argparse.Namespace) -> int:
    from simdiff.backend import Precision, resolve_backend
    from simdiff.gradcheck import Verdict, backends_for, check_gradients
    from simdiff.scene import load_scene, make_simulator
    from simdiff.train import check_rollout_size

    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps {args.steps} must be >= 1 (steps rolled out)")
    steps = args.steps if args.steps is not None else GRADCHECK_STEPS
    # The check rolls out the first STEPS steps of the scene as built with its own horizon:
    # a scene whose horizon sets its time step (N-body output intervals over a fixed end time)
    # would otherwise change its physics with --steps.
    scene = load_scene(args.scene, **{k: v for k, v in _scene_options(args).items()
                                      if k != "steps"})
    backends = backends_for(scene) if args.backend in (None, "all") else [args.backend]
    for backend in backends:
        be = resolve_backend(backend, args.device, Precision.FLOAT64)
        check_rollout_size(make_simulator(scene, be, batch_size=args.batch), steps,
                           backward=True, force=args.force, checkpoint_option=False)
    counts = {verdict: 0 for verdict in Verdict}
    skipped: list[str] = []
    print(f"{'backend':<8} {'quantity':<22} {'autodiff':>14} {'finite diff':>14} {'rel err':>9}")
    for backend in backends:
        with _progress_bar(None, f"gradcheck {backend}", "quantity", quiet=args.quiet) as bar:

            def row(r, total: int, bar=bar, backend=backend) -> None:
                bar.total = total  # known once the autodiff pass has named the quantities
                rel = r.error / max(abs(r.finite_difference), 1e-30)
                counts[r.verdict] += 1
                mark = {Verdict.OK: "ok", Verdict.MISMATCH: "MISMATCH",
                        Verdict.NON_SMOOTH: "non-smooth here"}[r.verdict]
                bar.write(f"{backend:<8} {r.quantity:<22} {r.autodiff:>14.6e} "
                          f"{r.finite_difference:>14.6e} {rel:>9.1e} {mark}", file=sys.stdout)
                if r.evidence and r.verdict is not Verdict.OK:
                    bar.write(f"         {r.evidence}", file=sys.stdout)
                bar.update(1)

            try:
                check_gradients(scene, backend, steps=steps, device=args.device,
                                batch=args.batch, progress=row)
            except NotImplementedError as err:
                # A backend that refuses this scene's gradients (3D MPM on Taichi): said, and
                # the other one checked; asked for by name, it is the command's error.
                if len(backends) == 1 or skipped:
                    raise
                skipped.append(backend)
                print(f"{backend:<8} not checked: {err}")
    mismatches, rough = counts[Verdict.MISMATCH], counts[Verdict.NON_SMOOTH]
    note = (f" ({rough} quantities non-smooth at this point: finite differences cannot check "
            "them there)") if rough else ""
    note += f" ({', '.join(skipped)} not checked)" if skipped else ""
    print(f"gradcheck FAILED: {mismatches} mismatches{note}" if mismatches
          else f"gradcheck passed{note}")
    return 1 if mismatches else 0


_DIFFTAICHI_WORKLOADS = {"mass_spring": "mass_spring", "mpm": "mpm", "fluid": "smoke"}


def _cmd_bench(args: argparse.Namespace) -> int:
    from simdiff.bench import run_all, run_benchmark
    from simdiff.files import check_creatable, check_output_folder

    if args.out and args.json:
        raise ValueError("--out (a folder) and --json (a file) both name where the results go: "
                         "pass one")
    out = args.json and check_creatable(args.json, "--json", folder=False)
    if args.out:  # one bench_NAME.json per benchmark in the folder
        folder = check_output_folder(args.out, "benchmark",
                                     hint=f" (or --json {args.out} for one file)")
        name = "difftaichi" if args.difftaichi is not None else args.what
        out = folder / f"bench_{name}.json" if name else folder / "bench.json"
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
    for flag, value in (("--systems", args.systems), ("--t-end", args.t_end)):
        if value is not None:
            if args.what != "nbody_systems":
                raise SystemExit(f"{flag} applies to `simdiff bench nbody_systems` only")
            extra += [flag, str(value)]
    if args.what is None:
        return run_all(backend=args.backend or "all", device=args.device, quick=args.quick,
                       extra_args=extra, out=out)
    return run_benchmark(args.what, backend=args.backend or "all", device=args.device,
                         quick=args.quick, extra_args=extra, out=out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simdiff", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, title="verbs", metavar="VERB")

    p = sub.add_parser("list", help="list scenes (simulator, what trains) and controllers",
                       description=_list_parser().description)
    p.set_defaults(func=_cmd_list_catalog)

    p = sub.add_parser("show", help="a scene's description, simulator, backend, whether it "
                                    "trains, and its options with types and defaults")
    _scene_args(p)
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("run", help="roll a scene out: its video, plots and metrics.json")
    _scene_args(p)
    _backend_args(p)
    p.add_argument("--controller", help="controller name or file (default: no actuation; with "
                                        "--weights, the controller they were trained for)")
    p.add_argument("--weights", help="controller weights (controller.pt from `simdiff train`); "
                   "for an inverse problem, the fitted design (default: the controller's initial "
                   "weights; an inverse problem's true hidden parameters where it has them, "
                   "else its initial guess)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the controller's weights and of the worlds' variations "
                        "(default: 0)")
    p.add_argument("--precision", default=None, choices=["float32", "float64"],
                   help="default: the scene's (float64 for N-body), else float32")
    p.add_argument("--out", help="output folder: the video SCENE.mp4, plots and metrics.json "
                                 "(default: renders/run_SCENE)")
    p.add_argument("--video", choices=["mp4", "gif"], default="mp4",
                   help="the video's format (default: mp4)")
    p.add_argument("--force", action="store_true",
                   help="run even if the recorded frames' estimated memory exceeds this "
                        "machine's, or the rollout's estimated time a day (default: refuse)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (default: a bar on a terminal)")
    _batch_args(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("train", help="train a controller (or an inverse problem's design) "
                                     "through the physics")
    _scene_args(p)
    _backend_args(p)
    p.add_argument("--controller", help="controller name or file (default: the scene's)")
    p.add_argument("--iters", type=int, help="iterations (default: the scene's)")
    p.add_argument("--out", help="output folder (default: renders/train_SCENE)")
    p.add_argument("--resume", help="checkpoint.pt to continue from (default: a fresh run)")
    p.add_argument("--optimizer", default="adam",
                   help="optimizer name: torch.optim's (adam, sgd, ...) or pytorch-optimizer's "
                        "(lion, ademamix, grams, adamp, cautious-lion, ...) (default: adam)")
    p.add_argument("--lr", type=float,
                   help="learning rate (default: the scene's; on --resume, the checkpoint's)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default=None,
                   help="cosine: from --lr down to a twentieth of it over the iterations "
                        "(default: the scene's, else constant)")
    p.add_argument("--clip", type=float, default=1.0,
                   help="max gradient norm, 0 disables (default: 1.0)")
    p.add_argument("--grad-normalize", action="store_true",
                   help="rescale every gradient to norm --clip, not only larger ones (default: "
                        "clip only)")
    p.add_argument("--controller-set", action="append", default=[], metavar="KEY=VALUE",
                   help="controller option, e.g. --controller-set activation=tanh (repeatable; "
                        "default: the controller's)")
    p.add_argument("--backprop-window", type=int, default=None, metavar="W",
                   help="truncate backpropagation to windows of W steps; 0: the whole horizon "
                        "(default: the scene's, else the whole horizon)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the initial weights (default 0; on --resume, the checkpoint's)")
    p.add_argument("--precision", default=None, choices=["float32", "float64"],
                   help="default: the scene's (float64 for N-body), else float32")
    p.add_argument("--force", action="store_true",
                   help="run even if the rollout's estimated memory exceeds this machine's, "
                        "or its estimated time a day (default: refuse)")
    p.add_argument("--checkpoint-every", type=int, default=10,
                   help="iterations between checkpoints (default: 10)")
    p.add_argument("--validate-every", type=int, default=5,
                   help="goal-conditioned scenes: iterations between rollouts on the fixed "
                        "validation goals, on which the best iteration is chosen; 0 chooses on "
                        "the training loss (default: 5)")
    p.add_argument("--rollout-checkpoint", type=int, default=None,
                   help="keep one state every K steps and recompute in backward (bounded "
                        "memory; default: keep every step)")
    p.add_argument("--no-video", action="store_true",
                   help="skip the final video (default: render the best iteration)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: show it)")
    _batch_args(p, scene_default=True)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="held-out goal schedules of a goal-conditioned scene")
    _scene_args(p)
    _backend_args(p)
    p.add_argument("--weights", help="controller weights (best_controller.pt of `simdiff train`; "
                                     "default: the controller's initial weights)")
    p.add_argument("--controller", help="controller name or file (default: the scene's)")
    p.add_argument("--batch", type=int, default=4,
                   help="worlds (held-out commands) at once (default: 4)")
    p.add_argument("--precision", default=None, choices=["float32", "float64"],
                   help="default: the scene's, else float32")
    p.add_argument("--out", help="output folder: evaluation.json (the figures), the "
                                 "goal-switching video SCENE.mp4 and script.json (what the "
                                 "robot did in each of its periods) (default: "
                                 "renders/evaluate_SCENE)")
    p.add_argument("--json", help="also write the figures as JSON to this file (default: only "
                                  "OUT/evaluation.json)")
    p.add_argument("--no-video", action="store_true",
                   help="skip the goal-switching video (default: write it)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("gradcheck", help="autodiff against float64 finite differences, on "
                                         "Taichi and Warp")
    _scene_args(p, steps_help="steps rolled out by the check: the first STEPS steps of the "
                              f"scene as built with its own options (default: {GRADCHECK_STEPS})")
    _backend_args(p, allow_all=True)
    p.add_argument("--batch", type=int, default=1,
                   help="worlds rolled out at once, each slightly different (default: 1)")
    p.add_argument("--force", action="store_true",
                   help="run even if a rollout's estimated memory or time exceeds this machine's "
                        "or a day (default: refuse)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (default: a bar on a terminal)")
    p.set_defaults(func=_cmd_gradcheck)

    p = sub.add_parser("bench", help="measure speed against baselines run beside it")
    from simdiff.bench import list_benchmarks

    p.add_argument("what", nargs="?", default=None, choices=list_benchmarks(),
                   help="benchmark name (default: every simulator's benchmark)")
    _backend_args(p, allow_all=True)
    p.add_argument("--iters", type=int, default=None,
                   help="timed repetitions per configuration (default: the benchmark's)")
    p.add_argument("--budget", type=float, default=None,
                   help="locomotion: wall-clock seconds of training per method (default 1200)")
    p.add_argument("--systems", type=int, default=None,
                   help="nbody_systems: random three-body systems integrated (default 256)")
    p.add_argument("--t-end", type=float, default=None,
                   help="nbody_systems: time each system is integrated to (default 10)")
    p.add_argument("--quick", action="store_true",
                   help="toy sizes, a smoke test, not figures (default: full sizes)")
    p.add_argument("--out", help="also write the results as JSON into this folder, "
                                 "bench_NAME.json per benchmark (default: none)")
    p.add_argument("--json", help="also write the results as JSON to this file (default: none)")
    p.add_argument("--difftaichi", metavar="DIR",
                   help="DiffTaichi's examples/ folder: time its mass_spring.py, diffmpm.py and "
                        "smoke_taichi.py (patched to run on the CPU, headless) interleaved with "
                        "simdiff's mass_spring, mpm and fluid, and report the ratios "
                        "(default: no comparison)")
    p.add_argument("--rounds", type=int, default=3,
                   help="with --difftaichi: interleaved rounds of --iters iterations each "
                        "(default: 3)")
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
    except (BackendError, ValueError, TypeError, SimulationError, FileExistsError,
            NotImplementedError) as err:
        # ValueError covers SceneError, ValidationError, CheckpointError, DataFileError and
        # SpecError; FileExistsError a folder holding another run or locked by another process;
        # NotImplementedError what a backend refuses to do (3D MPM gradients on Taichi).
        if os.environ.get("SIMDIFF_TRACEBACK"):
            raise
        command = " ".join([args.command, *[getattr(args, k) for k in ("rl_command",)
                                            if getattr(args, k, None)]])
        text = " ".join(str(err).split()) or type(err).__name__
        print(f"simdiff {command}: error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
