"""Structural design problems as data, and the suite of Hoyer, Sohl-Dickstein and Greydanus
(2019), "Neural reparameterization improves structural optimization".

A :class:`Problem` is a grid of ``nelx`` by ``nely`` unit elements, boolean ``fixed`` degrees of
freedom and nodal ``forces``, both of shape ``(nelx + 1, nely + 1, 2)`` indexed ``[ix, iy, d]``
(``iy`` counted down from the top, ``d`` 0 for x and 1 for y, the y axis pointing up, so a load of
``-1`` in y points down), a volume fraction, and optional regions forced ``void`` or ``solid``
(boolean ``(nely, nelx)`` images). Flattening ``fixed`` and ``forces`` in C order gives the
degree-of-freedom numbering of :mod:`simdiff.design.fem`.

The suite (:data:`SUITE`) reconstructs the paper's problem families, sizes and volume fractions
(its ``problems.py``). Where its definitions have quirks they are kept, because they define the
published problems: ``crane`` puts its load at row ``height + 2 - height / 2`` (a negative index
wrapping around), ``two_level_bridge`` loads both x and y on its decks, and ``thin_support_bridge``
uses its (square) mask untransposed. Two differences: ``ramp`` and ``staircase`` rasterize their
loaded lines with our own anti-aliasing (the paper used scikit-image's ``line_aa``; per-node loads
differ slightly, totals agree), and ``hoop`` (scikit-image's anti-aliased circle) is left out.
The paper's filter radius is 2 elements, penalty 3, E0 = 1, Emin = 1e-9, Poisson's ratio 0.3.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from simdiff.sims.base import ValidationError

__all__ = ["SUITE", "Problem", "get_problem", "list_problems", "mbb_beam"]

X, Y = 0, 1


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """A compliance-minimization problem (see the module docstring for conventions).

    Attributes:
        name: Identifier, e.g. ``mbb_beam_96x32_0.5``.
        fixed: bool ``(nelx + 1, nely + 1, 2)``, True where the displacement is zero.
        forces: float ``(nelx + 1, nely + 1, 2)`` nodal loads.
        volfrac: Target mean density of the designable elements, in (0, 1).
        void, solid: bool ``(nely, nelx)`` elements forced to density 0 or 1, or None.
        penal, rmin, e0, emin, nu: SIMP penalty, cone-filter radius (elements), Young's moduli
            of solid and void, Poisson's ratio.
        mirror: Display hint: ``"left"`` or ``"right"`` when the problem is half of a
            symmetric structure (its symmetry plane on that side), else None.
    """

    name: str
    fixed: np.ndarray
    forces: np.ndarray
    volfrac: float
    void: np.ndarray | None = None
    solid: np.ndarray | None = None
    penal: float = 3.0
    rmin: float = 2.0
    e0: float = 1.0
    emin: float = 1e-9
    nu: float = 0.3
    description: str = ""

    @property
    def nelx(self) -> int:
        return self.fixed.shape[0] - 1

    @property
    def nely(self) -> int:
        return self.fixed.shape[1] - 1

    @property
    def mirror(self) -> str | None:
        for side, edge in (("left", 0), ("right", -1)):
            if self.fixed[edge, :, X].all() and not self.fixed[edge, :, Y].all():
                return side
        return None

    @functools.cached_property
    def design_mask(self) -> np.ndarray:
        """bool ``(nely, nelx)``: elements whose density is designed (not forced)."""
        mask = np.ones((self.nely, self.nelx), dtype=bool)
        for region in (self.void, self.solid):
            if region is not None:
                mask &= ~region
        return mask

    def replace(self, **changes) -> Problem:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Raise :class:`ValidationError` for a problem that cannot be solved or designed."""
        fixed, forces = np.asarray(self.fixed), np.asarray(self.forces)
        if fixed.ndim != 3 or fixed.shape[2] != 2 or min(fixed.shape[:2]) < 2:
            raise ValidationError(f"{self.name}: fixed must have shape (nelx + 1, nely + 1, 2) "
                                  f"with nelx, nely >= 1, got {fixed.shape}")
        if forces.shape != fixed.shape:
            raise ValidationError(f"{self.name}: forces has shape {forces.shape}, fixed has "
                                  f"{fixed.shape}")
        if not np.all(np.isfinite(forces)):
            raise ValidationError(f"{self.name}: forces must be finite")
        if not (isinstance(self.volfrac, (int, float)) and 0.0 < self.volfrac < 1.0):
            raise ValidationError(f"{self.name}: volfrac={self.volfrac!r} must lie strictly "
                                  "between 0 and 1")
        if not self.rmin >= 1.0:
            raise ValidationError(f"{self.name}: filter radius rmin={self.rmin!r} is below one "
                                  "element; it must be >= 1 (1 means no filtering)")
        if not self.penal >= 1.0:
            raise ValidationError(f"{self.name}: penal={self.penal!r} must be >= 1")
        if not 0.0 < self.emin < self.e0:
            raise ValidationError(f"{self.name}: need 0 < emin < e0, got emin={self.emin!r}, "
                                  f"e0={self.e0!r}")
        if not -1.0 < self.nu < 0.5:
            raise ValidationError(f"{self.name}: Poisson's ratio nu={self.nu!r} must lie in "
                                  "(-1, 0.5)")
        for label in ("void", "solid"):
            region = getattr(self, label)
            if region is not None and np.shape(region) != (self.nely, self.nelx):
                raise ValidationError(f"{self.name}: {label} must have shape (nely, nelx) = "
                                      f"{(self.nely, self.nelx)}, got {np.shape(region)}")
        if self.void is not None and self.solid is not None and (self.void & self.solid).any():
            raise ValidationError(f"{self.name}: some elements are forced both void and solid")
        if not self.design_mask.any():
            raise ValidationError(f"{self.name}: every element is forced void or solid; nothing "
                                  "is left to design")
        # Rigid-body modes (two translations, one rotation about the origin) restricted to the
        # fixed dofs: the stiffness matrix is nonsingular iff no combination of them survives.
        ix, iy = np.meshgrid(np.arange(self.nelx + 1), np.arange(self.nely + 1), indexing="ij")
        modes = np.zeros((self.nelx + 1, self.nely + 1, 2, 3))
        modes[..., X, 0] = 1.0
        modes[..., Y, 1] = 1.0
        modes[..., X, 2] = iy  # rotation: (x, y_up) -> (-y_up, x) with y_up = -iy
        modes[..., Y, 2] = ix
        held = modes[fixed.astype(bool)]
        rank = np.linalg.matrix_rank(held) if held.size else 0
        if rank < 3:
            motion = "translation"
            if held.size:
                tx, ty, theta = np.linalg.svd(held)[2][-1]
                if abs(theta) > 1e-9:
                    motion = (f"rotation about node ({-ty / theta:.3g}, {-tx / theta:.3g})")
                else:
                    motion = "x translation" if abs(tx) >= abs(ty) else "y translation"
            raise ValidationError(
                f"{self.name}: the supports ({int(fixed.sum())} fixed dofs) do not prevent "
                f"rigid-body motion (a free {motion}): the stiffness matrix is singular; fix "
                "more degrees of freedom")
        loaded = np.abs(forces) > 0
        if not loaded.any():
            raise ValidationError(f"{self.name}: no loads: every force is zero")
        if not (loaded & ~fixed.astype(bool)).any():
            raise ValidationError(f"{self.name}: every load acts on a fixed degree of freedom, "
                                  "where the supports absorb it: the structure carries nothing")


def _problem(name, fixed, forces, volfrac, void=None, description=""):
    return Problem(name, fixed.astype(bool), forces.astype(np.float64), float(volfrac),
                   void=None if void is None else void.astype(bool), description=description)


def _arrays(w, h):
    return np.zeros((w + 1, h + 1, 2), dtype=bool), np.zeros((w + 1, h + 1, 2))


# --------------------------------------------------------------------- problem families
def mbb_beam(w=60, h=20, volfrac=0.5, name=None):
    """Half of the Messerschmitt-Boelkow-Blohm beam: symmetry on the left, a roller at the
    bottom right, a unit load down at the top left."""
    fixed, forces = _arrays(w, h)
    fixed[-1, -1, Y] = True
    fixed[0, :, X] = True
    forces[0, 0, Y] = -1
    return _problem(name or f"mbb_beam_{w}x{h}_{volfrac}", fixed, forces, volfrac,
                    description="half MBB beam: symmetry left, roller bottom right, load top left")


def cantilever_beam_full(w, h, volfrac, force_position=0.0):
    fixed, forces = _arrays(w, h)
    fixed[0, :, :] = True
    forces[-1, round((1 - force_position) * h), Y] = -1
    return ("cantilever clamped along the left edge, load at the bottom right", fixed, forces,
            volfrac, None)


def cantilever_beam_two_point(w, h, volfrac, support_position=0.25, force_position=0.5):
    fixed, forces = _arrays(w, h)
    fixed[0, round(h * (1 - support_position)), :] = True
    fixed[0, round(h * support_position), :] = True
    forces[-1, round((1 - force_position) * h), Y] = -1
    return "cantilever pinned at two points on the left", fixed, forces, volfrac, None


def pure_bending_moment(w, h, volfrac, support_position=0.45):
    fixed, forces = _arrays(w, h)
    fixed[-1, :, X] = True
    fixed[0, round(h * (1 - support_position)), Y] = True
    fixed[0, round(h * support_position), Y] = True
    forces[0, round(h * (1 - support_position)), X] = 1
    forces[0, round(h * support_position), X] = -1
    return "a couple of horizontal forces on the left, symmetry right", fixed, forces, volfrac, None


def michell_centered_both(w, h, volfrac, position=0.05):
    fixed, forces = _arrays(w, h)
    fixed[round(position * w), round(h / 2), Y] = True
    fixed[-1, :, X] = True
    forces[-1, round(h / 2), Y] = -1
    return "Michell structure: a point support, load at mid-height", fixed, forces, volfrac, None


def michell_centered_below(w, h, volfrac, position=0.25):
    fixed, forces = _arrays(w, h)
    fixed[round(position * w), 0, Y] = True
    fixed[-1, :, X] = True
    forces[-1, 0, Y] = -1
    return "Michell structure with the support beside the load", fixed, forces, volfrac, None


def ground_structure(w, h, volfrac, force_position=0.5):
    fixed, forces = _arrays(w, h)
    fixed[-1, :, X] = True
    fixed[0, -1, :] = True
    forces[round(force_position * h), -1, Y] = -1
    return "an overhanging bridge-like structure", fixed, forces, volfrac, None


def l_shape(w, h, volfrac, aspect=0.4, force_position=0.5):
    fixed, forces = _arrays(w, h)
    fixed[:round(aspect * w), 0, :] = True
    forces[-1, round((1 - aspect * force_position) * h), Y] = -1
    void = np.zeros((w, h), dtype=bool)  # [x, y], transposed below
    void[round(h * aspect):, :round(w * (1 - aspect))] = True
    return "L-shaped bracket clamped at the top", fixed, forces, volfrac, void.T


def crane(w, h, volfrac, aspect=0.5, force_position=0.9):
    fixed, forces = _arrays(w, h)
    fixed[:, -1, :] = True
    row = round(1 - aspect * h)  # negative: counted from the bottom, as in the paper
    forces[round(force_position * w), row, Y] = -1
    void = np.zeros((w, h), dtype=bool)
    void[round(aspect * w):, round(h * aspect) + 2:] = True
    return "a crane arm anchored to the ground", fixed, forces, volfrac, void.T


def center_support(w, h, volfrac):
    fixed, forces = _arrays(w, h)
    fixed[-1, -1, Y] = True
    fixed[-1, :, X] = True
    forces[:, 0, Y] = -1 / w
    return "a distributed load on top, held at one point", fixed, forces, volfrac, None


def column(w, h, volfrac):
    fixed, forces = _arrays(w, h)
    fixed[:, -1, Y] = True
    fixed[-1, :, X] = True
    forces[:, 0, Y] = -1 / w
    return "a column under a distributed load", fixed, forces, volfrac, None


def roof(w, h, volfrac):
    fixed, forces = _arrays(w, h)
    fixed[0, :, X] = True
    fixed[-1, :, X] = True
    fixed[:, -1, Y] = True
    forces[:, 0, Y] = -1 / w
    return "a roof: distributed load on top, supported below", fixed, forces, volfrac, None


def causeway_bridge(w, h, volfrac, deck_level=1.0):
    fixed, forces = _arrays(w, h)
    fixed[-1, -1, Y] = True
    fixed[-1, :, X] = True
    fixed[0, :, X] = True
    forces[:, round(h * (1 - deck_level)), Y] = -1 / w
    return "a causeway bridge on regularly spaced columns", fixed, forces, volfrac, None


def two_level_bridge(w, h, volfrac, deck_height=0.2):
    fixed, forces = _arrays(w, w)  # square, as in the paper
    fixed[0, -1, :] = True
    fixed[0, :, X] = True
    fixed[-1, :, X] = True
    forces[:, round(h * (1 - deck_height) / 2), :] = -1 / (2 * w)
    forces[:, round(h * (1 + deck_height) / 2), :] = -1 / (2 * w)
    return "a bridge with two decks", fixed, forces, volfrac, None


def suspended_bridge(w, h, volfrac, span_position=0.2, anchored=False):
    fixed, forces = _arrays(w, h)
    fixed[-1, :, X] = True
    fixed[:round(span_position * w), -1, Y] = True
    if anchored:
        fixed[:round(span_position * w), -1, X] = True
    forces[:, -1, Y] = -1 / w
    return "a suspended bridge, deck at the bottom", fixed, forces, volfrac, None


def canyon_bridge(w, h, volfrac, deck_level=1.0):
    deck = round(h * (1 - deck_level))
    fixed, forces = _arrays(w, h)
    fixed[-1, deck:, :] = True
    fixed[0, :, X] = True
    forces[:, deck, Y] = -1 / w
    return "a bridge in a canyon, no supports below", fixed, forces, volfrac, None


def thin_support_bridge(w, h, volfrac, design_width=0.25):
    fixed, forces = _arrays(w, h)
    fixed[:, -1, Y] = True
    fixed[0, :, X] = True
    fixed[-1, :, X] = True
    forces[:, 0, Y] = -1 / w
    void = np.zeros((w, h), dtype=bool)  # used untransposed, as in the paper (square only)
    void[-round(w * (1 - design_width)):, :round(h * (1 - design_width))] = True
    return "a bridge deck on a thin support", fixed, forces, volfrac, void


def drawbridge(w, h, volfrac):
    fixed, forces = _arrays(w, h)
    fixed[0, :, :] = True
    forces[:, -1, Y] = -1 / w
    return "a drawbridge held from the left", fixed, forces, volfrac, None


def dam(w, h, volfrac):
    fixed, forces = _arrays(w, h)
    fixed[:, -1, :] = True
    forces[0, :, X] = 2 * np.arange(1, h + 2) / h**2
    return "a dam: horizontal pressure growing with depth", fixed, forces, volfrac, None


def _line_loads(forces, x0, y0, x1, y1, value):
    """Anti-aliased line of downward loads from node (x0, y0) to (x1, y1), one column at a
    time, split between the two nearest rows; each node keeps its most negative load."""
    for ix in range(min(x0, x1), max(x0, x1) + 1):
        t = 0.0 if x1 == x0 else (ix - x0) / (x1 - x0)
        y = y0 + t * (y1 - y0)
        lo = int(np.floor(y))
        frac = y - lo
        for iy, weight in ((lo, 1 - frac), (lo + 1, frac)):
            if weight > 0 and 0 <= iy < forces.shape[1]:
                forces[ix, iy, Y] = min(forces[ix, iy, Y], -weight * value)


def staircase(w, h, volfrac, num_stories=2):
    fixed, forces = _arrays(w, h)
    fixed[:, -1, :] = True
    for story in range(num_stories):
        parity = story % 2
        _line_loads(forces, 0, (story + parity) * h // num_stories,
                    w, (story + 1 - parity) * h // num_stories, 1 / (w * num_stories))
    return "a zig-zag ramp loaded along its length", fixed, forces, volfrac, None


def ramp(w, h, volfrac):
    _, *rest = staircase(w, h, volfrac, num_stories=1)
    return ("a ramp loaded along its length", *rest)


def staggered_points(w, h, volfrac, interval=16, break_symmetry=False):
    fixed, forces = _arrays(w, h)
    fixed[:, -1, Y] = True
    fixed[0, :, X] = True
    fixed[-1, :, X] = True
    f = interval**2 / (w * h)
    shift = int(break_symmetry)
    forces[interval // 2 + shift::interval, ::interval, Y] = -f
    forces[shift::interval, interval // 2::interval, Y] = -f
    return "a staggered grid of point loads", fixed, forces, volfrac, None


def multistory_building(w, h, volfrac, interval=16):
    fixed, forces = _arrays(w, h)
    fixed[:, -1, Y] = True
    fixed[-1, :, X] = True
    forces[:, ::interval, Y] = -1 / w
    return "floors loaded every `interval` rows", fixed, forces, volfrac, None


# (family, builder, [(width, height, volfrac, extra kwargs), ...]) as in the paper's table.
_FAMILIES = [
    ("cantilever_beam_full", cantilever_beam_full,
     [(96, 32, 0.4), (192, 64, 0.3), (384, 128, 0.2), (384, 128, 0.15)]),
    ("cantilever_beam_two_point", cantilever_beam_two_point,
     [(64, 48, 0.4), (128, 96, 0.3), (256, 192, 0.2), (256, 192, 0.15)]),
    ("pure_bending_moment", pure_bending_moment,
     [(32, 64, 0.15), (64, 128, 0.125), (128, 256, 0.1)]),
    ("ground_structure", ground_structure,
     [(64, 64, 0.12), (128, 128, 0.1), (256, 256, 0.07), (256, 256, 0.05)]),
    ("michell_centered_both", michell_centered_both,
     [(32, 64, 0.12), (64, 128, 0.12), (128, 256, 0.12), (128, 256, 0.06)]),
    ("michell_centered_below", michell_centered_below,
     [(64, 64, 0.12), (128, 128, 0.12), (256, 256, 0.12), (256, 256, 0.06)]),
    ("l_shape_0.2", functools.partial(l_shape, aspect=0.2),
     [(64, 64, 0.4), (128, 128, 0.3), (256, 256, 0.2)]),
    ("l_shape_0.4", functools.partial(l_shape, aspect=0.4),
     [(64, 64, 0.4), (128, 128, 0.3), (256, 256, 0.2)]),
    ("crane", crane, [(64, 64, 0.3), (128, 128, 0.2), (256, 256, 0.15), (256, 256, 0.1)]),
    ("center_support", center_support,
     [(64, 64, 0.15), (128, 128, 0.1), (256, 256, 0.1), (256, 256, 0.05)]),
    ("column", column,
     [(32, 128, 0.3), (64, 256, 0.3), (128, 512, 0.1), (128, 512, 0.3), (128, 512, 0.5)]),
    ("roof", roof,
     [(64, 64, 0.2), (128, 128, 0.15), (256, 256, 0.4), (256, 256, 0.2), (256, 256, 0.1)]),
    ("causeway_bridge_top", causeway_bridge,
     [(64, 64, 0.3), (128, 128, 0.2), (256, 256, 0.1), (128, 64, 0.3), (256, 128, 0.2)]),
    ("causeway_bridge_middle", functools.partial(causeway_bridge, deck_level=0.5),
     [(64, 64, 0.12), (128, 128, 0.1), (256, 256, 0.08)]),
    ("causeway_bridge_low", functools.partial(causeway_bridge, deck_level=0.3),
     [(64, 64, 0.12), (128, 128, 0.1), (256, 256, 0.08)]),
    ("two_level_bridge", two_level_bridge, [(64, 64, 0.2), (128, 128, 0.16), (256, 256, 0.12)]),
    ("free_suspended_bridge", suspended_bridge,
     [(64, 64, 0.15), (128, 128, 0.1), (256, 256, 0.075), (256, 256, 0.05)]),
    ("anchored_suspended_bridge",
     functools.partial(suspended_bridge, span_position=0.1, anchored=True),
     [(64, 64, 0.15), (128, 128, 0.1), (256, 256, 0.075), (256, 256, 0.05)]),
    ("canyon_bridge", canyon_bridge,
     [(64, 64, 0.16), (128, 128, 0.12), (256, 256, 0.1), (256, 256, 0.05)]),
    ("thin_support_bridge", thin_support_bridge,
     [(64, 64, 0.3), (128, 128, 0.2), (256, 256, 0.15), (256, 256, 0.1)]),
    ("drawbridge", drawbridge, [(64, 64, 0.2), (128, 128, 0.15), (256, 256, 0.1)]),
    ("dam", dam, [(64, 64, 0.2), (128, 128, 0.15), (256, 256, 0.05), (256, 256, 0.1),
                  (256, 256, 0.2)]),
    ("ramp", ramp, [(64, 64, 0.3), (128, 128, 0.2), (256, 256, 0.2), (256, 256, 0.1)]),
    ("staircase", functools.partial(staircase, num_stories=3),
     [(64, 64, 0.3), (128, 128, 0.2), (256, 256, 0.15)]),
    ("staircase_6", functools.partial(staircase, num_stories=6), [(128, 512, 0.15)]),
    ("staggered_points", staggered_points,
     [(64, 64, 0.3), (128, 128, 0.3), (256, 256, 0.3), (256, 256, 0.5), (64, 128, 0.3),
      (128, 256, 0.3), (32, 128, 0.3), (64, 256, 0.3), (128, 512, 0.3)]),
    ("staggered_points_32", functools.partial(staggered_points, interval=32), [(128, 512, 0.15)]),
    ("multistory_building", multistory_building, [(32, 64, 0.5)]),
    ("multistory_building_32", functools.partial(multistory_building, interval=32),
     [(64, 128, 0.4)]),
    ("multistory_building_64", functools.partial(multistory_building, interval=64),
     [(128, 256, 0.3), (128, 512, 0.25)]),
    ("multistory_building_128", functools.partial(multistory_building, interval=128),
     [(128, 512, 0.2)]),
]


def _build_suite() -> dict[str, functools.partial]:
    suite: dict[str, functools.partial] = {}
    for w, h, v in [(96, 32, 0.5), (192, 64, 0.4), (384, 128, 0.3), (192, 32, 0.5),
                    (384, 64, 0.4)]:
        suite[f"mbb_beam_{w}x{h}_{v}"] = functools.partial(mbb_beam, w, h, v)
    for family, builder, sizes in _FAMILIES:
        for w, h, v in sizes:
            name = f"{family}_{w}x{h}_{v}"

            def make(builder=builder, w=w, h=h, v=v, name=name, family=family):
                description, fixed, forces, volfrac, void = builder(w, h, v)
                return _problem(name, fixed, forces, volfrac, void,
                                description=f"{family}: {description}")

            suite[name] = make
    return suite


#: Problem name -> a function building it (problems are built on demand: some are large).
SUITE = _build_suite()

#: A short name for each family: its first (smallest) size in the paper.
SHORT_NAMES = {}
for _name in SUITE:
    _family = _name.rsplit("_", 2)[0]
    SHORT_NAMES.setdefault(_family, _name)
SHORT_NAMES["mbb_beam"] = "mbb_beam_60x20_0.5"


def list_problems() -> list[str]:
    """Every suite problem's name."""
    return list(SUITE)


def get_problem(name: str, **overrides) -> Problem:
    """A suite problem by full name (``mbb_beam_96x32_0.5``) or family name (its smallest
    size; ``mbb_beam`` is the classic 60x20 beam at volume fraction 0.5), with attributes
    (``volfrac``, ``rmin``, ``penal`` ...) overridden.

    Raises:
        ValidationError: for an unknown name or an invalid problem.
    """
    if name == "mbb_beam_60x20_0.5":
        problem = mbb_beam(60, 20, 0.5)
    elif name in SUITE:
        problem = SUITE[name]()
    elif name in SHORT_NAMES:
        return get_problem(SHORT_NAMES[name], **overrides)
    else:
        close = [n for n in [*SHORT_NAMES, *SUITE] if name.split("_")[0] in n][:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ValidationError(f"design problem {name!r} not found (see `simdiff design list`)"
                              f"{hint}")
    if overrides:
        suffix = "".join(f"_{k}{v}" for k, v in overrides.items() if k != "name")
        problem = problem.replace(**{"name": problem.name + suffix, **overrides})
    problem.validate()
    return problem
