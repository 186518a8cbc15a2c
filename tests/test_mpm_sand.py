"""MPM Drucker-Prager sand: the closed-form 2D Hencky strain against ``eigh``, Taichi against the
torch oracle (2D states and vector-Jacobian products, 3D states), Warp against Taichi (2D and 3D
states, 2D gradients), float64 central differences of a loss in the initial velocity and the
friction angle on both backends, the angle of piles and heaps, mass conservation, and
validation of the friction angle."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from simdiff.backend import resolve_backend
from simdiff.rollout import rollout
from simdiff.sims.base import ValidationError
from simdiff.sims.mpm import MPM, Body, Ground, Material, Model, Params, build_model
from simdiff.sims.mpm.tasks import pile_angle
from simdiff.sims.mpm.torch_reference import sand_hencky, sand_return, torch_substep


@pytest.fixture(scope="module")
def backend():
    return resolve_backend("taichi", precision="float64")


def thrown_block(dim=2, *, friction_angle=30.0, substeps=10, grid_size=None):
    """A sand block thrown down and sideways just above a frictional ground, where it yields."""
    grid_size = grid_size or (24 if dim == 2 else 16)
    lower = tuple(0.3 if k != 1 else 3 / grid_size + 0.005 for k in range(dim))
    velocity = tuple(1.0 if k == 0 else -1.5 if k == 1 else 0.3 for k in range(dim))
    body = Body(lower, (0.15,) * dim, material=Material.SAND, E=150.0, nu=0.3,
                friction_angle=friction_angle, velocity=velocity)
    return build_model([body], grid_size=grid_size, dt=1e-3,
                       substeps=substeps)


def test_closed_form_hencky_strain_and_return_match_eigh():
    """The 2D closed forms (series near repeated eigenvalues) against ``eigh`` on matrices from
    the identity to strongly sheared ones, compressed (some inside the cone, some projected) and
    stretched, to 1e-13."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(60, 2, 2, dtype=torch.float64, generator=gen)
    a = (a + a.transpose(1, 2)) * torch.logspace(-12, -0.3, 60, dtype=torch.float64)[:, None, None]
    b = torch.linalg.matrix_exp(a)
    assert torch.allclose(sand_hencky(b), a / 2, rtol=0, atol=1e-13)
    mu, lam = torch.full((60,), 2.0, dtype=torch.float64), torch.full((60,), 3.0, dtype=torch.float64)
    alpha = torch.full((60,), 0.3, dtype=torch.float64)
    values, V = torch.linalg.eigh(b)
    eps = values.log() / 2
    trace = eps.sum(1, keepdim=True)
    dev = eps - trace / 2
    radius = -alpha[:, None] * (2 * lam + 2 * mu)[:, None] / (2 * mu[:, None]) * trace
    tip = 1e-5  # the cone's blunted tip (taichi.py)
    norm = (dev.norm(dim=1, keepdim=True) ** 2 + tip**2).sqrt()
    projected = trace / 2 + (radius / norm).clamp(min=0, max=1) * dev
    projected = torch.where(trace > tip, torch.full_like(projected, tip / 2), projected)
    assert 10 < int((trace < 0).sum()) < 50 and int(((radius / norm) < 1).sum()) > 10
    expected = V @ torch.diag_embed((2 * projected).exp()) @ V.transpose(1, 2)
    assert torch.allclose(sand_return(b, mu, lam, alpha), expected, rtol=0, atol=1e-13)


@pytest.mark.parametrize("dim", [2, 3])
def test_sand_step_matches_torch_reference(backend, dim):
    """A control step of 10 substeps of a block hitting the ground against the torch oracle:
    states to 1e-11 and, in 2D, vector-Jacobian products in the state and the parameters
    (the 3D eigen decompositions differ, Jacobi against LAPACK, at round-off)."""
    model = thrown_block(dim)
    sim = MPM(model, backend)
    state = sim.initial_state()
    p0 = sim.pack(state).requires_grad_(dim == 2)
    params = sim.params().particle.requires_grad_(dim == 2)
    tool = torch.zeros(1, 2 * dim, dtype=torch.float64)
    p = p0
    for _ in range(model.substeps):
        p = torch_substep(model, p, params[None], torch.zeros(1, 1, dtype=torch.float64), tool)
    packed = sim.pack(sim.step(sim.unpack(p0, state.tool_x), None, Params(params)))
    assert torch.allclose(packed, p, rtol=0, atol=1e-11)
    F = packed[..., -dim * dim:].reshape(-1, dim, dim).detach()
    assert (F - torch.eye(dim, dtype=torch.float64)).abs().max() > 1e-3, "b_e must change"
    if dim == 2:
        w = torch.randn(p.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        ours = torch.autograd.grad((packed * w).sum(), [p0, params])
        ref = torch.autograd.grad((p * w).sum(), [p0, params])
        for name, a, b in zip(["state", "params"], ours, ref):
            assert torch.allclose(a, b, rtol=1e-8, atol=1e-9), name


def _sand_loss(sim, steps, v0, friction_angle):
    model = sim.model
    saved = model.particle_friction_angle
    model.particle_friction_angle = friction_angle
    try:
        state = sim.state_from(particle_x=model.particle_x.clone()[None], particle_v=v0[None])
        final = rollout(sim, state, None, steps).final
    finally:
        model.particle_friction_angle = saved
    w = torch.randn(final.particle_x.shape, generator=torch.Generator().manual_seed(3),
                    dtype=torch.float64)
    return (final.particle_x * w).sum() + 0.1 * (final.particle_v * w).sum()


@pytest.mark.parametrize("backend_name", ["taichi", "warp"])
def test_sand_gradients_match_central_differences(backend_name):
    """Directional derivatives of a loss after 8 control steps (80 substeps, the block lands
    and yields) in the initial velocities and the per-particle friction angles, against float64
    central differences, on each backend."""
    sim = MPM(thrown_block(), resolve_backend(backend_name, precision="float64"))
    steps, model = 8, sim.model
    base = {"v0": model.particle_v.clone(), "friction_angle": model.particle_friction_angle.clone()}
    leaves = {k: t.clone().requires_grad_() for k, t in base.items()}
    _sand_loss(sim, steps, **leaves).backward()
    gen = torch.Generator().manual_seed(0)
    for key, value in base.items():
        d = torch.randn(value.shape, generator=gen, dtype=torch.float64)
        # Smaller than the other MPM tests' 1e-6: the return mapping's kinks (particles
        # reaching or leaving the cone) put an error linear in eps on central differences
        # (measured: 4e-5 relative at 1e-6, 4e-6 at 1e-7).
        eps = 1e-7 * float(value.abs().max())
        with torch.no_grad():
            plus = _sand_loss(sim, steps, **{**base, key: value + eps * d})
            minus = _sand_loss(sim, steps, **{**base, key: value - eps * d})
        fd = float(plus - minus) / (2 * eps)
        ad = float((leaves[key].grad * d).sum())
        assert abs(fd) > 1e-4, f"{key}: the loss must depend on it"
        assert ad == pytest.approx(fd, rel=1e-5), key


def _collapse(backend, material, friction_angle, seconds=0.8):
    """A 0.4 x 0.15 sand column released on a rough ground (64^2 grid)."""
    dx = 1 / 64
    body = Body((0.3, 3 * dx), (0.4, 0.15), material=material, E=200.0, nu=0.3,
                friction_angle=friction_angle)
    model = build_model([body], grid_size=64, dt=4e-4, substeps=50,
                        ground=Ground(friction=math.inf))
    sim = MPM(model, backend)
    with torch.no_grad():
        final = rollout(sim, sim.initial_state(), None, round(seconds / model.control_dt)).final
    return sim, final


def test_sand_column_collapses_into_a_pile_below_its_friction_angle(backend):
    """A sand column (friction angle 35 degrees) slumps into a pile of flanks between 0.6 and
    1 times the friction angle (measured: 25 degrees; the flow overshoots the static angle of
    repose, see the heap test), and comes to rest; an elastic column keeps its vertical sides.
    The grid holds all the mass after the collapse (to 1e-12)."""
    sim, final = _collapse(backend, Material.SAND, 35.0)
    model = sim.model
    angle = pile_angle(final.particle_x[0], model.dx, model.ground_height)
    assert 0.6 * 35 < angle <= 35 + 3
    assert float(final.particle_v.abs().max()) < 0.05
    grid = sim.grid(final)
    assert float(grid[..., -1].sum()) == pytest.approx(float(model.particle_mass.sum()), rel=1e-12)
    _, elastic = _collapse(backend, Material.ELASTIC, 35.0, seconds=0.4)
    assert pile_angle(elastic.particle_x[0], model.dx, model.ground_height) > 80


def _heap(backend, friction_angle, slope=30.0):
    """A symmetric heap of 30-degree flanks on a rough ground, 0.6 s after its release."""
    dx = 1 / 64
    body = Body((0.1, 3 * dx), (0.8, 0.2), material=Material.SAND, E=200.0, nu=0.3,
                friction_angle=friction_angle)
    model = build_model([body], grid_size=64, dt=4e-4, substeps=50,
                        ground=Ground(friction=math.inf))
    x = model.particle_x
    keep = x[:, 1] - 3 * dx <= 0.2 - (x[:, 0] - 0.5).abs() * math.tan(math.radians(slope))
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(Model)}
    fields = {k: v[keep].clone() if isinstance(v, torch.Tensor) else v for k, v in fields.items()}
    sim = MPM(Model(**fields), backend)
    with torch.no_grad():
        final = rollout(sim, sim.initial_state(), None, 30).final
    return pile_angle(final.particle_x[0], model.dx, model.ground_height)


def test_heap_stands_above_and_slumps_below_its_friction_angle(backend):
    """The friction angle is the static angle of repose: a 30-degree heap keeps its flanks
    (within 1.5 degrees) when its friction angle is 36 degrees, and slumps below 24 degrees
    when it is 24."""
    assert _heap(backend, 36.0) > 28.5
    assert _heap(backend, 24.0) < 24.0


@pytest.mark.parametrize("angle", [0.0, -5.0, 61.0, math.nan])
def test_bad_friction_angle_is_refused(angle):
    body = Body((0.3, 0.2), (0.1, 0.1), material=Material.SAND, E=100.0, friction_angle=angle)
    with pytest.raises(ValidationError, match=r"particle_friction_angle\[0\]=.* degrees \(sand\) "
                                              r"must lie in \(0, 60\]"):
        build_model([body], grid_size=32)


def test_friction_angle_of_other_materials_is_not_checked():
    build_model([Body((0.3, 0.2), (0.1, 0.1), E=100.0, friction_angle=math.nan)], grid_size=32)


@pytest.mark.parametrize("backend_name", ["taichi", "warp"])
def test_sand_pile_scene_runs_and_renders(tmp_path, capsys, backend_name):
    """``simdiff run mpm_sand_pile`` at toy size writes a video with sand-colored particles, on
    each backend."""
    import imageio.v3 as iio

    from simdiff.cli import main
    from simdiff.render.mpm import MATERIAL_RGB

    path = tmp_path / "pile" / "mpm_sand_pile.gif"
    assert main(["run", "mpm_sand_pile", "--backend", backend_name, "--steps", "3",
                 "--set", "grid_size=32", "--set", "dt=8e-4", "--set", "substeps=10",
                 "--out", str(path.parent), "--video", "gif"]) == 0
    assert f"wrote {path}" in capsys.readouterr().out
    frames = iio.imread(path)
    assert frames.shape[0] == 4
    sand = np.array(MATERIAL_RGB[int(Material.SAND)])
    assert (np.abs(frames[-1].astype(int) - sand).sum(-1) < 30).any()


@pytest.mark.parametrize("dim,steps", [(2, 8), (3, 1)])
def test_warp_sand_states_match_taichi(backend, dim, steps):
    """The Warp sand kernels (same formulas as Taichi's) give the same states as Taichi's, in
    float64, after the block lands and yields (80 substeps in 2D, 10 in 3D): to 1e-10."""
    model = thrown_block(dim)
    finals = []
    for b in (backend, resolve_backend("warp", precision="float64")):
        sim = MPM(model, b)
        state = sim.initial_state()
        with torch.no_grad():
            for _ in range(steps):
                state = sim.step(state)
        finals.append(sim.pack(state)[0])
    warp_p, taichi_p = finals[1], finals[0]
    F = taichi_p[:, -dim * dim:].reshape(-1, dim, dim)
    assert (F - torch.eye(dim, dtype=torch.float64)).abs().max() > 1e-3, "b_e must change"
    assert torch.allclose(warp_p, taichi_p, rtol=0, atol=1e-10)


def test_warp_sand_gradients_match_taichi(backend):
    """Gradients of the 8-step loss (80 substeps) in the initial velocities and the friction
    angles agree between Warp and Taichi to 1e-9 of each gradient's largest entry."""
    grads = []
    for b in (backend, resolve_backend("warp", precision="float64")):
        sim = MPM(thrown_block(), b)
        model = sim.model
        leaves = {"v0": model.particle_v.clone().requires_grad_(),
                  "friction_angle": model.particle_friction_angle.clone().requires_grad_()}
        _sand_loss(sim, 8, **leaves).backward()
        grads.append({k: t.grad for k, t in leaves.items()})
    taichi_g, warp_g = grads
    for key, ref in taichi_g.items():
        scale = float(ref.abs().max())
        assert scale > 1e-3, f"the loss must depend on {key}"
        assert float((warp_g[key] - ref).abs().max()) < 1e-9 * scale, key


def test_3d_sand_gradients_are_refused():
    """3D sand runs forward on Warp, but its adjoint through the Jacobi eigenvectors is singular
    at repeated eigenvalues (sand at rest; measured 1e10 times central differences): refused."""
    sim = MPM(thrown_block(3), resolve_backend("warp", precision="float64"))
    state = sim.state_from(particle_x=sim.model.particle_x.clone()[None],
                           particle_v=sim.model.particle_v.clone().requires_grad_()[None])
    with pytest.raises(NotImplementedError, match=r"sand .* gradients in 3D"):
        sim.step(state)


def test_sand_pile_recovers_a_hidden_friction_angle():
    from simdiff.scene import load_scene, make_simulator

    scene = load_scene("mpm_sand_pile", grid_size=32, steps=12, friction_angle=35.0, start=25.0)
    sim = make_simulator(scene, resolve_backend("warp", precision="float64"))
    design = scene.design(sim)
    optimizer = torch.optim.Adam(design.parameters(), lr=0.1)
    errors = []
    for _ in range(10):
        loss, _, metrics = scene.objective(sim, design)
        errors.append(metrics["friction_angle_error"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert errors[0] == pytest.approx(10.0)
    assert min(errors) < 1.5
