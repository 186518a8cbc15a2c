"""Generate the gallery's poster frames and videos from the current code, in one command.

    python docs/gen_gallery.py [--quick] [--only walker_small,nbody_plummer] [--out DIR]

For every shipped scene (``simdiff/scenes/*.py``) it builds the scene with its default options,
rolls it out once on its default backend (an inverse problem's objective with its hidden true
parameters, as ``simdiff run`` renders it, else its initial guess; a goal-conditioned scene on
the held-out goal schedule of ``simdiff evaluate`` for one world, the command drawn in; a scene
with actuators with its default controller, untrained, seed 0; the others unactuated),
captions what was rolled out, renders the recorded frames and writes ``DIR/NAME.png`` (the
last frame, 320 pixels wide, wide views up to 640) and ``DIR/NAME.gif`` (at most 40 frames,
240 pixels wide). ``--quick`` caps each scene's horizon (``steps``) at 60 and leaves out the 3D
scenes' slow compiles (``--only`` still takes them). DIR defaults to ``docs/gallery/``: git keeps the posters (small
PNGs) and ignores the GIFs; the gallery page shows what is there and lists the rest without
pictures.

A scene that fails is reported and skipped; the exit code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

POSTER_WIDTH, GIF_WIDTH, GIF_FRAMES = 320, 240, 40
QUICK_STEPS = 60
SLOW = ("walker_3d", "mpm_jelly_3d", "fluid_plume_3d")
"""Scenes whose first run compiles for minutes on a CPU; --quick leaves them out."""


def _resize(image, width: int):
    from PIL import Image

    picture = Image.fromarray(image)
    if picture.width > width:
        height = max(1, round(picture.height * width / picture.width))
        picture = picture.resize((width, height), Image.LANCZOS)
    return picture


def rollout_of(name: str, *, quick: bool):
    """The scene built with its defaults (horizon capped when ``quick``), one recorded rollout
    of it, as ``simdiff run`` (or, for a goal-conditioned scene, ``simdiff evaluate``) makes
    it, and the caption saying what was rolled out."""
    import torch

    from simdiff.backend import resolve_backend
    from simdiff.locomotion import evaluate_goals, held_out_schedule
    from simdiff.rollout import rollout
    from simdiff.scene import initial_worlds, load_controller, load_scene, make_simulator
    from simdiff.threads import intra_op_threads, threads_for
    from simdiff.train import _has_actuators

    options = {}
    if quick:
        from simdiff.catalog import read_scene, scene_dir

        info = read_scene(scene_dir() / f"{name}.py")
        steps = next((o for o in info.options if o.name == "steps"), None)
        if steps is not None and steps.default.isdigit() and int(steps.default) > QUICK_STEPS:
            options["steps"] = QUICK_STEPS
    scene = load_scene(name, **options)
    precision = scene.train.get("precision", "float32")
    sim = make_simulator(scene, resolve_backend(scene.default_backend, "cpu", precision))
    torch.manual_seed(0)

    def controller_of():
        controller = scene.train.get("controller", "mlp")
        options = scene.train.get("controller_options", {})
        built = load_controller(controller, sim, scene, **options)
        return built.to(sim.backend.torch_dtype), "untrained"

    # One torch thread for small systems, as the command line picks (simdiff.threads).
    with torch.no_grad(), intra_op_threads(threads_for(sim.initial_state())):
        if scene.objective is not None:
            # The hidden answer where the problem has one (as `simdiff run` renders it).
            build = scene.truth or scene.design
            caption = "true parameters (hidden)" if scene.truth else "initial guess (untrained)"
            design = build(sim).to(sim.backend.torch_dtype)
            objective = scene.objective
            if "record_every" in inspect.signature(objective).parameters:
                _, result, _ = objective(sim, design, record_every=scene.render_every)
            else:
                _, result, _ = objective(sim, design)
        elif scene.goals is not None:
            # The commands are the task: walk, stand, jump, crawl (turn in 3D), one period each.
            controller, caption = controller_of()
            _, result = evaluate_goals(sim, controller, held_out_schedule(scene.goals, 1),
                                       record_every=scene.render_every)
        else:
            controller, caption = None, None
            if _has_actuators(scene):
                controller, caption = controller_of()
            state, params = initial_worlds(scene, sim, seed=0)
            result = rollout(sim, state, controller, scene.steps, params=params,
                             record_every=scene.render_every)
    return scene, result, caption


def write_gallery(name: str, out: Path, *, quick: bool) -> list[Path]:
    """Poster and animation of one scene; returns the paths written."""
    import imageio.v3 as imageio

    from simdiff.render.rollout import render_rollout

    scene, result, caption = rollout_of(name, quick=quick)
    frames = render_rollout(scene, result, caption=caption)
    if scene.goals is not None:
        from simdiff.render.goals import annotate_goals

        frames = annotate_goals(frames, sorted(result.frames), result)
    if not frames:
        raise RuntimeError(f"{name}: the rollout recorded no frames")
    out.mkdir(parents=True, exist_ok=True)
    poster = out / f"{name}.png"
    # A wide view (the sand pile's strip along the ground) gets the area of a 4:3 poster, up
    # to twice as wide, so that its labels stay legible.
    h, w = frames[-1].shape[:2]
    width = max(POSTER_WIDTH, min(2 * POSTER_WIDTH, round((POSTER_WIDTH ** 2 * 0.75 * w / h)
                                                          ** 0.5)))
    _resize(frames[-1], width).save(poster, optimize=True)
    stride = max(1, -(-len(frames) // GIF_FRAMES))
    picked = frames[::stride]
    if picked[-1] is not frames[-1]:
        picked.append(frames[-1])
    gif = out / f"{name}.gif"
    import numpy as np

    imageio.imwrite(gif, np.stack([np.asarray(_resize(f, GIF_WIDTH)) for f in picked]),
                    duration=80, loop=0)
    return [poster, gif]


def main(argv: list[str] | None = None) -> int:
    from simdiff.catalog import scene_catalog

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"horizons capped at {QUICK_STEPS} steps, 3D scenes left out")
    parser.add_argument("--only", default="", help="comma-separated scene names (default: all)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "gallery"),
                        help="output folder (default: docs/gallery)")
    args = parser.parse_args(argv)
    known = [info.name for info in scene_catalog()]
    names = [n for n in args.only.split(",") if n] or [
        n for n in known if not (args.quick and n in SLOW)]
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"--only: unknown scene {unknown[0]!r}; known: {', '.join(known)}")
    failed = []
    for name in names:
        started = time.perf_counter()
        try:
            paths = write_gallery(name, Path(args.out), quick=args.quick)
        except Exception as err:  # noqa: BLE001 (one broken scene must not hide the others)
            traceback.print_exc()
            failed.append(f"{name}: {type(err).__name__}: {err}")
            continue
        sizes = ", ".join(f"{p.name} {p.stat().st_size / 1024:.0f} kB" for p in paths)
        print(f"{name}: {sizes} ({time.perf_counter() - started:.0f} s)", flush=True)
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
