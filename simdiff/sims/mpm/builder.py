"""Building MPM models from boxes of material.

Each :class:`Body` is an axis-aligned box sampled on a regular lattice (``particles_per_cell``
particles per grid cell and axis, at the lattice cells' centers), so each particle's volume is
the lattice cell's. A robot is several bodies side by side, each muscle its own body.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from simdiff.sims.mpm.model import Ground, Material, Model, Tool

__all__ = ["Body", "box", "build_model", "check_grid_size"]


@dataclass(frozen=True)
class Body:
    """A box of one material.

    Attributes:
        lower: Lower corner [m], one entry per axis.
        size: Edge lengths [m].
        material: Its material.
        E: Young's modulus [Pa].
        nu: Poisson ratio.
        density: Density [kg/m^dim].
        velocity: Initial velocity [m/s] (zero if None).
        yield_stress: Von Mises yield stress [Pa] (plastic only).
        friction_angle: Drucker-Prager friction angle [degrees] (sand only).
        actuator: Action index of its muscle, -1 for passive material.
        fiber: Unit fiber direction of the muscle (default: along y).
        active_stress: Active stress per unit action [Pa].
    """

    lower: tuple[float, ...]
    size: tuple[float, ...]
    material: Material = Material.ELASTIC
    E: float = 1e3
    nu: float = 0.2
    density: float = 1.0
    velocity: tuple[float, ...] | None = None
    yield_stress: float = math.inf
    friction_angle: float = 30.0
    actuator: int = -1
    fiber: tuple[float, ...] | None = None
    active_stress: float = 0.0


def box(lower, size, spacing: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Lattice-cell centers filling the box ``[lower, lower + size]``, shape [n, dim]."""
    counts = [max(1, round(s / spacing)) for s in size]
    axes = [lo + (torch.arange(c, dtype=dtype) + 0.5) * (s / c)
            for lo, s, c in zip(lower, size, counts)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(size))


def check_grid_size(grid_size: int) -> int:
    """``grid_size`` if it is a positive integer (scenes divide by it before building), else a
    ValueError naming it; the model checks the boundary's own lower bound."""
    if not isinstance(grid_size, int) or isinstance(grid_size, bool) or grid_size < 1:
        raise ValueError(f"grid_size={grid_size!r} must be a positive integer (grid nodes per "
                         "axis)")
    return grid_size


def build_model(
    bodies: list[Body],
    *,
    grid_size: int = 64,
    dx: float | None = None,
    dt: float = 1e-3,
    substeps: int = 1,
    particles_per_cell: int = 2,
    gravity: float = -9.8,
    ground: Ground | None = None,
    tool: Tool | None = None,
    dtype: torch.dtype = torch.float64,
) -> Model:
    """A model of the bodies on a ``grid_size``-node grid (``dx`` defaults to 1 / grid_size).

    ``ground`` defaults to a ground on the bottom wall layer with friction 0.5.
    """
    check_grid_size(grid_size)
    dx = 1.0 / grid_size if dx is None else dx
    spacing = dx / particles_per_cell
    columns: dict[str, list[torch.Tensor]] = {k: [] for k in (
        "x", "v", "volume", "density", "material", "E", "nu", "yield", "friction", "actuator",
        "fiber", "active")}
    for body in bodies:
        dim = len(body.lower)
        x = box(body.lower, body.size, spacing, dtype)
        n = x.shape[0]
        cell = math.prod(s / max(1, round(s / spacing)) for s in body.size)
        fiber = body.fiber or tuple(1.0 if k == 1 else 0.0 for k in range(dim))
        velocity = body.velocity or (0.0,) * dim

        def full(value, count=n):
            return torch.full((count,), float(value), dtype=dtype)

        columns["x"].append(x)
        columns["v"].append(torch.tensor(velocity, dtype=dtype).expand(n, dim))
        columns["volume"].append(full(cell))
        columns["density"].append(full(body.density))
        columns["material"].append(torch.full((n,), int(body.material), dtype=torch.int64))
        columns["E"].append(full(body.E))
        columns["nu"].append(full(body.nu))
        columns["yield"].append(full(body.yield_stress))
        columns["friction"].append(full(body.friction_angle))
        columns["actuator"].append(torch.full((n,), body.actuator, dtype=torch.int64))
        columns["fiber"].append(torch.tensor(fiber, dtype=dtype).expand(n, dim))
        columns["active"].append(full(body.active_stress))
    c = {k: torch.cat(v).clone() for k, v in columns.items()}
    return Model(
        particle_x=c["x"], particle_v=c["v"], particle_volume=c["volume"],
        particle_density=c["density"], particle_material=c["material"], particle_E=c["E"],
        particle_nu=c["nu"], grid_size=grid_size, dx=dx, dt=dt, substeps=substeps,
        particle_yield=c["yield"], particle_friction_angle=c["friction"],
        particle_actuator=c["actuator"], particle_fiber=c["fiber"],
        particle_active_stress=c["active"], gravity=gravity,
        ground=Ground() if ground is None else ground, tool=tool,
    )

