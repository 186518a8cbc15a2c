"""From a recorded rollout to a video: picks the frame painter of the scene's simulator."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from simdiff.rollout import Rollout
from simdiff.scene import Scene

__all__ = ["render_rollout", "write_rollout_plots", "write_rollout_video"]


def _actuation(rollout: Rollout, steps: list[int], actuator: np.ndarray,
               world: int = 0) -> list[np.ndarray]:
    """Per element (spring or particle) and recorded step, the signal of its actuator (NaN
    where it has none, or where no action was recorded); ``actuator`` is -1 for none. Batched
    actions ``[B, action_dim]`` give world ``world``'s."""
    driven = actuator >= 0
    frames = []
    for t in steps:
        values = np.full(actuator.shape, np.nan)
        action = rollout.actions.get(t)
        if action is not None and driven.any():
            action = action.cpu().numpy()
            values[driven] = (action[world] if action.ndim == 2 else action)[actuator[driven]]
        frames.append(values)
    return frames


def _mass_spring_frames(scene: Scene, rollout: Rollout, caption: str | None = None,
                        world: int = 0) -> list[np.ndarray]:
    from simdiff.render.mass_spring import render_mass_spring

    model = scene.model
    steps = sorted(rollout.frames)
    positions = np.stack([rollout.frames[t].particle_x.cpu().numpy() for t in steps])
    actuation = _actuation(rollout, steps, model.spring_actuator.cpu().numpy(), world)
    ground = model.ground.height if model.ground is not None else None
    return render_mass_spring(positions, model.spring_indices.cpu().numpy(), actuation=actuation,
                              ground_height=ground, follow=True, title=_title(scene, caption),
                              world=world, times=[t * model.dt for t in steps],
                              **scene.render_options)


def _title(scene: Scene, caption: str | None) -> str:
    return f"{scene.name}: {caption}" if caption else scene.name


def _nbody_frames(scene: Scene, rollout: Rollout, caption: str | None = None
                  ) -> list[np.ndarray]:
    """Frames of a one-world N-body rollout; ``render_options`` may add ``time_unit`` (the
    readout's) and any keyword of :func:`~simdiff.render.nbody.render_nbody` (a target
    point, observed positions, labels, the log-radius view)."""
    from simdiff.render.nbody import render_nbody

    options = dict(scene.render_options)
    unit = options.pop("time_unit", "")
    steps = sorted(rollout.frames)  # one world: fields [1, ...]
    positions = np.stack([rollout.frames[t].body_x[0].cpu().numpy() for t in steps])
    times = [float(rollout.frames[t].time[0]) for t in steps]
    masses = scene.model.body_mass.detach().cpu().numpy().reshape(-1, positions.shape[1])[0]
    suffix = f" {unit}" if unit else ""
    return render_nbody(positions, masses, title=_title(scene, caption),
                        subtitles=[f"t = {t:.3f}{suffix}" for t in times], **options)


def _fluid_frames(scene: Scene, rollout: Rollout, caption: str | None = None
                  ) -> list[np.ndarray]:
    from simdiff.render.fluid import fluid_frames

    return fluid_frames(scene, rollout, caption=caption)


def _mpm_frames(scene: Scene, rollout: Rollout, caption: str | None = None, world: int = 0
                ) -> list[np.ndarray]:
    """Frames of world ``world`` of a batched MPM rollout; ``render_options`` are keywords of
    :func:`~simdiff.render.mpm.render_mpm` (a target point or shape, observed positions)."""
    from simdiff.render.mpm import render_mpm

    model = scene.model
    steps = sorted(rollout.frames)
    positions = [rollout.frames[t].particle_x[world].cpu().numpy() for t in steps]
    actuation = _actuation(rollout, steps, model.particle_actuator.cpu().numpy(), world)
    tool = None
    if model.tool is not None:
        centers = np.stack([rollout.frames[t].tool_x[world].cpu().numpy() for t in steps])
        tool = (int(model.tool.shape), model.tool.size, centers)
    return render_mpm(positions, model.particle_material.cpu().numpy(), domain=model.domain,
                      actuation=actuation, ground_height=model.ground_height
                      if model.ground is not None else None, tool=tool,
                      title=_title(scene, caption), times=[t * model.control_dt for t in steps],
                      **scene.render_options)


_PAINTERS = {"mass_spring": _mass_spring_frames, "nbody": _nbody_frames, "fluid": _fluid_frames,
             "mpm": _mpm_frames}


MAX_TILED_WORLDS = 16


def tile(images: list[np.ndarray], *, gap: int = 4) -> np.ndarray:
    """Images of equal size side by side in a near-square grid, white gaps between them."""
    n = len(images)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w, c = images[0].shape
    out = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, c), 255, np.uint8)
    for k, image in enumerate(images):
        r, q = divmod(k, cols)
        out[r * (h + gap):r * (h + gap) + h, q * (w + gap):q * (w + gap) + w] = image
    return out


def render_rollout(scene: Scene, rollout: Rollout, *, caption: str | None = None
                   ) -> list[np.ndarray]:
    """Frames (HxWx3 uint8) of a rollout recorded with ``record_every > 0``; the first
    :data:`MAX_TILED_WORLDS` worlds of a batch are tiled into one image per frame.
    ``caption`` is written after the scene's name in every frame (e.g. which parameters of an
    inverse problem were rolled out)."""
    if not rollout.frames:
        raise ValueError("the rollout recorded no frames; roll out with record_every > 0")
    painter = _PAINTERS[scene.simulator]
    if rollout.batch_size == 1:
        return painter(scene, rollout, caption)
    worlds = [painter(scene, rollout.world(b), caption)
              for b in range(min(rollout.batch_size, MAX_TILED_WORLDS))]
    return [tile([frames[k] for frames in worlds]) for k in range(len(worlds[0]))]


def write_rollout_video(scene: Scene, rollout: Rollout, path: str | Path, *, fps: int = 30,
                        caption: str | None = None) -> Path:
    """Render a recorded rollout and write it as .mp4 or .gif; returns the path."""
    from simdiff.render.video import write_video

    return write_video(render_rollout(scene, rollout, caption=caption), path, fps=fps)


def _nbody_plots(scene: Scene, rollout: Rollout, stem: Path) -> list[Path]:
    """Relative energy error against time, log scale."""
    from simdiff.render.plots import plot_series

    sim = rollout.simulator
    unit = scene.render_options.get("time_unit", "")
    steps = sorted(rollout.frames)
    times = [float(rollout.frames[t].time[0]) for t in steps]
    errors = torch.stack([sim.energy_error(rollout.frames[t]) for t in steps]).clamp_min(1e-17)
    worlds = min(rollout.batch_size, MAX_TILED_WORLDS)
    series = {scene.name if worlds == 1 else f"world {b}": errors[:, b].tolist()
              for b in range(worlds)}
    path = plot_series(times, series, stem.with_name(stem.name + "_energy.png"),
                       xlabel=f"time [{unit}]" if unit else "time",
                       ylabel="|relative energy error|", logy=True,
                       title=f"{scene.name}: energy error")
    return [path]


_PLOTTERS = {"nbody": _nbody_plots}


def write_rollout_plots(scene: Scene, rollout: Rollout, stem: str | Path) -> list[Path]:
    """Diagnostic plots of a recorded rollout named ``STEM_*.png`` (none for some simulators)."""
    plotter = _PLOTTERS.get(scene.simulator)
    return plotter(scene, rollout, Path(stem)) if plotter and rollout.frames else []
