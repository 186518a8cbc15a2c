"""Task losses and metrics for mass-spring scenes."""

from __future__ import annotations

import torch

from simdiff.rollout import Rollout

__all__ = [
    "distance_travelled",
    "inverted_cells",
    "locomotion_loss",
    "locomotion_metrics",
    "signed_cell_measure",
]

# Kuhn's split of the cube into six tetrahedra along the diagonal from corner 0 to corner 7:
# each path 0 -> 0 + e_a -> 0 + e_a + e_b -> 7 over the axes' orders. Corner id = 4x + 2y + z.
_KUHN = ((0, 4, 6, 7), (0, 4, 5, 7), (0, 2, 6, 7), (0, 2, 3, 7), (0, 1, 5, 7), (0, 1, 3, 7))
# The sign making each tetrahedron's determinant positive for the unit cube (the parity of the
# axis order of its path).
_KUHN_SIGN = (1.0, -1.0, -1.0, 1.0, 1.0, -1.0)


def signed_cell_measure(x: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Signed area (2D) or volume (3D) of every cell, positive for a cell as built.

    Args:
        x: Particle positions [m], shape [..., particle_count, dim] (e.g. [B, n, dim]).
        cells: Corner indices, [cell_count, 4] counter-clockwise in 2D or [cell_count, 8] in
            3D (corner ``4 ox + 2 oy + oz``), as :attr:`Model.cell_indices`.

    Returns:
        Areas [m^2] or volumes [m^3], shape [..., cell_count].
    """
    p = x[..., cells, :]  # [..., cells, corners, dim]
    if x.shape[-1] == 2:
        a, b = p[..., 0], p[..., 1]
        nxt_a, nxt_b = a.roll(-1, dims=-1), b.roll(-1, dims=-1)
        return 0.5 * (a * nxt_b - nxt_a * b).sum(-1)  # the shoelace formula
    volume = x.new_zeros(p.shape[:-2])
    for (i, j, k, m), sign in zip(_KUHN, _KUHN_SIGN):
        edges = torch.stack([p[..., j, :] - p[..., i, :], p[..., k, :] - p[..., i, :],
                             p[..., m, :] - p[..., i, :]], -2)
        volume = volume + sign * torch.linalg.det(edges) / 6.0
    return volume


def inverted_cells(rollout: Rollout, cells: torch.Tensor | None = None) -> torch.Tensor:
    """Per world, the fraction of cell-steps whose signed area (2D) or volume (3D) is not
    positive, over the recorded frames and the final state.

    A rollout recorded every step (``record_every=1``) counts every step; with fewer frames
    the fraction is that of the frames kept (the initial and final states at least).

    Args:
        rollout: A mass-spring rollout.
        cells: Corner indices; default the rollout simulator's ``model.cell_indices``.

    Returns:
        Fractions in [0, 1], shape [B] (a scalar for an unbatched state).
    """
    if cells is None:
        model = getattr(rollout.simulator, "model", None)
        cells = getattr(model, "cell_indices", None)
        if cells is None:
            raise ValueError("inverted_cells needs cells: the rollout's model has no cell_indices")
    frames = dict(rollout.frames)
    frames.setdefault(0, rollout.initial)
    frames.setdefault(rollout.steps, rollout.final)
    x = torch.stack([frames[t].particle_x.detach() for t in sorted(frames)], -3)
    cells = cells.to(x.device)
    bad = signed_cell_measure(x, cells) <= 0  # [..., frames, cells]
    return bad.to(x.dtype).mean(dim=(-2, -1))


def distance_travelled(rollout: Rollout) -> torch.Tensor:
    """Displacement of the center of mass along +x over the rollout [m] (particles of equal
    weight; robots built by the ASCII builder have equal masses)."""
    return rollout.final.particle_x[:, 0].mean() - rollout.initial.particle_x[:, 0].mean()


def locomotion_loss(rollout: Rollout) -> torch.Tensor:
    """Minus the distance travelled: lower is further to the right."""
    return -distance_travelled(rollout)


def locomotion_metrics(rollout: Rollout) -> dict[str, float]:
    metrics = {"distance": float(distance_travelled(rollout).detach())}
    if getattr(getattr(rollout.simulator, "model", None), "cell_indices", None) is not None:
        metrics["inverted_cells"] = float(inverted_cells(rollout).mean())
    return metrics
