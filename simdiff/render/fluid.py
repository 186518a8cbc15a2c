"""Headless rendering of grid-fluid trajectories: dye colors, solids, optional vorticity.

Reads dye, velocity and solid fractions as numpy arrays, never a simulator. Each dye channel
has a color from ``DYE_RGB``; a cell's color is the background absorbed by the dye
(``1 - exp(-dye)`` of each channel's color, so thick dye saturates instead of clipping).
Obstacles are drawn gray by solid fraction, the paddle light gray, an optional target outline
in white. 3D fields are shown as a volume projection: dye summed along z (an optical depth),
solids by their largest fraction along z. Frames are upscaled with nearest-neighbor so cells
stay visible, and y points up.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["BACKGROUND_RGB", "DYE_RGB", "render_fluid", "vorticity"]

BACKGROUND_RGB = (12, 14, 24)
DYE_RGB = ((245, 245, 240), (255, 140, 40), (60, 160, 255), (230, 60, 140))
"""Colors of dye channels 0, 1, 2, ... (cycled): smoke white, orange, blue, magenta."""
_SOLID_RGB = np.array([110, 112, 120], dtype=np.float64)
_PADDLE_RGB = np.array([200, 200, 190], dtype=np.float64)


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
    vorticities: Sequence[np.ndarray] | None = None,
    title: str | None = None,
    subtitles: Sequence[str] | None = None,
    pixels: int = 384,
) -> list[np.ndarray]:
    """Frames [H, W, 3] uint8 of a dye trajectory.

    Args:
        dye: Per frame, dye [channels, n0, n1(, n2)] (>= 0).
        obstacle: Static solid fraction [n0, n1(, n2)] in [0, 1].
        paddle: Per frame, the paddle's solid fraction per cell [n0, n1(, n2)].
        target: Target density [n0, n1] outlined where it crosses 0.5.
        vorticities: Per frame, a 2D field [n0, n1] tinted red (positive) and blue.
        title: Drawn top left; ``subtitles`` per frame below it.
        pixels: Size of the longer side of a frame.
    """
    if len(dye) == 0:
        raise ValueError("dye: at least one frame is needed")
    frames = []
    for k, field in enumerate(dye):
        field = np.asarray(field, dtype=np.float64)
        if field.ndim not in (3, 4):
            raise ValueError(f"dye[{k}] has shape {field.shape}; expected [channels, n0, n1(, n2)]")
        is_3d = field.ndim == 4
        if is_3d:
            field = field.sum(-1) / max(field.shape[-1] ** 0.5, 1.0)
        rgb = np.zeros(field.shape[1:] + (3,)) + np.array(BACKGROUND_RGB, dtype=np.float64)
        for c, channel in enumerate(field):
            color = np.array(DYE_RGB[c % len(DYE_RGB)], dtype=np.float64)
            alpha = 1 - np.exp(-np.clip(channel, 0, None) * 1.5)
            rgb = rgb * (1 - alpha[..., None]) + color * alpha[..., None]
        if vorticities is not None:
            w = np.asarray(vorticities[k])
            scale = np.abs(w).max() or 1.0
            tint = np.clip(w / scale, -1, 1)[..., None]
            rgb = (
                rgb
                + 90 * np.clip(tint, 0, 1) * np.array([1.0, 0.1, 0.1])
                - 90 * np.clip(tint, -1, 0) * np.array([0.1, 0.3, 1.0])
            )
        for solid, color in (
            (obstacle, _SOLID_RGB),
            (None if paddle is None else paddle[k], _PADDLE_RGB),
        ):
            if solid is None:
                continue
            s = np.asarray(solid, dtype=np.float64)
            if s.ndim == 3:
                s = s.max(-1)
            s = np.clip(s, 0, 1)[..., None]
            rgb = rgb * (1 - s) + color * s
        frames.append(_finish(rgb, target, title, subtitles[k] if subtitles else None, pixels))
    return frames


def _finish(
    rgb: np.ndarray, target: np.ndarray | None, title: str | None, subtitle: str | None, pixels: int
) -> np.ndarray:
    # Grid [x, y] with y up -> image rows top to bottom.
    image = np.clip(rgb, 0, 255).astype(np.uint8).transpose(1, 0, 2)[::-1]
    n1, n0 = image.shape[:2]
    scale = max(1, pixels // max(n0, n1))
    picture = Image.fromarray(np.ascontiguousarray(image)).resize(
        (n0 * scale, n1 * scale), Image.Resampling.NEAREST
    )
    draw = ImageDraw.Draw(picture)
    if target is not None:
        inside = np.asarray(target).T[::-1] > 0.5
        edge = inside ^ np.roll(inside, 1, 0) | inside ^ np.roll(inside, 1, 1)
        for row, col in zip(*np.nonzero(edge)):
            draw.rectangle(
                (col * scale, row * scale, col * scale + 1, row * scale + 1), fill=(255, 255, 255)
            )
    font = ImageFont.load_default()
    if title:
        draw.text((6, 4), title, fill=(232, 234, 242), font=font)
    if subtitle:
        draw.text((6, 18), subtitle, fill=(232, 234, 242), font=font)
    return np.asarray(picture)


def fluid_frames(scene, rollout, *, world: int = 0) -> list[np.ndarray]:
    """Frames of world ``world`` of a recorded fluid rollout of ``scene``: its dye, its
    obstacle (the rollout's params, else the model's) and its paddle (the model gives the
    paddle's size)."""
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
    subtitles = [f"t = {float(s.time[world]):.3f} s" for s in states]
    title = scene.name if worlds == 1 else f"{scene.name} (world {world})"
    return render_fluid(dye, obstacle=obstacle, paddle=paddle, title=title, subtitles=subtitles)
