"""Pictures of designs: the final density as a PNG, its evolution as a GIF, the compliance
curve. Solid is black on white; a problem that is half of a symmetric structure is shown
whole (mirrored about its symmetry edge)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from simdiff.render import plot_loss, write_video

__all__ = ["design_image", "write_design_outputs"]


def design_image(density: np.ndarray, *, mirror: str | None = None, width: int = 480,
                 void: np.ndarray | None = None) -> np.ndarray:
    """``[H, W, 3]`` uint8 image of a ``(nely, nelx)`` density field, scaled up by an integer
    factor to about ``width`` pixels wide. Forced-void elements are tinted light blue."""
    x = np.clip(np.asarray(density, dtype=np.float64), 0.0, 1.0)
    v = None if void is None else np.asarray(void, bool)
    if mirror == "left":
        x = np.concatenate([x[:, ::-1], x], axis=1)
        v = None if v is None else np.concatenate([v[:, ::-1], v], axis=1)
    elif mirror == "right":
        x = np.concatenate([x, x[:, ::-1]], axis=1)
        v = None if v is None else np.concatenate([v, v[:, ::-1]], axis=1)
    gray = (255 * (1.0 - x)).astype(np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    if v is not None:
        rgb[v] = (225, 235, 250)
    scale = max(1, round(width / x.shape[1]))
    return np.ascontiguousarray(rgb.repeat(scale, axis=0).repeat(scale, axis=1))


def write_design_outputs(result, out: str | Path, *, gif_frames: int = 60,
                         fps: int = 10) -> list[Path]:
    """Write ``design.png`` (best design), ``evolution.gif``, ``compliance.png`` and
    ``design.npy`` for a :class:`~simdiff.design.optimizers.DesignResult` into folder ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    problem = result.problem
    kw = {"mirror": problem.mirror, "void": problem.void}
    png = out / "design.png"
    Image.fromarray(design_image(result.design, **kw)).save(png)
    frames: Sequence[np.ndarray] = result.frames
    if len(frames) > gif_frames:
        keep = np.unique(np.linspace(0, len(frames) - 1, gif_frames).round().astype(int))
        frames = [frames[i] for i in keep]
    gif = write_video([design_image(f, width=320, **kw) for f in frames], out / "evolution.gif",
                      fps=fps)
    curve = plot_loss(result.metrics(), out / "compliance.png", key="compliance",
                      title=f"{problem.name}: {result.param} + {result.optimizer}")
    npy = out / "design.npy"
    np.save(npy, result.design)
    return [png, gif, curve, npy]
