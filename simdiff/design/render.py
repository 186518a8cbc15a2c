"""Pictures of designs: the final density as a PNG with its loads, supports, compliance and a
color bar, its evolution as a GIF, the compliance curve. Solid is black on white; a problem
that is half of a symmetric structure is shown whole (mirrored about its symmetry edge)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from simdiff.render import plot_loss, write_video

__all__ = ["LOAD_COLOR", "SUPPORT_COLOR", "density_figure", "design_figure", "design_image",
           "write_design_outputs"]

LOAD_COLOR = "#d62728"
"""Color of the load arrows."""
SUPPORT_COLOR = "#1f77b4"
"""Color of the support markers."""


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


def _mirrored_nodes(problem, ix: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """Node columns ``ix`` of the half problem in the whole (mirrored) picture, each copy with
    the sign its x components take (-1 in the mirror image)."""
    n = problem.nelx
    if problem.mirror == "left":
        return [(n + ix, 1.0), (n - ix, -1.0)]
    if problem.mirror == "right":
        return [(ix, 1.0), (2 * n - ix, -1.0)]
    return [(ix, 1.0)]


def design_figure(problem, density: np.ndarray, path: str | Path, *,
                  compliance: float | None = None, title: str | None = None) -> Path:
    """Write a PNG of a design: the density (a color bar from void 0 to solid 1) on axes in
    elements, red arrows at the loaded nodes (scaled to the largest load), blue markers at the
    supports (``>`` holds x, ``^`` holds y, a square both; a symmetry edge's x condition is not
    a support and is left out), and the compliance in the title.

    Compliance is ``F . u`` in the problem's units: unit-sized elements, Young's modulus
    ``e0`` and loads as given (dimensionless for the benchmark problems: E0 = 1, unit loads).
    """
    from matplotlib.figure import Figure

    x = np.clip(np.asarray(density, dtype=np.float64), 0.0, 1.0)
    if problem.mirror == "left":
        x = np.concatenate([x[:, ::-1], x], axis=1)
    elif problem.mirror == "right":
        x = np.concatenate([x, x[:, ::-1]], axis=1)
    nely, width = x.shape
    fig_w = 9.0
    figure = Figure(figsize=(fig_w, min(12.0, fig_w * nely / width * 0.85 + 2.2)), dpi=100,
                    layout="constrained")
    axes = figure.add_subplot()
    # Element (row, col) covers [col, col + 1] x [row, row + 1]; nodes sit on integer points.
    shown = axes.imshow(x, cmap="gray_r", vmin=0.0, vmax=1.0, extent=(0, width, nely, 0),
                        interpolation="nearest")
    bar = figure.colorbar(shown, ax=axes, shrink=0.9, pad=0.01)
    bar.set_label("density (solid fraction)")
    forces, fixed = np.asarray(problem.forces), np.asarray(problem.fixed, dtype=bool)
    loaded = np.argwhere(np.abs(forces).sum(-1) > 0)
    lo, hi = np.array([-1.0, -1.0]), np.array([width + 1.0, nely + 1.0])  # view, with the arrows
    if loaded.size:
        f = forces[loaded[:, 0], loaded[:, 1]]
        length = 0.08 * max(width, nely) / np.abs(f).max()
        for ix, sign in _mirrored_nodes(problem, loaded[:, 0]):
            u, v = sign * f[:, 0] * length, -f[:, 1] * length  # rows grow downwards
            for a, b, du, dv in zip(ix, loaded[:, 1], u, v):
                lo = np.minimum(lo, [a - du - 1, b - dv - 1])
                hi = np.maximum(hi, [a - du + 1, b - dv + 1])
                axes.annotate("", xy=(a, b), xytext=(a - du, b - dv),
                              arrowprops={"arrowstyle": "-|>", "color": LOAD_COLOR, "lw": 2})
    symmetry = {"left": 0, "right": problem.nelx}.get(problem.mirror)
    for hold, marker in (((True, False), ">"), ((False, True), "^"), ((True, True), "s")):
        nodes = np.argwhere((fixed[..., 0] == hold[0]) & (fixed[..., 1] == hold[1]))
        if symmetry is not None and hold == (True, False):
            nodes = nodes[nodes[:, 0] != symmetry]
        for ix, _ in _mirrored_nodes(problem, nodes[:, 0]) if nodes.size else []:
            axes.plot(ix, nodes[:, 1], linestyle="none", marker=marker, markersize=7,
                      color=SUPPORT_COLOR, clip_on=False)
    axes.set_xlim(lo[0], hi[0])
    axes.set_ylim(hi[1], lo[1])
    axes.set_xlabel("x [elements]")
    axes.set_ylabel("y [elements, down]")
    heading = title or problem.name
    if compliance is not None:
        heading += f"\ncompliance F\u00b7u = {compliance:.4g} (E0 = {problem.e0:g}, unit elements)"
    axes.set_title(heading, fontsize=10)
    handles = [axes.plot([], [], color=LOAD_COLOR, marker=r"$\rightarrow$", linestyle="none",
                         markersize=10, label="load")[0],
               axes.plot([], [], color=SUPPORT_COLOR, marker="s", linestyle="none",
                         label="support (> x, ^ y, square both)")[0]]
    figure.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8,
                  frameon=False)
    path = Path(path)
    figure.savefig(path, format="png")
    return path


def density_figure(density: np.ndarray, path: str | Path, *, title: str,
                   label: str = "density (solid fraction)",
                   loads: Sequence[tuple[float, float]] = (),
                   supports: Sequence[tuple[float, float, float, float]] = (),
                   load_label: str = "load", support_label: str = "support") -> Path:
    """Write a PNG of a ``(rows, cols)`` density field (row 0 on top) with a color bar from 0
    (white) to 1 (black) named ``label``, on axes in cells.

    Args:
        loads: Points ``(x, y)`` in cells (y down) loaded downwards, drawn as red arrows.
        supports: Rectangles ``(x0, x1, y0, y1)`` in cells that carry the field (legs, walls),
            drawn in blue; they may lie outside the field, and the view grows to show them.
    """
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    x = np.clip(np.asarray(density, dtype=np.float64), 0.0, 1.0)
    rows, cols = x.shape
    bottom = max([rows, *(y1 for *_, y1 in supports)])
    figure = Figure(figsize=(7.0, min(10.0, 7.0 * (bottom + 2) / cols * 0.8 + 1.6)), dpi=100,
                    layout="constrained")
    axes = figure.add_subplot()
    shown = axes.imshow(x, cmap="gray_r", vmin=0.0, vmax=1.0, extent=(0, cols, rows, 0),
                        interpolation="nearest")
    figure.colorbar(shown, ax=axes, shrink=0.9, pad=0.01).set_label(label)
    handles = []
    for k, (x0, x1, y0, y1) in enumerate(supports):
        axes.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, hatch="//",
                                 facecolor=(*to_rgb(SUPPORT_COLOR), 0.3),
                                 edgecolor=SUPPORT_COLOR, lw=1.5,
                                 label=support_label if k == 0 else None))
    if supports:
        handles.append(axes.patches[0])
    arrow = 0.12 * max(rows, cols)
    for px, py in loads:
        axes.annotate("", xy=(px, py), xytext=(px, py - arrow),
                      arrowprops={"arrowstyle": "-|>", "color": LOAD_COLOR, "lw": 1.5})
    if loads:
        handles.append(axes.plot([], [], color=LOAD_COLOR, marker=r"$\downarrow$",
                                 linestyle="none", markersize=10, label=load_label)[0])
    top = -arrow - 0.5 if loads else 0
    axes.set_xlim(min([0, *(x0 for x0, *_ in supports)]) - 0.5,
                  max([cols, *(s[1] for s in supports)]) + 0.5)
    axes.set_ylim(bottom + (0.5 if supports else 0), top)
    axes.set_xlabel("x [cells]")
    axes.set_ylabel("y [cells, down]")
    axes.set_title(title, fontsize=10)
    if handles:
        figure.legend(handles=handles, loc="outside lower center", ncol=len(handles),
                      fontsize=8, frameon=False)
    path = Path(path)
    figure.savefig(path, format="png")
    return path


def write_design_outputs(result, out: str | Path, *, gif_frames: int = 60,
                         fps: int = 10) -> list[Path]:
    """Write ``design.png`` (best design), ``evolution.gif``, ``compliance.png`` and
    ``design.npy`` for a :class:`~simdiff.design.optimizers.DesignResult` into folder ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    problem = result.problem
    kw = {"mirror": problem.mirror, "void": problem.void}
    png = design_figure(problem, result.design, out / "design.png",
                        compliance=result.best_compliance,
                        title=f"{problem.name}: {result.param} + {result.optimizer}")
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
