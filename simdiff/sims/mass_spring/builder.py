"""Building mass-spring robots from ASCII art.

Each non-blank character of the art is one square cell (a cube in 3D, extruded ``depth`` cells
along z). In 3D the art may instead be a sequence of layers, one ASCII picture per cube layer
along z (first layer at z = 0), so that bodies whose cross-section changes along z (a
quadruped's four separate legs, :data:`QUADRUPED`) can be drawn. Cells share corner particles; every pair of corners of a cell is joined by a spring
(edges and diagonals), duplicates removed. The model keeps its cells (``Model.cells``, the
corners of each square or cube) for counting inverted cells. Characters:

* ``#``: a passive cell.
* ``0``-``9``: an actuated cell; its vertical springs and diagonals follow actuator ``digit``
  (a muscle that lengthens and shortens the cell), its horizontal springs are passive.
* ``.`` or space: empty.

The first line of the art is the top of the robot; the robot is placed with its lowest particles
at ``lift`` above the ground.
"""

from __future__ import annotations

import itertools

import torch

from simdiff.sims.mass_spring.model import Ground, Model

__all__ = ["QUADRUPED", "SHAPE_KEEPING", "robot_from_ascii"]

SHAPE_KEEPING = {"stiffness": 1.5e4, "actuation": 0.15, "drag": 15.0, "gravity": -4.8}
"""Robot parameters that keep a walker's shape, scaled from DiffTaichi's mass-spring robots
(stiffness 3e4 N/m on 0.05 m cells, unit masses, muscle stroke 0.15, velocity damping 15/s,
gravity -4.8 m/s^2) to 0.1 m cells by keeping the spring force per unit strain ``k L`` (1,500 N):
the sag under the robot's own weight, ``m g / (k L)`` ~ 3e-3, the stroke and the damping are
theirs. With the builder's older defaults (1e4 N/m, stroke 0.4, drag 1/s, g = -9.8) a walker is
3x softer for its weight, strokes 2.7x further and is damped 15x less, and trained gaits folded
cells inside out. The time step limit on 0.1 m cells is 5.4e-3 s (4.0e-3 used)."""


QUADRUPED = (
    """
###
0.1
""",
    """
###
...
""",
    """
###
2.3
""",
)
"""A 3D quadruped in layers along z: a square body 3 x 1 x 3 cubes on four one-cube legs at
its corners (48 masses), one muscle per leg, by the leg's cube (x, z): 0 at (0, 0), 1 at (2, 0),
2 at (0, 2), 3 at (2, 2). The body is square so that walking along z is walking along x
turned by 90 degrees. Each leg shares only its top face with the body, none touches
another."""


def _picture_cells(picture: str, z: int) -> list[tuple[int, int, int, str]]:
    """Cells ``(x, y, z, character)`` of one ASCII picture (top row first) at layer ``z``."""
    rows = picture.strip("\n").splitlines()
    return [(col, len(rows) - 1 - r, z, ch) for r, line in enumerate(rows)
            for col, ch in enumerate(line) if ch not in ". "]


def _cells(art: str | tuple[str, ...] | list[str], dim: int, depth: int
           ) -> list[tuple[int, int, int, str]]:
    """Cells ``(x, y, z, character)`` of the art: one picture (extruded ``depth`` times along
    z in 3D, cell by cell, which fixes the particle numbering of extruded robots), or in 3D
    one picture per layer along z."""
    if isinstance(art, str):
        layers = range(depth) if dim == 3 else range(1)
        cells = [(x, y, z, ch) for x, y, _, ch in _picture_cells(art, 0) for z in layers]
    else:
        if dim != 3:
            raise ValueError(f"art given as {len(art)} layers needs dim=3; got dim={dim}")
        if depth != 1:
            raise ValueError(f"depth={depth} with layered art: the layers give the depth "
                             f"({len(art)}); leave depth at 1")
        if not all(isinstance(p, str) for p in art):
            raise ValueError("art layers must be a sequence of strings (one picture per layer)")
        cells = [c for z, picture in enumerate(art) for c in _picture_cells(picture, z)]
    if not cells:
        raise ValueError("art has no cells: use '#' or digits for cells, '.' or space for empty")
    for *_, ch in cells:
        if ch != "#" and not ch.isdigit():
            raise ValueError(f"art holds {ch!r}; allowed: '#', digits 0-9, '.', space")
    return cells


def robot_from_ascii(
    art: str | tuple[str, ...] | list[str],
    *,
    dim: int = 2,
    cell: float = 0.1,
    depth: int = 1,
    mass: float = 1.0,
    stiffness: float = 1e4,
    damping: float = 10.0,
    actuation: float = 0.4,
    dt: float = 0.004,
    gravity: float = -9.8,
    drag: float = 1.0,
    friction: float = 1.0,
    lift: float = 0.02,
    x_offset: float = 0.1,
    dtype: torch.dtype = torch.float64,
) -> Model:
    """A robot model from ASCII art (see the module docstring for the characters).

    Args:
        art: Rows of cells, top row first; in 3D also a sequence of such pictures, one per
            layer of cubes along z (layers are aligned at their bottom row).
        dim: 2 or 3 (3D extrudes every cell of a single picture ``depth`` times along z).
        cell: Cell edge length [m].
        depth: Number of cells along z in 3D.
        mass: Mass of each particle [kg].
        stiffness: Spring stiffness per unit length of rest length... per spring [N/m].
        damping: Spring damping [N s/m].
        actuation: Relative rest-length change of actuated springs per unit action.
        dt: Time step [s].
        gravity: Acceleration along y [m/s^2].
        drag: Velocity damping rate [1/s].
        friction: Ground friction coefficient.
        lift: Height of the lowest particles above the ground [m].
        x_offset: x of the robot's left edge [m].
        dtype: Floating-point type of the model's tensors.
    """
    if dim not in (2, 3):
        raise ValueError(f"dim={dim} is not allowed; use 2 or 3")
    cells = _cells(art, dim, depth)
    corner_index: dict[tuple[int, ...], int] = {}
    springs: dict[tuple[int, int], int] = {}  # (a, b) -> actuator or -1
    cell_corners: list[list[int]] = []  # per cell, its corners in Model.cells order

    def corner(key: tuple[int, ...]) -> int:
        return corner_index.setdefault(key, len(corner_index))

    for cx, cy, cz, ch in cells:
        offsets = list(itertools.product((0, 1), repeat=dim))
        keys = [(cx + o[0], cy + o[1], *((cz + o[2],) if dim == 3 else ())) for o in offsets]
        ids = [corner(k) for k in keys]
        cell_corners.append(ids)
        act = int(ch) if ch.isdigit() else -1
        for (ia, oa), (ib, ob) in itertools.combinations(zip(ids, offsets), 2):
            pair = (min(ia, ib), max(ia, ib))
            vertical_part = oa[1] != ob[1]
            spring_act = act if vertical_part else -1
            # A spring shared by a passive and an actuated cell stays actuated.
            springs[pair] = max(springs.get(pair, -1), spring_act)
    keys = sorted(corner_index, key=corner_index.get)
    x = torch.tensor(keys, dtype=dtype) * cell
    x[:, 0] += x_offset
    x[:, 1] += lift
    pairs = torch.tensor(list(springs), dtype=torch.long)
    actuator = torch.tensor(list(springs.values()), dtype=torch.long)
    if int(actuator.max()) >= 0:
        # Renumber the digits used to 0..k-1 so that actuators have no gaps.
        used = sorted(set(actuator[actuator >= 0].tolist()))
        remap = {d: i for i, d in enumerate(used)}
        actuator = torch.tensor([remap.get(a, -1) for a in actuator.tolist()], dtype=torch.long)
    rest = (x[pairs[:, 1]] - x[pairs[:, 0]]).norm(dim=1)
    m = pairs.shape[0]
    return Model(
        particle_x=x,
        particle_v=torch.zeros_like(x),
        particle_mass=torch.full((x.shape[0],), mass, dtype=dtype),
        spring_indices=pairs,
        spring_stiffness=torch.full((m,), stiffness, dtype=dtype),
        spring_rest_length=rest,
        spring_damping=torch.full((m,), damping, dtype=dtype),
        spring_actuator=actuator,
        spring_actuation=torch.where(actuator >= 0, actuation, 0.0).to(dtype),
        dt=dt,
        gravity=gravity,
        ground=Ground(0.0, friction),
        drag=drag,
        cells=torch.tensor(cell_corners, dtype=torch.long),
    )
