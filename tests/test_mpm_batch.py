"""Batched MPM worlds: B worlds with different initial states, actions and per-world materials
(Young's modulus; the friction angle of sand) equal B separate single-world rollouts, in
states, per-world losses and the gradients of every per-world quantity, to round-off; a
shared parameter's gradient (Poisson's ratio) is the sum over worlds; bad shapes are refused
with one clear line (float64, both backends, 2D toy sizes; 3D on Warp)."""

import pytest
import torch
from test_mpm import actions_for, mixed_model
from test_mpm_sand import thrown_block

from simdiff.backend import resolve_backend
from simdiff.rollout import rollout
from simdiff.sims.mpm import MPM, ToolShape

BACKENDS = ["warp", "taichi"]


def _per_world_loss(final, weights):
    """A random projection of each world's final positions and velocities, ``[B]``."""
    return (final.particle_x * weights).sum((1, 2)) + 0.1 * (final.particle_v * weights).sum((1, 2))


def _run(sim, values, steps, weights):
    """Per-world losses of a rollout from ``values`` (initial velocities [B, n, d], actions
    [steps, B, A] or None, per-world params overrides [B, n] and shared ones [n])."""
    x0 = sim.initial_state().particle_x
    state = sim.state_from(particle_x=x0, particle_v=values["v0"])
    params = sim.params(**values["params"])
    actions = values.get("actions")
    controller = (lambda t, s: actions[t]) if actions is not None else None
    result = rollout(sim, state, controller, steps, params=params)
    return _per_world_loss(result.final, weights), result.final


def _worlds_equal_single_runs(model, backend, values, steps, *, per_world, shared):
    """Run ``values`` batched and world by world; compare final states, losses and gradients
    of every leaf (per-world ones slice by slice, shared ones summed over worlds)."""
    batch = values["v0"].shape[0]
    weights = torch.randn(model.particle_x.shape, generator=torch.Generator().manual_seed(5),
                          dtype=torch.float64)

    def leaves(v):
        out = {"v0": v["v0"].clone().requires_grad_(),
               "params": {k: t.clone().requires_grad_() for k, t in v["params"].items()}}
        if v.get("actions") is not None:
            out["actions"] = v["actions"].clone().requires_grad_()
        return out

    def grads(v):
        out = {"v0": v["v0"].grad, **{k: t.grad for k, t in v["params"].items()}}
        if "actions" in v:
            out["actions"] = v["actions"].grad
        return out

    big = leaves(values)
    losses, final = _run(MPM(model, backend, batch_size=batch), big, steps, weights)
    losses.sum().backward()
    g_big = grads(big)
    single = MPM(model, backend)
    shared_sum = {k: 0.0 for k in shared}
    for b in range(batch):
        one = {"v0": values["v0"][b:b + 1],
               "params": {k: (t[b:b + 1] if k in per_world else t)
                          for k, t in values["params"].items()}}
        if values.get("actions") is not None:
            one["actions"] = values["actions"][:, b:b + 1]
        one = leaves(one)
        loss, final_b = _run(single, one, steps, weights)
        loss.sum().backward()
        g_one = grads(one)
        for name in ("particle_x", "particle_v", "particle_F", "tool_x"):
            a, r = getattr(final, name)[b], getattr(final_b, name)[0]
            assert torch.allclose(a, r, rtol=0, atol=1e-12), f"world {b}: {name}"
        assert float(losses[b]) == pytest.approx(float(loss[0]), rel=1e-12, abs=1e-12)
        for key in ("v0", "actions", *per_world):
            if key not in g_one:
                continue
            ref = g_one[key][:, 0] if key == "actions" else g_one[key][0]
            ours = g_big[key][:, b] if key == "actions" else g_big[key][b]
            scale = float(ref.abs().max())
            assert scale > 1e-6, f"world {b}: the loss must depend on {key}"
            assert float((ours - ref).abs().max()) < 1e-11 * scale, f"world {b}: d/d{key}"
        for key in shared:
            shared_sum[key] = shared_sum[key] + g_one[key]
    for key in shared:
        scale = float(shared_sum[key].abs().max())
        assert scale > 1e-6, key
        assert float((g_big[key] - shared_sum[key]).abs().max()) < 1e-11 * scale, key
    # The worlds really differ (else equal-to-single would not test the world index).
    assert float((final.particle_x[0] - final.particle_x[1]).abs().max()) > 1e-4


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_batched_worlds_equal_single_world_rollouts(backend_name):
    """Three worlds of the mixed scene (muscles, liquid, plastic, the tool pressing; 4 control
    steps of 3 substeps) with their own initial velocities, actions (muscles and tool) and
    Young's moduli, and a shared Poisson ratio."""
    backend = resolve_backend(backend_name, precision="float64")
    model = mixed_model()
    batch, steps = 3, 4
    gen = torch.Generator().manual_seed(7)
    n = model.particle_count
    v0 = model.particle_v + 0.2 * torch.randn((batch, *model.particle_v.shape), generator=gen,
                                              dtype=torch.float64)
    base = actions_for(MPM(model, backend), steps)
    actions = torch.stack([base, 0.5 * base + 0.1, -base], 1)
    E = model.particle_E * torch.tensor([1.0, 1.4, 0.7], dtype=torch.float64)[:, None]
    values = {"v0": v0, "actions": actions,
              "params": {"particle_E": E, "particle_nu": model.particle_nu.clone()}}
    assert E.shape == (batch, n)
    _worlds_equal_single_runs(model, backend, values, steps, per_world={"particle_E"},
                              shared={"particle_nu"})


def test_batched_3d_worlds_equal_single_world_rollouts_on_warp():
    """3D (every material, muscles, the box tool; 2 control steps of 2 substeps), Warp (the
    backend with 3D gradients): two worlds with their own velocities, actions and moduli."""
    backend = resolve_backend("warp", precision="float64")
    model = mixed_model(3, tool_shape=ToolShape.BOX, substeps=2)
    gen = torch.Generator().manual_seed(9)
    v0 = model.particle_v + 0.2 * torch.randn((2, *model.particle_v.shape), generator=gen,
                                              dtype=torch.float64)
    base = actions_for(MPM(model, backend), 2)
    E = model.particle_E * torch.tensor([1.0, 1.5], dtype=torch.float64)[:, None]
    values = {"v0": v0, "actions": torch.stack([base, -0.5 * base], 1),
              "params": {"particle_E": E, "particle_nu": model.particle_nu.clone()}}
    _worlds_equal_single_runs(model, backend, values, 2, per_world={"particle_E"},
                              shared={"particle_nu"})


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_batched_sand_worlds_with_their_own_friction_angles(backend_name):
    """Two sand blocks thrown onto the ground (3 control steps of 10 substeps, they land and
    yield) with their own initial velocities and friction angles, a shared modulus."""
    backend = resolve_backend(backend_name, precision="float64")
    model = thrown_block()
    gen = torch.Generator().manual_seed(8)
    v0 = model.particle_v + 0.3 * torch.randn((2, *model.particle_v.shape), generator=gen,
                                              dtype=torch.float64)
    phi = model.particle_friction_angle * torch.tensor([1.0, 1.25], dtype=torch.float64)[:, None]
    values = {"v0": v0, "params": {"particle_friction_angle": phi,
                                   "particle_E": model.particle_E.clone()}}
    _worlds_equal_single_runs(model, backend, values, 3, per_world={"particle_friction_angle"},
                              shared={"particle_E"})


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_health_is_reported_per_world(backend_name):
    """Only the world with an inverted particle is reported, naming the particle and det F;
    a rollout stops naming that world, the step and the quantity."""
    from simdiff.sims.base import SimulationError

    model = mixed_model(substeps=1)
    sim = MPM(model, resolve_backend(backend_name, precision="float64"), batch_size=3)
    state = sim.initial_state()
    assert sim.check_state(state) == {}
    state.particle_F[1, 5] = torch.tensor([[1.0, 0.0], [0.0, -0.2]], dtype=torch.float64)
    report = sim.check_state(state)
    assert list(report) == [1] and "particle_F of particle 5 has det F" in report[1]
    with pytest.raises(SimulationError, match=r"world 1, step 1 of 2: particle_F of particle 5"):
        rollout(sim, state, None, 2)


def test_bad_batched_inputs_are_refused():
    """Wrong action, params or state shapes for a batch: one ValueError naming the input, the
    shape given and the shape expected, before any kernel runs."""
    model = mixed_model()
    sim = MPM(model, resolve_backend("warp", precision="float64"), batch_size=2)
    state = sim.initial_state()
    n, a = model.particle_count, sim.action_dim
    assert state.particle_x.shape == (2, n, 2) and state.tool_x.shape == (2, 2)
    with pytest.raises(ValueError, match=rf"action has shape \[{a}\]; expected \[2, {a}\]"):
        sim.step(state, torch.zeros(a, dtype=torch.float64))
    with pytest.raises(ValueError, match=rf"action has shape \[3, {a}\]; expected \[2, {a}\]"):
        sim.step(state, torch.zeros(3, a, dtype=torch.float64))
    wrong = sim.Params(sim.params().particle.expand(3, -1, -1))
    with pytest.raises(ValueError, match=r"params.particle has shape \[3, \d+, 10\]; expected"):
        sim.step(state, None, wrong)
    with pytest.raises(ValueError, match=rf"particle_E has shape \[3, {n}\]; expected \[{n}\] "
                                         rf"\(shared\) or \[2, {n}\] \(per world\)"):
        sim.params(particle_E=model.particle_E.expand(3, -1))
    with pytest.raises(ValueError, match=rf"particle_x has shape \[1, {n}, 2\]; expected "
                                         rf"\[2, {n}, 2\]"):
        sim.state_from(particle_x=state.particle_x[:1], particle_v=state.particle_v[:1])
    with pytest.raises(ValueError, match=r"state.particle_x has shape \[1, "):
        sim.step(state.world(0))
