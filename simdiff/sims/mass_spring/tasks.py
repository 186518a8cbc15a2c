"""Task losses and metrics for mass-spring scenes."""

from __future__ import annotations

import torch

from simdiff.rollout import Rollout

__all__ = ["distance_travelled", "locomotion_loss", "locomotion_metrics"]


def distance_travelled(rollout: Rollout) -> torch.Tensor:
    """Displacement of the center of mass along +x over the rollout [m] (particles of equal
    weight; robots built by the ASCII builder have equal masses)."""
    return rollout.final.particle_x[:, 0].mean() - rollout.initial.particle_x[:, 0].mean()


def locomotion_loss(rollout: Rollout) -> torch.Tensor:
    """Minus the distance travelled: lower is further to the right."""
    return -distance_travelled(rollout)


def locomotion_metrics(rollout: Rollout) -> dict[str, float]:
    return {"distance": float(distance_travelled(rollout).detach())}
