"""Fluid model: the static description of an incompressible flow on a staggered (MAC) grid.

Grid: ``resolution = (n0, n1)`` or ``(n0, n1, n2)`` square cells of size ``dx`` [m]; axis 0 is
x (left to right), axis 1 is y (bottom to top, buoyancy pushes along +y), axis 2 is z. Dye
(passive scalars, any number of channels, e.g. smoke density or colors) lives at cell centers;
velocity component ``a`` lives on the faces normal to axis ``a``.

Walls: every side of the box is a free-slip wall (no flow through it) unless in ``open_sides``
(``"x-"``, ``"x+"``, ``"y-"``, ``"y+"``, ``"z-"``, ``"z+"``), where the pressure is zero outside
and fluid may leave or enter.

Solids: ``obstacle`` is a solid fraction per cell in [0, 1] (a binary mask, a smooth density
being optimized, or a shape's signed distance field through :func:`solid_from_sdf`); a face
is as solid as the union of its two cells, ``1 - (1-s_l)(1-s_r)``, so a
single solid cell blocks all its faces. A :class:`Paddle` is a kinematic box moved by the
action (its velocity) and imposes that velocity on the faces it covers. Solids set the
velocity normal to their faces only (free slip: tangential velocity is not damped).

Sources: an :class:`Inflow` is a box of cells that acts like a solid imposing its velocity on
every face it touches (so fluid leaves it through its sides at that velocity; a box with a
nonzero velocity needs an open side for the fluid to leave), and where dye is held at given
concentrations.

Tensors may require grad (inflow velocity and concentration, obstacle fractions, initial dye):
the step is differentiable with respect to them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import torch

from simdiff.sims.base import ValidationError

__all__ = [
    "MIN_RESOLUTION",
    "SIDES",
    "Advection",
    "Inflow",
    "Model",
    "Paddle",
    "as_tensor",
    "circle_sdf",
    "solid_from_sdf",
]

MIN_RESOLUTION = 8
"""Fewest cells along any axis (the multigrid preconditioner coarsens at least once)."""

SIDES = ("x-", "x+", "y-", "y+", "z-", "z+")


class Advection(str, Enum):
    """Advection scheme of the dye: semi-Lagrangian, or MacCormack (second order, with the
    usual clamp to the values around the back-traced point, so no new extrema appear)."""

    SEMI_LAGRANGIAN = "semi_lagrangian"
    MACCORMACK = "maccormack"


def as_tensor(value, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``value`` as a tensor; tensors keep their graph (only the dtype is converted)."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype)
    return torch.as_tensor(np.asarray(value, dtype=np.float64)).to(dtype)


def solid_from_sdf(sdf: torch.Tensor, dx: float) -> torch.Tensor:
    """Solid fraction per cell from a signed distance [m] at cell centers (negative inside):
    a linear ramp one cell wide across the surface, ``clamp(1/2 - sdf / dx, 0, 1)``, so the
    fraction, and every flow quantity, moves continuously with the shape's parameters."""
    return (0.5 - sdf / dx).clamp(0.0, 1.0)


def circle_sdf(
    resolution: tuple[int, ...], dx: float, center: torch.Tensor, radius: torch.Tensor
) -> torch.Tensor:
    """Signed distance [m] from each cell center to a circle (sphere in 3D) of ``center`` [m]
    and ``radius`` [m]; differentiable in both."""
    axes = [(torch.arange(n, dtype=center.dtype) + 0.5) * dx for n in resolution]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    return (grid - center).norm(dim=-1) - radius


@dataclass
class Inflow:
    """A source: a box of cells ``lo <= index < hi`` (cell indices per axis) that imposes
    ``velocity`` [m/s] on its faces and holds dye channel ``c`` at ``concentration[c]``."""

    lo: tuple[int, ...]
    hi: tuple[int, ...]
    velocity: torch.Tensor | tuple[float, ...]
    """Imposed velocity [m/s], shape [dim]; may require grad."""
    concentration: torch.Tensor | tuple[float, ...] = (1.0,)
    """Dye held in the box per channel [units], shape [dye_channels]; may require grad."""


@dataclass
class Paddle:
    """A kinematic box solid of half-size ``half_size`` [m], centered at ``center`` [m] at
    time 0, moving with the velocity given as the action of each step."""

    center: tuple[float, ...]
    half_size: tuple[float, ...]
    max_speed: float = 1.0
    """Largest speed per axis [m/s] the tasks let a controller ask for (checked against CFL)."""


@dataclass
class Model:
    """An incompressible flow in a box; see the module docstring for conventions."""

    resolution: tuple[int, ...]
    """Cells per axis, 2 or 3 entries, each >= :data:`MIN_RESOLUTION`."""
    dx: float = 1.0
    """Cell size [m]."""
    dt: float = 1.0
    """Time step [s]."""
    dye: torch.Tensor | None = None
    """Initial dye, shape [dye_channels, *resolution], >= 0 (default: one empty channel)."""
    velocity: torch.Tensor | None = None
    """Initial velocity [m/s] on faces, shape [dim, *(resolution + 1)] (component a valid on
    ``resolution + e_a`` faces, the rest ignored); projected to be divergence-free. Default 0."""
    buoyancy: tuple[float, ...] | torch.Tensor = ()
    """Upward (+y) acceleration per unit of each dye channel [m/s^2]; empty for none."""
    obstacle: torch.Tensor | None = None
    """Solid fraction per cell in [0, 1], shape resolution; may require grad."""
    open_sides: tuple[str, ...] = ()
    """Sides of the box that are open (zero pressure outside), from :data:`SIDES`."""
    inflows: list[Inflow] = field(default_factory=list)
    paddle: Paddle | None = None
    advection: Advection | str = Advection.SEMI_LAGRANGIAN
    tolerance: float | None = None
    """Relative residual ``|b - A p| / |b|`` the pressure solve must reach; None: 1e-5 in
    float32 (a few times above its round-off floor), 1e-10 in float64 (tight enough for
    finite-difference gradient checks)."""
    max_iterations: int = 500
    """Conjugate-gradient iterations allowed per solve before the step fails."""
    cfl: float = 1.0
    """Largest ``speed * dt / dx`` allowed for inflow and paddle speeds (cells per step)."""

    def __post_init__(self) -> None:
        self.resolution = tuple(int(n) for n in self.resolution)
        try:
            self.advection = Advection(self.advection)
        except ValueError:
            pass  # validate() names it
        self.validate()

    @property
    def dim(self) -> int:
        return len(self.resolution)

    @property
    def dye_channels(self) -> int:
        return 1 if self.dye is None else int(self.dye.shape[0])

    def validate(self) -> None:
        """Check every parameter's range; raises :class:`ValidationError` naming it."""
        n = self.resolution
        if len(n) not in (2, 3):
            raise ValidationError(f"resolution={n} must have 2 or 3 entries (2D or 3D)")
        if min(n) < MIN_RESOLUTION:
            raise ValidationError(
                f"resolution={n}: every axis needs at least {MIN_RESOLUTION} cells"
            )
        if not (self.dx > 0 and math.isfinite(self.dx)):
            raise ValidationError(f"dx={self.dx} must be a positive finite cell size")
        if not (self.dt > 0 and math.isfinite(self.dt)):
            raise ValidationError(f"dt={self.dt} must be a positive finite time step")
        if not isinstance(self.advection, Advection):
            allowed = ", ".join(a.value for a in Advection)
            raise ValidationError(f"advection={self.advection!r} is unknown; allowed: {allowed}")
        if self.tolerance is not None and not 0 < self.tolerance < 1:
            raise ValidationError(f"tolerance={self.tolerance} must be in (0, 1)")
        if self.max_iterations < 1:
            raise ValidationError(f"max_iterations={self.max_iterations} must be >= 1")
        if not self.cfl > 0:
            raise ValidationError(f"cfl={self.cfl} must be > 0")
        sides = SIDES[: 2 * self.dim]
        for side in self.open_sides:
            if side not in sides:
                raise ValidationError(
                    f"open_sides: {side!r} is unknown; allowed: {', '.join(sides)}"
                )
        channels = self.dye_channels
        if self.dye is not None:
            if tuple(self.dye.shape[1:]) != n or self.dye.dim() != self.dim + 1:
                raise ValidationError(
                    f"dye has shape {tuple(self.dye.shape)}; expected "
                    f"[channels, {', '.join(map(str, n))}]"
                )
            low = float(self.dye.detach().min())
            if not low >= 0:
                raise ValidationError(f"dye: density must be >= 0 everywhere, found {low:.3g}")
        if self.velocity is not None:
            want = (self.dim, *(k + 1 for k in n))
            if tuple(self.velocity.shape) != want:
                raise ValidationError(
                    f"velocity has shape {tuple(self.velocity.shape)}; expected {want}"
                )
            if not bool(torch.isfinite(self.velocity.detach()).all()):
                raise ValidationError("velocity: must be finite everywhere")
        buoyancy = as_tensor(self.buoyancy)
        if buoyancy.numel() not in (0, channels):
            raise ValidationError(
                f"buoyancy has {buoyancy.numel()} entries; expected 0 or one per dye channel "
                f"({channels})"
            )
        limit = self.cfl * self.dx / self.dt
        for k, inflow in enumerate(self.inflows):
            self._check_box(f"inflows[{k}]", inflow.lo, inflow.hi)
            vel = as_tensor(inflow.velocity).detach()
            if vel.shape != (self.dim,):
                raise ValidationError(f"inflows[{k}].velocity must have {self.dim} entries")
            speed = float(vel.abs().max())
            if speed > limit:
                raise ValidationError(
                    f"dt={self.dt} is beyond the CFL bound for inflows[{k}]: speed {speed:.3g} m/s "
                    f"moves {speed * self.dt / self.dx:.3g} cells per step, more than "
                    f"cfl={self.cfl}; "
                    f"use dt <= {self.cfl * self.dx / speed:.3g}"
                )
            if speed > 0 and not self.open_sides:
                raise ValidationError(
                    f"inflows[{k}] pushes fluid at {speed:.3g} m/s into a closed box; name an "
                    f"outlet in open_sides (one of {', '.join(sides)}) or set its velocity to 0"
                )
            conc = as_tensor(inflow.concentration).detach()
            if conc.shape != (channels,):
                raise ValidationError(
                    f"inflows[{k}].concentration must have one entry per dye channel ({channels})"
                )
            if not float(conc.min()) >= 0:
                raise ValidationError(
                    f"inflows[{k}].concentration: density must be >= 0, found "
                    f"{float(conc.min()):.3g}"
                )
        if self.paddle is not None:
            p = self.paddle
            if len(p.center) != self.dim or len(p.half_size) != self.dim:
                raise ValidationError(f"paddle center and half_size must have {self.dim} entries")
            if min(p.half_size) <= 0:
                raise ValidationError(f"paddle.half_size={p.half_size} must be positive")
            if p.max_speed > limit:
                raise ValidationError(
                    f"dt={self.dt} is beyond the CFL bound for the paddle: max_speed "
                    f"{p.max_speed:.3g} m/s moves {p.max_speed * self.dt / self.dx:.3g} cells per "
                    f"step, more than cfl={self.cfl}"
                )
        if self.obstacle is not None:
            if tuple(self.obstacle.shape) != n:
                raise ValidationError(
                    f"obstacle has shape {tuple(self.obstacle.shape)}; expected {n}"
                )
            s = self.obstacle.detach()
            if not (float(s.min()) >= 0 and float(s.max()) <= 1):
                raise ValidationError("obstacle: solid fractions must lie in [0, 1]")
        self._check_connected()

    def _check_box(self, name: str, lo, hi) -> None:
        if len(lo) != self.dim or len(hi) != self.dim:
            raise ValidationError(f"{name}: lo and hi must have {self.dim} entries")
        for a, (l, h, size) in enumerate(zip(lo, hi, self.resolution)):
            if not 0 <= l < h <= size:
                raise ValidationError(
                    f"{name}: axis {a} range [{l}, {h}) must satisfy 0 <= lo < hi <= {size}"
                )

    def _check_connected(self) -> None:
        """The fluid (cells less than half solid) must be one connected region, touching an
        open side if there is one, and containing every inflow: a region sealed off by solids
        would make the pressure equation singular there, and a sealed inflow would pump into a
        closed pocket."""
        from scipy import ndimage

        solid = np.zeros(self.resolution, dtype=bool)
        if self.obstacle is not None:
            solid |= self.obstacle.detach().cpu().numpy() >= 0.5
        fluid = ~solid
        if not fluid.any():
            raise ValidationError("obstacle mask closes the domain: no fluid cell is left")
        labels, count = ndimage.label(fluid)
        if count > 1:
            sizes = np.bincount(labels.ravel())[1:]
            raise ValidationError(
                f"obstacle mask closes the domain: the fluid splits into {count} separate "
                f"regions (sizes {sorted(sizes.tolist(), reverse=True)}); open a passage"
            )
        for k, inflow in enumerate(self.inflows):
            box = tuple(slice(l, h) for l, h in zip(inflow.lo, inflow.hi))
            if not fluid[box].any():
                raise ValidationError(
                    f"obstacle mask closes the domain: inflows[{k}] is inside solids"
                )
        if self.open_sides:
            touching = False
            for side in self.open_sides:
                axis, end = SIDES.index(side) // 2, SIDES.index(side) % 2
                index = [slice(None)] * self.dim
                index[axis] = -1 if end else 0
                touching |= bool(fluid[tuple(index)].any())
            if not touching:
                raise ValidationError(
                    f"obstacle mask closes the domain: solids cover every open side "
                    f"{self.open_sides}"
                )
