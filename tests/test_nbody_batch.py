"""Batched N-body (float64, both backends): B worlds with different initial conditions and
per-world masses and softening equal B single-world runs (states, gradients); a shared G's
gradient is the sum over worlds; the compiled few-body loop equals NBody's own steps; bad input
gives one clear error."""

import dataclasses

import pytest
import torch

from simdiff.backend import resolve_backend
from simdiff.sims.nbody import Model, NBody
from simdiff.sims.nbody.initial import figure_eight, pythagorean

WARP64 = resolve_backend("warp", precision="float64")
F64 = torch.float64


def _worlds(b: int = 3):
    gen = torch.Generator().manual_seed(0)
    mass, x, _ = pythagorean()
    masses = mass * (1 + 0.2 * torch.rand(b, 3, generator=gen, dtype=F64))
    xs = x + 0.1 * torch.randn(b, 3, 3, generator=gen, dtype=F64)
    vs = 0.1 * torch.randn(b, 3, 3, generator=gen, dtype=F64)
    softening = torch.tensor([0.05, 0.1, 0.2], dtype=F64)[:b]
    return masses, xs, vs, softening


def _run(backend, mass, x, v, softening, g, steps, **model_options):
    """Loss per world and gradients of its sum w.r.t. every input (leaves made here)."""
    leaves = [t.clone().requires_grad_() for t in (mass, x, v, softening, g)]
    mass, x, v, softening, g = leaves
    sim = NBody(Model(mass.detach(), x.detach(), v.detach(), softening=softening.detach(),
                      **model_options), backend)
    params = dataclasses.replace(sim.params(), body_mass=mass, softening=softening,
                                 gravitational_constant=g)
    state = sim.initial_state(x, v, params=params)
    for _ in range(steps):
        state = sim.step(state, None, params)
    loss = (state.body_x**2).sum((1, 2)) + state.body_v[:, 0, 1]
    grads = torch.autograd.grad(loss.sum(), leaves)
    return state, loss.detach(), grads


@pytest.mark.parametrize("options", [
    {"integrator": "hermite", "dt": 2e-3},
    {"integrator": "rk4", "dt": 2e-3},
    {"integrator": "hermite", "dt": 0.05, "eta": 0.005},  # per-world adaptive steps
    {"integrator": "ias15", "dt": 0.05},  # compiled loop, replayed for gradients
], ids=["hermite", "rk4", "hermite-adaptive", "ias15"])
def test_batched_worlds_equal_single_world_runs(backend64, options):
    if options["integrator"] == "ias15" and backend64.name.value == "taichi":
        options = {**options, "dt": 0.02}
    masses, xs, vs, softening = _worlds()
    g = torch.tensor(1.0, dtype=F64)
    steps = 2 if options["integrator"] == "ias15" else 8
    state, loss, grads = _run(backend64, masses, xs, vs, softening, g, steps, **options)
    assert len(set(state.time.tolist())) == (3 if "eta" in options else 1)
    g_sum = torch.zeros((), dtype=F64)
    for w in range(3):
        one, loss1, grads1 = _run(backend64, masses[w], xs[w:w + 1], vs[w:w + 1],
                                  softening[w:w + 1], g, steps, **options)
        assert torch.allclose(state.body_x[w], one.body_x[0], rtol=0, atol=1e-12)
        assert torch.allclose(state.body_v[w], one.body_v[0], rtol=0, atol=1e-12)
        assert float(state.time[w]) == pytest.approx(float(one.time[0]), abs=1e-14)
        assert float(loss[w]) == pytest.approx(float(loss1[0]), rel=1e-12)
        for name, batch, single in zip(("mass", "x", "v", "softening"), grads[:4], grads1[:4]):
            single = single[0] if name in ("x", "v", "softening") else single
            assert torch.allclose(batch[w], single, rtol=1e-9, atol=1e-11), name
        g_sum = g_sum + grads1[4]
    # G is shared by the worlds: its gradient is the sum of the single-world ones.
    assert float(grads[4]) == pytest.approx(float(g_sum), rel=1e-9)
    assert abs(float(g_sum)) > 1e-6


def test_compiled_loop_equals_stepped_evolve():
    """The compiled few-body loop takes NBody's own steps (Hermite with eta, IAS15). Hermite
    is the same operation for operation; IAS15's compiled loop evaluates its forces at the
    compensated positions (rounding differs), so its predictor-corrector may stop one
    iteration apart, but the steps and the trajectory are the same."""
    masses, xs, vs, softening = _worlds(2)
    for options in ({"integrator": "hermite", "eta": 0.02, "dt": 0.01},
                    {"integrator": "ias15", "dt": 0.01}):
        sim = NBody(Model(masses, xs, vs, softening=softening[:2], **options), WARP64)
        with torch.no_grad():
            compiled = sim.evolve(sim.initial_state(), torch.tensor([0.3, 0.5], dtype=F64),
                                  compiled=True)
            compiled_steps = sim.last_steps.clone()
            stepped = sim.evolve(sim.initial_state(), torch.tensor([0.3, 0.5], dtype=F64),
                                 compiled=False)
        if options["integrator"] == "hermite":
            assert torch.equal(compiled.force_evaluations, stepped.force_evaluations)
        else:
            assert torch.allclose(compiled.time_step, stepped.time_step, rtol=1e-6, atol=0)
            ratio = compiled.force_evaluations.double() / stepped.force_evaluations.double()
            assert bool(((ratio - 1).abs() < 0.1).all()), ratio
            assert int(compiled_steps.min()) >= 4  # several adaptive steps compared
        assert torch.allclose(compiled.body_x, stepped.body_x, rtol=0, atol=1e-12), options
        assert torch.allclose(compiled.body_v, stepped.body_v, rtol=0, atol=1e-11), options
        assert compiled.time.tolist() == pytest.approx([0.3, 0.5], abs=1e-14)


def test_ias15_stepped_taichi_equals_warp():
    mass, x, v = pythagorean()
    finals = []
    for name in ("taichi", "warp"):
        sim = NBody(Model(mass, x, v, dt=0.01, integrator="ias15"),
                    resolve_backend(name, precision="float64"))
        with torch.no_grad():
            finals.append(sim.evolve(sim.initial_state(), 0.2, compiled=False))
    assert torch.allclose(finals[0].body_x, finals[1].body_x, rtol=0, atol=1e-13)
    assert torch.equal(finals[0].force_evaluations, finals[1].force_evaluations)


def test_adaptive_hermite_starts_the_figure_eight():
    """The middle body starts at rest at the origin of forces (a = 0): the first step comes
    from the other bodies, not eta * 0 (which stopped the run below dt_min)."""
    mass, x, v = figure_eight()
    sim = NBody(Model(mass, x, v, dt=0.01, integrator="hermite", eta=0.01), WARP64)
    s0 = sim.initial_state()
    assert float(s0.body_a[0, 2].norm()) < 1e-12
    dt = sim.next_dt(s0)
    assert 1e-4 < float(dt) <= 0.01
    with torch.no_grad():
        final = sim.evolve(s0, 6.3259139829)
    assert float((final.body_x - s0.body_x).abs().max()) < 1e-4


def _valid():
    mass, x, v = pythagorean()
    return mass, x, v


@pytest.mark.parametrize(("make", "message"), [
    (lambda m, x, v: Model(m, x, v, integrator="ias15", tolerance=0.0),
     r"tolerance=0.0 must lie in \(0, 1\)"),
    (lambda m, x, v: Model(m, x, v, integrator="ias15", tolerance=1.5),
     r"tolerance=1.5 must lie in \(0, 1\)"),
    (lambda m, x, v: Model(m, x.clone().index_fill_(0, torch.tensor([1]), float("nan")), v),
     r"body_x\[1, 0\] holds NaN or infinite values"),
    (lambda m, x, v: Model(m, x, v, dt=1e-3, eta=0.01, dt_min=1e-2),
     r"dt_min=0.01 is above dt=0.001"),
    (lambda m, x, v: Model(m.expand(2, 3), x.expand(3, 3, 3), v),
     r"per-world tensors have different leading sizes \[2, 3\]"),
])
def test_bad_models(make, message):
    with pytest.raises(ValueError, match=message):
        model = make(*_valid())
        NBody(model, WARP64)


def test_bad_step_inputs():
    mass, x, v = _valid()
    sim = NBody(Model(mass, x, v, dt=1e-3), WARP64, batch_size=2)
    state = sim.initial_state()
    assert state.body_x.shape == (2, 3, 3) and state.time.shape == (2,)
    wrong = dataclasses.replace(sim.params(), body_mass=mass.expand(3, 3))
    with pytest.raises(ValueError, match=r"params.body_mass has shape \[3, 3\]; expected 1 "
                                         r"dimensions .* or 2 with a leading world axis of size B=2"):
        sim.step(state, None, wrong)
    with pytest.raises(ValueError, match=r"takes no action \(action_dim = 0\)"):
        sim.step(state, torch.zeros(2, 1, dtype=F64))
    with pytest.raises(ValueError, match=r"body_x of world 1, body 0 is .*must be finite"):
        bad = x.expand(2, 3, 3).clone()
        bad[1, 0, 0] = float("inf")
        sim.initial_state(bad)
    with pytest.raises(ValueError, match=r"t_end has shape \[3\]; expected \[\] or \[2\]"):
        sim.evolve(state, torch.ones(3, dtype=F64))
    assert sim.check_state(state) == {}
    broken = dataclasses.replace(state, body_v=state.body_v.clone())
    broken.body_v[1, 2, 0] = float("nan")
    (world, what), = sim.check_state(broken).items()
    assert world == 1 and what.startswith("body_v of body 2 is [nan")
    assert sim.observe(state).shape == (2, sim.observation_dim) == (2, 18)
