"""The fluid state and the per-rollout parameters a step reads, both over ``B`` worlds."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simdiff.sims.base import Params as BaseParams
from simdiff.sims.base import State as BaseState
from simdiff.sims.base import world_field

__all__ = ["Params", "Params3D", "State", "params_class"]


@dataclass
class State(BaseState):
    """Velocity, dye and paddle of every world at one time."""

    velocity: torch.Tensor
    """Face velocities [m/s], shape [B, dim, *(resolution + 1)]: component ``a`` on the faces
    normal to axis ``a`` (valid on ``resolution + e_a`` entries, the rest zero)."""
    dye: torch.Tensor
    """Passive scalars (smoke density, colors) at cell centers [units], shape
    [B, dye_channels, *resolution]."""
    paddle_x: torch.Tensor
    """Center of the paddle [m], shape [B, dim] (the model's center when it has no paddle)."""
    time: torch.Tensor
    """Time [s], shape [B]."""


@dataclass
class Params(BaseParams):
    """What a fluid step reads per rollout; each field shared by every world (the shapes
    below) or given per world (one more leading axis of size B). ``Fluid.params()`` builds
    them from the model; replace fields to optimize them or to vary them over worlds."""

    obstacle: torch.Tensor = world_field(2)
    """Solid fraction per cell in [0, 1], shape [*resolution] (zeros: no obstacle; 2D here,
    3D in :class:`Params3D`)."""
    inflow_velocity: torch.Tensor = world_field(2)
    """Velocity [m/s] each inflow imposes, shape [inflows, dim] (``[0, dim]`` without
    inflows)."""
    inflow_concentration: torch.Tensor = world_field(2)
    """Dye each inflow holds [units], shape [inflows, dye_channels]."""
    buoyancy: torch.Tensor = world_field(1)
    """Upward (+y) acceleration per unit of each dye channel [m/s^2], shape [dye_channels]
    (zeros: no buoyancy)."""


@dataclass
class Params3D(Params):
    """:class:`Params` of a 3D grid (the obstacle has three dimensions)."""

    obstacle: torch.Tensor = world_field(3)
    """Solid fraction per cell in [0, 1], shape [*resolution] (zeros: no obstacle)."""


def params_class(dim: int) -> type[Params]:
    """The params dataclass of a ``dim``-dimensional grid."""
    return Params3D if dim == 3 else Params
