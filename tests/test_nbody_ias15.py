"""IAS15 against REBOUND's IAS15: the Pythagorean outcome and energy error, the figure-eight,
convergence with the tolerance, gradients through adaptive steps (central differences and
REBOUND's first-order variational particles)."""

import math

import numpy as np
import pytest
import torch

from simdiff.backend import resolve_backend
from simdiff.sims.nbody import Model, NBody
from simdiff.sims.nbody.initial import (
    FIGURE_EIGHT_PERIOD,
    figure_eight,
    kepler,
    kepler_period,
    pythagorean,
)

rebound = pytest.importorskip("rebound")
WARP64 = resolve_backend("warp", precision="float64")
F64 = torch.float64


def _rebound(mass, x, v, tolerance=1e-9, g=1.0):
    r = rebound.Simulation()
    r.G = g
    r.integrator = "ias15"
    r.integrator.epsilon = tolerance
    for m, xi, vi in zip(mass.tolist(), x.tolist(), v.tolist()):
        r.add(m=m, x=xi[0], y=xi[1], z=xi[2], vx=vi[0], vy=vi[1], vz=vi[2])
    return r


def _phase(r) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([[p.x, p.y, p.z] for p in r.particles]),
            np.array([[p.vx, p.vy, p.vz] for p in r.particles]))


def _binary(x, v, mass):
    """Semi-major axis and eccentricity of bodies 1, 2 (masses 4, 5); distance of body 0."""
    r, u, mu = x[2] - x[1], v[2] - v[1], float(mass[1] + mass[2])
    energy = 0.5 * u @ u - mu / np.linalg.norm(r)
    h = np.cross(r, u)
    return -mu / (2 * energy), math.sqrt(max(0.0, 1 + 2 * energy * (h @ h) / mu**2)), \
        float(np.linalg.norm(x[0]))


@pytest.mark.parametrize("tolerance", [
    1e-9, 1e-10, pytest.param(1e-7, marks=pytest.mark.slow),
    pytest.param(1e-8, marks=pytest.mark.slow)])
def test_pythagorean_outcome_matches_rebound(tolerance):
    """To t = 70: body 0 (mass 3) escapes to r = 21.4 and bodies 1, 2 form a binary; a and e
    within 1% of REBOUND's at the same tolerance; the relative energy error is at most 1e-12
    at every tolerance (measured about 1e-13 from 1e-7 to 1e-10, REBOUND 8e-12 to 1e-10: the
    compiled loop evaluates forces at the compensated positions)."""
    mass, x, v = pythagorean()
    sim = NBody(Model(mass, x, v, dt=1e-3, integrator="ias15", tolerance=tolerance), WARP64)
    with torch.no_grad():
        final = sim.evolve(sim.initial_state(), 70.0)
    reb = _rebound(mass, x, v, tolerance)
    reb.integrate(70.0, exact_finish_time=1)
    a, e, r = _binary(final.body_x[0].numpy(), final.body_v[0].numpy(), mass.numpy())
    a_ref, e_ref, r_ref = _binary(*_phase(reb), mass.numpy())
    assert a == pytest.approx(a_ref, rel=0.01) and e == pytest.approx(e_ref, rel=0.01)
    assert r == pytest.approx(21.4, rel=0.02) and r_ref == pytest.approx(21.4, rel=0.02)
    assert int(sim.diagnostics(final)["escapers"][0]) == 1
    assert float(sim.energy_error(final)[0]) <= 1e-12


def test_random_three_body_energy_error_below_rebounds():
    """Sixteen random three-body systems from rest (close encounters), to t = 1 at tolerance
    1e-9: simdiff's median relative energy error is at most a tenth of REBOUND's (measured
    for 64 systems to t = 2: 1.3e-13 against 8.7e-11). The round-off of absolute positions in
    close pairs' separations is what the compensated force evaluation removes."""
    from simdiff.sims.nbody.initial import random_three_body

    bodies = [random_three_body(seed) for seed in range(16)]
    mass, x, v = (torch.stack([b[k] for b in bodies]) for k in range(3))
    sim = NBody(Model(mass, x, v, dt=1e-3, integrator="ias15"), WARP64)
    with torch.no_grad():
        ours = sim.energy_error(sim.evolve(sim.initial_state(), 1.0))
    theirs = []
    for w in range(16):
        reb = _rebound(mass[w], x[w], v[w])
        e0 = reb.energy()
        reb.integrate(1.0, exact_finish_time=1)
        theirs.append(abs(reb.energy() / e0 - 1))
    assert float(ours.median()) <= 0.1 * float(np.median(theirs)), (ours, theirs)


def test_figure_eight_ten_periods_matches_rebound():
    mass, x, v = figure_eight()
    t_end = 10 * FIGURE_EIGHT_PERIOD
    sim = NBody(Model(mass, x, v, dt=1e-3, integrator="ias15"), WARP64)
    with torch.no_grad():
        final = sim.evolve(sim.initial_state(), t_end)
    reb = _rebound(mass, x, v)
    reb.integrate(t_end, exact_finish_time=1)
    xr, vr = _phase(reb)
    assert np.abs(final.body_x[0].numpy() - xr).max() < 1e-9
    assert np.abs(final.body_v[0].numpy() - vr).max() < 1e-9


def test_energy_error_converges_with_the_tolerance():
    """An e = 0.9 Kepler orbit, 20 periods, two worlds at once: the error falls by orders of
    magnitude from tolerance 1e-3 to 1e-6 (measured 2.7e-5 and 1.0e-11) (15th order: steps shrink as tolerance^(1/7))."""
    mass, x, v = kepler(1.0, 0.9, m1=1.0, m2=1e-3)
    t_end = 20 * kepler_period(1.0, 1.0, 1e-3)
    errors = []
    for tolerance in (1e-3, 1e-6):
        sim = NBody(Model(mass, x, v, dt=1e-3, integrator="ias15", tolerance=tolerance),
                    WARP64)
        with torch.no_grad():
            errors.append(float(sim.energy_error(sim.evolve(sim.initial_state(), t_end))[0]))
    assert errors[1] < errors[0] / 1e5 and errors[1] < 1e-10, errors  # 2.7e-5, 1.0e-11


def _evolve_loss(mass, x, v, g, eps, t_end, weights):
    sim = NBody(Model(mass.detach(), x.detach(), v.detach(), dt=0.01, integrator="ias15",
                      softening=float(eps)), WARP64)
    from dataclasses import replace

    params = replace(sim.params(), body_mass=mass, gravitational_constant=g, softening=eps)
    final = sim.evolve(sim.initial_state(x, v, params=params), t_end, params)
    wx, wv = weights
    return (wx * final.body_x).sum() + (wv * final.body_v).sum()


def test_gradients_through_adaptive_steps_match_central_differences():
    """Masses, G, softening and initial conditions through IAS15's adaptive steps over a
    close approach (step sizes constant in backward; central differences let them move, a
    difference at the tolerance's level)."""
    mass, x, v = pythagorean()
    gen = torch.Generator().manual_seed(1)
    weights = tuple(torch.randn(1, 3, 3, generator=gen, dtype=F64) for _ in range(2))
    inputs = {"mass": mass, "x": x, "v": v + 0.1, "g": torch.tensor(1.0, dtype=F64),
              "eps": torch.tensor(0.05, dtype=F64)}
    leaves = {k: t.clone().requires_grad_() for k, t in inputs.items()}
    loss = _evolve_loss(*leaves.values(), 0.8, weights)
    grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
    for name, value in inputs.items():
        d = torch.randn(value.shape, generator=gen, dtype=F64)
        h = 1e-6
        with torch.no_grad():
            up = _evolve_loss(*{**inputs, name: value + h * d}.values(), 0.8, weights)
            down = _evolve_loss(*{**inputs, name: value - h * d}.values(), 0.8, weights)
        fd = float((up - down) / (2 * h))
        assert float((grads[name] * d).sum()) == pytest.approx(fd, rel=1e-5, abs=1e-8), name


@pytest.mark.parametrize("system", ["two_planets", "three_body"])
def test_jacobian_matches_rebound_variational_particles(system):
    """d(final state)/d(initial state) along random directions: simdiff's autograd through
    IAS15 against REBOUND's first-order variational equations, to 1e-6 relative."""
    if system == "two_planets":
        mass = torch.tensor([1.0, 1e-3, 5e-4], dtype=F64)
        x = torch.tensor([[0, 0, 0], [1.0, 0, 0], [0, 1.6, 0.05]], dtype=F64)
        v = torch.tensor([[0, 0, 0], [0, 1.0, 0.02], [-0.79, 0, 0]], dtype=F64)
        t_end = 3.0
    else:
        mass, x, v = pythagorean()
        t_end = 0.5
    gen = torch.Generator().manual_seed(2)
    for _ in range(2):
        dx, dv, wx, wv = (torch.randn(3, 3, generator=gen, dtype=F64) for _ in range(4))
        reb = _rebound(mass, x, v)
        var = reb.add_variation()
        for i in range(3):
            p = var.particles[i]
            p.x, p.y, p.z = dx[i].tolist()
            p.vx, p.vy, p.vz = dv[i].tolist()
        reb.integrate(t_end, exact_finish_time=1)
        jx = np.array([[p.x, p.y, p.z] for p in var.particles])
        jv = np.array([[p.vx, p.vy, p.vz] for p in var.particles])
        expected = float((wx.numpy() * jx).sum() + (wv.numpy() * jv).sum())
        xl, vl = x.clone().requires_grad_(), v.clone().requires_grad_()
        loss = _evolve_loss(mass, xl, vl, torch.tensor(1.0, dtype=F64),
                            torch.tensor(0.0, dtype=F64), t_end, (wx[None], wv[None]))
        gx, gv = torch.autograd.grad(loss, [xl, vl])
        ours = float((gx * dx).sum() + (gv * dv).sum())
        assert ours == pytest.approx(expected, rel=1e-6)
