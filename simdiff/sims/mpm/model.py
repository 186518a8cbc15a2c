"""MLS-MPM model: the backend-independent description of continuum bodies and their world.

Physics of one substep (the same for 2D and 3D; quadratic B-spline weights, APIC transfers):

* ``p2g``: each particle scatters its mass and its APIC momentum ``m (v + C (x_i - x_p))`` to
  the 3^d nodes around it, together with the MLS-MPM force term
  ``-dt V0 (4 / dx^2) tau (x_i - x_p)``, where ``tau`` is the particle's Kirchhoff stress.
* ``grid_update``: node velocity = momentum / mass plus gravity; then the domain walls (slip),
  the ground (Coulomb friction, or sticky) and the kinematic tool act on it.
* ``g2p``: particles gather velocity and its affine part ``C`` from the nodes, move, and update
  their deformation ``F <- (I + dt C) F`` followed by the material's own rule.

Materials (per particle, several in one model), Lamé parameters from Young's modulus ``E`` and
Poisson ratio ``nu``:

* ``ELASTIC``: fixed-corotated ``tau = 2 mu (F - R) F^T + lam (J - 1) J I`` in 2D, where the
  polar rotation ``R`` has a closed form with a smooth derivative. In 3D, neo-Hookean
  ``tau = mu (F F^T - I) + lam log(J) I``: the 3D polar decomposition needs an SVD, whose
  derivative is singular at the rest state ``F = I`` (repeated singular values), which is where
  every body starts. Both laws have the same small-strain response.
* ``LIQUID``: weakly compressible, ``tau = K (J - 1) J I`` with bulk modulus
  ``K = lam + 2 mu / d``; no shear memory (``F`` is reset to ``J^(1/d) I`` each substep).
* ``PLASTIC``: von Mises elastoplasticity on neo-Hookean elasticity. The particle stores the
  elastic left Cauchy-Green tensor ``b_e`` in place of ``F`` (updated ``b <- f b f^T``);
  a radial return scales the deviator of ``b`` so that ``||dev tau|| <= sqrt(2/3) yield``,
  keeping its trace. No SVD: the return map stays differentiable at the rest state.
* ``SAND``: Drucker-Prager elastoplasticity (Klar et al. 2016), cohesionless, no hardening:
  St. Venant-Kirchhoff in Hencky strain, ``tau = 2 mu eps + lam tr(eps) I`` with
  ``eps = log(b_e) / 2``; the particle stores ``b_e`` as ``PLASTIC`` does. The return mapping
  is Klar's on the principal log strains (the singular values of ``F_e`` are the square roots
  of ``b_e``'s eigenvalues, and ``V`` drops out of ``b_e = U S^2 U^T``): in tension
  (``tr eps > 0``) ``b_e <- I``; otherwise the deviator of ``eps`` is scaled down onto the cone
  ``||dev eps|| <= -alpha (d lam + 2 mu) / (2 mu) tr eps`` (that is
  ``||dev tau|| <= -alpha tr tau``), with ``alpha`` from the friction angle ``phi``
  (:func:`drucker_prager_alpha`: Klar's in 3D, exact Mohr-Coulomb in 2D).
  In 2D the matrix logarithm and exponential have closed forms in the invariants of ``b_e``
  (``f(b) = (f(l1) + f(l2)) / 2 I + (f(l1) - f(l2)) / (l1 - l2) dev b``) whose divided
  differences are power series near repeated eigenvalues: no eigenvectors, so the derivative
  stays finite at the rest state where an SVD's is singular. 3D (forward only, on both
  backends: the simulator refuses its gradients) uses a Jacobi eigen decomposition of ``b_e``. The cone's tip (``eps = 0``, where every particle
  starts and where flying particles return) has no derivative at all, and there the strain is
  round-off: the tip is blunted at a log strain of 1e-5 (the deviator's norm is regularized by
  it, and tension keeps up to 1e-5 of volumetric strain instead of 0, which also makes the
  tension cut-off continuous), so gradients do not depend on round-off. No hardening and no
  volume correction (Tampubolon et al. 2017). A column collapse ends with flanks at about
  0.7 times the friction angle (the flow overshoots); a heap steeper than it slumps, one less
  steep stands (``tests/test_mpm_sand.py``).
* Actuation: elastic particles with ``actuator >= 0`` add an active Kirchhoff stress
  ``s u (F f)(F f)^T`` along their fiber ``f``, with ``u`` that actuator's action and ``s`` the
  particle's ``active_stress`` (a muscle: positive ``u`` pulls along the fiber).

Units are SI-like but free: lengths [m], time [s], densities [kg/m^d], stresses [Pa].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum

import torch

from simdiff.sims.base import ValidationError

__all__ = [
    "BOUNDARY_CELLS",
    "FRICTION_ANGLE_RANGE",
    "Ground",
    "Material",
    "Model",
    "Tool",
    "ToolShape",
    "drucker_prager_alpha",
    "lame",
    "max_stable_dt",
]

BOUNDARY_CELLS = 3
"""Cells along each domain edge where the walls act; particles must stay inside this margin
(the quadratic stencil reaches one cell beyond a particle's own, the wall layer two more)."""

FRICTION_ANGLE_RANGE = (0.0, 60.0)
"""Allowed friction angles of sand [degrees], ``(low, high]``: the Drucker-Prager cone fits
Mohr-Coulomb for soils (dry sands and gravels: 25-45 degrees); at 0 the material is a liquid.
"""

CFL = 0.5
"""Largest fraction of a cell a wave or a particle may cross in one substep."""


class Material(IntEnum):
    ELASTIC = 0
    LIQUID = 1
    PLASTIC = 2
    SAND = 3


class ToolShape(IntEnum):
    SPHERE = 0
    BOX = 1


@dataclass(frozen=True)
class Ground:
    """A horizontal ground ``y = height`` with Coulomb friction (``math.inf``: sticky);
    ``height=None`` puts it on the bottom wall layer, ``BOUNDARY_CELLS * dx``."""

    height: float | None = None
    friction: float = 0.5


@dataclass(frozen=True)
class Tool:
    """A kinematic rigid tool: a sphere (``size = (radius,)``) or an axis-aligned box
    (``size`` = half extents, one per axis). Its velocity is the last ``dim`` entries of each
    action; its position is part of the state.

    Attributes:
        shape: Sphere or box.
        size: Radius, or half extents [m].
        position: Initial center [m], one entry per axis.
        friction: Coulomb friction against material (``math.inf``: sticky).
    """

    shape: ToolShape
    size: tuple[float, ...]
    position: tuple[float, ...]
    friction: float = math.inf


@dataclass
class Model:
    """Particles of several materials on a square grid in 2D or 3D; gravity along -y.

    The domain is ``[0, grid_size * dx]`` along every axis. Floating-point per-particle tensors
    may require grad: the step is differentiable with respect to them (modulus, Poisson ratio,
    yield stress, active stress, density, volume) and to the initial state.
    """

    particle_x: torch.Tensor
    """Initial positions [m], shape [particle_count, dim], dim 2 or 3."""
    particle_v: torch.Tensor
    """Initial velocities [m/s], shape [particle_count, dim]."""
    particle_volume: torch.Tensor
    """Initial volume of each particle [m^dim], shape [particle_count]."""
    particle_density: torch.Tensor
    """Initial density [kg/m^dim], shape [particle_count]."""
    particle_material: torch.Tensor
    """:class:`Material` of each particle, int64, shape [particle_count]."""
    particle_E: torch.Tensor
    """Young's modulus [Pa] (the bulk stiffness of liquids derives from it), shape [n]."""
    particle_nu: torch.Tensor
    """Poisson ratio in (-1, 0.5), shape [particle_count]."""
    grid_size: int
    """Nodes along each axis."""
    dx: float
    """Grid spacing [m]."""
    dt: float
    """Substep [s]."""
    substeps: int = 1
    """Substeps per control step (``Simulator.step``)."""
    particle_yield: torch.Tensor | None = None
    """Von Mises yield stress of plastic particles [Pa], shape [n] (None: no plastic)."""
    particle_friction_angle: torch.Tensor | None = None
    """Drucker-Prager friction angle of sand particles [degrees], shape [n] (None: no sand)."""
    particle_actuator: torch.Tensor | None = None
    """Index into the action of each particle's muscle, -1 passive, int64, shape [n]."""
    particle_fiber: torch.Tensor | None = None
    """Unit fiber direction of muscles in the reference configuration, shape [n, dim]."""
    particle_active_stress: torch.Tensor | None = None
    """Active stress per unit action [Pa], shape [n]."""
    gravity: float = -9.8
    """Acceleration along y [m/s^2]."""
    ground: Ground | None = field(default_factory=Ground)
    """The ground, or None (the bottom wall still holds material in the domain)."""
    tool: Tool | None = None
    """A kinematic tool driven by the last ``dim`` action entries, or None."""

    def __post_init__(self) -> None:
        n, dim = self.particle_x.shape if self.particle_x.ndim == 2 else (0, 0)
        dtype = self.particle_x.dtype
        if self.particle_yield is None:
            self.particle_yield = torch.full((n,), math.inf, dtype=dtype)
        if self.particle_friction_angle is None:
            self.particle_friction_angle = torch.full((n,), math.nan, dtype=dtype)
        if self.particle_actuator is None:
            self.particle_actuator = torch.full((n,), -1, dtype=torch.int64)
        if self.particle_fiber is None:
            fiber = torch.zeros(n, max(dim, 1), dtype=dtype)
            fiber[:, min(1, max(dim - 1, 0))] = 1.0
            self.particle_fiber = fiber
        if self.particle_active_stress is None:
            self.particle_active_stress = torch.zeros(n, dtype=dtype)
        self.validate()

    @property
    def dim(self) -> int:
        return int(self.particle_x.shape[1])

    @property
    def particle_count(self) -> int:
        return int(self.particle_x.shape[0])

    @property
    def actuator_count(self) -> int:
        return int(self.particle_actuator.max()) + 1 if self.particle_count else 0

    @property
    def control_dt(self) -> float:
        """Duration of one control step, ``substeps * dt`` [s] (what controllers' clocks use)."""
        return self.substeps * self.dt

    @property
    def domain(self) -> float:
        """Edge length of the domain [m]."""
        return self.grid_size * self.dx

    @property
    def ground_height(self) -> float:
        """Height of the ground [m] (the bottom wall layer without a ground)."""
        g = self.ground
        return BOUNDARY_CELLS * self.dx if g is None or g.height is None else g.height

    @property
    def particle_mass(self) -> torch.Tensor:
        """Particle masses [kg], shape [particle_count]."""
        return self.particle_volume * self.particle_density

    def validate(self) -> None:
        """Check shapes and physical ranges; raise :class:`ValidationError` naming the field."""
        x = self.particle_x
        if x.ndim != 2 or x.shape[1] not in (2, 3):
            raise ValidationError(f"particle_x has shape {tuple(x.shape)}; allowed: [n, 2] or [n, 3]")
        n, dim = x.shape
        if n < 1:
            raise ValidationError("particle_x holds no particles; at least 1 is required")
        for name, shape in (("particle_v", (n, dim)), ("particle_volume", (n,)),
                            ("particle_density", (n,)), ("particle_material", (n,)),
                            ("particle_E", (n,)), ("particle_nu", (n,)),
                            ("particle_yield", (n,)), ("particle_friction_angle", (n,)),
                            ("particle_actuator", (n,)),
                            ("particle_fiber", (n, dim)), ("particle_active_stress", (n,))):
            t = getattr(self, name)
            if tuple(t.shape) != shape:
                raise ValidationError(f"{name} has shape {tuple(t.shape)}; expected {shape}")
        for name in ("particle_x", "particle_v", "particle_volume", "particle_density",
                     "particle_E", "particle_nu", "particle_fiber", "particle_active_stress"):
            if not torch.isfinite(getattr(self, name).detach()).all():
                raise ValidationError(f"{name} holds NaN or infinite values")
        if not (isinstance(self.grid_size, int) and self.grid_size > 2 * BOUNDARY_CELLS + 1):
            raise ValidationError(
                f"grid_size={self.grid_size} must be an integer > {2 * BOUNDARY_CELLS + 1}"
            )
        if not (self.dx > 0 and math.isfinite(self.dx)):
            raise ValidationError(f"dx={self.dx} must be a positive finite grid spacing")
        if not (isinstance(self.substeps, int) and self.substeps >= 1):
            raise ValidationError(f"substeps={self.substeps} must be an integer >= 1")
        if not math.isfinite(self.gravity):
            raise ValidationError(f"gravity={self.gravity} must be finite")
        _expect_positive("particle_volume", self.particle_volume)
        _expect_positive("particle_density", self.particle_density)
        _expect_positive("particle_E", self.particle_E)
        nu = self.particle_nu.detach()
        bad = (nu <= -1) | (nu >= 0.5)
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0, 0])
            raise ValidationError(
                f"particle_nu[{i}]={float(nu[i]):.4g} must lie in (-1, 0.5) (0.5 is incompressible)"
            )
        materials = {int(m) for m in self.particle_material.unique()}
        if not materials <= {m.value for m in Material}:
            raise ValidationError(
                f"particle_material holds {sorted(materials)}; allowed: "
                + ", ".join(f"{m.value} ({m.name})" for m in Material)
            )
        plastic = self.particle_material == Material.PLASTIC
        if bool(plastic.any()):
            y = self.particle_yield.detach()[plastic]
            if not bool(((y > 0) & torch.isfinite(y)).all()):
                raise ValidationError("particle_yield of plastic particles must be finite and > 0")
        sand = self.particle_material == Material.SAND
        if bool(sand.any()):
            phi = self.particle_friction_angle.detach()
            low, high = FRICTION_ANGLE_RANGE
            bad = sand & ~((phi > low) & (phi <= high))
            if bool(bad.any()):
                i = int(torch.nonzero(bad)[0, 0])
                raise ValidationError(
                    f"particle_friction_angle[{i}]={float(phi[i]):.4g} degrees (sand) must lie in "
                    f"({low:g}, {high:g}] (dry sands: 25-45)"
                )
        self._validate_actuators()
        self._validate_domain()
        self._validate_sampling()
        self._validate_time_step()

    def _validate_actuators(self) -> None:
        act = self.particle_actuator
        if int(act.min()) < -1:
            raise ValidationError(f"particle_actuator must be -1 (passive) or >= 0; found {int(act.min())}")
        muscles = act >= 0
        if bool((muscles & (self.particle_material != Material.ELASTIC)).any()):
            raise ValidationError("only ELASTIC particles can be actuated (particle_actuator >= 0)")
        if bool(muscles.any()):
            used = set(act[muscles].tolist())
            missing = sorted(set(range(int(act.max()) + 1)) - used)
            if missing:
                raise ValidationError(
                    f"particle_actuator must number actuators 0..{int(act.max())} without gaps; "
                    f"unused: {missing[:5]}"
                )
            norms = self.particle_fiber.detach()[muscles].norm(dim=1)
            if bool(((norms - 1).abs() > 1e-6).any()):
                raise ValidationError("particle_fiber of actuated particles must be unit vectors")

    def _validate_domain(self) -> None:
        lo, hi = BOUNDARY_CELLS * self.dx, (self.grid_size - BOUNDARY_CELLS) * self.dx
        x = self.particle_x.detach()
        outside = (x < lo) | (x >= hi)
        if bool(outside.any()):
            i, k = (int(j) for j in torch.nonzero(outside)[0])
            raise ValidationError(
                f"particle {i} has x[{k}]={float(x[i, k]):.4g} outside [{lo:.4g}, {hi:.4g}): "
                f"particles must start inside the domain [0, {self.domain:.4g}] at least "
                f"{BOUNDARY_CELLS} cells from its walls (kernel stencil and wall layer)"
            )
        if self.ground is not None:
            if not self.ground.friction >= 0:
                raise ValidationError(f"ground.friction={self.ground.friction} must be >= 0")
            height = self.ground_height
            if not lo <= height < hi:
                raise ValidationError(f"ground.height={height:.4g} must lie in [{lo:.4g}, {hi:.4g})")
            if float(x[:, 1].min()) < height:
                i = int(x[:, 1].argmin())
                raise ValidationError(
                    f"particle {i} starts at y={float(x[i, 1]):.4g}, below the ground at "
                    f"height={height:.4g}"
                )
        tool = self.tool
        if tool is not None:
            expected = 1 if tool.shape is ToolShape.SPHERE else self.dim
            if len(tool.size) != expected or min(tool.size) <= 0:
                raise ValidationError(
                    f"tool.size={tool.size} must hold {expected} positive value(s) for a "
                    f"{tool.shape.name.lower()} in {self.dim}D"
                )
            if len(tool.position) != self.dim:
                raise ValidationError(f"tool.position={tool.position} must have {self.dim} entries")
            if not tool.friction >= 0:
                raise ValidationError(f"tool.friction={tool.friction} must be >= 0")

    def _validate_sampling(self) -> None:
        """A particle's spacing (volume^(1/d)) must lie between dx/4 and dx: coarser sampling
        leaves cells inside a body without particles (it tears numerically), and more than four
        particles per cell and axis are more than the grid can resolve."""
        spacing = self.particle_volume.detach() ** (1.0 / self.dim)
        if float(spacing.max()) > self.dx * (1 + 1e-9):
            i = int(spacing.argmax())
            raise ValidationError(
                f"particle {i} has spacing {float(spacing[i]):.4g} (volume^(1/{self.dim})) above "
                f"dx={self.dx:.4g}: the grid is finer than the particles, cells inside bodies "
                f"would be empty; sample at most dx apart (2 per cell and axis is usual)"
            )
        if float(spacing.min()) < self.dx / 4 * (1 - 1e-9):
            i = int(spacing.argmin())
            raise ValidationError(
                f"particle {i} has spacing {float(spacing[i]):.4g}, below dx/4={self.dx / 4:.4g}: "
                f"the grid is too coarse for the particle spacing; refine the grid (more "
                f"nodes, smaller dx) or sample fewer particles"
            )

    def _validate_time_step(self) -> None:
        if not (self.dt > 0 and math.isfinite(self.dt)):
            raise ValidationError(f"dt={self.dt} must be a positive finite substep")
        limit = max_stable_dt(self)
        if self.dt > limit:
            raise ValidationError(
                f"dt={self.dt:.4g} exceeds the stability limit {limit:.4g} of this grid and these "
                f"materials (a pressure wave or the fastest particle may cross at most {CFL} "
                f"cell per substep); lower dt or the modulus"
            )


STICKY = 1e20
"""A friction coefficient that stops any sliding; kernels get it for an infinite one (finite,
so that ``0 * friction`` stays 0)."""


@dataclass(frozen=True)
class BoundaryConstants:
    """What ``grid_update`` needs of the ground and the tool, the same for both backends."""

    ground_height: float
    """[m]; -inf without ground."""
    ground_friction: float
    tool_shape: int
    """A :class:`ToolShape` code, -1 without tool."""
    tool_size: tuple[float, ...]
    """Half sizes [m] per axis (a sphere's radius repeated)."""
    tool_friction: float
    mass_floor: float
    """Nodes with less mass [kg] count as empty. In float32, nodes at a stencil's far edge
    can hold ~1e-19 kg and the derivative of momentum / mass there (~v / m) overflowed to inf
    and NaN in training; float64 keeps every node (exact momentum conservation)."""


def boundary_constants(model: Model, *, single_precision: bool) -> BoundaryConstants:
    """The grid update's constants of ``model``, infinite frictions replaced by ``STICKY``."""
    ground, tool, dim = model.ground, model.tool, model.dim

    def finite(friction: float) -> float:
        return STICKY if math.isinf(friction) else friction

    tool_size = (0.0,) * dim
    if tool is not None:
        tool_size = tuple([tool.size[0]] * dim if len(tool.size) == 1 else tool.size)
    return BoundaryConstants(
        ground_height=model.ground_height if ground is not None else -math.inf,
        ground_friction=finite(ground.friction) if ground is not None else 0.0,
        tool_shape=-1 if tool is None else int(tool.shape),
        tool_size=tuple(float(v) for v in tool_size),
        tool_friction=finite(tool.friction) if tool is not None else 0.0,
        mass_floor=1e-6 * float(model.particle_mass.detach().min()) if single_precision else 0.0,
    )


def lame(E: torch.Tensor, nu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lamé parameters ``(mu, lambda)`` from Young's modulus and Poisson ratio."""
    return E / (2 * (1 + nu)), E * nu / ((1 + nu) * (1 - 2 * nu))


def drucker_prager_alpha(friction_angle: torch.Tensor, dim: int) -> torch.Tensor:
    """The cone coefficient ``alpha`` (``||dev tau|| <= -alpha tr tau``) of a friction angle
    ``phi`` [degrees] (differentiable).

    3D: Klar et al.'s ``sqrt(2/3) 2 sin(phi) / (3 - sin(phi))``, the cone through Mohr-Coulomb's
    compression corners. 2D: ``sin(phi) / sqrt(2)``, with which the 2D cone is Mohr-Coulomb
    exactly (``|s1 - s2| / 2 <= -sin(phi) (s1 + s2) / 2``); Klar's 3D value there would
    give an angle about 2 degrees lower (33 for 35).
    """
    s = torch.sin(torch.deg2rad(friction_angle))
    if dim == 2:
        return s / math.sqrt(2.0)
    return math.sqrt(2.0 / 3.0) * 2.0 * s / (3.0 - s)


def max_stable_dt(model: Model) -> float:
    """Largest substep for which neither the P-wave (``sqrt((lam + 2 mu) / rho)``, plus the
    active stress of muscles at full action) nor the fastest initial particle crosses more than
    ``CFL`` cells."""
    mu, lam = lame(model.particle_E.detach(), model.particle_nu.detach())
    stiffness = lam + 2 * mu + model.particle_active_stress.detach().abs()
    wave = float((stiffness / model.particle_density.detach()).sqrt().max())
    speed = float(model.particle_v.detach().norm(dim=1).max())
    return CFL * model.dx / (wave + speed)


def _expect_positive(name: str, t: torch.Tensor) -> None:
    if t.numel() and float(t.detach().min()) <= 0:
        i = int(t.detach().argmin())
        raise ValidationError(f"{name}[{i}]={float(t.detach()[i]):.4g} must be > 0")
