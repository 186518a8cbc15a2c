"""Headless rendering of N-body trajectories: bodies sized by mass, fading orbit trails.

Reads positions as numpy arrays, never a simulator. The view is the x-y plane (3D input is
projected), with equal scale on both axes, fitted to the whole trajectory by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["render_nbody"]

BACKGROUND_RGB = (10, 12, 28)
_TEXT_RGB = (230, 232, 240)
_PALETTE = [(255, 196, 64), (90, 170, 255), (255, 100, 110), (120, 220, 140), (200, 140, 255),
            (255, 150, 60), (80, 220, 220), (240, 240, 240)]
_MANY = 50  # above this many bodies: dots without trails


def render_nbody(
    positions: np.ndarray,
    masses: np.ndarray,
    *,
    trail: int = 80,
    size: tuple[int, int] = (640, 480),
    bounds: tuple[float, float, float, float] | None = None,
    follow: bool = False,
    title: str | None = None,
    labels: Sequence[str] | None = None,
    subtitles: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """Frames (HxWx3 uint8) of a trajectory ``positions`` [T, n, 2 or 3] of bodies ``masses``.

    Args:
        positions: Body positions per frame.
        masses: Body masses [n], > 0; disk radius grows as mass^(1/3).
        trail: Number of past frames drawn as a fading trail.
        size: Width and height in pixels.
        bounds: (xmin, xmax, ymin, ymax) of the view; default fits the whole trajectory.
        follow: Center every frame on the center of mass (keeping the default scale).
        title: Text at the top left.
        labels: A name per body, drawn beside it.
        subtitles: A line of text per frame under the title.
    """
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 3 or pos.shape[2] not in (2, 3) or pos.shape[0] < 1:
        raise ValueError(f"positions has shape {pos.shape}; expected [T, n, 2] or [T, n, 3]")
    m = np.asarray(masses, dtype=np.float64)
    if m.shape != (pos.shape[1],) or not np.all(m > 0):
        raise ValueError(f"masses must be {pos.shape[1]} positive values; got shape {m.shape}")
    if subtitles is not None and len(subtitles) != pos.shape[0]:
        raise ValueError(f"subtitles has {len(subtitles)} entries for {pos.shape[0]} frames")
    if labels is not None and len(labels) != pos.shape[1]:
        raise ValueError(f"labels has {len(labels)} entries for {pos.shape[1]} bodies")
    width, height = int(size[0]), int(size[1])
    if width < 16 or height < 16:
        raise ValueError(f"size={size} is too small; at least 16 x 16 pixels")
    xy = pos[:, :, :2]
    com = (xy * m[None, :, None]).sum(1) / m.sum()
    if bounds is None:
        lo, hi = xy.reshape(-1, 2).min(0), xy.reshape(-1, 2).max(0)
        if follow:
            half = np.abs(xy - com[:, None, :]).reshape(-1, 2).max(0)
            lo, hi = -half, half
        center = (lo + hi) / 2
        span = max((hi - lo)[0] / width, (hi - lo)[1] / height, 1e-12) * 1.15
        bounds = (center[0] - span * width / 2, center[0] + span * width / 2,
                  center[1] - span * height / 2, center[1] + span * height / 2)
    x0, x1, y0, y1 = bounds
    scale = min(width / (x1 - x0), height / (y1 - y0))
    radii = np.clip(2 + 12 * np.cbrt(m / m.max()), 2, 14) if len(m) <= _MANY else np.ones(len(m))

    def to_pixels(points: np.ndarray, shift: np.ndarray) -> np.ndarray:
        p = points - shift
        px = (p[..., 0] - (x0 + x1) / 2) * scale + width / 2
        py = height / 2 - (p[..., 1] - (y0 + y1) / 2) * scale
        return np.stack([px, py], -1)

    frames = []
    for t in range(pos.shape[0]):
        # Following: the center of mass sits at the center of the view.
        shift = com[t] - np.array([(x0 + x1) / 2, (y0 + y1) / 2]) if follow else np.zeros(2)
        image = Image.new("RGB", (width, height), BACKGROUND_RGB)
        if len(m) > _MANY:
            pix = to_pixels(xy[t], shift).round().astype(int)
            inside = (pix[:, 0] >= 0) & (pix[:, 0] < width) & (pix[:, 1] >= 0) & (pix[:, 1] < height)
            array = np.asarray(image).copy()
            array[pix[inside, 1], pix[inside, 0]] = _PALETTE[-1]
            image = Image.fromarray(array)
            draw = ImageDraw.Draw(image)
        else:
            draw = ImageDraw.Draw(image)
            start = max(0, t - trail)
            history = to_pixels(xy[start:t + 1], shift)
            for b in range(len(m)):
                color = np.array(_PALETTE[b % len(_PALETTE)], dtype=float)
                for k in range(len(history) - 1):
                    fade = (k + 1) / max(len(history) - 1, 1)
                    c = tuple(int(v) for v in np.array(BACKGROUND_RGB) + fade * 0.8 *
                              (color - np.array(BACKGROUND_RGB)))
                    draw.line([tuple(history[k, b]), tuple(history[k + 1, b])], fill=c, width=2)
            now = to_pixels(xy[t], shift)
            for b in range(len(m)):
                (cx, cy), r = now[b], radii[b]
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_PALETTE[b % len(_PALETTE)])
                if labels is not None:
                    draw.text((cx + r + 3, cy - r - 3), labels[b], fill=_TEXT_RGB)
        if title:
            draw.text((8, 6), title, fill=_TEXT_RGB)
        if subtitles is not None:
            draw.text((8, 22), subtitles[t], fill=_TEXT_RGB)
        frames.append(np.asarray(image))
    return frames
