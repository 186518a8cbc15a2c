"""Initial conditions: Kepler orbits, the figure-eight, the Pythagorean problem, random
three-body systems, Plummer spheres and a small solar system. Each returns
``(mass [n], x [n, 3], v [n, 3])`` in float64, in the center-of-mass frame, with G as stated."""

from __future__ import annotations

import math

import torch

__all__ = [
    "FIGURE_EIGHT_PERIOD",
    "figure_eight",
    "kepler",
    "kepler_period",
    "plummer",
    "pythagorean",
    "random_three_body",
    "solar_system",
]

Bodies = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
_F64 = torch.float64

FIGURE_EIGHT_PERIOD = 6.3259139829
"""Period of the figure-eight choreography with G = m = 1 (Chenciner and Montgomery 2000;
initial values of Simo)."""


def _to_com(mass: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> Bodies:
    w = (mass / mass.sum())[:, None]
    return mass, x - (w * x).sum(0), v - (w * v).sum(0)


def kepler(a: float = 1.0, e: float = 0.0, *, m1: float = 1.0, m2: float = 1e-3,
           inclination: float = 0.0, g: float = 1.0) -> Bodies:
    """Two bodies on a Kepler orbit of semi-major axis ``a`` and eccentricity ``e`` in [0, 1),
    starting at pericenter; the orbit plane is tilted by ``inclination`` [rad] about x."""
    if not 0 <= e < 1:
        raise ValueError(f"e={e} must lie in [0, 1) for a bound orbit")
    if a <= 0 or m1 <= 0 or m2 <= 0:
        raise ValueError("a, m1 and m2 must be > 0")
    r = a * (1 - e)
    speed = math.sqrt(g * (m1 + m2) * (1 + e) / r)
    ci, si = math.cos(inclination), math.sin(inclination)
    rel_x = torch.tensor([r, 0.0, 0.0], dtype=_F64)
    rel_v = torch.tensor([0.0, speed * ci, speed * si], dtype=_F64)
    mass = torch.tensor([m1, m2], dtype=_F64)
    x = torch.stack([torch.zeros(3, dtype=_F64), rel_x])
    v = torch.stack([torch.zeros(3, dtype=_F64), rel_v])
    return _to_com(mass, x, v)


def kepler_period(a: float, m1: float, m2: float, g: float = 1.0) -> float:
    return 2 * math.pi * math.sqrt(a**3 / (g * (m1 + m2)))


def figure_eight() -> Bodies:
    """Three equal masses on the figure-eight choreography (G = 1, m = 1)."""
    x1 = torch.tensor([0.97000436, -0.24308753, 0.0], dtype=_F64)
    v3 = torch.tensor([-0.93240737, -0.86473146, 0.0], dtype=_F64)
    x = torch.stack([x1, -x1, torch.zeros(3, dtype=_F64)])
    v = torch.stack([-v3 / 2, -v3 / 2, v3])
    return _to_com(torch.ones(3, dtype=_F64), x, v)


def pythagorean() -> Bodies:
    """Burrau's problem: masses 3, 4, 5 at rest at the corners of a 3-4-5 triangle (G = 1)."""
    mass = torch.tensor([3.0, 4.0, 5.0], dtype=_F64)
    x = torch.tensor([[1.0, 3.0, 0.0], [-2.0, -1.0, 0.0], [1.0, -1.0, 0.0]], dtype=_F64)
    return _to_com(mass, x, torch.zeros(3, 3, dtype=_F64))


def random_three_body(seed: int, *, size: float = 1.0, min_separation: float = 0.1) -> Bodies:
    """Three unit masses at rest at positions uniform in the square [-size, size]^2 (z = 0),
    redrawn until every pair is at least ``min_separation`` apart; G = 1."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        x = (2 * torch.rand(3, 2, generator=gen, dtype=_F64) - 1) * size
        if float(torch.pdist(x).min()) >= min_separation:
            break
    x = torch.cat([x, torch.zeros(3, 1, dtype=_F64)], 1)
    return _to_com(torch.ones(3, dtype=_F64), x, torch.zeros(3, 3, dtype=_F64))


def plummer(n: int, *, seed: int = 0) -> Bodies:
    """A Plummer sphere of ``n`` equal masses in N-body units (G = M = 1, E = -1/4), sampled as
    Aarseth, Henon and Wielen (1974) do."""
    if n < 2:
        raise ValueError(f"n={n} must be at least 2")
    gen = torch.Generator().manual_seed(seed)
    scale = 3 * math.pi / 16

    def unit_vectors(count: int) -> torch.Tensor:
        z = 2 * torch.rand(count, generator=gen, dtype=_F64) - 1
        phi = 2 * math.pi * torch.rand(count, generator=gen, dtype=_F64)
        s = torch.sqrt(1 - z**2)
        return torch.stack([s * torch.cos(phi), s * torch.sin(phi), z], 1)

    u = torch.rand(n, generator=gen, dtype=_F64).clamp(1e-10, 0.999)
    r = 1.0 / torch.sqrt(u ** (-2.0 / 3.0) - 1.0)
    x = r[:, None] * unit_vectors(n)
    # Speeds by rejection: q in [0, 1) with density proportional to q^2 (1 - q^2)^(7/2).
    q = torch.empty(n, dtype=_F64)
    filled = 0
    while filled < n:
        cand = torch.rand(4 * n, generator=gen, dtype=_F64)
        height = 0.1 * torch.rand(4 * n, generator=gen, dtype=_F64)
        ok = cand[height < cand**2 * (1 - cand**2) ** 3.5]
        take = min(n - filled, ok.shape[0])
        q[filled:filled + take] = ok[:take]
        filled += take
    speed = q * math.sqrt(2.0) * (1 + r**2) ** -0.25
    v = speed[:, None] * unit_vectors(n)
    mass = torch.full((n,), 1.0 / n, dtype=_F64)
    return _to_com(mass, x * scale, v / math.sqrt(scale))


# Sun and planets: mass [solar masses] and semi-major axis [AU]; circular, coplanar orbits.
_PLANETS = {
    "Sun": (1.0, 0.0),
    "Mercury": (1.660e-7, 0.387),
    "Venus": (2.448e-6, 0.723),
    "Earth": (3.003e-6, 1.000),
    "Mars": (3.227e-7, 1.524),
    "Jupiter": (9.548e-4, 5.203),
    "Saturn": (2.859e-4, 9.537),
    "Uranus": (4.366e-5, 19.19),
    "Neptune": (5.151e-5, 30.07),
}
SOLAR_G = 4 * math.pi**2
"""G in AU^3 / (solar mass yr^2): a one-AU circular orbit around one solar mass takes a year."""


def solar_system(planets: int = 8) -> tuple[Bodies, list[str]]:
    """The Sun and its first ``planets`` planets on circular coplanar orbits at their real
    semi-major axes and masses, planets spread in longitude (G = 4 pi^2: AU, years, solar
    masses). An approximation for demonstrations, not an ephemeris."""
    names = list(_PLANETS)[: planets + 1]
    mass = torch.tensor([_PLANETS[k][0] for k in names], dtype=_F64)
    x = torch.zeros(len(names), 3, dtype=_F64)
    v = torch.zeros(len(names), 3, dtype=_F64)
    for i, name in enumerate(names[1:], start=1):
        a = _PLANETS[name][1]
        phase = 2.4 * i
        speed = math.sqrt(SOLAR_G * (1.0 + mass[i].item()) / a)
        x[i] = torch.tensor([a * math.cos(phase), a * math.sin(phase), 0.0])
        v[i] = torch.tensor([-speed * math.sin(phase), speed * math.cos(phase), 0.0])
    return _to_com(mass, x, v), names
