"""The fluid state."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simdiff.sims.base import State as BaseState

__all__ = ["State"]


@dataclass
class State(BaseState):
    """Velocity, dye and paddle at one time."""

    velocity: torch.Tensor
    """Face velocities [m/s], shape [dim, *(resolution + 1)]: component ``a`` on the faces
    normal to axis ``a`` (valid on ``resolution + e_a`` entries, the rest zero)."""
    dye: torch.Tensor
    """Passive scalars (smoke density, colors) at cell centers [units], shape
    [dye_channels, *resolution]."""
    paddle_x: torch.Tensor
    """Center of the paddle [m], shape [dim] (zeros when the model has no paddle)."""
    time: torch.Tensor
    """Time [s], shape [1]."""
