"""Headless rendering of gravitational N-body trajectories, and their energy-error plot.

Reads positions as numpy arrays, never a simulator. Frames show the x-y plane from above (3D
input is projected along z) on a dark background, with equal scale on both axes. Up to
``MAX_DRAWN_BODIES`` bodies are filled disks, sized by mass^(1/3) and colored from ``PALETTE``,
each trailed by its recent path fading into the background; larger systems (star clusters,
Plummer spheres) are drawn as one-pixel dots written with numpy, brighter where they pile up.
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
    "TEXT_RGB",
    "body_radii",
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
        trail: Number of past frames each trail reaches back (>= 0; 0 draws no trails).
        size: Frame (width, height) in pixels, each >= 16.
        bounds: View (xmin, xmax, ymin, ymax) in world units, overriding the fitted view; the
            scale is the largest that shows all of it, and bodies outside it are not drawn.
            With ``follow`` only its size is used, centered on the center of mass.
        follow: Whether every frame is centered on the (mass-weighted) center of mass.
        title: Text drawn in the top-left corner of every frame.
        labels: A name per body, shape [n], drawn beside it in its color.
        subtitles: A line of text per frame, shape [T], drawn under the title, e.g.
            ``"t = 1.23, dE/E = 3e-9"``.

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
    trail = _as_trail(trail)
    width, height = _as_size(size)
    bounds = _as_bounds(bounds)
    labels = _as_texts(labels, num_bodies, "labels", "body")
    subtitles = _as_texts(subtitles, num_frames, "subtitles", "frame")

    many = num_bodies > MAX_DRAWN_BODIES
    max_radius = 0.0 if many else float(np.clip(min(width, height) / 40, 4.0, _MAX_RADIUS))
    com = np.einsum("tnd,n->td", traj, mass) / mass.sum()
    scale, centers = _view(traj, com, (width, height), bounds, follow, pad=max_radius)
    # World -> pixel for all frames at once; y points up in the world and down in the image.
    pixels = (traj - centers[:, None, :]) * np.array([scale, -scale]) + [width / 2, height / 2]
    pixels = np.clip(pixels, -_MAX_PIXEL, _MAX_PIXEL)

    if many:
        frames = _draw_cloud(pixels, (width, height))
    else:
        frames = _draw_bodies(
            pixels, depth, body_radii(mass, max_radius), (width, height), trail=trail
        )
    if title or subtitles or labels:
        for t, frame in enumerate(frames):
            image = Image.fromarray(frame)
            draw = ImageDraw.Draw(image)
            if labels:
                radii = body_radii(mass, max(max_radius, 1.0))
                _draw_labels(draw, pixels[t], radii, labels, height)
            _draw_header(draw, title, subtitles[t] if subtitles else None, height)
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
) -> tuple[float, np.ndarray]:
    """Return (pixels per world unit, view center per frame [T, 2])."""
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
    trail: int,
) -> list[np.ndarray]:
    """Disks and fading trails for a few bodies; ``pixels`` has shape [T, n, 2]."""
    num_frames, num_bodies, _ = pixels.shape
    line_width = max(1, round(min(size) / 240))
    colors = [PALETTE[b % len(PALETTE)] for b in range(num_bodies)]
    # fills[age - 1][b]: the color of body b's trail segment ending ``age`` frames ago.
    background = np.asarray(BACKGROUND_RGB, dtype=np.float64)
    weights = np.linspace(_TRAIL_NEWEST, _TRAIL_OLDEST, trail) if trail else np.zeros(0)
    fills = [
        [
            tuple(int(c) for c in np.rint(background + w * (np.asarray(rgb) - background)))
            for rgb in colors
        ]
        for w in weights
    ]
    # Heavier (larger) bodies first, so a planet in front of its star is not hidden by it.
    mass_order = np.argsort(-radii, kind="stable")
    points = pixels.tolist()
    blank = Image.new("RGB", size, BACKGROUND_RGB)

    frames = []
    for t in range(num_frames):
        image = blank.copy()
        draw = ImageDraw.Draw(image)
        # Oldest segments first, so where a path crosses an older one the newer is on top.
        for k in range(max(0, t - trail), t):
            shade = fills[t - k - 1]
            for b in range(num_bodies):
                draw.line((*points[k][b], *points[k + 1][b]), fill=shade[b], width=line_width)
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


def _as_masses(masses: np.ndarray, num_bodies: int) -> np.ndarray:
    mass = np.asarray(masses, dtype=np.float64)
    if mass.shape != (num_bodies,):
        raise ValueError(f"masses: need shape [n] = [{num_bodies}], got {mass.shape}")
    bad = np.flatnonzero(~(np.isfinite(mass) & (mass > 0)))
    if bad.size:
        raise ValueError(f"masses: need positive finite values, body {bad[0]} has {mass[bad[0]]}")
    return mass


def _as_trail(trail: int) -> int:
    if isinstance(trail, bool) or int(trail) != trail or trail < 0:
        raise ValueError(f"trail: need an integer >= 0, got {trail}")
    return int(trail)


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
