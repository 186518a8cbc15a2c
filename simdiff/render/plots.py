"""Plots of training metrics and diagnostics (matplotlib, headless Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["plot_loss", "plot_series"]


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
    """Line plot of several series against ``x``, written as PNG; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    try:
        for label, y in ys.items():
            ax.plot(list(x), list(y), label=label, linewidth=1.6)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logy:
            ax.set_yscale("log")
        if title:
            ax.set_title(title)
        if len(ys) > 1:
            ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def plot_loss(
    metrics: Sequence[Mapping[str, float]],
    path: str | Path,
    *,
    key: str = "loss",
    title: str | None = None,
) -> Path:
    """Plot ``key`` against ``iteration`` from metric rows; log scale when the values are all
    positive and span more than two decades."""
    if not metrics:
        raise ValueError("metrics is empty: nothing to plot")
    xs = [row["iteration"] for row in metrics]
    ys = [row[key] for row in metrics]
    logy = min(ys) > 0 and max(ys) / min(ys) > 100
    return plot_series(xs, {key: ys}, path, xlabel="iteration", ylabel=key, logy=logy, title=title)
