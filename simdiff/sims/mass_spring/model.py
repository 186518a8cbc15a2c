"""Mass-spring model: the backend-independent description of a robot and its world.

Physics (one step of semi-implicit Euler, the same on every backend):

* Spring ``s`` between particles ``a`` and ``b`` with current length ``L`` pulls both ends along
  their joining direction with force ``k_s (L - L0_s) + c_s (v_b - v_a)·dir``, where the target
  length of an actuated spring follows its control signal: ``L0_s = rest_s (1 + amp_s u_a(s))``
  with ``u`` the action vector (a muscle).
* Velocities are updated first (``v' = v e^{-drag dt} + dt (f / m + g)``), then positions with
  the new velocity.
* Ground contact uses the time of impact (TOI). A particle whose step would cross the ground
  moves to the ground at ``toi``, loses its normal velocity, has its tangential velocity reduced
  by Coulomb friction ``mu |v_n|`` (never reversed), and moves tangentially for the rest of the
  step. Why: clamping the position at the ground makes the landing point independent of where
  the particle came from, so the gradient of, say, a distance travelled with respect to the
  actuation vanishes or takes the wrong sign (the problem DiffTaichi reports for its first
  contact model). With TOI the post-contact position depends continuously on the pre-contact
  state and the gradient has the sign a finite difference has.

Units are SI-like but free: lengths [m], masses [kg], time [s].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from simdiff.sims.base import ValidationError

__all__ = ["Ground", "Model", "cell_measure", "stable_time_step"]


@dataclass(frozen=True)
class Ground:
    """A horizontal ground plane ``y = height`` with Coulomb friction.

    Attributes:
        height: Height of the ground [m].
        friction: Coulomb friction coefficient (>= 0; ``math.inf`` for a sticky ground).
    """

    height: float = 0.0
    friction: float = 1.0


@dataclass
class Model:
    """A mass-spring system in 2D or 3D, with gravity along -y and an optional ground.

    Tensors may require grad: the step is differentiable with respect to all floating-point
    tensors here (stiffness, rest lengths, damping, actuation amplitudes, initial state).
    """

    particle_x: torch.Tensor
    """Initial particle positions [m], shape [particle_count, dim], dim 2 or 3."""
    particle_v: torch.Tensor
    """Initial particle velocities [m/s], shape [particle_count, dim]."""
    particle_mass: torch.Tensor
    """Particle masses [kg], shape [particle_count]."""
    spring_indices: torch.Tensor
    """Particle indices of each spring's two ends, int64, shape [spring_count, 2]."""
    spring_stiffness: torch.Tensor
    """Spring stiffness [N/m], shape [spring_count]."""
    spring_rest_length: torch.Tensor
    """Rest length [m], shape [spring_count]."""
    spring_damping: torch.Tensor
    """Damping along the spring [N s/m], shape [spring_count]."""
    spring_actuator: torch.Tensor
    """Index into the action vector driving each spring, -1 for passive springs, int64,
    shape [spring_count]."""
    spring_actuation: torch.Tensor
    """Relative change of rest length per unit action, shape [spring_count]."""
    dt: float
    """Time step [s]."""
    gravity: float = -9.8
    """Acceleration along y [m/s^2]."""
    ground: Ground | None = field(default_factory=Ground)
    """The ground, or None for free flight."""
    drag: float = 0.0
    """Velocity damping rate [1/s]; velocities decay as exp(-drag dt) each step."""
    cells: torch.Tensor | None = None
    """Particle indices of each cell's corners, int64, shape [cell_count, 2**dim], or None.
    Corner ``k`` sits at offset ``((k >> (dim - 1 - a)) & 1)`` along axis ``a`` (the order of
    ``itertools.product((0, 1), repeat=dim)``); read by :func:`cell_measure` to count inverted
    cells. The ASCII builder fills it."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def dim(self) -> int:
        return int(self.particle_x.shape[1])

    @property
    def particle_count(self) -> int:
        return int(self.particle_x.shape[0])

    @property
    def spring_count(self) -> int:
        return int(self.spring_indices.shape[0])

    @property
    def actuator_count(self) -> int:
        return int(self.spring_actuator.max().item()) + 1 if self.spring_count else 0

    def validate(self) -> None:
        """Check shapes and physical ranges; raise :class:`ValidationError` naming the field."""
        x = self.particle_x
        if x.ndim != 2 or x.shape[1] not in (2, 3):
            raise ValidationError(f"particle_x has shape {tuple(x.shape)}; allowed: [n, 2] or [n, 3]")
        n = x.shape[0]
        if n < 1:
            raise ValidationError("particle_x holds no particles; at least 1 is required")
        _expect_shape("particle_v", self.particle_v, (n, x.shape[1]))
        _expect_shape("particle_mass", self.particle_mass, (n,))
        m = self.spring_indices.shape[0] if self.spring_indices.ndim == 2 else -1
        _expect_shape("spring_indices", self.spring_indices, (m, 2))
        for name in ("spring_stiffness", "spring_rest_length", "spring_damping",
                     "spring_actuator", "spring_actuation"):
            _expect_shape(name, getattr(self, name), (m,))
        for name in ("particle_x", "particle_v", "particle_mass", "spring_stiffness",
                     "spring_rest_length", "spring_damping", "spring_actuation"):
            values = getattr(self, name).detach()
            if not torch.isfinite(values).all():
                raise ValidationError(f"{name} holds NaN or infinite values")
        _expect_positive("particle_mass", self.particle_mass)
        _expect_positive("spring_stiffness", self.spring_stiffness)
        _expect_positive("spring_rest_length", self.spring_rest_length)
        _expect_nonnegative("spring_damping", self.spring_damping)
        idx = self.spring_indices
        if m and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise ValidationError(
                f"spring_indices must lie in [0, {n - 1}]; found {int(idx.min())}..{int(idx.max())}"
            )
        if m and bool((idx[:, 0] == idx[:, 1]).any()):
            s = int(torch.nonzero(idx[:, 0] == idx[:, 1])[0])
            raise ValidationError(f"spring {s} joins particle {int(idx[s, 0])} to itself")
        act = self.spring_actuator
        if m and int(act.min()) < -1:
            raise ValidationError(f"spring_actuator must be -1 (passive) or >= 0; found {int(act.min())}")
        if m and int(act.max()) >= 0:
            used = set(act[act >= 0].tolist())
            missing = sorted(set(range(int(act.max()) + 1)) - used)
            if missing:
                raise ValidationError(
                    f"spring_actuator must number actuators 0..{int(act.max())} without gaps; "
                    f"unused: {missing[:5]}"
                )
        if self.cells is not None:
            corners = 2 ** x.shape[1]
            c = self.cells.shape[0] if self.cells.ndim == 2 else -1
            _expect_shape("cells", self.cells, (c, corners))
            if c and (int(self.cells.min()) < 0 or int(self.cells.max()) >= n):
                raise ValidationError(
                    f"cells must hold particle indices in [0, {n - 1}]; found "
                    f"{int(self.cells.min())}..{int(self.cells.max())}"
                )
        amp = self.spring_actuation.detach()
        if m and bool((amp.abs() >= 1).any()):
            raise ValidationError("spring_actuation must lie in (-1, 1) so target lengths stay positive")
        if not (self.dt > 0 and math.isfinite(self.dt)):
            raise ValidationError(f"dt={self.dt} must be a positive finite time step")
        if self.drag < 0:
            raise ValidationError(f"drag={self.drag} must be >= 0")
        if not math.isfinite(self.gravity):
            raise ValidationError(f"gravity={self.gravity} must be finite")
        if self.ground is not None:
            if not self.ground.friction >= 0:
                raise ValidationError(f"ground.friction={self.ground.friction} must be >= 0")
            lowest = float(x[:, 1].min())
            if lowest < self.ground.height:
                i = int(x[:, 1].argmin())
                raise ValidationError(
                    f"particle {i} starts at y={lowest:.4g}, below the ground at "
                    f"height={self.ground.height:.4g}; all particles must start at or above it"
                )
        dt_max = stable_time_step(self)
        if self.dt > dt_max:
            raise ValidationError(
                f"dt={self.dt:.4g} exceeds the spring stability limit {dt_max:.4g} "
                f"(2 / sqrt(largest eigenvalue of M^-1 K)); lower dt or the stiffness"
            )


def stable_time_step(model: Model) -> float:
    """Largest stable time step of semi-implicit Euler for the model's springs.

    Uses the weighted graph Laplacian of the springs (stiffness as weights) scaled by the
    inverse masses: its largest eigenvalue bounds the squared angular frequency of every
    vibration mode in any direction, and semi-implicit Euler is stable for ``dt < 2 / omega``.
    """
    if model.spring_count == 0:
        return math.inf
    n = model.particle_count
    idx = model.spring_indices.detach().cpu().numpy()
    k = model.spring_stiffness.detach().cpu().double().numpy()
    inv_sqrt_m = 1.0 / np.sqrt(model.particle_mass.detach().cpu().double().numpy())
    a, b = idx[:, 0], idx[:, 1]
    lap = np.zeros((n, n))
    np.add.at(lap, (a, a), k)
    np.add.at(lap, (b, b), k)
    np.add.at(lap, (a, b), -k)
    np.add.at(lap, (b, a), -k)
    scaled = lap * inv_sqrt_m[:, None] * inv_sqrt_m[None, :]
    omega_sq = float(np.linalg.eigvalsh(scaled)[-1])
    return 2.0 / math.sqrt(omega_sq)


# Each cube as six tetrahedra around its main diagonal (corner 0 to corner 7), as corner numbers
# of ``Model.cells``: every tetrahedron is positively oriented in an upright cube, and together
# they tile it, so their signed volumes sum to the volume of the (triangulated) hexahedron.
_CUBE_TETS = ((0, 4, 6, 7), (0, 6, 2, 7), (0, 2, 3, 7), (0, 3, 1, 7), (0, 1, 5, 7), (0, 5, 4, 7))


def cell_measure(x: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Signed area (2D) or volume (3D) of every cell, ``[B, cell_count]`` from positions
    ``x`` ``[B, particle_count, dim]``: positive for a cell in its built orientation, zero or
    negative for a collapsed or inverted one.

    2D: the shoelace formula over the corners in counterclockwise order (0, 2, 3, 1 in
    ``Model.cells`` numbering). 3D: the sum of six tetrahedra around the main diagonal.
    """
    corners = x[:, cells]  # [B, C, 2**dim, dim]
    if x.shape[-1] == 2:
        ring = corners[:, :, [0, 2, 3, 1]]
        nxt = ring.roll(-1, dims=2)
        return 0.5 * (ring[..., 0] * nxt[..., 1] - nxt[..., 0] * ring[..., 1]).sum(-1)
    tets = corners[:, :, list(_CUBE_TETS)]  # [B, C, 6, 4, 3]
    edges = tets[..., 1:, :] - tets[..., :1, :]
    return torch.linalg.det(edges).sum(-1) / 6.0


def _expect_shape(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise ValidationError(f"{name} has shape {tuple(t.shape)}; expected {shape}")


def _expect_positive(name: str, t: torch.Tensor) -> None:
    if t.numel() and float(t.detach().min()) <= 0:
        i = int(t.detach().argmin())
        raise ValidationError(f"{name}[{i}]={float(t.detach()[i]):.4g} must be > 0")


def _expect_nonnegative(name: str, t: torch.Tensor) -> None:
    if t.numel() and float(t.detach().min()) < 0:
        i = int(t.detach().argmin())
        raise ValidationError(f"{name}[{i}]={float(t.detach()[i]):.4g} must be >= 0")
