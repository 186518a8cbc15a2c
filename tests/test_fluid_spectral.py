"""The spectral pressure solve (fast cosine/sine transforms) of a box with no solids inside.

Checked in float64 against the multigrid-preconditioned CG solved to 1e-13 (solutions equal to
1e-10 of their size, on closed, open, opposite-open and wall/open mixed boxes, 2D and 3D), for
symmetry (its adjoint is itself), and through a rollout: its gradients against autograd through
every CG iteration and against central differences; scenes with solids keep the CG solve.
"""

import pytest
import torch

from simdiff.backend import resolve_backend
from simdiff.rollout import rollout
from simdiff.sims.fluid import Fluid, Inflow, Model
from simdiff.sims.fluid.grid import Grid
from simdiff.sims.fluid.solver import PressureSystem, pcg
from simdiff.sims.fluid.spectral import CapacitanceSolve, SpectralSolve, box_weights

F64 = torch.float64
CPU = torch.device("cpu")

BOXES = [
    ((16, 16), set()),
    ((16, 12), {(1, 1)}),
    ((16, 16), {(0, 0), (0, 1)}),
    ((12, 16), {(0, 0), (1, 1)}),
    ((8, 8, 8), set()),
    ((8, 8, 12), {(0, 0), (0, 1), (2, 1)}),
]


def _system(n, sides, batch=2) -> PressureSystem:
    weights = [w.expand(batch, *w.shape[1:]).contiguous()
               for w in box_weights(n, sides, F64, CPU)]
    return PressureSystem(weights, torch.zeros(batch, *n, dtype=F64), frozenset(sides))


@pytest.mark.parametrize("n,sides", BOXES)
def test_spectral_solve_equals_multigrid_cg(n, sides):
    system = _system(n, sides)
    gen = torch.Generator().manual_seed(0)
    b = system.project(torch.randn(2, *n, generator=gen, dtype=F64))
    reference, iterations, _ = pcg(system, b, tolerance=1e-13, max_iterations=500)
    assert bool((iterations > 0).all())
    x, spectral_iterations, relative = SpectralSolve(n, sides).solve(b, 1e-6, 1)
    assert spectral_iterations.tolist() == [0, 0]
    assert float(relative.max()) < 1e-13  # the residual is at round-off
    space = tuple(range(1, len(n) + 1))
    true = torch.linalg.vector_norm(b - system.apply(x), dim=space)
    assert bool((true < 1e-13 * torch.linalg.vector_norm(b, dim=space)).all())
    x = system.project(x)  # a closed box: both are the zero-mean solution already
    error = float((x - reference).abs().max())
    assert error <= 1e-10 * float(reference.abs().max()), error


@pytest.mark.parametrize("n,sides", [BOXES[0], BOXES[3], BOXES[5]])
def test_spectral_solve_is_symmetric(n, sides):
    """<A^+ u, v> = <u, A^+ v>: the adjoint solve is the same transform."""
    system = _system(n, sides)
    solve = SpectralSolve(n, sides)
    gen = torch.Generator().manual_seed(1)
    u, v = (system.project(torch.randn(2, *n, generator=gen, dtype=F64)) for _ in range(2))
    space = tuple(range(1, len(n) + 1))
    left = (solve.solve(u, 0, 0)[0] * v).sum(space)
    right = (u * solve.solve(v, 0, 0)[0]).sum(space)
    assert torch.allclose(left, right, rtol=1e-12, atol=0)


def test_a_non_finite_world_is_left_out():
    n = (12, 12)
    b = torch.randn(2, *n, dtype=F64)
    b[1, 3, 4] = float("nan")
    x, _, relative = SpectralSolve(n, {(1, 1)}).solve(b, 1e-6, 1)
    assert bool(torch.isfinite(x[0]).all()) and not bool(torch.isfinite(x[1]).any())
    assert float(relative[0]) < 1e-13 and bool(torch.isnan(relative[1]))


N = 12


def _rollout_loss(open_sides, *, spectral, adjoint=True, velocity, dye, stats=None):
    model = Model((N, N), dx=1 / N, dt=0.1, dye=dye, buoyancy=(0.5,), open_sides=open_sides,
                  tolerance=1e-12)
    sim = Fluid(model, resolve_backend("torch", precision="float64"), spectral=spectral,
                adjoint=adjoint)
    final = rollout(sim, sim.initial_state(velocity=velocity), None, 5).final
    target = torch.zeros(N, N, dtype=F64)
    target[6:10, 5:9] = 1.0
    if stats is not None:
        stats.append(sim.stats)
    return ((final.dye[0, 0] - target) ** 2).sum() + 0.3 * (final.velocity**2).sum()


@pytest.mark.parametrize("open_sides", [(), ("y+", "x-")])
def test_spectral_gradients_equal_the_unrolled_cg_and_central_differences(open_sides):
    """The default ``Fluid`` takes the spectral solve here (no CG iteration at all); its
    gradients equal autograd through every CG iteration (``adjoint=False``) and central
    differences."""
    gen = torch.Generator().manual_seed(2)
    velocity = 0.3 * torch.randn(2, N + 1, N + 1, generator=gen, dtype=F64)
    dye = torch.zeros(1, N, N, dtype=F64)
    dye[0, 3:6, 3:7] = 1.0
    grads, stats = [], []
    for spectral, adjoint in ((None, True), (False, False)):
        v, q = velocity.clone().requires_grad_(), dye.clone().requires_grad_()
        loss = _rollout_loss(open_sides, spectral=spectral, adjoint=adjoint, velocity=v, dye=q,
                             stats=stats)
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, (v, q))]))
    spectral_stats, cg_stats = stats
    assert spectral_stats.solves == 6 and spectral_stats.iterations == 0
    assert spectral_stats.adjoint_solves == 6 and spectral_stats.adjoint_iterations == 0
    assert cg_stats.iterations > 0
    scale = float(grads[1].abs().max())
    assert float((grads[0] - grads[1]).abs().max()) <= 1e-9 * scale
    direction = torch.randn(velocity.shape, generator=gen, dtype=F64)
    eps = 1e-6
    with torch.no_grad():
        plus, minus = (_rollout_loss(open_sides, spectral=None, velocity=velocity + s * direction,
                                     dye=dye) for s in (eps, -eps))
    fd = float(plus - minus) / (2 * eps)
    ad = float((grads[0][: velocity.numel()] * direction.flatten()).sum())
    assert abs(fd) > 1e-3
    assert abs(ad - fd) <= 1e-6 * abs(fd), (ad, fd)


def test_solids_keep_the_cg_solve():
    """By default; with ``capacitance=True`` CG solves the first projection and the
    capacitance-corrected spectral solve the later ones of the same operator."""
    obstacle = torch.zeros(N, N, dtype=F64)
    obstacle[5:8, 4:7] = 1.0
    model = Model((N, N), velocity=0.3 * torch.randn(2, N + 1, N + 1, dtype=F64),
                  obstacle=obstacle, tolerance=1e-10)
    backend = resolve_backend("torch", precision="float64")
    sim = Fluid(model, backend)
    state = sim.step(sim.initial_state())
    assert sim.stats.solves == 2 and sim.stats.last_iterations > 0
    direct = Fluid(model, backend, capacitance=True)
    state = direct.initial_state()
    first = direct.stats.iterations
    assert first > 0
    for _ in range(3):
        state = direct.step(state)
    assert direct.stats.solves == 4 and direct.stats.iterations == first


@pytest.mark.parametrize("n,sides", [BOXES[0], BOXES[1], BOXES[5]])
def test_capacitance_solve_equals_multigrid_cg(n, sides):
    """Two worlds with different obstacles (a fully solid block, so fixed cells, and partly
    solid ones): the box's spectral solve corrected by the capacitance matrix equals CG."""
    g = Grid(n, sides, F64, CPU)
    obstacle = torch.zeros(2, *n, dtype=F64)
    obstacle[0, 2:5, 3:6] = 1.0
    obstacle[1, 4:7, 1:3] = 0.6
    obstacle[1, 9:11, 6:8] = 0.3
    weights = [1 - g.face_solid(obstacle, a) for a in range(len(n))]
    diag = sum(w.narrow(a + 1, 0, n[a]) + w.narrow(a + 1, 1, n[a]) for a, w in enumerate(weights))
    system = PressureSystem(weights, (diag <= 1e-12).to(F64), frozenset(sides))
    assert bool(system.fixed[0].any())
    gen = torch.Generator().manual_seed(5)
    b = system.project(torch.randn(2, *n, generator=gen, dtype=F64))
    reference, _, _ = pcg(system, b, tolerance=1e-13, max_iterations=1000)
    solve = CapacitanceSolve.build(SpectralSolve(n, sides), system, box_weights(n, sides, F64, CPU),
                                   max_cells=1024)
    x, iterations, relative = solve.solve(b, 1e-6, 1)
    assert iterations.tolist() == [0, 0] and float(relative.max()) < 1e-13
    x = system.project(x)
    assert float((x - reference).abs().max()) <= 1e-10 * float(reference.abs().max())
    assert CapacitanceSolve.build(SpectralSolve(n, sides), system,
                                  box_weights(n, sides, F64, CPU), max_cells=10) is None


def _plume_loss(*, capacitance, velocity, obstacle, stats=None):
    inflow = Inflow((4, 1), (8, 3), (0.0, 0.5), (1.0,))
    model = Model((N, N), dx=1 / N, dt=0.1, dye=torch.zeros(1, N, N, dtype=F64),
                  buoyancy=(0.5,), obstacle=obstacle, inflows=[inflow], open_sides=("y+",),
                  tolerance=1e-12)
    sim = Fluid(model, resolve_backend("torch", precision="float64"), capacitance=capacitance)
    final = rollout(sim, sim.initial_state(velocity=velocity), None, 5).final
    if stats is not None:
        stats.append(sim.stats)
    return (final.dye[0, 0, :, 6:] ** 2).sum() + 0.3 * (final.velocity**2).sum()


def test_capacitance_gradients_equal_cg_and_central_differences():
    """An inflow, an open top and an obstacle density: the gradients in the initial velocity
    and the obstacle through the capacitance solve (0 iterations after the first solve) equal
    those through CG, and the obstacle's equals central differences."""
    gen = torch.Generator().manual_seed(6)
    velocity = 0.3 * torch.randn(2, N + 1, N + 1, generator=gen, dtype=F64)
    obstacle = torch.zeros(N, N, dtype=F64)
    obstacle[5:8, 6:9] = 0.5
    grads, stats = [], []
    for capacitance in (True, False):
        v, s = velocity.clone().requires_grad_(), obstacle.clone().requires_grad_()
        loss = _plume_loss(capacitance=capacitance, velocity=v, obstacle=s, stats=stats)
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, (v, s))]))
    direct, cg = stats
    assert direct.adjoint_iterations < cg.adjoint_iterations / 3
    assert float((grads[0] - grads[1]).abs().max()) <= 1e-8 * float(grads[1].abs().max())
    direction = torch.randn(obstacle.shape, generator=gen, dtype=F64) * (obstacle > 0)
    eps = 1e-6
    with torch.no_grad():
        plus, minus = (_plume_loss(capacitance=True, velocity=velocity,
                                   obstacle=obstacle + e * direction) for e in (eps, -eps))
    fd = float(plus - minus) / (2 * eps)
    ad = float((grads[0][velocity.numel():] * direction.flatten()).sum())
    assert abs(fd) > 1e-4
    assert abs(ad - fd) <= 1e-6 * abs(fd), (ad, fd)


@pytest.mark.parametrize("obstacle", [False, True])
def test_static_solids_on_warp_agree_with_torch(obstacle):
    """The shortcuts of a box with static solids and no buoyancy (weights made once, no
    buoyancy launch; the spectral solve without an obstacle, CG with one): Warp's states and
    gradients equal the torch path's, float64."""
    solid = None
    if obstacle:
        solid = torch.zeros(N, N, dtype=F64)
        solid[5:8, 4:7] = 1.0
    gen = torch.Generator().manual_seed(3)
    velocity = 0.3 * torch.randn(2, N + 1, N + 1, generator=gen, dtype=F64)
    dye = torch.rand(1, N, N, generator=gen, dtype=F64)
    out = []
    for name in ("torch", "warp"):
        model = Model((N, N), dx=1 / N, dt=0.1, dye=dye, obstacle=solid, tolerance=1e-12)
        sim = Fluid(model, resolve_backend(name, precision="float64"))
        v = velocity.clone().requires_grad_()
        final = rollout(sim, sim.initial_state(velocity=v), None, 4).final
        loss = (final.dye**2).sum() + (final.velocity**2).sum()
        (grad,) = torch.autograd.grad(loss, v)
        out.append((final.velocity.detach(), final.dye.detach(), grad, sim.stats.iterations))
    (v_t, q_t, g_t, it_t), (v_w, q_w, g_w, it_w) = out
    assert (it_t > 0) == obstacle and (it_w > 0) == obstacle
    for got, want in ((v_w, v_t), (q_w, q_t), (g_w, g_t)):
        assert float((got - want).abs().max()) <= 1e-12 * float(want.abs().max())


def test_batched_spectral_worlds_equal_single_world_runs():
    """B = 2 worlds through the spectral solve equal their single-world rollouts (states and
    gradients, float64): the transforms act along the grid axes only."""
    gen = torch.Generator().manual_seed(4)
    velocity = 0.3 * torch.randn(2, 2, N + 1, N + 1, generator=gen, dtype=F64)
    dye = torch.rand(2, 1, N, N, generator=gen, dtype=F64)
    model = Model((N, N), dx=1 / N, dt=0.1, dye=dye[0], open_sides=("y+",), tolerance=1e-12)
    backend = resolve_backend("torch", precision="float64")

    def run(sim, v, q):
        v = v.clone().requires_grad_()
        final = rollout(sim, sim.initial_state(velocity=v, dye=q), None, 4).final
        per_world = (final.dye**2).flatten(1).sum(1) + (final.velocity**2).flatten(1).sum(1)
        (grad,) = torch.autograd.grad(per_world.sum(), v)
        return final.velocity.detach(), grad, sim.stats

    both, grads, stats = run(Fluid(model, backend, batch_size=2), velocity, dye)
    assert stats.solves == 5 and stats.iterations == 0
    for b in range(2):
        one, grad, _ = run(Fluid(model, backend), velocity[b : b + 1], dye[b : b + 1])
        assert float((both[b : b + 1] - one).abs().max()) <= 1e-13 * float(one.abs().max())
        assert float((grads[b : b + 1] - grad).abs().max()) <= 1e-12 * float(grad.abs().max())
