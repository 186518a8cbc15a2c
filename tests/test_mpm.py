"""MLS-MPM: kernels against a torch oracle, gradients against central differences, physical
invariants, validation and rollout diagnostics (all float64, tiny grids)."""

import math

import pytest
import torch

from simdiff.autodiff import rollout
from simdiff.backend import resolve_backend
from simdiff.sims.base import SimulationError, ValidationError
from simdiff.sims.mpm import MPM, Body, Ground, Material, Tool, ToolShape, build_model
from simdiff.sims.mpm.torch_reference import torch_substep


@pytest.fixture(scope="module")
def backend():
    return resolve_backend("taichi", precision="float64")


def mixed_model(dim=2, *, tool_shape=ToolShape.SPHERE, substeps=3, **options):
    """Two muscles, a liquid blob and a plastic block on a 24-node grid, and a tool that
    presses on the first muscle."""
    lo = (0.3,) * dim
    size = (0.12,) * dim
    lift = tuple(0.19 if k == 1 else lo[k] for k in range(dim))
    right = tuple(0.42 if k == 0 else lift[k] for k in range(dim))
    bodies = [
        Body(lift, size, E=100.0, actuator=0, active_stress=30.0,
             velocity=tuple(0.3 if k == 0 else -0.2 if k == 1 else 0.1 for k in range(dim))),
        Body(right, size, E=100.0, actuator=1, active_stress=30.0,
             fiber=tuple(1.0 if k == 0 else 0.0 for k in range(dim))),
        Body(tuple(0.6 if k == 0 else 0.3 if k == 1 else lo[k] for k in range(dim)),
             (0.1,) * dim, material=Material.LIQUID, E=100.0, nu=0.3,
             velocity=tuple(-0.5 if k == 1 else 0.0 for k in range(dim))),
        Body(tuple(0.6 if k == 0 else 0.19 if k == 1 else lo[k] for k in range(dim)),
             (0.1,) * dim, material=Material.PLASTIC, E=100.0, yield_stress=0.5),
    ]
    size_tool = (0.05,) if tool_shape is ToolShape.SPHERE else (0.04,) * dim
    center = tuple(0.36 if k != 1 else 0.36 for k in range(dim))
    tool = Tool(tool_shape, size_tool, center, friction=0.3)
    options = {"grid_size": 24 if dim == 2 else 16, "dt": 1e-3, "substeps": substeps,
               "tool": tool, **options}
    return build_model(bodies, **options)


def actions_for(sim, steps):
    t = torch.arange(steps, dtype=torch.float64)[:, None]
    muscles = 0.6 * torch.sin(0.7 * t + torch.tensor([0.0, 1.0]))
    tool_v = torch.tensor([0.1, -0.8] + [0.0] * (sim.model.dim - 2), dtype=torch.float64)
    return torch.cat([muscles, tool_v.expand(steps, -1)], 1)


@pytest.mark.parametrize("dim,shape", [(2, ToolShape.SPHERE), (2, ToolShape.BOX),
                                       (3, ToolShape.BOX)])
def test_step_matches_torch_reference(backend, dim, shape):
    """A control step (3 substeps; every material, muscles, ground friction, the tool in
    contact) against the torch oracle: states to 1e-11 and, in 2D, vector-Jacobian products."""
    model = mixed_model(dim, tool_shape=shape)
    sim = MPM(model, backend)
    state = sim.initial_state()
    action = actions_for(sim, 1)[0]
    p0 = sim.pack(state).requires_grad_(dim == 2)
    params = sim.particle_params().requires_grad_(dim == 2)
    action = action.requires_grad_(dim == 2)
    tool = torch.cat([state.tool_x, action[2:]])
    p = p0
    for s in range(model.substeps):
        p = torch_substep(model, p, params, action[:2], tool, elapsed=s * model.dt)
    out = sim.step(sim.unpack(p0, state.tool_x), action, particle_params=params)
    packed = sim.pack(out)
    assert torch.allclose(packed, p, rtol=0, atol=1e-11)
    tool_contact = (p[:, dim:2 * dim] - p0[:, dim:2 * dim]).norm(dim=1).max()
    assert tool_contact > 0.05, "the state must change noticeably"
    if dim == 2:
        w = torch.randn(p.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        ours = torch.autograd.grad((packed * w).sum(), [p0, params, action])
        ref = torch.autograd.grad((p * w).sum(), [p0, params, action])
        for name, a, b in zip(["state", "params", "action"], ours, ref):
            assert torch.allclose(a, b, rtol=1e-8, atol=1e-9), name


def _loss_and_inputs(sim, steps, values, checkpoint_every=None):
    """A weighted sum of final positions and velocities after ``steps`` control steps."""
    model = sim.model
    saved = model.particle_E
    model.particle_E = values["E"]
    try:
        state = sim.state_from(particle_x=model.particle_x.clone(), particle_v=values["v0"])
        actions = values["actions"]
        result = rollout(sim, state, lambda k, s: actions[k], steps,
                         checkpoint_every=checkpoint_every)
    finally:
        model.particle_E = saved
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(result.final.particle_x.shape, generator=gen, dtype=torch.float64)
    return (result.final.particle_x * w).sum() + 0.1 * (result.final.particle_v * w).sum()


def test_gradients_match_central_differences(backend):
    """Directional derivatives of a rollout (12 control steps, 36 substeps) with respect to
    the muscle signals, the tool trajectory (its velocities), Young's modulus per particle and
    the initial velocities, against central differences in float64."""
    sim = MPM(mixed_model(), backend)
    steps = 12
    actions = actions_for(sim, steps)
    base = {"actions": actions, "E": sim.model.particle_E.clone(),
            "v0": sim.model.particle_v.clone()}
    leaves = {k: t.clone().requires_grad_() for k, t in base.items()}
    _loss_and_inputs(sim, steps, leaves).backward()
    gen = torch.Generator().manual_seed(0)
    muscle = torch.zeros_like(actions)
    muscle[:, :2] = torch.randn(steps, 2, generator=gen, dtype=torch.float64)
    tool = torch.zeros_like(actions)
    tool[:, 2:] = torch.randn(steps, 2, generator=gen, dtype=torch.float64)
    checks = [("muscles", "actions", muscle), ("tool trajectory", "actions", tool),
              ("modulus", "E", torch.randn(base["E"].shape, generator=gen, dtype=torch.float64)),
              ("initial velocity", "v0",
               torch.randn(base["v0"].shape, generator=gen, dtype=torch.float64))]
    for label, key, d in checks:
        eps = 1e-6 * float(base[key].abs().max())
        with torch.no_grad():
            plus = _loss_and_inputs(sim, steps, {**base, key: base[key] + eps * d})
            minus = _loss_and_inputs(sim, steps, {**base, key: base[key] - eps * d})
        fd = float(plus - minus) / (2 * eps)
        ad = float((leaves[key].grad * d).sum())
        assert abs(fd) > 1e-4, f"{label}: the loss must depend on it"
        assert ad == pytest.approx(fd, rel=1e-5), label


def test_checkpointed_rollout_gives_the_same_gradients(backend):
    sim = MPM(mixed_model(substeps=2), backend)
    steps = 9
    grads = []
    for every in (None, 4):
        values = {"actions": actions_for(sim, steps).requires_grad_(),
                  "E": sim.model.particle_E.clone().requires_grad_(),
                  "v0": sim.model.particle_v.clone().requires_grad_()}
        _loss_and_inputs(sim, steps, values, checkpoint_every=every).backward()
        grads.append([values[k].grad for k in ("actions", "E", "v0")])
    for a, b in zip(*grads):
        assert torch.equal(a, b)
        assert a.abs().max() > 0
