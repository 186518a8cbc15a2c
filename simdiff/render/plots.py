"""Line plots of training metrics, written to PNG without a display."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_loss", "plot_series"]


def plot_loss(
    metrics: Sequence[Mapping[str, float]],
    path: str | Path,
    *,
    key: str = "loss",
    title: str | None = None,
) -> Path:
    """Plot one metric against the iteration and write it as a PNG.

    The y axis is logarithmic when every value is positive and they span more than two decades,
    so that a loss falling by orders of magnitude stays readable.

    Args:
        metrics: One dict per logged iteration, each with at least ``"iteration"`` and ``key``.
        path: Output PNG file. Parent directories are created.
        key: The metric to plot.
        title: Plot title.

    Returns:
        The path written, as a ``Path``.

    Raises:
        ValueError: If ``metrics`` is empty or an entry lacks ``"iteration"`` or ``key``.
    """
    if len(metrics) == 0:
        raise ValueError("metrics: must hold at least one entry, got an empty sequence")
    for i, entry in enumerate(metrics):
        for name in ("iteration", key):
            if name not in entry:
                raise ValueError(f"metrics[{i}]: lacks the key {name!r}")
    iterations = [float(entry["iteration"]) for entry in metrics]
    values = np.asarray([float(entry[key]) for entry in metrics])
    finite = values[np.isfinite(values)]
    logy = bool(finite.size and (finite > 0).all() and finite.max() / finite.min() > 100.0)
    return plot_series(
        iterations, {key: values}, path, xlabel="iteration", ylabel=key, logy=logy, title=title
    )


def plot_series(
    x: Sequence[float],
    ys: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    logy: bool = False,
    title: str | None = None,
) -> Path:
    """Plot several named series against a shared x and write the figure as a PNG.

    Args:
        x: The x values, length N.
        ys: Series name -> y values of length N; a legend is drawn when there is more than one.
        path: Output PNG file. Parent directories are created.
        xlabel: Label of the x axis.
        ylabel: Label of the y axis.
        logy: Whether the y axis is logarithmic.
        title: Plot title.

    Returns:
        The path written, as a ``Path``.

    Raises:
        ValueError: If ``ys`` is empty or a series' length differs from that of ``x``.
    """
    # The object-oriented Figure renders with Agg without going through pyplot, so it neither
    # needs a display nor switches the backend of a caller's session (matplotlib.use would).
    from matplotlib.figure import Figure

    if len(ys) == 0:
        raise ValueError("ys: must hold at least one series, got an empty mapping")
    for name, y in ys.items():
        if len(y) != len(x):
            raise ValueError(f"ys[{name!r}]: length {len(y)} differs from len(x) = {len(x)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    for name, y in ys.items():
        axes.plot(x, y, label=name, marker="." if len(x) <= 50 else None)
    if logy:
        axes.set_yscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, which="major", alpha=0.3)
    if title:
        axes.set_title(title)
    if len(ys) > 1:
        axes.legend()
    figure.savefig(path, format="png")
    return path
