"""The mass-spring state and per-rollout parameters, both with a leading world axis."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simdiff.sims.base import Params as BaseParams
from simdiff.sims.base import State as BaseState
from simdiff.sims.base import world_field

__all__ = ["Params", "State"]


@dataclass
class State(BaseState):
    """Particle positions and velocities of ``B`` worlds."""

    particle_x: torch.Tensor
    """Particle positions [m], shape [B, particle_count, dim]."""
    particle_v: torch.Tensor
    """Particle velocities [m/s], shape [B, particle_count, dim]."""


@dataclass
class Params(BaseParams):
    """What a step reads besides the state and action; each field shared or per world."""

    spring_params: torch.Tensor = world_field(2)
    """Per spring: stiffness [N/m], rest length [m], damping [N s/m] and effective actuation
    amplitude (0 for passive springs); shape [spring_count, 4] shared or
    [B, spring_count, 4] per world."""
    particle_inv_mass: torch.Tensor = world_field(1)
    """Inverse particle masses [1/kg], shape [particle_count] shared or [B, particle_count]
    per world (the step divides by nothing: the inverse is what the kernel reads)."""
