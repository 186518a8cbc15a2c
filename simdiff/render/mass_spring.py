"""Headless rendering of mass-spring trajectories into RGB frames with Pillow.

Reads positions as numpy arrays, never a simulator. 2D trajectories are drawn in an orthographic
side view (x right, y up) over a ground band with tick marks every 0.1 length units; 3D
trajectories in a perspective view from slightly above, over a ground grid with a shadow. Spring
colors show the actuation: passive springs grey, actuated springs blue (contracting, -1) through
grey (0) to red (extending, +1), explained by a color bar top right when springs are actuated.
Every fifth 2D ground tick is numbered (its x), and given the frames' times a readout under
the title says the time.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from simdiff.render.video import LazyFrames

__all__ = [
    "CONTRACT_RGB",
    "EXTEND_RGB",
    "GROUND_RGB",
    "PASSIVE_RGB",
    "SHADOW_RGB",
    "SKY_RGB",
    "render_mass_spring",
    "spring_colors",
]

SKY_RGB = (236, 240, 245)
"""Background color above the ground."""
GROUND_RGB = (206, 196, 174)
"""Fill color of the ground (the band below the ground line in 2D, the plane in 3D)."""
PASSIVE_RGB = (150, 150, 150)
"""Color of passive springs, and of actuated springs at zero actuation."""
CONTRACT_RGB = (30, 80, 235)
"""Color of an actuated spring at actuation -1 (contracting)."""
EXTEND_RGB = (230, 35, 35)
"""Color of an actuated spring at actuation +1 (extending)."""
SHADOW_RGB = (92, 92, 92)
"""Color of the springs' shadows on the ground in 3D (their vertical projection)."""

_HORIZON_RGB = (96, 86, 70)
_TICK_RGB = (132, 120, 100)
_GRID_RGB = (178, 168, 146)
_PARTICLE_RGB = (35, 35, 40)
_TEXT_RGB = (20, 20, 20)

_TICK_SPACING = 0.1  # world units between ground ticks / grid lines, as the brief fixes
_FOLLOW_WINDOW = 15  # frames averaged by the follow camera, so the gait does not shake it
_FOV_Y = math.radians(40.0)
_ELEVATION = math.radians(24.0)
_AZIMUTH = math.radians(25.0)


def render_mass_spring(
    positions: Sequence[np.ndarray] | np.ndarray,
    springs: np.ndarray,
    *,
    actuation: Sequence[np.ndarray] | np.ndarray | None = None,
    ground_height: float | None = 0.0,
    size: tuple[int, int] = (640, 360),
    bounds: tuple[float, float, float, float] | None = None,
    follow: bool = True,
    title: str | None = None,
    world: int = 0,
    times: Sequence[float] | None = None,
    legend: tuple[str, str, str] = ("actuation", "-1 contract", "extend +1"),
    legend_range: tuple[float, float] = (-1.0, 1.0),
) -> LazyFrames:
    """Render a mass-spring trajectory, one RGB frame per time step (of one world).

    The dimension of the positions picks the view. In 2D the vertical extent and the scale are
    fixed from the first frame (or from all frames when ``follow`` is False) so sizes stay
    comparable; the camera's x follows a moving average of the particles' mean x. In 3D a
    perspective camera looks at the robot from slightly above and, with ``follow``, tracks the
    center of mass in x and z.

    Args:
        positions: T frames of particle positions, shape [T, n, 2] or [T, n, 3] (y up), or a
            list of T arrays [n, dim]. A single [n, dim] array is one frame. Batched frames
            [T, B, n, dim] (a list of T arrays [B, n, dim]) draw world ``world``.
        springs: Particle index pairs of the springs, integer shape [m, 2].
        actuation: Per frame the actuation of each spring, shape [T, m] (or [T, B, m] for
            batched frames), roughly in [-1, 1]; NaN or 0 for passive springs. None draws
            every spring as passive.
        ground_height: Height y of the ground; None draws no ground (and, in 3D, no shadow).
        size: Frame (width, height) in pixels, each >= 16.
        bounds: View (xmin, xmax, ymin, ymax) in world units, overriding the automatic view.
            With ``follow`` the x-range keeps its width but is centered on the particles; in 3D
            it sets the region the camera frames.
        follow: Whether the camera follows the particles along x (and z in 3D). When False the
            view covers the whole trajectory.
        title: Text drawn in the top-left corner of every frame, e.g. ``"step 120"``.
        world: Which world of batched frames to draw (0 by default).
        times: The time of each frame [s], shape [T], written under the title.
        legend: What the spring colors mean, for the color bar drawn when some spring's
            value is nonzero: (name, label of the low end, label of the high end).
        legend_range: The values at the color bar's ends (e.g. ``(0, 1)`` for a stiffness
            shown from grey to red).

    Returns:
        T frames, each an [H, W, 3] ``uint8`` array, as a sequence that paints a frame when it
        is read (a 680-step walker's frames held at once were 118 MB; a video writer streams
        them).

    Raises:
        ValueError: If an argument has the wrong shape, holds non-finite positions or
            out-of-range spring indices, or ``size`` or ``bounds`` are degenerate.
    """
    traj = _as_trajectory(positions, world)
    num_frames, num_particles, dim = traj.shape
    springs = _as_springs(springs, num_particles)
    act = _as_actuation(actuation, num_frames, len(springs), world)
    width, height = _as_size(size)
    if bounds is not None:
        xmin, xmax, ymin, ymax = (float(b) for b in bounds)
        if not (xmax > xmin and ymax > ymin):
            raise ValueError(f"bounds: need xmin < xmax and ymin < ymax, got {bounds}")
        bounds = (xmin, xmax, ymin, ymax)
    if ground_height is not None:
        ground_height = float(ground_height)
    colors = [_as_tuples(spring_colors(a)) for a in act] if act is not None else None
    passive = [PASSIVE_RGB] * len(springs)
    if times is not None and len(times) != num_frames:
        raise ValueError(f"times: need one time per frame ({num_frames}), got {len(times)}")
    driven = act is not None and bool(np.any(np.nan_to_num(act) != 0))
    renderer = _render_2d if dim == 2 else _render_3d
    frames = renderer(
        traj,
        springs,
        colors if colors is not None else [passive] * num_frames,
        ground_height=ground_height,
        size=(width, height),
        bounds=bounds,
        follow=follow,
        title=title,
    )
    if times is None and not driven:
        return frames

    def paint(t: int) -> np.ndarray:
        image = Image.fromarray(frames[t])
        draw = ImageDraw.Draw(image)
        if times is not None:
            draw_readout(draw, f"t = {float(times[t]):.2f} s", height, title is not None)
        if driven:
            draw_actuation_legend(draw, width, height, label=legend[0], low=legend[1],
                                  high=legend[2], values=legend_range)
        return np.array(image)

    return LazyFrames(num_frames, paint)


def draw_readout(draw: ImageDraw.ImageDraw, text: str, height: int, below_title: bool) -> None:
    """A line of text (the time) at the top left, under the title if there is one."""
    size = max(10, height // 24)
    y = 4 + (size + 6 if below_title else 0)
    draw.text((6, y), text, fill=_TEXT_RGB, font=_font(max(9, height // 30)))


def draw_actuation_legend(draw: ImageDraw.ImageDraw, width: int, height: int, *,
                          low: str = "-1 contract", high: str = "extend +1",
                          label: str = "actuation",
                          values: tuple[float, float] = (-1.0, 1.0)) -> None:
    """Top right: the color bar of :func:`spring_colors` from ``values[0]`` (labeled ``low``)
    to ``values[1]`` (``high``): -1 is :data:`CONTRACT_RGB`, 0 grey, +1 :data:`EXTEND_RGB`."""
    bar_w, bar_h = max(110, width // 5), max(6, height // 45)
    x0, y0 = width - bar_w - 10, 8
    values = np.linspace(values[0], values[1], bar_w)
    for k, color in enumerate(_as_tuples(spring_colors(values))):
        draw.line((x0 + k, y0, x0 + k, y0 + bar_h), fill=color)
    draw.rectangle((x0 - 1, y0 - 1, x0 + bar_w, y0 + bar_h + 1), outline=_TEXT_RGB)
    font = _font(max(9, min(height, width) // 40))
    y = y0 + bar_h + 3
    draw.text((x0, y), low, fill=_TEXT_RGB, font=font)
    draw.text((x0 + bar_w - draw.textlength(high, font=font), y), high, fill=_TEXT_RGB,
              font=font)
    draw.text((x0 - draw.textlength(label, font=font) - 6, y0 - 2), label, fill=_TEXT_RGB,
              font=font)


def spring_colors(actuation: np.ndarray) -> np.ndarray:
    """Map spring actuations to RGB colors.

    Args:
        actuation: Actuation per spring, shape [m]; clipped to [-1, 1]; NaN means passive.

    Returns:
        ``uint8`` colors, shape [m, 3]: ``CONTRACT_RGB`` at -1, ``PASSIVE_RGB`` at 0 and NaN,
        ``EXTEND_RGB`` at +1, linear in between.
    """
    a = np.clip(np.nan_to_num(np.asarray(actuation, dtype=np.float64), nan=0.0), -1.0, 1.0)
    grey = np.asarray(PASSIVE_RGB, dtype=np.float64)
    end = np.where(a[:, None] < 0, np.asarray(CONTRACT_RGB), np.asarray(EXTEND_RGB))
    return np.rint(grey + np.abs(a)[:, None] * (end - grey)).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# 2D: orthographic side view.


def _render_2d(
    traj: np.ndarray,
    springs: np.ndarray,
    colors: list[list[tuple[int, int, int]]],
    *,
    ground_height: float | None,
    size: tuple[int, int],
    bounds: tuple[float, float, float, float] | None,
    follow: bool,
    title: str | None,
) -> LazyFrames:
    width, height = size
    scale, center_y, center_x = _view_2d(traj, ground_height, size, bounds, follow)
    line_width, radius = _stroke(size)

    background = Image.new("RGB", size, SKY_RGB)
    ground_row = None
    if ground_height is not None:
        ground_row = height / 2 - (ground_height - center_y) * scale
        draw = ImageDraw.Draw(background)
        if ground_row < height:
            draw.rectangle((0, max(ground_row, 0), width, height), fill=GROUND_RGB)
            draw.line((0, ground_row, width, ground_row), fill=_HORIZON_RGB, width=2)
    spacing = _tick_spacing(scale)
    half_view = width / 2 / scale
    tick_font = _font(max(9, height // 36))

    def paint(t: int) -> np.ndarray:
        image = background.copy()
        draw = ImageDraw.Draw(image)
        cx = center_x[t]
        if ground_row is not None and 0 <= ground_row < height:
            # Ticks fixed in the world: with a following camera they are what shows motion.
            first = math.floor((cx - half_view) / spacing)
            last = math.ceil((cx + half_view) / spacing)
            for k in range(first, last + 1):
                u = width / 2 + (k * spacing - cx) * scale
                long = k % 5 == 0
                draw.line(
                    (u, ground_row, u, ground_row + (12 if long else 6)),
                    fill=_HORIZON_RGB if long else _TICK_RGB,
                    width=1,
                )
                if long and ground_row + 14 < height - 8:
                    text = f"{k * spacing:.10g}"
                    w = draw.textlength(text, font=tick_font)
                    draw.text((u - w / 2, ground_row + 14), text, fill=_HORIZON_RGB,
                              font=tick_font)
        u = width / 2 + (traj[t, :, 0] - cx) * scale
        v = height / 2 - (traj[t, :, 1] - center_y) * scale
        pixels = np.stack([u, v], axis=1).tolist()
        for (a, b), color in zip(springs.tolist(), colors[t]):
            draw.line((*pixels[a], *pixels[b]), fill=color, width=line_width)
        for x, y in pixels:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=_PARTICLE_RGB)
        if title:
            _draw_title(draw, title, height)
        return np.array(image)

    return LazyFrames(len(traj), paint)


def _view_2d(
    traj: np.ndarray,
    ground_height: float | None,
    size: tuple[int, int],
    bounds: tuple[float, float, float, float] | None,
    follow: bool,
) -> tuple[float, float, np.ndarray]:
    """Return (pixels per unit, view center y, view center x per frame)."""
    width, height = size
    if bounds is not None:
        xmin, xmax, ymin, ymax = bounds
    else:
        points = traj[0] if follow else traj.reshape(-1, 2)
        xmin, ymin = points.min(axis=0)
        xmax, ymax = points.max(axis=0)
        if ground_height is not None:
            ymin = min(ymin, ground_height)
        span = max(xmax - xmin, ymax - ymin, 0.1)
        # More room above than below: robots jump, and the ground band only needs a strip.
        xmin, xmax = xmin - 0.3 * span, xmax + 0.3 * span
        ymin, ymax = ymin - 0.25 * span, ymax + 0.5 * span
    # One scale for both axes, so shapes are not distorted.
    scale = min(width / (xmax - xmin), height / (ymax - ymin))
    center_y = (ymin + ymax) / 2
    if follow:
        center_x = _smooth(traj[:, :, 0].mean(axis=1))
    else:
        center_x = np.full(len(traj), (xmin + xmax) / 2)
    return scale, center_y, center_x


def _tick_spacing(scale: float) -> float:
    """Return 0.1 units, coarsened by tens only where ticks would be under 4 pixels apart."""
    spacing = _TICK_SPACING
    while spacing * scale < 4:
        spacing *= 10
    return spacing


# --------------------------------------------------------------------------------------------
# 3D: perspective view from slightly above.


def _render_3d(
    traj: np.ndarray,
    springs: np.ndarray,
    colors: list[list[tuple[int, int, int]]],
    *,
    ground_height: float | None,
    size: tuple[int, int],
    bounds: tuple[float, float, float, float] | None,
    follow: bool,
    title: str | None,
) -> LazyFrames:
    width, height = size
    targets, distance = _camera_3d(traj, bounds, follow)
    forward = -np.array(
        [
            math.sin(_AZIMUTH) * math.cos(_ELEVATION),
            math.sin(_ELEVATION),
            math.cos(_AZIMUTH) * math.cos(_ELEVATION),
        ]
    )
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    rotation = np.stack([right, up, forward])  # world -> camera (x right, y up, z depth)
    focal = height / 2 / math.tan(_FOV_Y / 2)
    near = 0.05 * distance
    line_width, radius = _stroke(size)

    background = Image.new("RGB", size, SKY_RGB)
    eye_y = targets[0, 1] - distance * forward[1]
    if ground_height is not None and eye_y > ground_height:
        # The horizon of an infinite plane seen by an unrolled camera pitched down by the
        # elevation is a horizontal line above the image center; below it all is ground.
        horizon = height / 2 - focal * math.tan(_ELEVATION)
        ImageDraw.Draw(background).rectangle((0, max(horizon, 0), width, height), fill=GROUND_RGB)
    grid_spacing = _TICK_SPACING
    grid_half = 1.6 * distance
    while grid_half / grid_spacing > 80:  # keep under ~320 lines per frame
        grid_spacing *= 10

    def project(points: np.ndarray, eye: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cam = (points - eye) @ rotation.T
        depth = cam[..., 2]
        safe = np.maximum(depth, near)
        uv = np.stack(
            [width / 2 + focal * cam[..., 0] / safe, height / 2 - focal * cam[..., 1] / safe],
            axis=-1,
        )
        return uv, depth

    def paint(t: int) -> np.ndarray:
        image = background.copy()
        draw = ImageDraw.Draw(image)
        eye = targets[t] - distance * forward
        if ground_height is not None and eye[1] > ground_height:
            segments = _grid_segments(targets[t], ground_height, grid_half, grid_spacing)
            uv, _ = project(_clip_near(segments, eye, rotation, near), eye)
            for line in uv.reshape(-1, 4).tolist():
                draw.line(line, fill=_GRID_RGB, width=1)
            shadow = traj[t].copy()
            shadow[:, 1] = ground_height
            uv, depth = project(shadow, eye)
            for a, b in springs.tolist():
                if depth[a] > near and depth[b] > near:
                    draw.line((*uv[a], *uv[b]), fill=SHADOW_RGB, width=line_width)
        uv, depth = project(traj[t], eye)
        pixels = uv.tolist()
        # Painter's order: springs (at their midpoints) and particles together, far to near.
        spring_depth = 0.5 * (depth[springs[:, 0]] + depth[springs[:, 1]])
        all_depth = np.concatenate([spring_depth, depth])
        num_springs = len(springs)
        spring_list = springs.tolist()
        for i in np.argsort(-all_depth, kind="stable").tolist():
            if i < num_springs:
                a, b = spring_list[i]
                if depth[a] > near and depth[b] > near:
                    draw.line((*pixels[a], *pixels[b]), fill=colors[t][i], width=line_width)
            elif depth[i - num_springs] > near:
                x, y = pixels[i - num_springs]
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=_PARTICLE_RGB)
        if title:
            _draw_title(draw, title, height)
        return np.array(image)

    return LazyFrames(len(traj), paint)


def _camera_3d(
    traj: np.ndarray, bounds: tuple[float, float, float, float] | None, follow: bool
) -> tuple[np.ndarray, float]:
    """Return the camera target per frame [T, 3] and the camera's distance from it."""
    points = traj[0] if follow else traj.reshape(-1, 3)
    low, high = points.min(axis=0), points.max(axis=0)
    if bounds is not None:
        low[0], high[0], low[1], high[1] = bounds
    center = (low + high) / 2
    radius = max(0.5 * float(np.linalg.norm(high - low)), 0.05)
    # Fit the bounding sphere in the vertical field of view, with some room around it.
    distance = 1.4 * radius / math.sin(_FOV_Y / 2)
    targets = np.tile(center, (len(traj), 1))
    if follow:
        targets[:, 0] = _smooth(traj[:, :, 0].mean(axis=1))
        targets[:, 2] = _smooth(traj[:, :, 2].mean(axis=1))
    return targets, distance


def _grid_segments(
    target: np.ndarray, ground_height: float, half: float, spacing: float
) -> np.ndarray:
    """Return grid line segments [K, 2, 3] on the ground around ``target``, on world multiples
    of ``spacing`` so the grid stays put while the camera moves."""
    lines = []
    for axis in (0, 2):
        other = 2 - axis
        first = math.floor((target[axis] - half) / spacing)
        last = math.ceil((target[axis] + half) / spacing)
        lo, hi = target[other] - half, target[other] + half
        for k in range(first, last + 1):
            a = np.array([0.0, ground_height, 0.0])
            a[axis] = k * spacing
            b = a.copy()
            a[other], b[other] = lo, hi
            lines.append((a, b))
    return np.asarray(lines)


def _clip_near(
    segments: np.ndarray, eye: np.ndarray, rotation: np.ndarray, near: float
) -> np.ndarray:
    """Clip world segments [K, 2, 3] to the camera's near plane, dropping those behind it."""
    depth = (segments - eye) @ rotation[2]  # [K, 2]
    visible = (depth >= near).any(axis=1)
    segments, depth = segments[visible], depth[visible]
    # An endpoint behind the plane slides toward the other one (in front) until it is on it.
    behind = depth < near
    fraction = np.zeros_like(depth)
    fraction[behind] = (near - depth[behind]) / (depth[:, ::-1][behind] - depth[behind])
    return segments + fraction[..., None] * (segments[:, ::-1] - segments)


# --------------------------------------------------------------------------------------------
# Shared helpers.


def _smooth(x: np.ndarray) -> np.ndarray:
    """Centered moving average; exact for motion at constant speed.

    Centered, unlike an exponential filter, so the camera does not lag; the ends are padded by
    point reflection, which extends a straight line, so it does not lag at the ends either.
    """
    window = min(_FOLLOW_WINDOW, len(x))
    window -= 1 - window % 2  # odd, so the window is centered on its frame
    if window <= 1:
        return x.astype(np.float64)
    pad = (window // 2, window - 1 - window // 2)
    padded = np.pad(x.astype(np.float64), pad, mode="reflect", reflect_type="odd")
    return np.convolve(padded, np.full(window, 1.0 / window), mode="valid")


def _stroke(size: tuple[int, int]) -> tuple[int, float]:
    """Return (spring line width, particle radius) in pixels for a frame size."""
    line_width = max(1, round(min(size) / 180))
    return line_width, max(1.5, 1.3 * line_width)


@functools.lru_cache(maxsize=8)
def _font(pixel_size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=pixel_size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _draw_title(draw: ImageDraw.ImageDraw, title: str, height: int) -> None:
    draw.text((6, 4), title, fill=_TEXT_RGB, font=_font(max(10, height // 24)))


def _as_tuples(colors: np.ndarray) -> list[tuple[int, int, int]]:
    return [tuple(c) for c in colors.tolist()]


def _pick_world(values: np.ndarray, world: int, name: str) -> np.ndarray:
    """World ``world`` of batched frames ``[T, B, ...]``."""
    if not (isinstance(world, int) and 0 <= world < values.shape[1]):
        raise ValueError(f"world={world!r}: {name} holds {values.shape[1]} worlds "
                         f"(shape {values.shape}); allowed 0..{values.shape[1] - 1}")
    return values[:, world]


def _as_trajectory(positions: Sequence[np.ndarray] | np.ndarray, world: int = 0) -> np.ndarray:
    try:
        traj = np.asarray(
            positions if isinstance(positions, np.ndarray) else np.stack(positions),
            dtype=np.float64,
        )
    except ValueError as err:
        raise ValueError(f"positions: frames must share one shape [n, dim] ({err})") from None
    if traj.ndim == 4:  # [T, B, n, dim]: batched frames
        traj = _pick_world(traj, world, "positions")
    if traj.ndim == 2:
        traj = traj[None]
    if traj.ndim != 3 or traj.shape[2] not in (2, 3) or traj.shape[0] == 0 or traj.shape[1] == 0:
        raise ValueError(f"positions: need shape [T>0, n>0, 2 or 3], got {traj.shape}")
    bad = np.flatnonzero(~np.isfinite(traj).all(axis=(1, 2)))
    if bad.size:
        raise ValueError(f"positions: frame {bad[0]} holds non-finite values")
    return traj


def _as_springs(springs: np.ndarray, num_particles: int) -> np.ndarray:
    springs = np.asarray(springs)
    if springs.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if springs.ndim != 2 or springs.shape[1] != 2 or not np.issubdtype(springs.dtype, np.integer):
        raise ValueError(f"springs: need integer shape [m, 2], got {springs.dtype} {springs.shape}")
    if springs.min() < 0 or springs.max() >= num_particles:
        raise ValueError(
            f"springs: indices must lie in [0, {num_particles}), got {springs.min()}"
            f"..{springs.max()}"
        )
    return springs.astype(np.int64)


def _as_actuation(
    actuation: Sequence[np.ndarray] | np.ndarray | None, num_frames: int, num_springs: int,
    world: int = 0,
) -> np.ndarray | None:
    if actuation is None:
        return None
    act = np.asarray(
        actuation if isinstance(actuation, np.ndarray) else np.stack(actuation),
        dtype=np.float64,
    )
    if act.ndim == 3:  # [T, B, m]: batched frames
        act = _pick_world(act, world, "actuation")
    if act.ndim == 1 and num_frames == 1:
        act = act[None]
    if act.shape != (num_frames, num_springs):
        raise ValueError(
            f"actuation: need shape [T, m] = [{num_frames}, {num_springs}], got {act.shape}"
        )
    return act


def _as_size(size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s < 16 for s in size):
        raise ValueError(f"size: need (width, height) integers >= 16, got {size}")
    return int(size[0]), int(size[1])
