"""Batched mass-spring worlds (float64, Taichi and Warp).

* B = 3 worlds with their own initial states, spring parameters, inverse masses and actions
  equal three single-world rollouts: states, per-world losses and the gradients of every
  per-world quantity, to round-off.
* A parameter shared by the worlds gets the sum of the single-world gradients.
* A captured open-loop segment of B worlds equals the per-step batched rollout (Warp).
* Taichi equals Warp on the batch.
* ``health="mask"`` freezes exactly the world that blew up; the others and a shared
  parameter's gradient are those of the healthy worlds alone.
* Bad shapes (action, params, state) are refused with one line naming shape given and expected.
"""

import pytest
import torch
from conftest import tiny_robot

from simdiff.backend import resolve_backend
from simdiff.bridge import apply_segment
from simdiff.sims.mass_spring import MassSpring, Params, State

B, STEPS = 3, 40


def _worlds(model, gen):
    """Per-world initial states (lifted and shaken, spinning), spring parameters, inverse
    masses and actions [STEPS, B, action_dim]: every world differs from the others."""
    x0 = model.particle_x.expand(B, -1, -1).clone()
    x0 = x0 + 0.01 * torch.rand(x0.shape, generator=gen, dtype=torch.float64)
    x0[..., 1] += 0.02 * torch.arange(B, dtype=torch.float64)[:, None]
    v0 = 0.3 * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    v0[..., 1] -= 0.5  # falling onto the ground: contact inside the horizon
    springs = torch.stack([model.spring_stiffness, model.spring_rest_length,
                           model.spring_damping, model.spring_actuation], 1).detach()
    springs = springs * (1 + 0.1 * torch.rand((B, *springs.shape), generator=gen,
                                               dtype=torch.float64))
    inv_mass = 1 / model.particle_mass.detach() * (
        1 + 0.2 * torch.rand((B, model.particle_count), generator=gen, dtype=torch.float64))
    t = torch.arange(STEPS, dtype=torch.float64)[:, None, None]
    phase = torch.rand(1, B, model.actuator_count, generator=gen, dtype=torch.float64) * 6.0
    actions = torch.sin(2 * torch.pi * 2.0 * t * model.dt + phase)
    weights = torch.randn((2, *x0.shape), generator=gen, dtype=torch.float64)
    return x0, v0, springs, inv_mass, actions, weights


def _run(sim, x0, v0, params, actions, weights):
    """Per-world loss [B] after STEPS steps (stepping the simulator directly), the final
    state and the lowest height each world's particles reached [B]."""
    state = State(x0, v0)
    lowest = x0[..., 1].detach().min(1).values
    for t in range(STEPS):
        state = sim.step(state, actions[t], params)
        lowest = torch.minimum(lowest, state.particle_x[..., 1].detach().min(1).values)
    loss = ((weights[0] * state.particle_x).sum((1, 2)) + (weights[1] * state.particle_v).sum((1, 2))
            - state.particle_x[..., 0].mean(1))
    return loss, state, lowest


def _leaves(*tensors):
    return [t.clone().requires_grad_(True) for t in tensors]


def test_batched_worlds_equal_single_world_rollouts(backend64):
    model = tiny_robot(friction=0.7)
    gen = torch.Generator().manual_seed(0)
    x0, v0, springs, inv_mass, actions, weights = _worlds(model, gen)

    leaves = _leaves(x0, v0, springs, inv_mass, actions)
    sim = MassSpring(model, backend64, batch_size=B)
    loss, final, lowest = _run(sim, leaves[0], leaves[1], Params(leaves[2], leaves[3]),
                               leaves[4], weights)
    grads = torch.autograd.grad(loss.sum(), leaves)
    assert (lowest < 1e-12).all(), "every world must touch the ground"

    single = MassSpring(model, backend64, batch_size=1)
    for b in range(B):
        w = slice(b, b + 1)
        one = _leaves(x0[w], v0[w], springs[w], inv_mass[w], actions[:, w])
        loss_b, final_b, _ = _run(single, one[0], one[1], Params(one[2], one[3]), one[4],
                               weights[:, w])
        grads_b = torch.autograd.grad(loss_b.sum(), one)
        torch.testing.assert_close(final.particle_x[w], final_b.particle_x, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(final.particle_v[w], final_b.particle_v, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(loss[w], loss_b, rtol=1e-12, atol=1e-13)
        for name, g, g_b in zip(("x0", "v0", "spring_params", "inv_mass", "actions"), grads,
                                grads_b):
            g = g[:, w] if name == "actions" else g[w]
            scale = float(g_b.abs().max())
            assert scale > 0, name
            torch.testing.assert_close(g, g_b, rtol=1e-10, atol=1e-12 * scale, msg=name)


def test_a_shared_parameter_gets_the_sum_of_the_world_gradients(backend64):
    model = tiny_robot(friction=0.7)
    gen = torch.Generator().manual_seed(1)
    x0, v0, springs, inv_mass, actions, weights = _worlds(model, gen)
    shared_springs, shared_inv = springs[0], inv_mass[0]

    sim = MassSpring(model, backend64, batch_size=B)
    leaves = _leaves(shared_springs, shared_inv)
    loss, _, _ = _run(sim, x0, v0, Params(*leaves), actions, weights)
    grads = torch.autograd.grad(loss.sum(), leaves)
    assert grads[0].shape == shared_springs.shape and grads[1].shape == shared_inv.shape

    single = MassSpring(model, backend64)
    total = [torch.zeros_like(shared_springs), torch.zeros_like(shared_inv)]
    for b in range(B):
        w = slice(b, b + 1)
        one = _leaves(shared_springs, shared_inv)
        loss_b, _, _ = _run(single, x0[w], v0[w], Params(*one), actions[:, w], weights[:, w])
        for acc, g in zip(total, torch.autograd.grad(loss_b.sum(), one)):
            acc += g
    for g, expected in zip(grads, total):
        torch.testing.assert_close(g, expected, rtol=1e-10, atol=1e-12 * float(expected.abs().max()))


def test_captured_batched_segment_equals_per_step_rollout():
    backend = resolve_backend("warp", precision="float64")
    model = tiny_robot(friction=0.7)
    gen = torch.Generator().manual_seed(2)
    x0, v0, springs, inv_mass, actions, weights = _worlds(model, gen)
    sim = MassSpring(model, backend, batch_size=B)
    spec = sim.segment_spec()

    per_step = _leaves(x0, v0, springs, inv_mass, actions)
    loss, final, _ = _run(sim, per_step[0], per_step[1], Params(per_step[2], per_step[3]),
                       per_step[4], weights)
    grads = torch.autograd.grad(loss.sum(), per_step)

    captured = _leaves(x0, v0, springs, inv_mass, actions)
    xs, vs = apply_segment(spec, captured[:2], [captured[4]], captured[2:4])
    assert xs.shape == (STEPS + 1, B, model.particle_count, 2)
    loss_c = ((weights[0] * xs[-1]).sum((1, 2)) + (weights[1] * vs[-1]).sum((1, 2))
              - xs[-1][..., 0].mean(1))
    grads_c = torch.autograd.grad(loss_c.sum(), captured)
    torch.testing.assert_close(xs[-1], final.particle_x, rtol=0, atol=1e-12)
    torch.testing.assert_close(vs[-1], final.particle_v, rtol=0, atol=1e-12)
    torch.testing.assert_close(loss_c, loss, rtol=1e-12, atol=1e-12)
    for g_c, g in zip(grads_c, grads):
        scale = float(g.abs().max())
        assert scale > 0
        torch.testing.assert_close(g_c, g, rtol=1e-10, atol=1e-12 * scale)


def test_taichi_equals_warp_on_a_batch():
    model = tiny_robot(friction=0.7)
    results = []
    for name in ("taichi", "warp"):
        gen = torch.Generator().manual_seed(3)
        x0, v0, springs, inv_mass, actions, weights = _worlds(model, gen)
        sim = MassSpring(model, resolve_backend(name, precision="float64"), batch_size=B)
        leaves = _leaves(x0, v0, springs, inv_mass, actions)
        loss, final, _ = _run(sim, leaves[0], leaves[1], Params(leaves[2], leaves[3]),
                              leaves[4], weights)
        results.append((final, loss, torch.autograd.grad(loss.sum(), leaves)))
    (fa, la, ga), (fb, lb, gb) = results
    torch.testing.assert_close(fa.particle_x, fb.particle_x, rtol=0, atol=1e-11)
    torch.testing.assert_close(fa.particle_v, fb.particle_v, rtol=0, atol=1e-9)
    torch.testing.assert_close(la, lb, rtol=1e-10, atol=1e-11)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10 * float(b.abs().max()))


def test_observe_and_energy_are_per_world(backend64):
    model = tiny_robot()
    sim = MassSpring(model, backend64, batch_size=B)
    state = sim.initial_state()
    shifted = State(state.particle_x + torch.tensor([[[0.0, 0.0]], [[1.0, 0.5]], [[2.0, 0.0]]],
                                                    dtype=torch.float64), state.particle_v)
    obs = sim.observe(shifted)
    assert obs.shape == (B, sim.observation_dim)
    torch.testing.assert_close(obs[1], obs[0])  # relative to each world's own centre of mass
    energy = sim.energy(shifted)
    assert energy.shape == (B,)
    # World 1 sits 0.5 m higher: potential energy mass * g * 0.5 more.
    mass = float(model.particle_mass.sum())
    assert float(energy[1] - energy[0]) == pytest.approx(-model.gravity * mass * 0.5, rel=1e-12)


def test_check_state_names_each_failed_world(backend64):
    sim = MassSpring(tiny_robot(), backend64, batch_size=B)
    state = sim.initial_state()
    assert sim.check_state(state) == {}
    x, v = state.particle_x.clone(), state.particle_v.clone()
    x[2, 4, 1] = float("nan")
    v[0, 6, 0] = 1e5
    failures = sim.check_state(State(x, v))
    assert sorted(failures) == [0, 2]
    assert failures[2].startswith("particle_x of particle 4 is [") and "(NaN)" in failures[2]
    assert failures[0].startswith("particle_v of particle 6 is [100000.0")


def test_bad_shapes_are_refused_naming_given_and_expected():
    backend = resolve_backend("warp", precision="float64")
    sim = MassSpring(tiny_robot(), backend, batch_size=B)
    state = sim.initial_state()
    with pytest.raises(ValueError, match=r"action has shape \[2\]; expected \[3, 2\]"):
        sim.step(state, torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"action has shape \[2, 2\]; expected \[3, 2\]"):
        sim.step(state, torch.zeros(2, 2, dtype=torch.float64))
    params = sim.params()
    wrong = Params(params.spring_params.expand(2, -1, -1), params.particle_inv_mass)
    with pytest.raises(ValueError, match=r"params.spring_params has shape \[2, 20, 4\]; "
                                         r"expected 2 dimensions .* leading world axis of size B=3"):
        sim.step(state, None, wrong)
    wrong = Params(params.spring_params[:, :3], params.particle_inv_mass)
    with pytest.raises(ValueError, match=r"params.spring_params has shape \[3, 20, 3\]; "
                                         r"expected \[20, 4\] \(shared\) or \[3, 20, 4\]"):
        sim.step(state, None, wrong)
    with pytest.raises(ValueError, match=r"state.particle_x has shape \[1, 9, 2\]; "
                                         r"expected \[3, 9, 2\]"):
        sim.step(state.world(0))
    with pytest.raises(ValueError, match="batch_size=0 must be an integer >= 1"):
        MassSpring(tiny_robot(), backend, batch_size=0)


def test_mask_freezes_exactly_the_failed_world(backend64):
    """World 1's springs far beyond the stability limit: with ``health="mask"`` it is frozen
    and named, the other worlds equal their single-world rollouts, and a shared parameter
    (inverse masses) gets exactly the healthy worlds' gradient sum, free of NaN."""
    from simdiff.rollout import rollout

    model = tiny_robot(friction=0.7)
    gen = torch.Generator().manual_seed(4)
    x0, v0, springs, inv_mass, actions, _ = _worlds(model, gen)
    springs[1, :, 0] *= 1e4
    shared_inv = inv_mass[0]
    sim = MassSpring(model, backend64, batch_size=B)
    inv = shared_inv.clone().requires_grad_(True)
    result = rollout(sim, State(x0, v0), lambda t, s: actions[t], STEPS,
                     params=Params(springs, inv), health="mask")
    assert sorted(result.failures) == [1] and result.alive.tolist() == [True, False, True]
    loss = result.mean(result.final.particle_x[..., 0].mean(1))
    (grad,) = torch.autograd.grad(loss, [inv])
    assert torch.isfinite(grad).all()
    assert torch.isfinite(result.final.particle_x[1]).all()  # frozen at its last good state

    single = MassSpring(model, backend64)
    expected = torch.zeros_like(shared_inv)
    for b in (0, 2):
        w = slice(b, b + 1)
        one = shared_inv.clone().requires_grad_(True)
        alone = rollout(single, State(x0[w], v0[w]), lambda t, s, w=w: actions[t, w], STEPS,
                        params=Params(springs[w], one))
        torch.testing.assert_close(result.final.particle_x[w], alone.final.particle_x,
                                   rtol=1e-12, atol=1e-13)
        (g,) = torch.autograd.grad(alone.final.particle_x[..., 0].mean() / 2, [one])
        expected += g
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12 * float(expected.abs().max()))


def test_batch_benchmark_runs_at_toy_size():
    """``benchmarks/batch_mass_spring.py`` at toy size: one row per mode and B with the fields
    ``simdiff bench batch`` reads (not a timing assertion: rates are only positive)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "batch_mass_spring.py"
    spec = importlib.util.spec_from_file_location("batch_mass_spring", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.mass_spring_batch(batches=(1, 2), backends=("warp",), quick=True,
                                   progress=None)
    assert [(r["batch"], r["mode"]) for r in rows] == [
        (1, "forward"), (1, "forward_backward"), (2, "forward"), (2, "forward_backward")]
    for r in rows:
        assert r["world_steps_per_s"] > 0 and r["loop_world_steps_per_s"] > 0
        assert r["peak_rss_mb"] > 0 and r["rss_growth_mb"] >= 0
    assert [r["speedup_vs_b1"] for r in rows[:2]] == [1.0, 1.0]
