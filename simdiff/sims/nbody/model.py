"""N-body model: bodies, gravity, and how time advances.

Direct summation with Plummer softening: body ``i`` accelerates by
``sum_j G m_j (x_j - x_i) / (|x_j - x_i|^2 + eps^2)^(3/2)``; the potential energy is
``-sum_{i<j} G m_i m_j / sqrt(r_ij^2 + eps^2)``. Integrators (see ``integrators.py``):
kick-drift-kick leapfrog (symplectic, order 2), classical RK4 (order 4), the fourth-order
Hermite predictor-corrector (acceleration and jerk), and IAS15, the 15th-order Gauss-Radau
predictor-corrector of Rein and Spiegel (2015) with its own adaptive steps (``tolerance``, the
PRS23 criterion of Pham, Rein and Spiegel 2024). Positions and velocities are summed with
Kahan compensation in every integrator.

Time steps of leapfrog, RK4 and Hermite are fixed, or shared by the bodies of a world and
adaptive with accuracy parameter ``eta`` (each world its own step):

* ``aarseth``: ``dt = eta * min_i sqrt((|a||a2| + |j|^2) / (|j||a3| + |a2|^2))`` with the snap
  ``a2`` and crackle ``a3`` of the previous Hermite step (Aarseth 1985); before the first step,
  and for the other integrators, ``dt = eta * min_i |a_i| / |j_i|`` over bodies whose
  acceleration and jerk are both nonzero (a body at rest at a symmetry point, the
  figure-eight's middle body, has ``a = 0`` and says nothing about the time scale); when no body
  qualifies, the shortest pair free-fall time.
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
    """A scalar parameter given as a float or a 0-d tensor, as a float (the smallest entry of
    a per-world tensor, for range checks)."""
    if isinstance(value, torch.Tensor):
        return float(value.detach().min())
    return float(value)


class Integrator(str, Enum):
    LEAPFROG = "leapfrog"
    RK4 = "rk4"
    HERMITE = "hermite"
    IAS15 = "ias15"


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
    """A gravitational N-body system, for one world or a batch of ``B`` worlds.

    ``body_mass``, ``body_x``, ``body_v``, ``gravitational_constant``, ``softening`` and ``dt``
    may be tensors requiring grad: rollouts are differentiable with respect to all of them.
    Each may be shared by every world or given per world (a leading axis of size B).
    """

    body_mass: torch.Tensor
    """Masses [mass], shape [N] or [B, N], > 0."""
    body_x: torch.Tensor
    """Initial positions [length], shape [N, 3] or [B, N, 3] (2D input is padded with z = 0)."""
    body_v: torch.Tensor
    """Initial velocities [length / time], shape [N, 3] or [B, N, 3]."""
    dt: float | torch.Tensor = 1e-3
    """Fixed time step [time], or the first and largest step when ``eta`` is set; for IAS15
    the first trial step (then unbounded). Scalar or [B]."""
    integrator: Integrator | str = Integrator.LEAPFROG
    """Integration scheme."""
    gravitational_constant: float | torch.Tensor = 1.0
    """G, in the model's units; scalar or [B]."""
    softening: float | torch.Tensor = 0.0
    """Plummer softening length eps [length] (>= 0); scalar or [B]."""
    eta: float | None = None
    """Accuracy parameter of adaptive steps (leapfrog, RK4, Hermite); None for fixed steps."""
    criterion: StepCriterion | str = StepCriterion.AARSETH
    """How ``eta`` sets the step."""
    tolerance: float = 1e-9
    """IAS15's accuracy parameter (REBOUND's ``epsilon``), in (0, 1)."""
    dt_min: float = 1e-12
    """Smallest adaptive step [time]; a smaller one stops the world as a breakdown."""
    energy_tolerance: float | None = None
    """If set, a relative energy error above it stops the rollout, naming time and pair."""

    def __post_init__(self) -> None:
        for name in ("body_x", "body_v"):
            t = getattr(self, name)
            if t.ndim in (2, 3) and t.shape[-1] == 2:
                setattr(self, name, torch.cat([t, t.new_zeros(*t.shape[:-1], 1)], -1))
        self.integrator = _enum(Integrator, "integrator", self.integrator)
        self.criterion = _enum(StepCriterion, "criterion", self.criterion)
        self.validate()

    @property
    def body_count(self) -> int:
        return int(self.body_mass.shape[-1])

    @property
    def adaptive(self) -> bool:
        """Whether steps are chosen per world as the run goes."""
        return self.eta is not None or self.integrator is Integrator.IAS15

    def validate(self) -> None:
        """Check shapes and ranges; raise :class:`ValidationError` naming the field."""
        m = self.body_mass
        if m.ndim not in (1, 2) or m.shape[-1] < 1:
            raise ValidationError(
                f"body_mass has shape {tuple(m.shape)}; expected [N] or [B, N] with N >= 1")
        n = m.shape[-1]
        for name in ("body_x", "body_v"):
            t = getattr(self, name)
            if t.ndim not in (2, 3) or tuple(t.shape[-2:]) != (n, 3):
                raise ValidationError(
                    f"{name} has shape {tuple(t.shape)}; expected ({n}, 3) or (B, {n}, 3) (or 2 "
                    f"columns) to match body_mass of length {n}"
                )
            if not torch.isfinite(t.detach()).all():
                bad = (~torch.isfinite(t.detach())).nonzero()[0].tolist()
                raise ValidationError(f"{name}{bad} holds NaN or infinite values")
        if not torch.isfinite(m.detach()).all() or float(m.detach().min()) <= 0:
            flat = m.detach().flatten()
            i = int(torch.nan_to_num(flat, nan=-math.inf).argmin())
            index = [i // n, i % n] if m.ndim == 2 else [i]
            raise ValidationError(f"body_mass{index}={float(flat[i]):.4g} must be > 0")
        dt = as_float(self.dt)
        if not (math.isfinite(dt) and dt > 0):
            raise ValidationError(f"dt={dt} must be a positive finite time step")
        g = as_float(self.gravitational_constant)
        if not g > 0:
            raise ValidationError(f"gravitational_constant={g} must be > 0")
        eps = as_float(self.softening)
        if not eps >= 0:
            raise ValidationError(f"softening={eps} must be >= 0")
        if self.eta is not None and not (0 < self.eta <= 10):
            raise ValidationError(f"eta={self.eta} must lie in (0, 10] (or None for fixed steps)")
        if not (0 < self.tolerance < 1):
            raise ValidationError(f"tolerance={self.tolerance} must lie in (0, 1)")
        if not (0 < self.dt_min < math.inf):
            raise ValidationError(f"dt_min={self.dt_min} must be > 0")
        if self.adaptive and self.integrator is not Integrator.IAS15 and self.dt_min > dt:
            raise ValidationError(
                f"dt_min={self.dt_min} is above dt={dt}, the largest adaptive step")
        if self.energy_tolerance is not None and not self.energy_tolerance > 0:
            raise ValidationError(f"energy_tolerance={self.energy_tolerance} must be > 0")
        if eps == 0 and n > 1:
            x = self.body_x.detach().reshape(-1, n, 3)
            d = torch.cdist(x, x)
            d = d + torch.diag(torch.full((n,), math.inf, dtype=d.dtype))
            k = int(d.flatten().argmin())
            if float(d.flatten()[k]) == 0:
                k %= n * n
                raise ValidationError(
                    f"bodies {k // n} and {k % n} coincide and softening=0: the force between "
                    f"them is infinite; separate them or set softening > 0"
                )
