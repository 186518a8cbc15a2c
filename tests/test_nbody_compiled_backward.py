"""The compiled backward of ``NBody.evolve`` (every integrator, float64): its gradients equal
the torch replay's (the reference) and float64 central differences with the steps frozen, on
both kernel backends; the end state of a run that needs gradients is the compiled forward's,
bit for bit; the backward's replay takes the forward loop's steps bit for bit."""

import dataclasses

import pytest
import torch

from simdiff.backend import resolve_backend
from simdiff.sims.nbody import Model, NBody, evolve, fewbody
from simdiff.sims.nbody.initial import pythagorean

WARP64 = resolve_backend("warp", precision="float64")
F64 = torch.float64
OPTIONS = {
    "leapfrog-adaptive": {"integrator": "leapfrog", "dt": 0.01, "eta": 0.01},
    "rk4-adaptive": {"integrator": "rk4", "dt": 0.01, "eta": 0.02},
    "hermite-adaptive": {"integrator": "hermite", "dt": 0.01, "eta": 0.02},
    "hermite-fixed": {"integrator": "hermite", "dt": 0.01},
    "ias15": {"integrator": "ias15", "dt": 0.01},
}
FIELDS = ("body_x", "body_v", "body_a", "body_jerk", "body_snap", "body_crackle", "time",
          "body_x_err", "body_v_err", "ias_b", "ias_e", "last_step", "time_step",
          "force_evaluations")


def _inputs(b: int = 2):
    """Two worlds of the Pythagorean problem, displaced and set moving, softened."""
    gen = torch.Generator().manual_seed(3)
    mass, x, _ = pythagorean()
    return {"mass": mass * (1 + 0.1 * torch.rand(b, 3, generator=gen, dtype=F64)),
            "x": x + 0.05 * torch.randn(b, 3, 3, generator=gen, dtype=F64),
            "v": 0.2 * torch.randn(b, 3, 3, generator=gen, dtype=F64),
            "g": torch.tensor(1.0, dtype=F64),
            "eps": torch.tensor([0.05, 0.1], dtype=F64)[:b]}


def _weights(b: int = 2):
    gen = torch.Generator().manual_seed(4)
    return [torch.randn(b, 3, 3, generator=gen, dtype=F64) for _ in range(4)]


T_END = torch.tensor([0.5, 0.7], dtype=F64)  # the worlds end at different times


def _sim(options, inputs, backend=WARP64):
    return NBody(Model(inputs["mass"], inputs["x"], inputs["v"], softening=inputs["eps"],
                       **options), backend)


def _params(sim, inputs):
    return dataclasses.replace(sim.params(), body_mass=inputs["mass"],
                               gravitational_constant=inputs["g"], softening=inputs["eps"])


def _loss(final):
    """Reads the end state's positions, velocities, accelerations and jerks."""
    w = _weights(final.body_x.shape[0])
    return sum((wk * t).sum() for wk, t in zip(w, (final.body_x, final.body_v, final.body_a,
                                                    final.body_jerk)))


def _gradients(options, backward, backend=WARP64):
    inputs = {k: t.clone().requires_grad_() for k, t in _inputs().items()}
    sim = _sim(options, {k: t.detach() for k, t in inputs.items()}, backend)
    params = _params(sim, inputs)
    final = sim.evolve(sim.initial_state(inputs["x"], inputs["v"], params=params), T_END,
                       params, backward=backward)
    grads = torch.autograd.grad(_loss(final), list(inputs.values()))
    return final, dict(zip(inputs, grads)), sim.last_steps.clone()


@pytest.mark.parametrize("name", list(OPTIONS))
def test_compiled_backward_equals_the_torch_replay(name):
    """Masses, initial conditions, G and softening, loss on x, v, a and jerk: the compiled
    backward and the torch replay agree to 1e-10 relative (measured ~1e-15). A run that
    needs gradients ends where the compiled forward ends, every field bit for bit."""
    options = OPTIONS[name]
    final, compiled, steps = _gradients(options, "compiled")
    _, replayed, _ = _gradients(options, "replay")
    assert int(steps.min()) >= 4  # several adaptive steps
    for key, grad in compiled.items():
        scale = float(replayed[key].abs().max())
        assert scale > 1e-6, key
        assert float((grad - replayed[key]).abs().max()) <= 1e-10 * scale, key
    inputs = _inputs()
    sim = _sim(options, inputs)
    with torch.no_grad():
        forward = sim.evolve(sim.initial_state(), T_END, _params(sim, inputs))
    for field in FIELDS:
        assert torch.equal(getattr(final, field).detach(), getattr(forward, field)), field


@pytest.mark.parametrize("name", ["rk4-adaptive", "hermite-adaptive", "ias15"])
def test_compiled_backward_matches_central_differences_with_frozen_steps(name):
    """Central differences of the loss with every world's recorded steps replayed as they
    were (so that the steps do not move with the input), float64, along random directions."""
    options = OPTIONS[name]
    _, grads, _ = _gradients(options, "compiled")
    inputs = _inputs()
    sim = _sim(options, inputs)
    with torch.no_grad():
        p = sim._per_world(_params(sim, inputs))
        _, _, steps = fewbody.advance(sim, sim.initial_state(params=p), p, T_END, None if
                                      "eta" not in options else
                                      torch.full((2,), options["eta"], dtype=F64),
                                      10_000, record=True)

    def loss(values):
        with torch.no_grad():
            p = sim._per_world(_params(sim, values))
            state = sim.initial_state(values["x"], values["v"], params=p)
            return float(_loss(evolve._replay(sim, state, p, steps)))

    gen = torch.Generator().manual_seed(5)
    for key, value in inputs.items():
        d = torch.randn(value.shape, generator=gen, dtype=F64)
        h = 1e-6
        fd = (loss({**inputs, key: value + h * d}) - loss({**inputs, key: value - h * d})) / (2 * h)
        assert float((grads[key] * d).sum()) == pytest.approx(fd, rel=1e-6, abs=1e-9), key


@pytest.mark.parametrize("name", ["hermite-adaptive", "ias15"])
def test_compiled_backward_taichi_equals_warp(name):
    """On a Taichi simulator (its gravity kernels form the start state's forces) the
    gradients equal the Warp simulator's and Taichi's own torch replay's."""
    taichi = resolve_backend("taichi", precision="float64")
    _, on_taichi, _ = _gradients(OPTIONS[name], "compiled", taichi)
    _, on_warp, _ = _gradients(OPTIONS[name], "compiled")
    _, replay, _ = _gradients(OPTIONS[name], "replay", taichi)
    for key in on_warp:
        scale = float(on_warp[key].abs().max())
        assert float((on_taichi[key] - on_warp[key]).abs().max()) <= 1e-10 * scale, key
        assert float((on_taichi[key] - replay[key]).abs().max()) <= 1e-10 * scale, key


def test_backward_replays_the_forward_loop_bit_for_bit():
    """Over a close encounter of the Pythagorean problem (t = 0 to 16, ~1,000 IAS15 steps),
    the backward's replay ends exactly where the forward loop ended (the gradient is that of
    the trajectory the forward took), and its gradient is finite and nonzero."""
    mass, x, v = pythagorean()
    sim = NBody(Model(mass, x, v, dt=1e-3, integrator="ias15"), WARP64)
    state = sim.initial_state()
    p = sim._per_world(None)
    end = torch.tensor([16.0], dtype=F64)
    final, _, steps = fewbody.advance(sim, state, p, end, None, 10**6, record=True)
    assert int(sim.last_steps[0]) > 500
    ones = torch.ones_like(final.body_x)
    grads, (x_end, v_end) = fewbody.backward(sim, state, p, steps, sim.last_steps,
                                             (ones, None, None, None))
    assert torch.equal(x_end, final.body_x) and torch.equal(v_end, final.body_v)
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    assert float(grads[0].abs().max()) > 1.0


def test_bad_backward_is_refused():
    mass, x, v = pythagorean()
    sim = NBody(Model(mass, x, v, dt=0.01, integrator="ias15"), WARP64)
    with pytest.raises(ValueError, match="backward='adjoint' is unknown; allowed: compiled, "
                                         "replay"):
        sim.evolve(sim.initial_state(), 0.1, backward="adjoint")


def test_a_full_step_record_carries_on_in_a_further_launch():
    """Recording 4 steps a launch (worlds of different step counts, one finishing early)
    takes the same steps to the same end state as one launch: the record resumes, it does
    not restart or change the run."""
    inputs = _inputs()
    sim = _sim(OPTIONS["ias15"], inputs)
    with torch.no_grad():
        p = sim._per_world(_params(sim, inputs))
        state = sim.initial_state(params=p)
        runs = []
        for capacity in (4, 4096):
            final, status, steps = fewbody.advance(sim, state, p, torch.tensor([0.1, 1.5]),
                                                   None, 10_000, record=True, capacity=capacity)
            runs.append((final, status, steps, sim.last_steps.clone()))
    (short, status4, steps4, counts4), (long, status, steps, counts) = runs
    assert int(counts.min()) < 4 < 2 * 4 < int(counts.max())
    assert torch.equal(counts4, counts) and torch.equal(steps4, steps)
    assert torch.equal(status4, status) and int(status.abs().sum()) == 0
    for field in FIELDS:
        assert torch.equal(getattr(short, field), getattr(long, field)), field


@pytest.mark.slow
def test_compiled_backward_equals_the_replay_through_a_close_encounter():
    """The Pythagorean problem to t = 8 (~420 IAS15 steps, the first close approaches):
    the compiled backward and the torch replay agree to 1e-8 relative (measured 2.6e-10:
    the replay forms its forces at the rounded positions, the compiled loop at the
    compensated ones, and the trajectories part by round-off, 4e-13 in the end positions)."""
    mass, x, v = pythagorean()
    grads = {}
    for backward in ("compiled", "replay"):
        leaves = [t.clone().requires_grad_() for t in (mass, x, v)]
        sim = NBody(Model(mass, x, v, dt=1e-3, integrator="ias15"), WARP64)
        params = dataclasses.replace(sim.params(), body_mass=leaves[0])
        final = sim.evolve(sim.initial_state(leaves[1], leaves[2], params=params), 8.0, params,
                           backward=backward)
        loss = final.body_x.sum() + final.body_v.square().sum()
        grads[backward] = torch.autograd.grad(loss, leaves)
    for compiled, replayed in zip(*grads.values()):
        scale = float(replayed.abs().max())
        assert float((compiled - replayed).abs().max()) <= 1e-8 * scale
