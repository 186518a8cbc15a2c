"""Gradients of mass-spring rollouts.

* Autodiff against central finite differences in float64, for stiffness, rest length, damping,
  actuation and the initial state, on both backends, with ground contact and friction.
* Both backends against a plain torch implementation of the same step (states and gradients).
* Taichi against Warp on a 3D robot.
* Checkpointed rollouts give the same gradients as plain ones.
"""

import pytest
import torch
from conftest import sine_actions, tiny_robot, tiny_robot_3d

from simdiff.backend import resolve_backend
from simdiff.gradcheck import check_gradients
from simdiff.rollout import rollout
from simdiff.scene import Scene
from simdiff.sims.mass_spring import MassSpring, Params, State
from simdiff.sims.mass_spring.tasks import locomotion_loss
from simdiff.sims.mass_spring.torch_reference import torch_step


@pytest.mark.parametrize("friction", [0.0, 0.6, float("inf")])
def test_gradients_match_finite_differences(backend64, friction):
    scene = Scene("tiny", "mass_spring", tiny_robot(friction=friction), steps=80,
                  loss=locomotion_loss)
    results = check_gradients(scene, backend64.name.value, rtol=1e-4, atol=1e-9)
    checked = {r.quantity for r in results}
    assert checked == {"spring_stiffness", "spring_rest_length", "spring_damping",
                       "initial_particle_x", "initial_particle_v", "actions"}
    for r in results:
        assert r.ok, f"{r.quantity}: autodiff {r.autodiff:.8e} vs finite difference {r.finite_difference:.8e}"
    # The checks must be meaningful: the loss depends on these quantities.
    assert max(abs(r.finite_difference) for r in results) > 1e-3


def test_step_matches_torch_reference(backend64):
    """One step of two worlds from states where particles hit the ground, against torch
    autograd (per-world spring parameters and inverse masses)."""
    torch.manual_seed(0)
    model = tiny_robot(friction=0.7)
    sim = MassSpring(model, backend64, batch_size=2)
    x = sim.initial_state().particle_x + 0.002 * torch.rand(2, 9, 2, dtype=torch.float64)
    x[..., 1] -= x[..., 1].min(1, keepdim=True).values - 1e-4  # lowest particles near ground
    x = x.requires_grad_()
    v = (torch.randn(2, 9, 2, dtype=torch.float64) - torch.tensor([0.0, 1.0])).requires_grad_()
    action = torch.tensor([[0.4, -0.7], [-0.2, 0.9]], dtype=torch.float64, requires_grad=True)
    shared = sim.params()
    springs = (shared.spring_params.detach() * (1 + 0.1 * torch.rand(2, 20, 4, dtype=torch.float64))
               ).requires_grad_()
    inv_mass = shared.particle_inv_mass.detach().clone().requires_grad_()  # shared
    params = Params(springs, inv_mass)
    wx, wv = torch.randn(2, 9, 2, dtype=torch.float64), torch.randn(2, 9, 2, dtype=torch.float64)

    out = sim.step(State(x, v), action, params)
    ref_x, ref_v = torch_step(model, x, v, action, params)
    assert torch.allclose(out.particle_x, ref_x, atol=1e-13)
    assert torch.allclose(out.particle_v, ref_v, atol=1e-12)
    hits = (ref_x[..., 1] <= 1e-12) & (x[..., 1] > 0)
    assert hits.any(1).all(), "the test state must exercise ground contact in every world"
    inputs = [x, v, action, springs, inv_mass]
    grads = torch.autograd.grad((out.particle_x * wx).sum() + (out.particle_v * wv).sum(), inputs)
    ref = torch.autograd.grad((ref_x * wx).sum() + (ref_v * wv).sum(), inputs)
    for name, g, r in zip(["x", "v", "action", "spring_params", "inv_mass"], grads, ref):
        assert torch.allclose(g, r, rtol=1e-9, atol=1e-10), name


def _rollout_grads(backend, model, steps, checkpoint_every=None):
    sim = MassSpring(model, backend)
    actions = sine_actions(steps, sim.action_dim)[:, None].requires_grad_()  # [T, 1, A]
    model.spring_stiffness.requires_grad_(True)
    model.spring_rest_length.requires_grad_(True)
    state = sim.initial_state()
    x0 = state.particle_x.clone().requires_grad_()
    result = rollout(sim, State(x0, state.particle_v), lambda t, s: actions[t], steps,
                     checkpoint_every=checkpoint_every)
    loss = result.final.particle_x.square().sum() + result.final.particle_v[..., 0].sum()
    inputs = [actions, model.spring_stiffness, model.spring_rest_length, x0]
    grads = torch.autograd.grad(loss, inputs)
    return result.final, grads


def test_taichi_and_warp_agree_in_3d():
    states, grads = [], []
    for name in ("taichi", "warp"):
        final, g = _rollout_grads(resolve_backend(name, precision="float64"),
                                  tiny_robot_3d(friction=0.8), 120)
        states.append(final)
        grads.append(g)
    assert torch.allclose(states[0].particle_x, states[1].particle_x, atol=1e-11)
    assert torch.allclose(states[0].particle_v, states[1].particle_v, atol=1e-9)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9)
        assert a.abs().max() > 0


def test_checkpointed_rollout_gives_the_same_gradients(backend64):
    _, plain = _rollout_grads(backend64, tiny_robot(), 60)
    _, checkpointed = _rollout_grads(backend64, tiny_robot(), 60, checkpoint_every=7)
    for a, b in zip(plain, checkpointed):
        assert torch.equal(a, b)


def test_checkpointing_bounds_what_backward_keeps():
    """Bytes saved for backward grow with the horizon without checkpoints and with the number
    of segments with them."""
    backend = resolve_backend("warp", precision="float64")

    def saved_bytes(steps, checkpoint_every):
        sim = MassSpring(tiny_robot(), backend)
        actions = sine_actions(steps, sim.action_dim)[:, None].requires_grad_()
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            result = rollout(sim, sim.initial_state(), lambda t, s: actions[t], steps,
                             checkpoint_every=checkpoint_every)
        result.final.particle_x.sum().backward()
        assert actions.grad.abs().sum() > 0
        return total

    plain_short, plain_long = saved_bytes(100, None), saved_bytes(800, None)
    checkpointed_long = saved_bytes(800, 100)
    assert plain_long > 7 * plain_short
    assert checkpointed_long < plain_long / 20
