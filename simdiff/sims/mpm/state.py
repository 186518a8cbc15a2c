"""What an MPM rollout carries (State) and what its step reads per rollout (Params).

Every State field has a leading world axis ``B``. Params holds the packed per-particle
parameters the kernels read, shared by every world (``[P, K]``) or per world (``[B, P, K]``);
:meth:`simdiff.sims.mpm.MPM.params` builds it from the model, with any of its per-particle
quantities replaced by per-world values (``E``, ``nu``, the friction angle, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simdiff.sims.base import Params as BaseParams
from simdiff.sims.base import State as BaseState
from simdiff.sims.base import world_field

__all__ = ["PARAM_COLUMNS", "Params", "State"]

PARAM_COLUMNS = ("mass", "volume", "material", "actuator", "E", "nu", "yield", "active_stress")
"""The first columns of ``Params.particle``; the fiber direction (``dim`` columns) follows.
``yield`` holds the von Mises yield stress of plastic particles and the Drucker-Prager
coefficient alpha (from the friction angle) of sand particles."""


@dataclass
class State(BaseState):
    """MPM state of ``B`` worlds: particles and the tool."""

    particle_x: torch.Tensor
    """Positions [m], shape [B, particle_count, dim]."""
    particle_v: torch.Tensor
    """Velocities [m/s], shape [B, particle_count, dim]."""
    particle_C: torch.Tensor
    """APIC affine velocity (velocity gradient) [1/s], shape [B, particle_count, dim, dim]."""
    particle_F: torch.Tensor
    """Deformation gradient (elastic left Cauchy-Green tensor for plastic and sand particles),
    shape [B, particle_count, dim, dim]."""
    tool_x: torch.Tensor
    """Center of the tool [m], shape [B, dim] (unused without a tool)."""


@dataclass
class Params(BaseParams):
    """Per-rollout parameters of an MPM step."""

    particle: torch.Tensor = world_field(2)
    """Packed per-particle parameters (``PARAM_COLUMNS`` in SI units, then the unit fiber
    direction), shape ``[particle_count, 8 + dim]`` shared by every world, or
    ``[B, particle_count, 8 + dim]``."""
