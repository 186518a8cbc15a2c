"""Headless rendering of gravitational N-body trajectories, and their energy-error plot.

Reads positions as numpy arrays, never a simulator. Frames show the x-y plane from above (3D
input is projected along z) on a dark background, with equal scale on both axes. Up to
``MAX_DRAWN_BODIES`` bodies are filled disks, sized by mass^(1/3) and colored from ``PALETTE``,
each trailed by its recent path fading into the background; larger systems (star clusters,
Plummer spheres) are drawn as one-pixel dots written with numpy, brighter where they pile up.
A task's marks are drawn over the trails: a target point as a white reticle, observed positions
as crosses in a light tint of their body's color; a scale bar (or, in the log-radius view of a
planetary system, rings at powers of ten) gives lengths, a legend the marks' meaning.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "BACKGROUND_RGB",
    "CLOUD_RGB",
    "ENERGY_ERROR_FLOOR",
    "MAX_DRAWN_BODIES",
    "PALETTE",
    "TARGET_RGB",
    "TEXT_RGB",
    "body_radii",
    "log_radial",
    "observed_rgb",
    "plot_energy_error",
    "render_nbody",
]

BACKGROUND_RGB = (8, 10, 28)
"""Background color, a near-black navy."""
TEXT_RGB = (232, 234, 242)
"""Color of the title and subtitle."""
PALETTE = (
    (255, 204, 77),  # gold
    (86, 170, 255),  # sky blue
    (255, 99, 110),  # coral
    (110, 221, 140),  # green
    (196, 138, 255),  # violet
    (255, 150, 50),  # orange
    (72, 222, 222),  # cyan
    (255, 130, 210),  # pink
    (190, 230, 90),  # lime
    (225, 225, 235),  # white
)
"""Body colors, cycled through by body index; bright enough to read on the background."""
CLOUD_RGB = (200, 216, 255)
"""Color of the dots when more than ``MAX_DRAWN_BODIES`` bodies are drawn."""
MAX_DRAWN_BODIES = 50
"""Above this many bodies, bodies are single-color dots without trails or disks."""
TARGET_RGB = (255, 255, 255)
"""Color of a target point's reticle: pure white, which neither bodies nor text use."""
ENERGY_ERROR_FLOOR = 1e-17
"""Smallest |relative energy error| plotted: exact zeros are raised to it for the log axis."""

_MIN_RADIUS = 2.0  # pixels: the lightest planet stays visible next to its star
_MAX_RADIUS = 14.0  # pixels: the heaviest body's radius, on frames of 560+ pixels
_MARGIN = 0.04  # fraction of the frame kept free around the fitted view, besides the disks
_TRAIL_NEWEST = 0.85  # blend from background to body color of the newest trail segment
_TRAIL_OLDEST = 0.08  # ... and of the oldest one
_CLOUD_FITTED = 0.98  # fraction of a cloud's positions (per axis) the default view fits
_DOT_KEEP = 0.4  # each extra dot on a pixel keeps this fraction of the remaining darkness
_MAX_PIXEL = 1e6  # pixel coordinates are clipped to this, which Pillow's integer math survives
_RING_RGB = (48, 56, 96)  # the log-radius view's rings at powers of ten
_DIM_TEXT_RGB = (150, 156, 186)


def observed_rgb(body: int) -> tuple[int, int, int]:
    """Color of body ``body``'s observed positions: its palette color halfway to white, so an
    observation reads as that body's but is never mistaken for its disk."""
    rgb = np.asarray(PALETTE[body % len(PALETTE)], dtype=np.float64)
    return tuple(int(c) for c in np.rint(rgb + 0.5 * (255 - rgb)))


def log_radial(points: np.ndarray, center: np.ndarray, inner: float) -> np.ndarray:
    """Map x-y points ``[..., 2]`` to the log-radius view about ``center``: the direction is
    kept and the distance r becomes ``log10(1 + r / inner)``, so orbits from ``inner`` to a
    thousand times it share one frame."""
    offset = np.asarray(points, dtype=np.float64) - center
    r = np.linalg.norm(offset, axis=-1, keepdims=True)
    stretched = np.log10(1.0 + r / inner)
    return offset * np.divide(stretched, r, out=np.zeros_like(r), where=r > 0)


def render_nbody(
    positions: np.ndarray,
    masses: np.ndarray,
    *,
    trail: int | Sequence[int] = 80,
    size: tuple[int, int] = (640, 480),
    bounds: tuple[float, float, float, float] | None = None,
    follow: bool = False,
    title: str | None = None,
    labels: Sequence[str] | None = None,
    subtitles: Sequence[str] | None = None,
    target_point: Sequence[float] | None = None,
    observed: np.ndarray | None = None,
    observed_label: str = "observed",
    log_radius: float | None = None,
    length_unit: str = "",
    scale_bar: bool = True,
) -> list[np.ndarray]:
    """Render an N-body trajectory, one RGB frame per time step.

    The view is fixed for the whole trajectory: by default it fits every body in every frame,
    with a margin and one scale for both axes. With ``follow`` each frame is centered on the
    center of mass instead, at a fixed scale that fits every body's offset from it; trails are
    then drawn in the center-of-mass frame, so a drifting binary still traces closed orbits.
    Above ``MAX_DRAWN_BODIES`` bodies the default view fits the central 98% of the positions
    along each axis instead, so that a few escapers do not shrink a cluster to a speck.

    Up to ``MAX_DRAWN_BODIES`` bodies, each body is a disk of radius proportional to
    mass^(1/3), the heaviest at the largest radius, clamped to at least 2 pixels so that planets
    next to a star stay visible. Lighter bodies are drawn over heavier ones (in 3D, higher z
    over lower z). Each trail is a polyline through the body's positions in the last ``trail``
    frames, blended from the background (oldest) toward the body's color (newest). More bodies
    are drawn as one-pixel dots without trails.

    Args:
        positions: Body positions in world units per frame, shape [T, n, 2] or [T, n, 3].
        masses: Body masses, shape [n], each positive and finite.
        trail: Number of past frames each trail reaches back (>= 0; 0 draws no trails), or
            one such number per body (e.g. about one orbit each).
        size: Frame (width, height) in pixels, each >= 16.
        bounds: View (xmin, xmax, ymin, ymax) in world units, overriding the fitted view; the
            scale is the largest that shows all of it, and bodies outside it are not drawn.
            With ``follow`` only its size is used, centered on the center of mass.
        follow: Whether every frame is centered on the (mass-weighted) center of mass.
        title: Text drawn in the top-left corner of every frame.
        labels: A name per body, shape [n], drawn beside it in its color.
        subtitles: A line of text per frame, shape [T], drawn under the title, e.g.
            ``"t = 1.23, dE/E = 3e-9"``.
        target_point: A point (x, y[, z]) in world units marked with a white reticle in every
            frame; the fitted view includes it.
        observed: Observed positions of the bodies, shape [K, n, 2 or 3] (K observation
            times), each a cross in its body's light tint (:func:`observed_rgb`); the fitted
            view includes them.
        observed_label: The legend's name for ``observed`` (e.g. ``"start: the orbit closes
            here"``).
        log_radius: If given, the log-radius view about the first frame's center of mass
            (:func:`log_radial` with this inner length): for planetary systems whose orbits
            span decades of radius; rings and labels mark distances at powers of ten.
        length_unit: Unit of lengths written on the scale bar or rings, e.g. ``"AU"``.
        scale_bar: Whether a scale bar (or the log view's rings) is drawn.

    Returns:
        T frames, each an [H, W, 3] ``uint8`` array with H, W = ``size[1]``, ``size[0]``.

    Raises:
        ValueError: If an argument has the wrong shape or length, ``positions`` holds
            non-finite values, a mass is not positive, ``trail`` is negative, or ``size`` or
            ``bounds`` are degenerate.
    """
    traj, depth = _as_positions(positions)
    num_frames, num_bodies, _ = traj.shape
    mass = _as_masses(masses, num_bodies)
    trail = _as_trail(trail, num_bodies)
    width, height = _as_size(size)
    bounds = _as_bounds(bounds)
    labels = _as_texts(labels, num_bodies, "labels", "body")
    subtitles = _as_texts(subtitles, num_frames, "subtitles", "frame")
    target = _as_point(target_point)
    seen = _as_observed(observed, num_bodies)
    if log_radius is not None and not (np.isfinite(log_radius) and log_radius > 0):
        raise ValueError(f"log_radius: need a positive finite length, got {log_radius}")

    many = num_bodies > MAX_DRAWN_BODIES
    max_radius = 0.0 if many else float(np.clip(min(width, height) / 40, 4.0, _MAX_RADIUS))
    com = np.einsum("tnd,n->td", traj, mass) / mass.sum()
    origin = com[0].copy()
    if log_radius is not None:
        traj, com = log_radial(traj, origin, log_radius), log_radial(com, origin, log_radius)
        seen = None if seen is None else log_radial(seen, origin, log_radius)
        target = None if target is None else log_radial(target, origin, log_radius)
    marks = [m.reshape(-1, 2) for m in (target, seen) if m is not None]
    extra = np.concatenate(marks) if marks else None
    scale, centers = _view(traj, com, (width, height), bounds, follow, pad=max_radius,
                           extra=extra)
    # World -> pixel for all frames at once; y points up in the world and down in the image.
    flip = np.array([scale, -scale])
    half = np.array([width / 2, height / 2])
    pixels = (traj - centers[:, None, :]) * flip + half
    pixels = np.clip(pixels, -_MAX_PIXEL, _MAX_PIXEL)

    def to_pixels(points: np.ndarray, t: int) -> np.ndarray:
        return np.clip((points - centers[t]) * flip + half, -_MAX_PIXEL, _MAX_PIXEL)

    def underlay(draw: ImageDraw.ImageDraw, t: int) -> None:
        if log_radius is not None and scale_bar:
            _draw_rings(draw, to_pixels(np.zeros(2), t), scale, log_radius, length_unit, height)
        if seen is not None:
            _draw_observed(draw, to_pixels(seen, t), height)
        if target is not None:
            _draw_target(draw, to_pixels(target, t), height)

    if many:
        frames = _draw_cloud(pixels, (width, height))
        if marks or log_radius is not None:
            for t, frame in enumerate(frames):
                image = Image.fromarray(frame)
                underlay(ImageDraw.Draw(image), t)
                frames[t] = np.array(image)
    else:
        frames = _draw_bodies(
            pixels, depth, body_radii(mass, max_radius), (width, height), trail=trail,
            underlay=underlay,
        )
    legend = [kind for kind, mark in (("target", target), ("observed", seen)) if mark is not None]
    names = {"target": "target", "observed": observed_label}
    for t, frame in enumerate(frames):
        image = Image.fromarray(frame)
        draw = ImageDraw.Draw(image)
        if labels:
            radii = body_radii(mass, max(max_radius, 1.0))
            _draw_labels(draw, pixels[t], radii, labels, height)
        _draw_header(draw, title, subtitles[t] if subtitles else None, height)
        if scale_bar and log_radius is None:
            _draw_scale_bar(draw, scale, length_unit, (width, height))
        if legend:
            _draw_legend(draw, legend, height, names)
        if log_radius is not None:
            draw.text((8, height - 8 - max(9, height // 40)), "log-radius view",
                      fill=_DIM_TEXT_RGB, font=_font(max(9, height // 40)))
        frames[t] = np.array(image)
    return frames


def body_radii(masses: np.ndarray, max_radius: float) -> np.ndarray:
    """Disk radius of each body in pixels: proportional to mass^(1/3), clamped at 2 pixels.

    Args:
        masses: Body masses, shape [n], positive.
        max_radius: Radius of the heaviest body in pixels.

    Returns:
        Radii in pixels, shape [n], in [min(2, ``max_radius``), ``max_radius``].
    """
    masses = np.asarray(masses, dtype=np.float64)
    radii = max_radius * np.cbrt(masses / masses.max())
    return np.clip(radii, min(_MIN_RADIUS, max_radius), max_radius)


def plot_energy_error(
    times: Mapping[str, Sequence[float]] | Sequence[float],
    errors: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """Plot |relative energy error| against time for one or several runs, log y, as a PNG.

    Errors are plotted as absolute values; those below ``ENERGY_ERROR_FLOOR`` (exact zeros
    included, as at t = 0) are raised to it so the log axis can show them. Non-finite errors
    leave gaps.

    Args:
        times: The times of every run, one shared sequence, or a mapping keyed like
            ``errors`` when the runs were sampled at different times.
        errors: Run label -> relative energy error (E - E0) / E0 at each time; a legend is
            drawn when there is more than one run.
        path: Output PNG file. Parent directories are created.
        title: Plot title.

    Returns:
        The path written, as a ``Path``.

    Raises:
        ValueError: If ``errors`` is empty, ``times`` lacks a run of ``errors``, or a run's
            errors and times differ in length.
    """
    figure = _energy_error_figure(times, errors, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


# --------------------------------------------------------------------------------------------
# Drawing.


def _view(
    traj: np.ndarray,
    com: np.ndarray,
    size: tuple[int, int],
    bounds: tuple[float, float, float, float] | None,
    follow: bool,
    *,
    pad: float,
    extra: np.ndarray | None = None,
) -> tuple[float, np.ndarray]:
    """Return (pixels per world unit, view center per frame [T, 2]); a fitted view without
    ``follow`` also fits the ``extra`` points [m, 2] (a task's marks)."""
    width, height = size
    if bounds is not None:
        xmin, xmax, ymin, ymax = bounds
        scale = min(width / (xmax - xmin), height / (ymax - ymin))
        center = np.array([(xmin + xmax) / 2, (ymin + ymax) / 2])
    else:
        # A cluster's few escapers would shrink its core to a speck: clouds fit a central
        # fraction of the positions, a few bodies fit all of them.
        cut = (1 - _CLOUD_FITTED) / 2 if traj.shape[1] > MAX_DRAWN_BODIES else 0.0
        if follow:
            # Symmetric about the center of mass, which every frame puts at the image center.
            offsets = np.abs(traj - com[:, None, :]).reshape(-1, 2)
            half = np.quantile(offsets, 1 - 2 * cut, axis=0) if cut else offsets.max(axis=0)
            center = np.zeros(2)
        else:
            points = traj.reshape(-1, 2)
            if extra is not None and not cut:
                points = np.concatenate([points, extra])
            if cut:
                low, high = np.quantile(points, [cut, 1 - cut], axis=0)
            else:
                low, high = points.min(axis=0), points.max(axis=0)
            half, center = (high - low) / 2, (high + low) / 2
        # An axis along which nothing moves (a static body, bodies on a line) must not set the
        # scale; if neither axis has an extent, show one world unit.
        tiny = 1e-9 * max(1.0, float(np.abs(traj).max()))
        if half.max() <= tiny:
            half = np.array([0.5, 0.5])
        free = (1 - 2 * _MARGIN) * np.array([width, height]) / 2 - pad
        free = np.maximum(free, 1.0)
        scale = float(np.min(free / np.maximum(half, tiny)))
    centers = com if follow else np.tile(center, (len(traj), 1))
    return scale, centers


def _draw_bodies(
    pixels: np.ndarray,
    depth: np.ndarray | None,
    radii: np.ndarray,
    size: tuple[int, int],
    *,
    trail: np.ndarray,
    underlay=None,
) -> list[np.ndarray]:
    """Disks and fading trails for a few bodies; ``pixels`` has shape [T, n, 2]. ``underlay(
    draw, t)`` draws a frame's marks over its trails and under its bodies."""
    num_frames, num_bodies, _ = pixels.shape
    line_width = max(1, round(min(size) / 240))
    colors = [PALETTE[b % len(PALETTE)] for b in range(num_bodies)]
    # fills[age - 1][b]: the color of body b's trail segment ending ``age`` frames ago (None
    # beyond its trail), fading over each body's own trail length.
    background = np.asarray(BACKGROUND_RGB, dtype=np.float64)
    longest = int(trail.max()) if trail.size else 0
    fills = [[None] * num_bodies for _ in range(longest)]
    for b, rgb in enumerate(colors):
        for age, w in enumerate(np.linspace(_TRAIL_NEWEST, _TRAIL_OLDEST, int(trail[b]))):
            fills[age][b] = tuple(
                int(c) for c in np.rint(background + w * (np.asarray(rgb) - background)))
    # Heavier (larger) bodies first, so a planet in front of its star is not hidden by it.
    mass_order = np.argsort(-radii, kind="stable")
    points = pixels.tolist()
    blank = Image.new("RGB", size, BACKGROUND_RGB)

    frames = []
    for t in range(num_frames):
        image = blank.copy()
        draw = ImageDraw.Draw(image)
        # Oldest segments first, so where a path crosses an older one the newer is on top.
        for k in range(max(0, t - longest), t):
            shade = fills[t - k - 1]
            for b in range(num_bodies):
                if shade[b] is not None:
                    draw.line((*points[k][b], *points[k + 1][b]), fill=shade[b],
                              width=line_width)
        if underlay is not None:
            underlay(draw, t)
        order = mass_order if depth is None else np.argsort(depth[t], kind="stable")
        for b in order.tolist():
            x, y = points[t][b]
            r = radii[b]
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colors[b])
        frames.append(np.array(image))
    return frames


def _draw_cloud(pixels: np.ndarray, size: tuple[int, int]) -> list[np.ndarray]:
    """One-pixel dots for many bodies, written with numpy; ``pixels`` has shape [T, n, 2]."""
    width, height = size
    background = np.asarray(BACKGROUND_RGB, dtype=np.float64)
    cloud = np.asarray(CLOUD_RGB, dtype=np.float64)
    blank = np.broadcast_to(np.asarray(BACKGROUND_RGB, dtype=np.uint8), (height * width, 3))
    uv = np.floor(pixels).astype(np.int64)
    frames = []
    for u, v in zip(uv[..., 0], uv[..., 1]):
        inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
        counts = np.bincount(v[inside] * width + u[inside], minlength=width * height)
        hit = np.flatnonzero(counts)
        # A lone body is clearly visible; a dense core saturates toward the dot color.
        alpha = 1.0 - _DOT_KEEP ** counts[hit]
        frame = blank.copy()
        frame[hit] = np.rint(background + alpha[:, None] * (cloud - background))
        frames.append(frame.reshape(height, width, 3))
    return frames


def _draw_labels(
    draw: ImageDraw.ImageDraw,
    pixels: np.ndarray,
    radii: np.ndarray,
    labels: Sequence[str],
    height: int,
) -> None:
    pixel_size = max(9, height // 40)
    font = _font(pixel_size)
    for b, ((x, y), r, label) in enumerate(zip(pixels.tolist(), radii.tolist(), labels)):
        # Up and to the right of the disk, where it hides neither the body nor its trail's end.
        draw.text(
            (x + r + 2, y - r - pixel_size),
            label,
            fill=PALETTE[b % len(PALETTE)],
            font=font,
            stroke_width=1,
            stroke_fill=BACKGROUND_RGB,
        )


def _draw_target(draw: ImageDraw.ImageDraw, at: np.ndarray, height: int) -> None:
    """A reticle: a ring and a cross whose lines meet at the point."""
    x, y = at.tolist()
    r = max(5, height // 60)
    draw.ellipse((x - r, y - r, x + r, y + r), outline=TARGET_RGB, width=1)
    draw.line((x - 1.6 * r, y, x + 1.6 * r, y), fill=TARGET_RGB, width=1)
    draw.line((x, y - 1.6 * r, x, y + 1.6 * r), fill=TARGET_RGB, width=1)


def _draw_observed(draw: ImageDraw.ImageDraw, at: np.ndarray, height: int) -> None:
    """At ``at`` [K, n, 2], body b's observations as small crosses in ``observed_rgb(b)``."""
    r = max(2, height // 160)
    for frame in at.tolist():
        for b, (x, y) in enumerate(frame):
            color = observed_rgb(b)
            draw.line((x - r, y - r, x + r, y + r), fill=color, width=1)
            draw.line((x - r, y + r, x + r, y - r), fill=color, width=1)


def _draw_legend(draw: ImageDraw.ImageDraw, kinds: Sequence[str], height: int,
                 names: Mapping[str, str]) -> None:
    """Bottom left, one line per kind of mark: the mark, then what it is."""
    pixel_size = max(9, height // 40)
    font = _font(pixel_size)
    y = height - 8 - pixel_size * len(kinds) - 4 * (len(kinds) - 1)
    for kind in kinds:
        at = np.array([14.0, y + pixel_size / 2])
        if kind == "target":
            _draw_target(draw, at, min(height, 360))
        else:
            _draw_observed(draw, at[None, None], height)
        draw.text((28, y), names[kind], fill=TEXT_RGB, font=font, stroke_width=1,
                  stroke_fill=BACKGROUND_RGB)
        y += pixel_size + 4


def nice_length(longest: float) -> float:
    """The largest 1, 2 or 5 times a power of ten that is at most ``longest`` (> 0)."""
    power = 10.0 ** np.floor(np.log10(longest))
    return float(max(m * power for m in (1.0, 2.0, 5.0) if m * power <= longest))


def _format_length(length: float, unit: str) -> str:
    text = f"{length:g}"
    return f"{text} {unit}" if unit else text


def _draw_scale_bar(draw: ImageDraw.ImageDraw, scale: float, unit: str,
                    size: tuple[int, int]) -> None:
    """Bottom right: a bar of a round length about a fifth of the frame wide, labeled."""
    width, height = size
    length = nice_length(0.2 * width / scale)
    pixels = length * scale
    right, y = width - 12, height - 12
    pixel_size = max(9, height // 40)
    draw.line((right - pixels, y, right, y), fill=TEXT_RGB, width=2)
    for x in (right - pixels, right):
        draw.line((x, y - 4, x, y + 4), fill=TEXT_RGB, width=1)
    text = _format_length(length, unit)
    font = _font(pixel_size)
    w = draw.textlength(text, font=font)
    draw.text((right - pixels / 2 - w / 2, y - 6 - pixel_size), text, fill=TEXT_RGB, font=font,
              stroke_width=1, stroke_fill=BACKGROUND_RGB)


def _draw_rings(draw: ImageDraw.ImageDraw, center: np.ndarray, scale: float, inner: float,
                unit: str, height: int) -> None:
    """The log-radius view's scale: a ring at each power of ten of distance, labeled."""
    x, y = center.tolist()
    font = _font(max(9, height // 44))
    for k in range(int(np.floor(np.log10(inner))), int(np.floor(np.log10(inner))) + 5):
        r = np.log10(1.0 + 10.0**k / inner) * scale
        if r < 24 or r > 4 * height:
            continue
        draw.ellipse((x - r, y - r, x + r, y + r), outline=_RING_RGB, width=1)
        draw.text((x + 0.71 * r + 2, y + 0.71 * r), _format_length(10.0**k, unit),
                  fill=_DIM_TEXT_RGB, font=font)


def _draw_header(
    draw: ImageDraw.ImageDraw, title: str | None, subtitle: str | None, height: int
) -> None:
    y = 6
    for text, pixel_size in ((title, max(10, height // 24)), (subtitle, max(9, height // 34))):
        if text:
            # A background-colored outline keeps the text readable over trails and bodies.
            font = _font(pixel_size)
            draw.text(
                (8, y), text, fill=TEXT_RGB, font=font, stroke_width=1, stroke_fill=BACKGROUND_RGB
            )
            y += pixel_size + 6


@functools.lru_cache(maxsize=8)
def _font(pixel_size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=pixel_size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


# --------------------------------------------------------------------------------------------
# Energy-error plot.


def _energy_error_figure(
    times: Mapping[str, Sequence[float]] | Sequence[float],
    errors: Mapping[str, Sequence[float]],
    title: str | None,
) -> Figure:
    """Return the matplotlib ``Figure`` that ``plot_energy_error`` saves."""
    # plots.plot_series draws every series against one shared x, which runs sampled at
    # different times do not have; the figure is set up the same way (Agg, no pyplot).
    from matplotlib.figure import Figure

    if len(errors) == 0:
        raise ValueError("errors: must hold at least one run, got an empty mapping")
    series = {}
    for name, error in errors.items():
        if isinstance(times, Mapping):
            if name not in times:
                raise ValueError(f"times: lacks the run {name!r} of errors")
            x = np.asarray(times[name], dtype=np.float64)
        else:
            x = np.asarray(times, dtype=np.float64)
        y = np.abs(np.asarray(error, dtype=np.float64))
        if x.ndim != 1 or y.shape != x.shape:
            raise ValueError(
                f"errors[{name!r}]: shape {y.shape} differs from its times' shape {x.shape}"
            )
        series[name] = (x, np.where(np.isfinite(y), np.maximum(y, ENERGY_ERROR_FLOOR), np.nan))

    figure = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    for name, (x, y) in series.items():
        axes.plot(x, y, label=name, marker="." if len(x) <= 50 else None)
    axes.set_yscale("log")
    axes.set_xlabel("time")
    axes.set_ylabel("|relative energy error|")
    axes.grid(True, which="major", alpha=0.3)
    if title:
        axes.set_title(title)
    if len(series) > 1:
        axes.legend()
    return figure


# --------------------------------------------------------------------------------------------
# Validation.


def _as_positions(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Return x-y positions [T, n, 2] and, for 3D input, z [T, n] (else None)."""
    try:
        traj = np.asarray(positions, dtype=np.float64)
    except (ValueError, TypeError) as err:
        raise ValueError(f"positions: need a numeric array [T, n, 2 or 3] ({err})") from None
    if traj.ndim != 3 or traj.shape[2] not in (2, 3) or traj.shape[0] == 0 or traj.shape[1] == 0:
        raise ValueError(f"positions: need shape [T>0, n>0, 2 or 3], got {traj.shape}")
    bad = np.flatnonzero(~np.isfinite(traj).all(axis=(1, 2)))
    if bad.size:
        raise ValueError(f"positions: frame {bad[0]} holds non-finite values")
    depth = traj[:, :, 2] if traj.shape[2] == 3 else None
    return traj[:, :, :2], depth


def _as_point(point: Sequence[float] | None) -> np.ndarray | None:
    if point is None:
        return None
    p = np.asarray(point, dtype=np.float64).reshape(-1)
    if p.shape not in ((2,), (3,)) or not np.isfinite(p).all():
        raise ValueError(f"target_point: need finite (x, y) or (x, y, z), got {point}")
    return p[:2]


def _as_observed(observed: np.ndarray | None, num_bodies: int) -> np.ndarray | None:
    if observed is None:
        return None
    obs = np.asarray(observed, dtype=np.float64)
    if obs.ndim != 3 or obs.shape[1] != num_bodies or obs.shape[2] not in (2, 3):
        raise ValueError(f"observed: need shape [K, n={num_bodies}, 2 or 3], got {obs.shape}")
    if not np.isfinite(obs).all():
        raise ValueError("observed: holds non-finite positions")
    return obs[..., :2]


def _as_masses(masses: np.ndarray, num_bodies: int) -> np.ndarray:
    mass = np.asarray(masses, dtype=np.float64)
    if mass.shape != (num_bodies,):
        raise ValueError(f"masses: need shape [n] = [{num_bodies}], got {mass.shape}")
    bad = np.flatnonzero(~(np.isfinite(mass) & (mass > 0)))
    if bad.size:
        raise ValueError(f"masses: need positive finite values, body {bad[0]} has {mass[bad[0]]}")
    return mass


def _as_trail(trail: int | Sequence[int], num_bodies: int) -> np.ndarray:
    """Trail lengths per body, [n] integers >= 0."""
    values = np.asarray(trail)
    if values.ndim == 0:
        values = np.full(num_bodies, trail)
    if (values.shape != (num_bodies,) or values.dtype == bool
            or not np.issubdtype(values.dtype, np.number) or (values < 0).any()
            or (np.asarray(values, np.int64) != values).any()):
        raise ValueError(f"trail: need an integer >= 0 or one per body ({num_bodies}), "
                         f"got {trail}")
    return values.astype(np.int64)


def _as_size(size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s < 16 for s in size):
        raise ValueError(f"size: need (width, height) integers >= 16, got {size}")
    return int(size[0]), int(size[1])


def _as_bounds(
    bounds: tuple[float, float, float, float] | None,
) -> tuple[float, float, float, float] | None:
    if bounds is None:
        return None
    if len(bounds) != 4:
        raise ValueError(f"bounds: need (xmin, xmax, ymin, ymax), got {bounds}")
    xmin, xmax, ymin, ymax = (float(b) for b in bounds)
    if not (np.isfinite([xmin, xmax, ymin, ymax]).all() and xmax > xmin and ymax > ymin):
        raise ValueError(f"bounds: need finite xmin < xmax and ymin < ymax, got {bounds}")
    return xmin, xmax, ymin, ymax


def _as_texts(texts: Sequence[str] | None, count: int, name: str, unit: str) -> list[str] | None:
    if texts is None:
        return None
    if isinstance(texts, str) or len(texts) != count:
        got = "a string" if isinstance(texts, str) else f"{len(texts)}"
        raise ValueError(f"{name}: need one string per {unit} ({count}), got {got}")
    return [str(text) for text in texts]
