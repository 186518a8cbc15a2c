"""Task losses and metrics for mass-spring scenes, per world.

Losses compute one value per world ``[B]`` and reduce them explicitly with
``rollout.mean(...)`` (the mean over the worlds that did not fail); metrics report each
quantity per world and as mean / min / max (:func:`simdiff.rollout.world_metrics`).
"""

from __future__ import annotations

import torch

from simdiff.rollout import Rollout, world_metrics
from simdiff.sims.mass_spring.model import cell_measure

__all__ = ["distance_travelled", "inverted_cells", "locomotion_loss", "locomotion_metrics"]


def distance_travelled(rollout: Rollout) -> torch.Tensor:
    """Per world, the displacement of the center of mass along +x over the rollout [m],
    ``[B]`` (particles of equal weight; robots built by the ASCII builder have equal masses)."""
    return rollout.final.particle_x[..., 0].mean(1) - rollout.initial.particle_x[..., 0].mean(1)


def locomotion_loss(rollout: Rollout) -> torch.Tensor:
    """Minus the distance travelled, averaged over the worlds: lower is further right."""
    return -rollout.mean(distance_travelled(rollout))


def inverted_cells(positions: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Per world, the fraction of cell-steps whose signed area (2D) or volume (3D) is not
    positive: a cell folded through itself or collapsed flat, which a spring network allows
    and a solid body does not.

    Args:
        positions: Particle positions at T steps, ``[T, B, particle_count, dim]``.
        cells: Corner indices of each cell, ``[cell_count, 2**dim]`` (``Model.cells``).

    Returns:
        ``[B]`` fractions in [0, 1].
    """
    t, b, n, dim = positions.shape
    measure = cell_measure(positions.reshape(t * b, n, dim), cells.to(positions.device))
    return (measure <= 0).reshape(t, b, -1).to(positions.dtype).mean((0, 2))


def _recorded_positions(rollout: Rollout) -> torch.Tensor:
    """``[T, B, n, dim]``: the recorded frames, or the initial and final states when none
    were recorded."""
    if rollout.frames:
        return torch.stack([rollout.frames[t].particle_x for t in sorted(rollout.frames)])
    return torch.stack([rollout.initial.particle_x.detach(), rollout.final.particle_x.detach()])


def locomotion_metrics(rollout: Rollout, *, cells: torch.Tensor | None = None
                       ) -> dict[str, float | list[float]]:
    """Distance travelled and the fraction of inverted cells, each per world and as
    mean / min / max. Inverted cells are counted over every simulated state (the rollout's
    ``step_figures``, which the mass-spring simulator reports for each step), else over the
    recorded frames, else the initial and final states.

    Args:
        rollout: The rollout.
        cells: The model's cells; None reads them from the rollout's simulator's model
            where it has one (robots of the ASCII builder), else the metric is left out.
    """
    metrics = world_metrics("distance", distance_travelled(rollout).detach())
    every_step = getattr(rollout, "step_figures", {}).get("inverted_cells")
    if every_step is not None and cells is None:
        metrics.update(world_metrics("inverted_cells", every_step))
        return metrics
    if cells is None:
        model = getattr(getattr(rollout, "simulator", None), "model", None)
        cells = getattr(model, "cells", None)
    if cells is not None:
        metrics.update(world_metrics("inverted_cells",
                                     inverted_cells(_recorded_positions(rollout), cells)))
    return metrics
