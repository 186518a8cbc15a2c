"""Captured open-loop segments (one Warp graph per segment) of B worlds give the per-step
rollout's states and gradients, keep only their inputs for backward, and still report blow-ups
by world and step."""

import pytest
import torch

from simdiff.backend import resolve_backend
from simdiff.rollout import rollout
from simdiff.scene import load_controller, load_scene
from simdiff.sims.base import SimulationError
from simdiff.sims.mass_spring import MassSpring

B = 3


def _walker(backend="warp", **options):
    scene = load_scene("walker_small", **options)
    sim = MassSpring(scene.model, resolve_backend(backend, precision="float64"), batch_size=B)
    torch.manual_seed(0)
    controller = load_controller("sinusoid", sim, scene).to(torch.float64)
    return scene, sim, controller


def _loss_and_grads(scene, sim, controller, steps, **options):
    stiffness = sim.model.spring_stiffness
    sim.model.spring_stiffness = stiffness.clone().requires_grad_(True)
    try:
        state = sim.initial_state()
        # Worlds that differ: each starts with its own horizontal velocity.
        state.particle_v[..., 0] += 0.1 * torch.arange(B, dtype=torch.float64)[:, None]
        state.particle_v.requires_grad_(True)
        result = rollout(sim, state, controller, steps, record_every=10, **options)
        loss = scene.loss(result) + 0.1 * result.final.particle_v.square().sum()
        leaves = [sim.model.spring_stiffness, state.particle_v, *controller.parameters()]
        grads = torch.autograd.grad(loss, leaves)
    finally:
        sim.model.spring_stiffness = stiffness
    return loss.detach(), result, grads


@pytest.mark.parametrize("checkpoint_every", [None, 37])
def test_captured_rollout_matches_the_per_step_rollout(checkpoint_every):
    scene, sim, controller = _walker()
    steps = 150
    per_step = _loss_and_grads(scene, sim, controller, steps, capture=False)
    captured = _loss_and_grads(scene, sim, controller, steps, capture=True,
                               checkpoint_every=checkpoint_every)
    assert captured[0] == pytest.approx(float(per_step[0]), rel=1e-12)
    assert sorted(captured[1].frames) == sorted(per_step[1].frames) == list(range(0, 151, 10))
    for t, frame in per_step[1].frames.items():
        assert frame.particle_x.shape == (B, sim.model.particle_count, 2)
        torch.testing.assert_close(captured[1].frames[t].particle_x, frame.particle_x,
                                   rtol=0, atol=1e-12)
    final = per_step[1].final.particle_x.detach()
    assert float((final[1] - final[0]).abs().max()) > 1e-3  # the worlds did differ
    for a, b in zip(captured[2], per_step[2]):
        assert float(b.abs().max()) > 0
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12 * float(b.abs().max()))


def test_default_captures_open_loop_warp_rollouts_only():
    _scene, sim, controller = _walker()
    rollout(sim, sim.initial_state(), controller, 20)
    assert 20 in sim.segment_spec().cache  # the default captured a 20-step segment
    closed_loop = lambda t, s: torch.zeros(B, sim.action_dim, dtype=torch.float64)
    with pytest.raises(ValueError, match="open-loop"):
        rollout(sim, sim.initial_state(), closed_loop, 20, capture=True)
    _, taichi_sim, _ = _walker("taichi")
    assert taichi_sim.segment_spec() is None
    with pytest.raises(ValueError, match="capture=True needs"):
        rollout(taichi_sim, taichi_sim.initial_state(), controller, 20, capture=True)


def test_a_captured_segment_saves_only_its_inputs():
    _scene, sim, controller = _walker()
    saved = {"captured": 0, "per-step": 0}

    def measure(key, capture):
        def pack(t):
            saved[key] += t.numel() * t.element_size()
            return t

        state = sim.initial_state()
        state.particle_v.requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            rollout(sim, state, controller, 400, capture=capture)

    measure("captured", True)
    measure("per-step", False)
    state_bytes = B * 2 * sim.model.particle_count * 2 * 8
    # Inputs only: initial state, 400 actions, spring parameters, the controller's own ops.
    assert saved["captured"] < 0.1 * saved["per-step"]
    assert saved["per-step"] > 400 * state_bytes


def test_a_blow_up_inside_a_captured_segment_names_its_step():
    messages = {}
    for capture in (True, False):
        _scene, sim, controller = _walker(dt=0.004)
        params = sim.params()
        # Only world 1 far beyond the stability limit.
        springs = params.spring_params.expand(B, -1, -1).clone()
        springs[1, :, 0] *= 1e4
        params.spring_params = springs
        with pytest.raises(SimulationError) as err:
            rollout(sim, sim.initial_state(), controller, 200, params=params, capture=capture)
        messages[capture] = str(err.value)
        assert sorted(err.value.failures) == [1]
    assert messages[True] == messages[False]
    assert messages[True].startswith("world 1, step ")
