"""Headless rendering of MPM trajectories into RGB frames with Pillow.

Reads positions as numpy arrays, never a simulator. The view is the whole (square) domain,
fixed. 2D: an orthographic side view; particles are dots colored by material (elastic green,
liquid blue, plastic ochre), muscles by their action (grey at rest, red pulling, blue pushing),
over a ground band; the tool is outlined, an optional target drawn as a cross or as faint
cells. 3D: point splats in an oblique view from above, painted far to near, shaded by depth and
height, over a ground plane with the particles' shadows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from simdiff.render.mass_spring import GROUND_RGB, SKY_RGB, spring_colors

__all__ = ["MATERIAL_RGB", "render_mpm"]

MATERIAL_RGB = {0: (70, 160, 90), 1: (50, 120, 230), 2: (200, 150, 60), 3: (225, 190, 120)}
"""Particle color by material (elastic, liquid, plastic, sand)."""

_TOOL_RGB = (40, 40, 40)
_TARGET_RGB = (220, 30, 30)
_TEXT_RGB = (20, 20, 20)


def render_mpm(
    positions: Sequence[np.ndarray] | np.ndarray,
    materials: np.ndarray,
    *,
    domain: float,
    actuation: Sequence[np.ndarray] | None = None,
    ground_height: float | None = None,
    tool: tuple[int, Sequence[float], np.ndarray] | None = None,
    target_point: Sequence[float] | None = None,
    target_cells: np.ndarray | None = None,
    size: int = 480,
    title: str | None = None,
    world: int = 0,
) -> list[np.ndarray]:
    """Render an MPM trajectory, one RGB frame per recorded state.

    Args:
        positions: T frames of particle positions, [T, n, 2] or [T, n, 3], or of every
            world, [T, B, n, 2|3] (``world`` is drawn).
        world: The world drawn from batched frames (positions, actuation and tool centers
            with a world axis after the frame axis).
        materials: Material of each particle, [n].
        domain: Edge length of the domain [m]; the view shows [0, domain] along x and y.
        actuation: Per frame the action of each particle's muscle, [T, n] (or [T, B, n]),
            NaN for passive.
        ground_height: y of the ground, or None.
        tool: ``(shape, size, centers)``: 0 sphere / 1 box, its radius or half extents, and
            its center per frame [T, dim] (or [T, B, dim]).
        target_point: A point to mark with a cross (2D).
        target_cells: Boolean occupancy [cells, cells] over ``[0, domain]^2`` drawn faintly.
        size: Frame width and height in pixels.
        title: Text in the top-left corner.

    Returns:
        T frames, each a [size, size, 3] ``uint8`` array.
    """
    traj = np.asarray(positions, dtype=np.float64)
    if traj.ndim == 2:
        traj = traj[None]
    if traj.ndim == 4:
        if not 0 <= world < traj.shape[1]:
            raise ValueError(f"world={world} outside [0, {traj.shape[1]}) (worlds in positions)")
        traj = traj[:, world]
        if actuation is not None:
            actuation = [np.asarray(a)[world] for a in actuation]
        if tool is not None:
            tool = (tool[0], tool[1], np.asarray(tool[2])[:, world])
    if traj.ndim != 3 or traj.shape[2] not in (2, 3):
        raise ValueError(f"positions: expected [T, n, 2|3] or [T, B, n, 2|3], got {traj.shape}")
    if not np.isfinite(traj).all():
        raise ValueError("positions: hold NaN or infinite values")
    materials = np.asarray(materials)
    base = np.array([MATERIAL_RGB.get(int(m), (0, 0, 0)) for m in materials], dtype=np.uint8)
    frames = []
    for t in range(traj.shape[0]):
        colors = base.copy()
        if actuation is not None:
            a = np.asarray(actuation[t], dtype=np.float64)
            muscle = ~np.isnan(a)
            # Positive actions pull (contract): drawn blue like a contracting spring.
            colors[muscle] = spring_colors(-a[muscle])
        center = None if tool is None else np.asarray(tool[2][t], dtype=np.float64)
        if traj.shape[2] == 2:
            frames.append(_frame_2d(traj[t], colors, domain, size, ground_height, tool, center,
                                    target_point, target_cells, title))
        else:
            frames.append(_frame_3d(traj[t], colors, domain, size, ground_height, title))
    return frames


def _frame_2d(x, colors, domain, size, ground_height, tool, center, target_point,
              target_cells, title) -> np.ndarray:
    scale = size / domain
    image = Image.new("RGB", (size, size), SKY_RGB)
    draw = ImageDraw.Draw(image)

    def px(p):
        return p[0] * scale, size - p[1] * scale

    if target_cells is not None:
        cells = target_cells.shape[0]
        step = size / cells
        for i, j in zip(*np.nonzero(target_cells)):
            draw.rectangle((i * step, size - (j + 1) * step, (i + 1) * step, size - j * step),
                           fill=(250, 210, 210))
    if ground_height is not None:
        row = size - ground_height * scale
        draw.rectangle((0, row, size, size), fill=GROUND_RGB)
    radius = max(1.0, 0.004 * size)
    for (u, v), color in zip((x * [scale, -scale] + [0, size]).tolist(), colors.tolist()):
        draw.ellipse((u - radius, v - radius, u + radius, v + radius), fill=tuple(color))
    if tool is not None:
        shape, extent = tool[0], tool[1]
        u, v = px(center)
        if shape == 0:
            r = extent[0] * scale
            draw.ellipse((u - r, v - r, u + r, v + r), outline=_TOOL_RGB, width=2)
        else:
            hx, hy = extent[0] * scale, extent[1] * scale
            draw.rectangle((u - hx, v - hy, u + hx, v + hy), outline=_TOOL_RGB, width=2)
    if target_point is not None:
        u, v = px(target_point)
        draw.line((u - 6, v - 6, u + 6, v + 6), fill=_TARGET_RGB, width=2)
        draw.line((u - 6, v + 6, u + 6, v - 6), fill=_TARGET_RGB, width=2)
    if title:
        draw.text((6, 4), title, fill=_TEXT_RGB)
    return np.array(image)


def _frame_3d(x, colors, domain, size, ground_height, title) -> np.ndarray:
    """Oblique view: screen x = x + 0.5 z, screen y = y + 0.3 z, scaled to fit the domain."""
    scale = size / (1.5 * domain)
    image = Image.new("RGB", (size, size), SKY_RGB)
    draw = ImageDraw.Draw(image)

    def project(p):
        return ((p[..., 0] + 0.5 * p[..., 2]) * scale + 0.05 * size,
                size - (p[..., 1] + 0.3 * p[..., 2]) * scale - 0.05 * size)

    g = 0.0 if ground_height is None else ground_height
    corners = np.array([[0, g, 0], [domain, g, 0], [domain, g, domain], [0, g, domain]])
    u, v = project(corners)
    draw.polygon(list(zip(u.tolist(), v.tolist())), fill=GROUND_RGB)
    shadow = x.copy()
    shadow[:, 1] = g
    su, sv = project(shadow)
    radius = max(1.5, 0.006 * size)
    for a, b in zip(su.tolist(), sv.tolist()):
        draw.ellipse((a - radius, b - radius * 0.5, a + radius, b + radius * 0.5),
                     fill=(150, 140, 120))
    order = np.argsort(-x[:, 2])  # far (large z) first
    u, v = project(x[order])
    depth = x[order, 2] / domain
    height = (x[order, 1] - g) / domain
    shade = np.clip(1.0 - 0.45 * depth + 0.3 * height, 0.35, 1.2)[:, None]
    shaded = np.clip(colors[order] * shade, 0, 255).astype(np.uint8)
    for a, b, c in zip(u.tolist(), v.tolist(), shaded.tolist()):
        draw.ellipse((a - radius, b - radius, a + radius, b + radius), fill=tuple(c))
    if title:
        draw.text((6, 4), title, fill=_TEXT_RGB)
    return np.array(image)
