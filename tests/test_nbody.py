"""N-body gravity: convergence orders, conservation, reversibility, known orbits, REBOUND
agreement, float64 gradient checks on both backends, adaptive steps and bad inputs."""

import math

import numpy as np
import pytest
import torch

from simdiff.backend import resolve_backend
from simdiff.gradcheck import check_gradients
from simdiff.rollout import rollout
from simdiff.scene import Scene
from simdiff.sims.base import SimulationError, ValidationError
from simdiff.sims.nbody import Model, NBody
from simdiff.sims.nbody.initial import (
    FIGURE_EIGHT_PERIOD,
    SOLAR_G,
    figure_eight,
    kepler,
    kepler_period,
    pythagorean,
    solar_system,
)

WARP64 = resolve_backend("warp", precision="float64")


def _return_error(integrator: str, steps: int) -> float:
    """Position error after one period of an e = 0.5 Kepler orbit (exact: back to the start)."""
    mass, x, v = kepler(1.0, 0.5, m1=1.0, m2=0.5)
    period = kepler_period(1.0, 1.0, 0.5)
    sim = NBody(Model(mass, x, v, dt=period / steps, integrator=integrator), WARP64)
    s0 = sim.initial_state()
    final = rollout(sim, s0, None, steps, check_every=0).final
    return float((final.body_x - s0.body_x).norm())


@pytest.mark.parametrize(("integrator", "order"), [("leapfrog", 2), ("rk4", 4), ("hermite", 4)])
def test_convergence_order(integrator, order):
    errors = [_return_error(integrator, n) for n in (400, 800, 1600)]
    slopes = [math.log2(errors[k] / errors[k + 1]) for k in range(2)]
    for slope in slopes:
        assert order - 0.3 < slope < order + 0.5, (errors, slopes)


def test_energy_error_slopes_of_leapfrog_and_hermite():
    """Maximum energy error over one orbit scales as dt^2 (leapfrog) and dt^4 (Hermite)."""
    for integrator, order in (("leapfrog", 2), ("hermite", 4)):
        worst = []
        for steps in (500, 1000):
            mass, x, v = kepler(1.0, 0.6, m1=1.0, m2=0.3)
            dt = kepler_period(1.0, 1.0, 0.3) / steps
            sim = NBody(Model(mass, x, v, dt=dt, integrator=integrator), WARP64)
            result = rollout(sim, sim.initial_state(), None, steps, record_every=5)
            worst.append(max(abs(float(sim.energy(s)) / sim.initial_energy - 1)
                             for s in result.recorded()))
        assert order - 0.3 < math.log2(worst[0] / worst[1]) < order + 0.5


def test_leapfrog_energy_error_stays_bounded_over_many_orbits():
    mass, x, v = kepler(1.0, 0.3, m1=1.0, m2=1e-3)
    steps_per_orbit = 100
    sim = NBody(Model(mass, x, v, dt=kepler_period(1.0, 1.0, 1e-3) / steps_per_orbit), WARP64)
    state = sim.initial_state()
    errors = []
    for _ in range(100):
        result = rollout(sim, state, None, steps_per_orbit, record_every=10, check_every=0)
        state = result.final
        errors.append(max(abs(float(sim.energy(s)) / sim.initial_energy - 1) for s in result.recorded()))
    early, late = max(errors[:10]), max(errors[90:])
    assert late < 1.5 * early and late < 5e-3


def test_leapfrog_is_time_reversible(backend64):
    mass, x, v = figure_eight()
    sim = NBody(Model(mass, x, v, dt=1e-3), backend64)
    s0 = sim.initial_state()
    forward = rollout(sim, s0, None, 500).final
    back = sim.initial_state(forward.body_x, -forward.body_v)
    again = rollout(sim, back, None, 500).final
    assert torch.allclose(again.body_x, s0.body_x, atol=1e-12)
    assert torch.allclose(-again.body_v, s0.body_v, atol=1e-12)


def test_figure_eight_returns_after_one_period(backend64):
    mass, x, v = figure_eight()
    steps = 2000
    sim = NBody(Model(mass, x, v, dt=FIGURE_EIGHT_PERIOD / steps, integrator="hermite"), backend64)
    s0 = sim.initial_state()
    final = rollout(sim, s0, None, steps).final
    assert float((final.body_x - s0.body_x).abs().max()) < 1e-6
    assert float((final.body_v - s0.body_v).abs().max()) < 1e-6


def test_momentum_and_angular_momentum_are_conserved(backend64):
    gen = torch.Generator().manual_seed(3)
    n = 6
    mass = 0.5 + torch.rand(n, generator=gen, dtype=torch.float64)
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    v = 0.3 * torch.randn(n, 3, generator=gen, dtype=torch.float64)
    sim = NBody(Model(mass, x, v, dt=1e-3, softening=0.05, integrator="hermite"), backend64)
    s0 = sim.initial_state()
    final = rollout(sim, s0, None, 400).final

    def momenta(s):
        p = (mass[:, None] * s.body_v[0]).sum(0)
        lz = torch.cross(s.body_x[0], mass[:, None] * s.body_v[0], dim=1).sum(0)
        return p, lz

    (p0, l0), (p1, l1) = momenta(s0), momenta(final)
    assert torch.allclose(p0, p1, atol=1e-12)
    assert torch.allclose(l0, l1, atol=1e-9)
    assert float((final.body_x - s0.body_x).abs().max()) > 0.05


def test_taichi_and_warp_agree():
    mass, x, v = pythagorean()
    finals = []
    for name in ("taichi", "warp"):
        sim = NBody(Model(mass, x, v, dt=1e-3, integrator="hermite", softening=0.01),
                    resolve_backend(name, precision="float64"))
        finals.append(rollout(sim, sim.initial_state(), None, 300).final)
    assert torch.allclose(finals[0].body_x, finals[1].body_x, atol=1e-12)
    assert torch.allclose(finals[0].body_v, finals[1].body_v, atol=1e-11)


def test_agrees_with_rebound_ias15_on_the_solar_system():
    """Four inner planets and Jupiter for three years: Hermite at dt = 5e-4 yr (about 500 steps
    per orbit of Mercury) against REBOUND's IAS15, to 3e-7 AU in position (the difference
    shrinks 16-fold when dt halves: it is Hermite's own truncation error)."""
    rebound = pytest.importorskip("rebound")
    (mass, x, v), _ = solar_system(5)
    sim = NBody(Model(mass, x, v, dt=5e-4, integrator="hermite", gravitational_constant=SOLAR_G),
                WARP64)
    final = sim.evolve(sim.initial_state(), 3.0)
    reb = rebound.Simulation()
    reb.G = SOLAR_G
    reb.integrator = "ias15"
    for m, xi, vi in zip(mass.tolist(), x.tolist(), v.tolist()):
        reb.add(m=m, x=xi[0], y=xi[1], z=xi[2], vx=vi[0], vy=vi[1], vz=vi[2])
    reb.integrate(3.0, exact_finish_time=1)
    expected = np.array([[p.x, p.y, p.z] for p in reb.particles])
    assert abs(float(final.time) - 3.0) < 1e-12
    assert np.abs(final.body_x[0].numpy() - expected).max() < 3e-7


@pytest.mark.parametrize("integrator", ["leapfrog", "hermite", "rk4"])
def test_gradients_match_finite_differences(backend64, integrator):
    mass, x, v = pythagorean()
    model = Model(mass, x, v, dt=2e-3, integrator=integrator, softening=0.1)
    scene = Scene("pythagorean", "nbody", model, steps=60,
                  loss=lambda r: (r.final.body_x[:, 0] ** 2).sum() + r.final.body_v[:, 2, 1].sum())
    # eps 1e-5: the loss depends weakly on the softening, so a smaller step drowns in round-off.
    results = check_gradients(scene, backend64.name.value, eps=1e-5, rtol=1e-5, atol=1e-8)
    assert {r.quantity for r in results} == {"body_mass", "gravitational_constant", "softening",
                                             "initial_body_x", "initial_body_v"}
    for r in results:
        assert r.ok, f"{r.quantity}: {r.autodiff:.10e} vs {r.finite_difference:.10e}"
    assert min(abs(r.finite_difference) for r in results) > 1e-6


def _force_gradients(backend_name: str, precision: str, n: int = 24, worlds: int = 2):
    """Gradients of a weighted sum of accelerations and jerks w.r.t. positions, velocities,
    masses, G and softening (two worlds of a Plummer sphere, different masses)."""
    from simdiff.sims.nbody.initial import plummer

    mass, x, v = plummer(n, seed=3)
    dtype = torch.float64 if precision == "float64" else torch.float32
    sim = NBody(Model(mass, x, v, softening=0.05), resolve_backend(backend_name,
                                                                  precision=precision),
                batch_size=worlds)
    gen = torch.Generator().manual_seed(5)
    xs = torch.stack([x, x.flip(0)]).to(dtype)[:worlds].requires_grad_()
    vs = torch.stack([v, 0.5 * v]).to(dtype)[:worlds].requires_grad_()
    masses = torch.stack([mass, mass * torch.linspace(0.5, 1.5, n, dtype=mass.dtype)])
    masses = masses.to(dtype)[:worlds].requires_grad_()
    g = torch.tensor(1.3, dtype=dtype, requires_grad=True)
    soft = torch.tensor(0.05, dtype=dtype, requires_grad=True)
    wa, wj = (torch.randn(worlds, n, 3, generator=gen, dtype=torch.float64).to(dtype)
              for _ in range(2))
    params = sim.Params(masses, g, soft, torch.tensor(0.01, dtype=dtype))
    a, jerk = sim.forces(xs, vs, params)
    loss = (a * wa).sum() + (jerk * wj).sum()
    return [t.double() for t in torch.autograd.grad(loss, (xs, vs, masses, g, soft))]


def test_float32_force_adjoints_match_float64_on_both_backends():
    """The gather-form adjoints in float32 (Taichi reads per-component rows, Warp vectors)
    against the float64 ones, which the finite-difference tests check."""
    reference = _force_gradients("warp", "float64")
    for name in ("taichi", "warp"):
        for got, want in zip(_force_gradients(name, "float32"), reference):
            scale = float(want.abs().max())
            assert float((got - want).abs().max()) < 1e-4 * scale, name
    for got, want in zip(_force_gradients("taichi", "float64"), reference):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12 * float(want.abs().max()))


def test_adaptive_steps_through_the_pythagorean_close_encounters():
    mass, x, v = pythagorean()
    for criterion, eta in (("aarseth", 0.02), ("collision", 0.01)):
        sim = NBody(Model(mass, x, v, dt=0.01, integrator="hermite", eta=eta,
                          criterion=criterion), WARP64)
        final = sim.evolve(sim.initial_state(), 10.0)
        diag = sim.diagnostics(final)
        assert diag["energy_error"] < 1e-5, (criterion, diag)
        assert diag["min_distance"] > 0
        # Close encounters shrink the shared step: more evaluations than 10 / dt_max.
        assert diag["force_evaluations"] > 1200


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mass": torch.tensor([1.0, 0.0, 1.0])}, r"body_mass\[1\]=0 must be > 0"),
        ({"x": torch.zeros(3, 3)}, "bodies 0 and 1 coincide and softening=0"),
        ({"dt": 0.0}, "dt=0.0 must be a positive"),
        ({"dt": -1e-3}, "dt=-0.001 must be a positive"),
        ({"integrator": "verlet"},
         "integrator='verlet' is unknown; allowed: leapfrog, rk4, hermite, ias15"),
        ({"v": torch.zeros(2, 3)}, r"body_v has shape \(2, 3\); expected \(3, 3\)"),
        ({"eta": 0.0}, r"eta=0.0 must lie in \(0, 10\]"),
        ({"criterion": "fast"}, "criterion='fast' is unknown"),
    ],
)
def test_bad_inputs(change, message):
    mass, x, v = pythagorean()
    kwargs = {"dt": 1e-3}
    mass = change.pop("mass", mass).double()
    x = change.pop("x", x).double()
    v = change.pop("v", v).double()
    kwargs.update(change)
    with pytest.raises(ValidationError, match=message):
        Model(mass, x, v, **kwargs)


def test_energy_tolerance_names_time_and_pair():
    mass, x, v = pythagorean()
    sim = NBody(Model(mass, x, v, dt=0.02, integrator="leapfrog", energy_tolerance=1e-4), WARP64)
    with pytest.raises(SimulationError, match=r"relative energy error .* > energy_tolerance=0.0001 "
                                              r"at t=[\d.]+; closest pair \(\d, \d\)"):
        rollout(sim, sim.initial_state(), None, 2000)


def test_checkpointed_adaptive_rollout_gives_the_same_gradients():
    mass, x, v = pythagorean()
    grads = []
    for every in (None, 16):
        m = mass.clone().requires_grad_()
        sim = NBody(Model(m, x, v, dt=0.01, integrator="hermite", eta=0.05), WARP64)
        result = rollout(sim, sim.initial_state(), None, 120, checkpoint_every=every)
        grads.append(torch.autograd.grad(result.final.body_x.square().sum(), m)[0])
    assert torch.equal(grads[0], grads[1]) and grads[0].abs().max() > 0


def test_diagnostics_count_an_escaper_and_no_drift():
    mass, x, v = kepler(1.0, 0.0, m1=1.0, m2=1.0)
    probe_x = torch.tensor([[30.0, 0.0, 0.0]], dtype=torch.float64)
    probe_v = torch.tensor([[2.0, 0.0, 0.0]], dtype=torch.float64)  # far above escape speed
    model = Model(torch.cat([mass, torch.tensor([0.01], dtype=torch.float64)]),
                  torch.cat([x, probe_x]), torch.cat([v, probe_v]), dt=1e-3, integrator="hermite")
    sim = NBody(model, WARP64)
    final = rollout(sim, sim.initial_state(), None, 500).final
    diag = sim.diagnostics(final)
    assert diag["escapers"] == 1
    assert diag["com_drift"] < 1e-12  # the center of mass moves uniformly
    bound = NBody(Model(*figure_eight(), dt=1e-3), WARP64)
    assert bound.diagnostics(bound.initial_state())["escapers"] == 0
