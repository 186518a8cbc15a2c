"""MLS-MPM: kernels against a torch oracle, gradients against central differences, physical
invariants, validation and rollout diagnostics (all float64, tiny grids)."""

import math

import pytest
import torch

from simdiff.backend import resolve_backend
from simdiff.bench import saved_bytes
from simdiff.rollout import rollout
from simdiff.sims.base import SimulationError, ValidationError
from simdiff.sims.mpm import MPM, Body, Ground, Material, Params, Tool, ToolShape, build_model
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
    center = (0.36,) * dim
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
    action = actions_for(sim, 1)  # [B = 1, action_dim]
    p0 = sim.pack(state).requires_grad_(dim == 2)
    params = sim.params().particle.requires_grad_(dim == 2)
    action = action.requires_grad_(dim == 2)
    tool = torch.cat([state.tool_x, action[:, 2:]], 1)
    p = p0
    for s in range(model.substeps):
        p = torch_substep(model, p, params[None], action[:, :2], tool, elapsed=s * model.dt)
    out = sim.step(sim.unpack(p0, state.tool_x), action, Params(params))
    packed = sim.pack(out)
    assert torch.allclose(packed, p, rtol=0, atol=1e-11)
    tool_contact = (p[..., dim:2 * dim] - p0[..., dim:2 * dim]).norm(dim=-1).max()
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
        state = sim.state_from(particle_x=model.particle_x.clone()[None],
                               particle_v=values["v0"][None])
        actions = values["actions"]
        result = rollout(sim, state, lambda k, s: actions[k][None], steps,
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
    assert_central_differences(sim, steps, base, leaves, rel=1e-5)


def assert_central_differences(sim, steps, base, leaves, *, rel):
    """Directional derivatives of ``_loss_and_inputs`` (gradients already in ``leaves``)
    along random muscle, tool, modulus and initial-velocity directions, against central
    differences; the model has 2 muscles then a tool."""
    gen = torch.Generator().manual_seed(0)
    actions = base["actions"]
    muscle = torch.zeros_like(actions)
    muscle[:, :2] = torch.randn(steps, 2, generator=gen, dtype=torch.float64)
    tool = torch.zeros_like(actions)
    tool[:, 2:] = torch.randn(steps, actions.shape[1] - 2, generator=gen, dtype=torch.float64)
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
        assert ad == pytest.approx(fd, rel=rel), label


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


def test_long_rollout_saves_bounded_bytes(backend):
    """Bytes autograd holds for backward (measured from the saved tensors): without
    checkpoints one packed particle state per control step and no grid; past the memory
    rule's threshold, the default checkpoints hold about sqrt(steps) states; the gradients
    are the same bits."""
    sim = MPM(mixed_model(substeps=1), backend)
    steps = 100
    state_bytes = sim.model.particle_count * 12 * 8  # x, v, C, F in 2D, float64
    sim.checkpoint_bytes = 10 * state_bytes  # the rule's threshold, scaled to a toy robot
    assert sim.default_checkpoint_every(10) is None
    assert sim.default_checkpoint_every(steps) == 10
    measured, grads = {}, {}
    for every in (0, None):
        actions = actions_for(sim, steps).requires_grad_()
        with saved_bytes() as saved:
            result = rollout(sim, sim.initial_state(), lambda k, s, a=actions: a[k][None],
                             steps, checkpoint_every=every)
            loss = result.final.particle_x.square().sum()
        loss.backward()
        measured[every], grads[every] = saved.bytes, actions.grad
    assert steps * state_bytes <= measured[0] < (steps + 3) * state_bytes  # + params, actions
    assert measured[None] <= 2 * math.isqrt(steps) * state_bytes
    assert torch.equal(grads[0], grads[None])
    assert grads[0].abs().max() > 0


def test_taichi_launcher_matches_taichis_own_call(backend):
    """The bridge launches Taichi kernels with their static arguments set once (after a
    first call through Taichi's own path): the fast path is taken, and a step and its
    gradient through it equal the first call's."""
    sim = MPM(mixed_model(substeps=2), backend)
    action = actions_for(sim, 1)
    results = []
    for _ in range(2):  # the first builds the launchers through Taichi's call
        v0 = sim.model.particle_v.clone()[None].requires_grad_()
        state = sim.state_from(particle_x=sim.model.particle_x.clone()[None], particle_v=v0)
        final = sim.step(state, action)
        final.particle_x.square().sum().backward()
        results.append((final.particle_x.detach(), v0.grad))
    launchers = [value[1] for launch in sim._launch.launches
                 for key, value in launch.cache.items() if key[0] == "taichi_launcher"]
    assert len(launchers) == 2 * len(sim._launch.launches)  # forward and adjoint kernels
    assert all(launcher.plan is not None for launcher in launchers)
    for a, b in zip(*results):  # equal up to the atomics' order of addition
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    assert results[0][1].abs().max() > 0


def test_p2g_conserves_mass_and_momentum(backend):
    """The grid after p2g holds exactly the particles' mass and linear momentum (the stress
    and affine terms scatter zero net momentum: the weights reproduce linear functions)."""
    model = mixed_model()
    sim = MPM(model, backend)
    state = sim.initial_state()
    gen = torch.Generator().manual_seed(2)
    state.particle_C = 3.0 * torch.randn(state.particle_C.shape, generator=gen, dtype=torch.float64)
    state.particle_F = state.particle_F + 0.05 * torch.randn(state.particle_F.shape, generator=gen,
                                                             dtype=torch.float64)
    grid = sim.grid(state, actions_for(sim, 1))
    mass = model.particle_mass
    assert float(grid[..., -1].sum()) == pytest.approx(float(mass.sum()), rel=1e-13)
    momentum = grid[..., :-1].reshape(-1, 2).sum(0)
    expected = (mass[:, None] * state.particle_v[0]).sum(0)
    assert torch.allclose(momentum, expected, rtol=0, atol=1e-14)


def _angular_momentum_2d(model, state):
    """Particles' angular momentum about the origin including APIC's affine part
    ``m D (C_10 - C_01)`` with ``D = dx^2 / 4`` for quadratic B-splines."""
    m, x, v, C = model.particle_mass, state.particle_x[0], state.particle_v[0], state.particle_C[0]
    orbital = m * (x[:, 0] * v[:, 1] - x[:, 1] * v[:, 0])
    spin = m * model.dx**2 / 4 * (C[:, 1, 0] - C[:, 0, 1])
    return float((orbital + spin).sum())


def test_free_body_conserves_momentum(backend):
    """A spinning, drifting elastic body in zero gravity, away from walls: linear and angular
    momentum are conserved to round-off over 60 substeps while it deforms."""
    model = build_model([Body((0.4, 0.4), (0.16, 0.12), E=200.0)], grid_size=32, dt=1e-3,
                        substeps=6, gravity=0.0, ground=None)
    center = model.particle_x.mean(0)
    r = model.particle_x - center
    model.particle_v = torch.stack([-2.0 * r[:, 1] + 0.3, 2.0 * r[:, 0] - 0.2], 1)
    sim = MPM(model, backend)
    state = sim.initial_state()
    final = rollout(sim, state, None, 10).final
    m = model.particle_mass[:, None]
    assert torch.allclose((m * final.particle_v[0]).sum(0), (m * state.particle_v[0]).sum(0),
                          rtol=0, atol=1e-14)
    before, after = _angular_momentum_2d(model, state), _angular_momentum_2d(model, final)
    assert after == pytest.approx(before, rel=1e-10)
    assert (final.particle_F - state.particle_F).abs().max() > 1e-3, "the body must deform"


def test_body_at_rest_on_the_ground_stays_at_rest(backend):
    """An elastic block released on a frictional ground under gravity only vibrates about its
    static compression: over 0.2 s its center of mass stays within rho g h^2 / E below where it
    started (about 1.5 times the static sag, allowing the overshoot of a sudden load), never
    rises, does not slide, and every particle stays slower than 2.5 % of the free-fall speed
    g t it would reach without the ground."""
    h, E, rho = 0.1, 2e4, 100.0
    model = build_model([Body((0.3, 3 / 32), (0.2, h), E=E, density=rho)], grid_size=32,
                        dt=5e-4, substeps=10, ground=Ground(friction=0.5))
    sim = MPM(model, backend)
    state = sim.initial_state()
    result = rollout(sim, state, None, 40, record_every=2)  # 0.2 s
    com0 = sim.center_of_mass(state)[0]
    sag = rho * 9.8 * h**2 / E
    for frame in result.recorded():
        com = sim.center_of_mass(frame)[0]
        drop = float(com0[1] - com[1])
        assert -1e-12 <= drop < sag
        # Not exactly zero: the block's particles are not symmetric about grid nodes.
        assert abs(float(com[0] - com0[0])) < 1e-6
        assert float(frame.particle_v.abs().max()) < 0.025 * 9.8 * 0.2


def _block(**body):
    return Body((0.3, 0.2), (0.1, 0.1), **{"E": 100.0, **body})


@pytest.mark.parametrize("change,message", [
    ({"bodies": [Body((0.02, 0.2), (0.1, 0.1))]}, "outside .* at least 3 cells from its walls"),
    ({"bodies": [Body((0.3, 0.2), (0.1, 0.9))]}, "outside"),
    ({"dt": 0.01}, "exceeds the stability limit"),
    ({"bodies": [_block(velocity=(30.0, 0.0))]}, "exceeds the stability limit"),
    ({"bodies": [_block(nu=0.5)]}, r"particle_nu\[0\]=0.5 must lie in \(-1, 0.5\)"),
    ({"bodies": [_block(nu=-1.2)]}, r"must lie in \(-1, 0.5\)"),
    ({"bodies": [_block(density=0.0)]}, r"particle_density\[0\]=0 must be > 0"),
    ({"bodies": [_block(E=-5.0)]}, r"particle_E\[0\]=-5 must be > 0"),
    ({"particles_per_cell": 8}, "grid is too coarse for the particle spacing"),
    ({"dx": 1 / 32, "grid_size": 64, "particles_per_cell": 2, "spacing": 0.05},
     "the grid is finer than the particles"),
    ({"bodies": [_block(material=Material.PLASTIC)]}, "particle_yield of plastic particles"),
    ({"bodies": [_block(material=Material.LIQUID, actuator=0)]}, "only ELASTIC particles"),
    ({"tool": Tool(ToolShape.BOX, (0.1,), (0.5, 0.5))}, "tool.size"),
])
def test_bad_inputs_are_refused_before_compiling(change, message):
    options = {"bodies": [_block()], "grid_size": 32, "dt": 1e-3, **change}
    bodies = options.pop("bodies")
    spacing = options.pop("spacing", None)
    with pytest.raises(ValidationError, match=message):
        model = build_model(bodies, **options)
        if spacing is not None:  # coarser sampling than the builder makes
            model.particle_volume = torch.full_like(model.particle_volume, spacing**2)
            model.validate()


def test_3d_gradients_on_taichi_point_to_warp(backend):
    """Taichi's 3D reverse mode is refused before any kernel compiles; the message names the
    backend that has it."""
    model = build_model([Body((0.3, 0.2, 0.3), (0.1, 0.1, 0.1), E=100.0)], grid_size=16)
    sim = MPM(model, backend)
    state = sim.initial_state()
    state.particle_v.requires_grad_()
    with pytest.raises(NotImplementedError, match="--backend warp"):
        sim.step(state)


def test_rollout_failures_name_step_particle_and_quantity(backend):
    model = build_model([_block(velocity=(0.0, -0.5))], grid_size=32, dt=1e-3, substeps=5)
    sim = MPM(model, backend)
    state = sim.initial_state()
    crushed = sim.state_from(particle_x=state.particle_x, particle_v=state.particle_v)
    crushed.particle_F[0, 7] = torch.tensor([[1.0, 0.0], [0.0, -0.2]], dtype=torch.float64)
    with pytest.raises(SimulationError, match=r"world 0, step 1 of 3: particle_F of particle 7 has det F"):
        rollout(sim, crushed, None, 3)
    bad = sim.state_from(particle_x=state.particle_x, particle_v=state.particle_v.clone())
    bad.particle_v[0, 4, 1] = math.nan
    # NaN spreads through the shared grid nodes within the step: some particle is named.
    with pytest.raises(SimulationError, match=r"world 0, step 1 of 3: particle_x of particle \d+ is not"):
        rollout(sim, bad, None, 3)
    escaped = sim.state_from(particle_x=state.particle_x.clone(), particle_v=state.particle_v)
    escaped.particle_x[0, 5, 0] = 0.5 * model.dx
    with pytest.raises(SimulationError, match=r"world 0, step 1 of 3: particle_x of particle 5 is .* "
                                              r"outside .* \(it left the domain\)"):
        rollout(sim, escaped, None, 3)
    fast = sim.state_from(particle_x=state.particle_x, particle_v=state.particle_v.clone())
    fast.particle_v[0, :, 0] = 40.0  # above dx / dt = 31.25, still inside after a step
    with pytest.raises(SimulationError, match=r"world 0, step 1 of 3: particle_v of particle \d+ .* "
                                              r"faster than dx/dt"):
        rollout(sim, fast, None, 3)


def _pool_bytes(sim) -> int:
    pool = sim._launch.cache.get("pool")
    return 0 if pool is None else sum(t.numel() * t.element_size()
                                      for stack in pool.free.values() for t in stack)


def test_steps_chain_without_copies_and_reuse_their_buffers(backend):
    """A step's output is the next step's input as it is (no copy per control step), with
    the gradients of states rebuilt from copies (the views' gradients and the next step's add
    up); a step's intermediates come from a pool that stops growing after one backward and
    holds at most one step's buffers and their adjoints (bytes, not time)."""
    sim = MPM(mixed_model(substeps=3), backend)
    steps = 4
    s0 = sim.initial_state()
    s1 = sim.step(s0, actions_for(sim, 1))
    assert sim.pack(s1).data_ptr() == s1.particle_x.data_ptr()
    assert torch.equal(sim.pack(s1), torch.cat([s1.particle_x, s1.particle_v,
                                                s1.particle_C.flatten(2),
                                                s1.particle_F.flatten(2)], 2))
    grads = []
    for copied in (False, True):
        actions = actions_for(sim, steps).requires_grad_()
        v0 = sim.model.particle_v.clone()[None].requires_grad_()
        s = sim.state_from(particle_x=sim.model.particle_x.clone()[None], particle_v=v0)
        loss = 0.0
        for k in range(steps):
            s = sim.step(s, actions[k][None])
            if copied:  # fresh tensors: the next step packs a copy
                s = type(s).from_tensors(s.field_names(), tuple(t.clone() for t in s.tensors()))
            loss = loss + (k + 1) * s.particle_v.square().sum()  # the views are read too
        loss = loss + s.particle_x[..., 1].sum()
        loss.backward()
        grads.append((actions.grad, v0.grad))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)
        assert a.abs().max() > 0
    launch_bytes = sum(math.prod(o.shape) * 8 for launch in sim._launch.launches
                       for _, o in launch.outputs)
    held = []
    for _ in range(3):
        actions = actions_for(sim, steps).requires_grad_()
        result = rollout(sim, sim.initial_state(), lambda k, s, a=actions: a[k][None], steps)
        result.final.particle_x.square().sum().backward()
        held.append(_pool_bytes(sim))
    assert 0 < held[1] == held[2] <= 2 * launch_bytes
