"""N-body model: bodies, gravity, and how time advances.

Direct summation with Plummer softening: body ``i`` accelerates by
``sum_j G m_j (x_j - x_i) / (|x_j - x_i|^2 + eps^2)^(3/2)``; the potential energy is
``-sum_{i<j} G m_i m_j / sqrt(r_ij^2 + eps^2)``. Integrators (see ``integrators.py``):
kick-drift-kick leapfrog (symplectic, order 2), classical RK4 (order 4) and the fourth-order
Hermite predictor-corrector (acceleration and jerk). Time steps are fixed, or shared and
adaptive with accuracy parameter ``eta``:

* ``aarseth``: ``dt = eta * min_i sqrt((|a||a2| + |j|^2) / (|j||a3| + |a2|^2))`` with the snap
  ``a2`` and crackle ``a3`` of the previous Hermite step (Aarseth 1985); before the first step,
  and for the other integrators, ``dt = eta * min_i |a_i| / |j_i|``.
* ``collision``: ``dt = eta * min_{i<j} min(r_ij / v_ij, sqrt(r_ij^3 / (G (m_i + m_j))))``,
  the shortest pair collision (or free-fall) time, as AMUSE's Hermite uses.

Units are free (G is a parameter); float64 throughout unless the backend asks for float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch

from simdiff.sims.base import ValidationError

__all__ = ["Integrator", "Model", "StepCriterion"]


def as_float(value: float | torch.Tensor) -> float:
    """A parameter given as a float or a (possibly grad-requiring) tensor, as a float."""
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


class Integrator(str, Enum):
    LEAPFROG = "leapfrog"
    RK4 = "rk4"
    HERMITE = "hermite"


class StepCriterion(str, Enum):
    AARSETH = "aarseth"
    COLLISION = "collision"


def _enum(cls: type[Enum], name: str, value) -> Enum:
    try:
        return cls(getattr(value, "value", value))
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise ValidationError(f"{name}={value!r} is unknown; allowed: {allowed}") from None


@dataclass
class Model:
    """A gravitational N-body system.

    ``body_mass``, ``body_x``, ``body_v``, ``gravitational_constant`` and ``softening`` may be
    tensors requiring grad: rollouts are differentiable with respect to all of them.
    """

    body_mass: torch.Tensor
    """Masses, shape [body_count], > 0."""
    body_x: torch.Tensor
    """Initial positions, shape [body_count, 3] (2D input is padded with z = 0)."""
    body_v: torch.Tensor
    """Initial velocities, shape [body_count, 3]."""
    dt: float = 1e-3
    """Fixed time step, or the first and largest step when ``eta`` is set."""
    integrator: Integrator | str = Integrator.LEAPFROG
    """Integration scheme."""
    gravitational_constant: float | torch.Tensor = 1.0
    """G, in the model's units."""
    softening: float | torch.Tensor = 0.0
    """Plummer softening length eps (>= 0)."""
    eta: float | None = None
    """Accuracy parameter of adaptive shared time steps; None for fixed steps."""
    criterion: StepCriterion | str = StepCriterion.AARSETH
    """How ``eta`` sets the step."""
    dt_min: float = 1e-12
    """Smallest adaptive step; a smaller one stops the rollout as a breakdown."""
    energy_tolerance: float | None = None
    """If set, a relative energy error above it stops the rollout, naming time and pair."""

    def __post_init__(self) -> None:
        for name in ("body_x", "body_v"):
            t = getattr(self, name)
            if t.ndim == 2 and t.shape[1] == 2:
                setattr(self, name, torch.cat([t, t.new_zeros(t.shape[0], 1)], 1))
        self.integrator = _enum(Integrator, "integrator", self.integrator)
        self.criterion = _enum(StepCriterion, "criterion", self.criterion)
        self.validate()

    @property
    def body_count(self) -> int:
        return int(self.body_mass.shape[0])

    def validate(self) -> None:
        """Check shapes and ranges; raise :class:`ValidationError` naming the field."""
        m = self.body_mass
        if m.ndim != 1 or m.shape[0] < 1:
            raise ValidationError(f"body_mass has shape {tuple(m.shape)}; expected [n] with n >= 1")
        n = m.shape[0]
        for name in ("body_x", "body_v"):
            t = getattr(self, name)
            if tuple(t.shape) != (n, 3):
                raise ValidationError(
                    f"{name} has shape {tuple(t.shape)}; expected ({n}, 3) or ({n}, 2) to match "
                    f"body_mass of length {n}"
                )
            if not torch.isfinite(t.detach()).all():
                raise ValidationError(f"{name} holds NaN or infinite values")
        if not torch.isfinite(m.detach()).all() or float(m.detach().min()) <= 0:
            i = int(m.detach().argmin())
            raise ValidationError(f"body_mass[{i}]={float(m.detach()[i]):.4g} must be > 0")
        if not (math.isfinite(self.dt) and self.dt > 0):
            raise ValidationError(f"dt={self.dt} must be a positive finite time step")
        g = as_float(self.gravitational_constant)
        if not g > 0:
            raise ValidationError(f"gravitational_constant={g} must be > 0")
        eps = as_float(self.softening)
        if not eps >= 0:
            raise ValidationError(f"softening={eps} must be >= 0")
        if self.eta is not None and not (0 < self.eta <= 10):
            raise ValidationError(f"eta={self.eta} must lie in (0, 10] (or None for fixed steps)")
        if self.energy_tolerance is not None and not self.energy_tolerance > 0:
            raise ValidationError(f"energy_tolerance={self.energy_tolerance} must be > 0")
        if eps == 0 and n > 1:
            x = self.body_x.detach()
            d = torch.cdist(x, x).fill_diagonal_(math.inf)
            k = int(d.argmin())
            if float(d.flatten()[k]) == 0:
                raise ValidationError(
                    f"bodies {k // n} and {k % n} coincide and softening=0: the force between "
                    f"them is infinite; separate them or set softening > 0"
                )
