"""The N-body state."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simdiff.sims.base import State as BaseState

__all__ = ["State"]


@dataclass
class State(BaseState):
    """Positions, velocities and their derivatives at one time."""

    body_x: torch.Tensor
    """Positions, shape [body_count, 3]."""
    body_v: torch.Tensor
    """Velocities, shape [body_count, 3]."""
    body_a: torch.Tensor
    """Accelerations at ``body_x``, shape [body_count, 3] (kept so a step evaluates forces once)."""
    body_jerk: torch.Tensor
    """Time derivatives of the accelerations, shape [body_count, 3]."""
    body_snap: torch.Tensor
    """Second derivatives of the accelerations estimated by the last Hermite step (zero before
    it, detached: they only choose time steps), shape [body_count, 3]."""
    body_crackle: torch.Tensor
    """Third derivatives, as ``body_snap``, shape [body_count, 3]."""
    time: torch.Tensor
    """Time, shape [1]."""
