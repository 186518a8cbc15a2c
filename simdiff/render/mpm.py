"""Headless rendering of MPM trajectories into RGB frames with Pillow.

Reads positions as numpy arrays, never a simulator. The view is the whole (square) domain,
fixed. 2D: an orthographic side view; particles are dots colored by material (elastic green,
liquid blue, plastic ochre), muscles by their action (grey at rest, red pulling, blue pushing),
over a ground band; the tool is outlined, an optional target drawn as a cross or as faint
cells, observed positions (of the observation nearest in time) as magenta dots over the
particles. Numbered ticks every 0.1 m along the ground (or the domain's floor) give the scale, a
readout the time, a legend top right what the colors mean. 3D: point splats in an oblique view from above, painted far to near, shaded by depth and
height, over a ground plane with the particles' shadows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from simdiff.render.mass_spring import (
    GROUND_RGB,
    SKY_RGB,
    _font,
    draw_actuation_legend,
    draw_readout,
    spring_colors,
)

__all__ = ["MATERIAL_RGB", "OBSERVED_RGB", "TARGET_CELL_RGB", "TARGET_RGB", "render_mpm"]

MATERIAL_RGB = {0: (70, 160, 90), 1: (50, 120, 230), 2: (200, 150, 60), 3: (225, 190, 120)}
"""Particle color by material (elastic, liquid, plastic, sand)."""
MATERIAL_NAMES = {0: "elastic", 1: "liquid", 2: "plastic", 3: "sand"}
TARGET_RGB = (220, 30, 30)
"""Color of a target point's cross."""
TARGET_CELL_RGB = (245, 185, 185)
"""Fill of a target shape's occupied cells."""
OBSERVED_RGB = (190, 30, 190)
"""Color of observed particle positions."""

_TOOL_RGB = (40, 40, 40)
_TEXT_RGB = (20, 20, 20)
_TICK_RGB = (96, 86, 70)
_TICK_SPACING = 0.1  # m between ticks; every other one is numbered


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
    target_box: Sequence[Sequence[float]] | None = None,
    observed: np.ndarray | None = None,
    observed_times: Sequence[float] | None = None,
    times: Sequence[float] | None = None,
    bounds: Sequence[float] | None = None,
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
        target_cells: Occupancy [cells, cells] (or flattened, [cells^2], x-major) of a target
            shape, cells above 1/2 drawn faintly: cells tiling ``[0, domain]^2``, or, with
            ``target_box``, cells centered on a ``cells`` x ``cells`` lattice of nodes from
            its lower to its upper corner (what :func:`simdiff.sims.mpm.tasks.occupancy`
            samples).
        target_box: ``((x0, y0), (x1, y1))``, the corners of ``target_cells``' lattice [m].
        observed: Observed particle positions [K, n, 2] (or [K, 1, n, 2]) at the
            ``observed_times`` [K] [s]; each frame draws the observation nearest its time.
        times: The time of each frame [s], [T], written under the title (and needed to pick
            observations).
        bounds: The 2D view (xmin, xmax, ymin, ymax) [m], default the whole domain; the
            frame is ``size`` wide and as high as the view's aspect ratio makes it.
        size: Frame width in pixels (and height, for the whole domain or 3D).
        title: Text in the top-left corner.

    Returns:
        T frames, each a [H, size, 3] ``uint8`` array (H = size but for 2D ``bounds``).
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
    if times is not None and len(times) != traj.shape[0]:
        raise ValueError(f"times: need one time per frame ({traj.shape[0]}), got {len(times)}")
    cells = _target_cells(target_cells, target_box, domain)
    if bounds is not None:
        bounds = tuple(float(b) for b in bounds)
        if len(bounds) != 4 or not (bounds[1] > bounds[0] and bounds[3] > bounds[2]):
            raise ValueError(f"bounds: need (xmin, xmax, ymin, ymax) with xmin < xmax and "
                             f"ymin < ymax, got {bounds}")
    seen = None
    if observed is not None:
        seen = np.asarray(observed, dtype=np.float64)
        seen = seen[:, 0] if seen.ndim == 4 else seen
        if seen.ndim != 3 or seen.shape[2] != traj.shape[2]:
            raise ValueError(f"observed: need shape [K, n, {traj.shape[2]}], got {seen.shape}")
        if observed_times is None or times is None or len(observed_times) != len(seen):
            raise ValueError("observed: needs observed_times (one per observation) and times")
    legend = [(MATERIAL_NAMES.get(int(m), f"material {int(m)}"), MATERIAL_RGB.get(int(m)))
              for m in np.unique(materials)]
    if target_point is not None:
        legend.append(("target", TARGET_RGB))
    if cells is not None:
        legend.append(("target shape", TARGET_CELL_RGB))
    if seen is not None:
        legend.append(("observed", OBSERVED_RGB))
    muscles = actuation is not None and any(np.isfinite(np.asarray(a, float)).any()
                                            for a in actuation)
    frames = []
    for t in range(traj.shape[0]):
        colors = base.copy()
        if actuation is not None:
            a = np.asarray(actuation[t], dtype=np.float64)
            muscle = ~np.isnan(a)
            # Positive actions pull (contract): drawn blue like a contracting spring.
            colors[muscle] = spring_colors(-a[muscle])
        center = None if tool is None else np.asarray(tool[2][t], dtype=np.float64)
        now = None
        if traj.shape[2] == 2:
            if seen is not None:
                k = int(np.argmin(np.abs(np.asarray(observed_times) - times[t])))
                now = (seen[k], float(observed_times[k]))
            image = _frame_2d(traj[t], colors, domain, size, ground_height, tool, center,
                              target_point, cells, title, now, bounds)
        else:
            image = _frame_3d(traj[t], colors, domain, size, ground_height, title)
        draw = ImageDraw.Draw(image)
        text = max(240, min(image.size))  # text scales with the frame's shorter side
        if times is not None:
            draw_readout(draw, f"t = {float(times[t]):.3f} s", text, bool(title))
        entries = legend
        if now is not None:  # says which observation is drawn
            entries = [(f"observed, t = {now[1]:.2f} s" if name == "observed" else name, rgb)
                       for name, rgb in legend]
        _draw_legend(draw, entries, size, text, muscles)
        frames.append(np.array(image))
    return frames


def _target_cells(target_cells, target_box, domain):
    """Rectangles (x0, y0, x1, y1) [m] of a target shape's occupied cells, or None."""
    if target_cells is None:
        return None
    occ = np.asarray(target_cells, dtype=np.float64)
    if occ.ndim == 1:
        side = round(occ.size**0.5)
        if side * side != occ.size:
            raise ValueError(f"target_cells: {occ.size} values are not a square grid of cells")
        occ = occ.reshape(side, side)
    if occ.ndim != 2 or occ.shape[0] != occ.shape[1] or occ.shape[0] < 2:
        raise ValueError(f"target_cells: need [cells, cells] or [cells^2], got {occ.shape}")
    cells = occ.shape[0]
    i, j = np.nonzero(occ > 0.5)
    if target_box is None:
        step = domain / cells
        lo = np.stack([i * step, j * step], 1)
        return np.concatenate([lo, lo + step], 1)
    (x0, y0), (x1, y1) = target_box
    step = np.array([x1 - x0, y1 - y0]) / (cells - 1)
    nodes = np.array([x0, y0]) + np.stack([i, j], 1) * step
    return np.concatenate([nodes - step / 2, nodes + step / 2], 1)


def _draw_legend(draw, entries, width, text, muscles) -> None:
    """Top right of a frame ``width`` wide: the muscles' actuation bar, then a swatch and a
    name per color, in text sized for a frame ``text`` high."""
    size = width
    font_size = max(9, text // 40)
    y = 8
    if muscles:
        # Positive actions pull (contract), drawn like a contracting spring.
        draw_actuation_legend(draw, width, text, low="+1 pull", high="push -1")
        y += max(6, text // 45) + font_size + 10
    for name, color in entries:
        w = draw.textlength(name, font=_font(font_size))
        x = size - 10 - w
        draw.rectangle((x - font_size - 4, y + 1, x - 4, y + font_size - 1), fill=color,
                       outline=_TEXT_RGB)
        draw.text((x, y), name, fill=_TEXT_RGB, font=_font(font_size))
        y += font_size + 4


def _frame_2d(x, colors, domain, size, ground_height, tool, center, target_point,
              target_cells, title, observed, bounds) -> Image.Image:
    xmin, xmax, ymin, ymax = (0.0, domain, 0.0, domain) if bounds is None else bounds
    scale = size / (xmax - xmin)
    height = round((ymax - ymin) * scale)
    image = Image.new("RGB", (size, height), SKY_RGB)
    draw = ImageDraw.Draw(image)

    def px(p):
        p = np.asarray(p, dtype=np.float64)
        return (p[..., 0] - xmin) * scale, height - (p[..., 1] - ymin) * scale

    if target_cells is not None:
        for x0, y0, x1, y1 in target_cells.tolist():
            (u0, v0), (u1, v1) = px((x0, y0)), px((x1, y1))
            draw.rectangle((u0, v1, u1, v0), fill=TARGET_CELL_RGB)
    floor = height - 1 if ground_height is None else px((0.0, ground_height))[1]
    if ground_height is not None:
        draw.rectangle((0, floor, size, height), fill=GROUND_RGB)
    font_size = max(9, size // 48)
    font = _font(font_size)
    # Ticks point into the ground band where it fits their numbers, else up from the floor.
    down = ground_height is not None and height - floor >= font_size + 8
    sign = 1 if down else -1
    first = int(np.ceil(xmin / _TICK_SPACING - 1e-9))
    for k in range(first, int(xmax / _TICK_SPACING + 1e-9) + 1):
        u = px((k * _TICK_SPACING, 0.0))[0]
        numbered = k % 2 == 0
        draw.line((u, floor, u, floor + sign * (6 if numbered else 3)), fill=_TICK_RGB)
        if numbered and k > 0:
            text = f"{k * _TICK_SPACING:.1f}" + (" m" if k == 2 else "")
            w = draw.textlength(text, font=font)
            y = floor + 5 if down else floor - 8 - font_size
            draw.text((min(u - w / 2, size - w - 2), y), text, fill=_TICK_RGB, font=font)
    radius = max(1.0, 0.004 * size)
    us, vs = px(x)
    for u, v, color in zip(us.tolist(), vs.tolist(), colors.tolist()):
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
        u, v = px(target_point[:2])
        draw.line((u - 6, v - 6, u + 6, v + 6), fill=TARGET_RGB, width=2)
        draw.line((u - 6, v + 6, u + 6, v - 6), fill=TARGET_RGB, width=2)
    if observed is not None:
        # Many particles: single pixels, so the observed pile does not hide the simulated one.
        r = 0 if len(observed[0]) > 300 else max(1.0, 0.0025 * size)
        us, vs = px(observed[0])
        for u, v in zip(us.tolist(), vs.tolist()):
            draw.rectangle((u - r, v - r, u + r, v + r), fill=OBSERVED_RGB)
    if title:
        draw.text((6, 4), title, fill=_TEXT_RGB, font=_font(max(10, max(240, min(size, height))
                                                               // 24)))
    return image


def _frame_3d(x, colors, domain, size, ground_height, title) -> Image.Image:
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
        draw.text((6, 4), title, fill=_TEXT_RGB, font=_font(max(10, size // 24)))
    return image
