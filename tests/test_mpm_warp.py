"""MPM on Warp: states and gradients against Taichi (2D) and the torch oracle (2D and 3D),
3D gradients against central differences, mass and momentum of the Warp ``p2g`` (all float64,
tiny grids)."""

import pytest
import torch
from test_mpm import _loss_and_inputs, actions_for, assert_central_differences, mixed_model

from simdiff.backend import resolve_backend
from simdiff.rollout import rollout
from simdiff.sims.mpm import MPM, Body, Material, Params, ToolShape, build_model
from simdiff.sims.mpm.torch_reference import torch_substep


@pytest.fixture(scope="module")
def warp64():
    return resolve_backend("warp", precision="float64")


@pytest.fixture(scope="module")
def taichi64():
    return resolve_backend("taichi", precision="float64")


def _rollout_values(sim, steps):
    return {"actions": actions_for(sim, steps), "E": sim.model.particle_E.clone(),
            "v0": sim.model.particle_v.clone()}


@pytest.mark.parametrize("shape", [ToolShape.SPHERE, ToolShape.BOX])
def test_warp_states_match_taichi(warp64, taichi64, shape):
    """After 8 control steps (24 substeps) of the mixed scene (muscles, liquid, plastic, ground
    friction, the tool pressing), every material's particles agree to 1e-11 between backends,
    and each material's particles moved and deformed (so the comparison covers its law)."""
    model = mixed_model(tool_shape=shape)
    finals = []
    for backend in (warp64, taichi64):
        sim = MPM(model, backend)
        state = sim.initial_state()
        start = sim.pack(state)[0]
        actions = actions_for(sim, 8)
        with torch.no_grad():
            for k in range(8):
                state = sim.step(state, actions[k][None])
        finals.append(sim.pack(state)[0])
    warp_p, taichi_p = finals
    material = model.particle_material
    groups = {"muscle": model.particle_actuator >= 0,
              "liquid": material == Material.LIQUID, "plastic": material == Material.PLASTIC}
    for name, mask in groups.items():
        assert torch.allclose(warp_p[mask], taichi_p[mask], rtol=0, atol=1e-11), name
        moved = (taichi_p[mask, :2] - start[mask, :2]).norm(dim=1).max()
        strained = (taichi_p[mask, 8:] - start[mask, 8:]).abs().max()
        assert moved > 1e-3 and strained > 1e-3, f"{name} must move and deform"


def test_warp_gradients_match_taichi(warp64, taichi64):
    """Gradients of a rollout loss (10 control steps, 30 substeps) with respect to muscle
    signals and tool velocities, Young's moduli and initial velocities agree to 1e-9
    (relative to each gradient's largest entry) between Warp and Taichi."""
    grads = []
    for backend in (warp64, taichi64):
        sim = MPM(mixed_model(), backend)
        leaves = {k: t.requires_grad_() for k, t in _rollout_values(sim, 10).items()}
        _loss_and_inputs(sim, 10, leaves).backward()
        grads.append({k: t.grad for k, t in leaves.items()})
    warp_g, taichi_g = grads
    for key, ref in taichi_g.items():
        scale = float(ref.abs().max())
        assert scale > 1e-3, f"the loss must depend on {key}"
        assert float((warp_g[key] - ref).abs().max()) < 1e-9 * scale, key
    # The tool's part of the action gradient (its trajectory) is checked on its own too.
    tool = taichi_g["actions"][:, 2:]
    assert tool.abs().max() > 1e-3
    assert torch.allclose(warp_g["actions"][:, 2:], tool, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dim,shape", [(2, ToolShape.SPHERE), (2, ToolShape.BOX),
                                       (3, ToolShape.BOX), (3, ToolShape.SPHERE)])
def test_warp_step_matches_torch_reference(warp64, dim, shape):
    """A control step (3 substeps, every material, muscles, ground, the tool) on Warp against
    the torch oracle: states to 1e-11 and vector-Jacobian products with respect to the packed
    state, the parameters and the action to 1e-9 relative (2D and 3D)."""
    model = mixed_model(dim, tool_shape=shape)
    sim = MPM(model, warp64)
    state = sim.initial_state()
    p0 = sim.pack(state).requires_grad_()
    params = sim.params().particle.requires_grad_()
    action = actions_for(sim, 1).requires_grad_()
    tool = torch.cat([state.tool_x, action[:, 2:]], 1)
    p = p0
    for s in range(model.substeps):
        p = torch_substep(model, p, params[None], action[:, :2], tool, elapsed=s * model.dt)
    packed = sim.pack(sim.step(sim.unpack(p0, state.tool_x), action, Params(params)))
    assert torch.allclose(packed, p, rtol=0, atol=1e-11)
    assert (p[..., dim:2 * dim] - p0[..., dim:2 * dim]).norm(dim=-1).max() > 0.05
    w = torch.randn(p.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = torch.autograd.grad((packed * w).sum(), [p0, params, action])
    ref = torch.autograd.grad((p * w).sum(), [p0, params, action])
    for name, a, b in zip(["state", "params", "action"], ours, ref):
        scale = float(b.abs().max())
        assert scale > 1e-3, name
        assert float((a - b).abs().max()) < 1e-9 * scale, name


def test_warp_3d_gradients_match_central_differences(warp64):
    """3D (every material, muscles, ground, box tool; 4 control steps of 2 substeps):
    directional derivatives with respect to muscle signals, the tool trajectory, Young's
    modulus and initial velocities against float64 central differences, to 1e-6 relative."""
    sim = MPM(mixed_model(3, tool_shape=ToolShape.BOX, substeps=2), warp64)
    steps = 4
    base = _rollout_values(sim, steps)
    leaves = {k: t.clone().requires_grad_() for k, t in base.items()}
    _loss_and_inputs(sim, steps, leaves).backward()
    assert_central_differences(sim, steps, base, leaves, rel=1e-6)


def test_warp_p2g_conserves_mass_and_momentum(warp64):
    """The Warp grid after p2g (shaped as Taichi's) holds exactly the particles' mass and
    linear momentum, with random affine velocities and deformations."""
    model = mixed_model()
    sim = MPM(model, warp64)
    state = sim.initial_state()
    gen = torch.Generator().manual_seed(2)
    state.particle_C = 3.0 * torch.randn(state.particle_C.shape, generator=gen, dtype=torch.float64)
    state.particle_F = state.particle_F + 0.05 * torch.randn(state.particle_F.shape, generator=gen,
                                                             dtype=torch.float64)
    grid = sim.grid(state, actions_for(sim, 1))
    assert grid.shape == (1, 24, 24, 3)
    mass = model.particle_mass
    assert float(grid[..., -1].sum()) == pytest.approx(float(mass.sum()), rel=1e-13)
    momentum = grid[..., :-1].reshape(-1, 2).sum(0)
    expected = (mass[:, None] * state.particle_v[0]).sum(0)
    assert torch.allclose(momentum, expected, rtol=0, atol=1e-14)


def test_warp_gradients_at_the_walls_match_taichi(warp64, taichi64):
    """A block thrown down and left onto the ground in the wall layer (where the slip walls zero
    velocity components): gradients of a rollout loss with respect to Young's moduli and
    initial velocities agree to 1e-9 between Warp and Taichi. (A branch-assigned component in
    Warp's wall code once lost its gradient here while the tests above passed.)"""
    model = build_model([Body((3 / 24 + 0.02, 3 / 24), (0.1, 0.1), E=100.0,
                              velocity=(-0.8, -1.0))], grid_size=24, dt=1e-3, substeps=4)
    grads = []
    for backend in (warp64, taichi64):
        sim = MPM(model, backend)
        values = {"E": model.particle_E.clone().requires_grad_(),
                  "v0": model.particle_v.clone().requires_grad_()}
        saved = model.particle_E
        model.particle_E = values["E"]
        try:
            state = sim.state_from(particle_x=model.particle_x.clone()[None],
                                   particle_v=values["v0"][None])
            final = rollout(sim, state, None, 6).final
        finally:
            model.particle_E = saved
        w = torch.randn(final.particle_x.shape, generator=torch.Generator().manual_seed(4),
                        dtype=torch.float64)
        ((final.particle_x * w).sum() + 0.1 * (final.particle_v * w).sum()).backward()
        grads.append({k: t.grad for k, t in values.items()})
    for key in ("E", "v0"):
        ref = grads[1][key]
        scale = float(ref.abs().max())
        assert scale > 1e-4, key
        assert float((grads[0][key] - ref).abs().max()) < 1e-9 * scale, key


def test_warp_3d_states_match_taichi(warp64, taichi64):
    """3D forward (every material, muscles, ground, box tool; 3 control steps of 2 substeps):
    Warp and Taichi states agree to 1e-11 (Taichi has no 3D gradients to compare)."""
    model = mixed_model(3, tool_shape=ToolShape.BOX, substeps=2)
    finals = []
    for backend in (warp64, taichi64):
        sim = MPM(model, backend)
        state = sim.initial_state()
        actions = actions_for(sim, 3)
        with torch.no_grad():
            for k in range(3):
                state = sim.step(state, actions[k][None])
        finals.append(sim.pack(state))
    start = sim.pack(sim.initial_state())
    assert (finals[1] - start).abs().max() > 1e-2
    assert torch.allclose(finals[0], finals[1], rtol=0, atol=1e-11)
