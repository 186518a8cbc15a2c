"""Headless rendering of grid-fluid trajectories: dye colors, solids, optional vorticity.

Reads dye, velocity and solid fractions as numpy arrays, never a simulator. Each dye channel
has a color from ``DYE_RGB``; a cell's color is the background absorbed by the dye
(``1 - exp(-1.5 dye)`` of each channel's color, so thick dye saturates instead of clipping).
Obstacles are drawn slate blue by solid fraction, the paddle yellow and outlined; a task's
regions are outlined along cell borders (the target green, a region to avoid red) and a target
image is shown as an inset. 3D fields are shown as a volume projection: dye summed along z (an
optical depth), solids by their largest fraction along z. Frames are upscaled with
nearest-neighbor so cells stay visible, and y points up. Given the frames' times or the cell
size, a strip under the field holds the time, a scale bar and the dye's color bar.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "AVOID_RGB",
    "BACKGROUND_RGB",
    "DYE_RGB",
    "PADDLE_RGB",
    "SOLID_RGB",
    "TARGET_RGB",
    "fluid_frames",
    "render_fluid",
    "vorticity",
]

BACKGROUND_RGB = (12, 14, 24)
DYE_RGB = ((245, 245, 240), (255, 140, 40), (60, 160, 255), (230, 60, 140))
"""Colors of dye channels 0, 1, 2, ... (cycled): smoke white, orange, blue, magenta."""
SOLID_RGB = (120, 140, 175)
"""Color of solid cells (obstacles, walls): slate blue, apart from every dye color."""
PADDLE_RGB = (240, 205, 60)
"""Color of the paddle: yellow, outlined in white, never mistaken for dye or a target."""
TARGET_RGB = (90, 255, 120)
"""Outline of a target region and border of the target image's inset."""
AVOID_RGB = (255, 70, 70)
"""Outline of a region the dye should avoid (the other outlet)."""
_TEXT_RGB = (232, 234, 242)
_STRIP_RGB = (28, 30, 44)
_DYE_GAIN = 1.5  # optical depth per unit of dye


def vorticity(velocity: np.ndarray, dx: float = 1.0) -> np.ndarray:
    """Vorticity ``dv/dx - du/dy`` [1/s] at cell corners averaged to cells, 2D only, from the
    padded face velocities [2, n0+1, n1+1]."""
    u = velocity[0, :, :-1]  # [n0+1, n1]
    v = velocity[1, :-1, :]  # [n0, n1+1]
    uc = 0.5 * (u[1:] + u[:-1])
    vc = 0.5 * (v[:, 1:] + v[:, :-1])
    return np.gradient(vc, dx, axis=0) - np.gradient(uc, dx, axis=1)


def render_fluid(
    dye: Sequence[np.ndarray],
    *,
    obstacle: np.ndarray | None = None,
    paddle: Sequence[np.ndarray] | None = None,
    target: np.ndarray | None = None,
    avoid: np.ndarray | None = None,
    target_image: np.ndarray | None = None,
    target_height: float | None = None,
    vorticities: Sequence[np.ndarray] | None = None,
    title: str | None = None,
    subtitles: Sequence[str] | None = None,
    times: Sequence[float] | None = None,
    dx: float | None = None,
    labels: Sequence[str] | None = None,
    pixels: int = 384,
) -> list[np.ndarray]:
    """Frames [H, W, 3] uint8 of a dye trajectory.

    Args:
        dye: Per frame, dye [channels, n0, n1(, n2)] (>= 0).
        obstacle: Static solid fraction [n0, n1(, n2)] in [0, 1].
        paddle: Per frame, the paddle's solid fraction per cell [n0, n1(, n2)].
        target: A target region [n0, n1] (a mask, or a density), outlined in
            :data:`TARGET_RGB` along the borders of the cells above 0.5 and faintly tinted.
        avoid: A region [n0, n1] the dye should avoid, outlined in :data:`AVOID_RGB`.
        target_image: A target density [n0, n1] shown as an inset in the top right corner, in
            dye channel 0's colors, bordered in :data:`TARGET_RGB`.
        target_height: A target height [m] (needs ``dx``), drawn as a dashed line across the
            field in :data:`TARGET_RGB`.
        vorticities: Per frame, a 2D field [n0, n1] tinted red (positive) and blue.
        title: Drawn top left; ``subtitles`` per frame below it.
        times: Per frame, the time [s]: with ``dx`` (the cell size [m]), a strip under the
            field shows the time, a scale bar and the dye's color bar.
        dx: Cell size [m], for the scale bar.
        labels: Names of the legend's entries for dye channels, target and avoided regions
            (default ``dye``, ``target``, ``avoid``), e.g. ``["dye", "upper outlet", "lower
            outlet"]``.
        pixels: Size of the longer side of the field.
    """
    if len(dye) == 0:
        raise ValueError("dye: at least one frame is needed")
    if times is not None and len(times) != len(dye):
        raise ValueError(f"times: need one time per frame ({len(dye)}), got {len(times)}")
    frames = []
    for k, field in enumerate(dye):
        field = np.asarray(field, dtype=np.float64)
        if field.ndim not in (3, 4):
            raise ValueError(f"dye[{k}] has shape {field.shape}; expected [channels, n0, n1(, n2)]")
        is_3d = field.ndim == 4
        if is_3d:
            field = field.sum(-1) / max(field.shape[-1] ** 0.5, 1.0)
        rgb = _dye_rgb(field)
        if vorticities is not None:
            w = np.asarray(vorticities[k])
            scale = np.abs(w).max() or 1.0
            tint = np.clip(w / scale, -1, 1)[..., None]
            rgb = (
                rgb
                + 90 * np.clip(tint, 0, 1) * np.array([1.0, 0.1, 0.1])
                - 90 * np.clip(tint, -1, 0) * np.array([0.1, 0.3, 1.0])
            )
        for region, color in ((target, TARGET_RGB), (avoid, AVOID_RGB)):
            if region is not None:  # a faint tint inside, besides the outline
                inside = (np.asarray(region) > 0.5)[..., None]
                rgb = np.where(inside, 0.85 * rgb + 0.15 * np.asarray(color, float), rgb)
        for solid, color in (
            (obstacle, SOLID_RGB),
            (None if paddle is None else paddle[k], PADDLE_RGB),
        ):
            if solid is None:
                continue
            s = np.asarray(solid, dtype=np.float64)
            if s.ndim == 3:
                s = s.max(-1)
            s = np.clip(s, 0, 1)[..., None]
            rgb = rgb * (1 - s) + np.asarray(color, dtype=np.float64) * s
        picture, scale = _upscale(rgb, pixels)
        draw = ImageDraw.Draw(picture)
        if paddle is not None:
            _outline(draw, np.asarray(paddle[k]), scale, (255, 255, 255), width=1)
        for region, color in ((target, TARGET_RGB), (avoid, AVOID_RGB)):
            if region is not None:
                _outline(draw, np.asarray(region), scale, color)
        if target_image is not None:
            _inset(picture, np.asarray(target_image, dtype=np.float64))
        if target_height is not None:
            if dx is None:
                raise ValueError("target_height: needs dx, the cell size [m]")
            row = picture.height - target_height / dx * scale
            for x in range(0, picture.width, 12):
                draw.line((x, row, x + 6, row), fill=TARGET_RGB, width=2)
            label_font = _font(max(9, picture.height // 34))
            draw.text((picture.width - draw.textlength("target height", font=label_font) - 6,
                       row - 4 - max(9, picture.height // 34)), "target height",
                      fill=TARGET_RGB, font=label_font)
        title_size = max(10, picture.height // 26)
        font = _font(title_size)
        if title:
            draw.text((6, 4), title, fill=_TEXT_RGB, font=font, stroke_width=1,
                      stroke_fill=BACKGROUND_RGB)
        if subtitles:
            draw.text((6, 8 + title_size), subtitles[k], fill=_TEXT_RGB, font=font,
                      stroke_width=1, stroke_fill=BACKGROUND_RGB)
        if times is not None or dx is not None:
            entries = _legend(field.shape[0], target, avoid, obstacle, paddle, labels)
            picture = _strip(picture, None if times is None else times[k],
                             None if dx is None else scale / dx, entries)
        frames.append(np.asarray(picture))
    return frames


def _dye_rgb(field: np.ndarray) -> np.ndarray:
    """Background absorbed by each channel's dye, [*cells, 3] floats."""
    rgb = np.zeros(field.shape[1:] + (3,)) + np.array(BACKGROUND_RGB, dtype=np.float64)
    for c, channel in enumerate(field):
        color = np.array(DYE_RGB[c % len(DYE_RGB)], dtype=np.float64)
        alpha = 1 - np.exp(-np.clip(channel, 0, None) * _DYE_GAIN)
        rgb = rgb * (1 - alpha[..., None]) + color * alpha[..., None]
    return rgb


def _upscale(rgb: np.ndarray, pixels: int) -> tuple[Image.Image, int]:
    """Grid [x, y] with y up -> an image, each cell ``scale`` pixels square."""
    image = np.clip(rgb, 0, 255).astype(np.uint8).transpose(1, 0, 2)[::-1]
    n1, n0 = image.shape[:2]
    scale = max(1, pixels // max(n0, n1))
    picture = Image.fromarray(np.ascontiguousarray(image)).resize(
        (n0 * scale, n1 * scale), Image.Resampling.NEAREST
    )
    return picture, scale


def _outline(draw: ImageDraw.ImageDraw, region: np.ndarray, scale: int,
             color: tuple[int, int, int], width: int = 2) -> None:
    """Lines along the borders between cells above 0.5 and the others (not the domain's
    edges); a border between cells i-1 and i lies on pixel column i * scale."""
    if region.ndim == 3:
        region = region.max(-1)
    inside = region.T[::-1] > 0.5  # rows top to bottom, columns along x
    r, c = np.nonzero(inside[:, 1:] != inside[:, :-1])  # between columns c and c + 1
    for row, col in zip(r.tolist(), c.tolist()):
        x = (col + 1) * scale
        draw.rectangle((x - width // 2, row * scale, x + (width - 1) // 2, (row + 1) * scale - 1),
                       fill=color)
    r, c = np.nonzero(inside[1:] != inside[:-1])  # between rows r and r + 1
    for row, col in zip(r.tolist(), c.tolist()):
        y = (row + 1) * scale
        draw.rectangle((col * scale, y - width // 2, (col + 1) * scale - 1, y + (width - 1) // 2),
                       fill=color)


def _inset(picture: Image.Image, target: np.ndarray) -> None:
    """The target density, a fifth of the field's size, in the top right corner."""
    thumb, _ = _upscale(_dye_rgb(target[None]), max(picture.width, picture.height) // 5)
    x0 = picture.width - thumb.width - 6
    picture.paste(thumb, (x0, 6))
    draw = ImageDraw.Draw(picture)
    draw.rectangle((x0 - 2, 4, x0 + thumb.width + 1, 7 + thumb.height), outline=TARGET_RGB,
                   width=2)
    font = _font(max(9, picture.height // 34))
    draw.text((x0 + 3, 8), "target", fill=TARGET_RGB, font=font, stroke_width=1,
              stroke_fill=BACKGROUND_RGB)


def _legend(channels, target, avoid, obstacle, paddle, labels):
    names = list(labels or [])
    dye_names = names[:channels] + [f"dye {c}" if channels > 1 else "dye"
                                    for c in range(len(names), channels)]
    rest = names[channels:]
    entries = [(name, DYE_RGB[c % len(DYE_RGB)], True) for c, name in enumerate(dye_names)]
    if target is not None:
        entries.append((rest[0] if rest else "target", TARGET_RGB, False))
    if avoid is not None:
        entries.append((rest[1] if len(rest) > 1 else "avoid", AVOID_RGB, False))
    if obstacle is not None:
        entries.append(("solid", SOLID_RGB, False))
    if paddle is not None:
        entries.append(("paddle", PADDLE_RGB, False))
    return entries


def _strip(picture: Image.Image, time: float | None, pixels_per_m: float | None,
           entries) -> Image.Image:
    """The field over a strip: time and scale bar on the first line, the legend (dye color
    bars from 0 to 2, swatches) on the second."""
    font_size = max(9, picture.width // 36)
    font = _font(font_size)
    line = font_size + 8
    out = Image.new("RGB", (picture.width, picture.height + 2 * line + 4), _STRIP_RGB)
    out.paste(picture, (0, 0))
    draw = ImageDraw.Draw(out)
    y = picture.height + 4
    if time is not None:
        draw.text((6, y), f"t = {time:.3f} s", fill=_TEXT_RGB, font=font)
    if pixels_per_m is not None:
        from simdiff.render.nbody import nice_length

        length = nice_length(0.25 * picture.width / pixels_per_m)
        bar = length * pixels_per_m
        right = picture.width - 8
        mid = y + font_size // 2
        draw.line((right - bar, mid, right, mid), fill=_TEXT_RGB, width=2)
        for x in (right - bar, right):
            draw.line((x, mid - 4, x, mid + 4), fill=_TEXT_RGB)
        text = f"{length:g} m"
        draw.text((right - bar - draw.textlength(text, font=font) - 6, y), text,
                  fill=_TEXT_RGB, font=font)
    x, y = 6, y + line
    for name, color, is_dye in entries:
        if is_dye:  # a color bar: dye 0 .. 2, as the field paints it
            bar = 3 * font_size
            values = np.linspace(0.0, 2.0, bar)
            alpha = 1 - np.exp(-_DYE_GAIN * values)
            shades = np.asarray(BACKGROUND_RGB) * (1 - alpha[:, None]) + np.asarray(
                color) * alpha[:, None]
            draw.text((x, y), "0", fill=_TEXT_RGB, font=font)
            x += draw.textlength("0 ", font=font)
            for k, shade in enumerate(np.rint(shades).astype(int).tolist()):
                draw.line((x + k, y + 2, x + k, y + font_size), fill=tuple(shade))
            x += bar + 3
            text = f"2 {name}"
        else:
            draw.rectangle((x, y + 2, x + font_size - 2, y + font_size), fill=color)
            x += font_size + 2
            text = name
        draw.text((x, y), text, fill=_TEXT_RGB, font=font)
        x += draw.textlength(text, font=font) + font_size
    return out


@functools.lru_cache(maxsize=8)
def _font(pixel_size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=pixel_size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def fluid_frames(scene, rollout, *, world: int = 0, caption: str | None = None
                 ) -> list[np.ndarray]:
    """Frames of world ``world`` of a recorded fluid rollout of ``scene``: its dye, its
    obstacle (the rollout's params, else the model's), its paddle (the model gives the
    paddle's size), the time, scale and legend; ``scene.render_options`` are keywords of
    :func:`render_fluid` (``target``, ``avoid``, ``target_image``, ``labels``)."""
    import torch

    model = scene.model
    steps = sorted(rollout.frames)
    states = [rollout.frames[t] for t in steps]
    worlds = states[0].batch_size
    if not 0 <= world < worlds:
        raise ValueError(f"world={world} is out of range: the rollout has {worlds} worlds")
    obstacle = None
    params = getattr(rollout, "params", None)
    if params is not None:
        solid = params.obstacle.detach()
        if solid.dim() == model.dim + 1:
            solid = solid[world]
        obstacle = solid.cpu().numpy() if float(solid.abs().max()) > 0 else None
    elif model.obstacle is not None:
        obstacle = model.obstacle.detach().cpu().numpy()
    paddle = None
    if model.paddle is not None:
        from simdiff.sims.fluid.grid import Grid

        grid = Grid(model.resolution, set(), torch.float64, torch.device("cpu"))
        half = torch.tensor(model.paddle.half_size, dtype=torch.float64)
        paddle = []
        for s in states:
            x = s.paddle_x[world : world + 1].detach().cpu().double()
            cover = grid.box_coverage((x - half) / model.dx, (x + half) / model.dx, None)
            paddle.append(cover[0].numpy())
    dye = [s.dye[world].detach().cpu().numpy() for s in states]
    times = [float(s.time[world]) for s in states]
    title = scene.name if worlds == 1 else f"{scene.name} (world {world})"
    title = f"{title}: {caption}" if caption else title
    return render_fluid(dye, obstacle=obstacle, paddle=paddle, title=title, times=times,
                        dx=model.dx, **scene.render_options)
