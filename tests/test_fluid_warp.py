"""The fluid's Warp kernels against its torch path, and the Warp gradient against central
differences.

Two independent implementations of one discretization (vectorized torch in ``grid.py``, Warp
kernels differentiated by Warp's adjoints in ``warp.py``) must give the same states and the
same gradients in float64 to round-off: the tolerances below (1e-12 on states, 1e-9 relative
on gradients) are a thousand times the differences measured (2e-15 and 1e-14), and far below
what any discretization mismatch (a half-cell offset, a wrong clamp, a missed inflow face)
produces (order 1e-3 or more). Pressure solves run to a relative residual of 1e-12, so the
solver's tolerance does not limit the comparison. Checked by breaking the kernels on purpose: a
half-cell offset in velocity advection, Warp's ``clamp`` in place of the border rule, and a
kernel overwriting an input its adjoint reads each fail at least one test here.
"""

import pytest
import torch

from simdiff.backend import resolve_backend
from simdiff.rollout import rollout
from simdiff.scene import load_scene
from simdiff.sims.fluid import Fluid, Inflow, Model, Paddle
from simdiff.sims.fluid.solver import PressureSystem

F64 = torch.float64
BACKENDS = ("torch", "warp")


def backend(name: str):
    return resolve_backend(name, precision="float64")


def busy_model(dim: int, advection: str = "maccormack", *, grad: bool = False):
    """Every feature at once: a partly solid obstacle, an inflow holding two dyes, a paddle,
    buoyancy, two open sides, random initial velocity and dye. Returns the model and the
    tensors it is differentiable in."""
    n = 12 if dim == 2 else 8
    extra = dim == 3
    gen = torch.Generator().manual_seed(0)
    obstacle = torch.zeros((n,) * dim, dtype=F64)
    obstacle[(slice(5, 8), slice(4, 7)) + ((slice(3, 5),) if extra else ())] = 0.7
    obstacle[(slice(8, 10), slice(8, 10)) + ((slice(1, 3),) if extra else ())] = 0.4
    dye = torch.rand(2, *(n,) * dim, generator=gen, dtype=F64)
    velocity = 0.3 * torch.randn(dim, *(n + 1,) * dim, generator=gen, dtype=F64)
    inflow_v = torch.tensor((0.2, 1.5) + ((0.1,) if extra else ()), dtype=F64)
    concentration = torch.tensor((1.0, 0.5), dtype=F64)
    buoyancy = torch.tensor((0.5, 0.2), dtype=F64)
    params = [velocity, dye, obstacle, inflow_v, concentration, buoyancy]
    if grad:
        for p in params:
            p.requires_grad_()
    inflow = Inflow(
        (1, 1) + ((2,) if extra else ()),
        (3, 3) + ((4,) if extra else ()),
        velocity=inflow_v,
        concentration=concentration,
    )
    paddle = Paddle(
        center=(0.3, 0.6) + ((0.5,) if extra else ()),
        half_size=(0.05, 0.12) + ((0.1,) if extra else ()),
        max_speed=1.0,
    )
    model = Model(
        (n,) * dim,
        dx=1.0 / n,
        dt=0.5 / n,
        dye=dye,
        velocity=velocity,
        buoyancy=buoyancy,
        obstacle=obstacle,
        open_sides=("y+", "x-"),
        inflows=[inflow],
        paddle=paddle,
        advection=advection,
        tolerance=1e-12,
    )
    return model, params


def actions(dim: int, steps: int) -> torch.Tensor:
    return 0.5 * torch.randn(steps, dim, generator=torch.Generator().manual_seed(1), dtype=F64)


@pytest.mark.parametrize("dim,solver_kernels", [(2, False), (2, True), (3, True)])
def test_states_agree_with_torch_after_steps(dim, solver_kernels):
    """Velocity and dye after 6 steps (MacCormack, obstacle, inflow, paddle, buoyancy, open
    sides) agree to 1e-12, and the flow really moved (the comparison is not of zeros); with
    and without the Warp Laplacian inside the pressure solve."""
    finals = {}
    for name in BACKENDS:
        model, _ = busy_model(dim)
        options = {"solver_kernels": solver_kernels} if name == "warp" else {}
        sim = Fluid(model, backend(name), **options)
        assert (sim.kernels is not None) == (name == "warp")
        state = sim.initial_state()
        first = state
        for a in actions(dim, 6):
            state = sim.step(state, a[None])
        finals[name] = (first, state)
    (first, torch_state), (_, warp_state) = finals["torch"], finals["warp"]
    assert float((torch_state.dye - first.dye).abs().max()) > 0.1
    assert torch.allclose(warp_state.velocity, torch_state.velocity, rtol=0, atol=1e-12)
    assert torch.allclose(warp_state.dye, torch_state.dye, rtol=0, atol=1e-12)
    assert torch.equal(warp_state.paddle_x, torch_state.paddle_x)


@pytest.mark.parametrize(
    "dim,advection", [(2, "semi_lagrangian"), (2, "maccormack"), (3, "maccormack")]
)
def test_gradients_agree_with_torch(dim, advection):
    """Gradients of a random linear functional of the final velocity and dye with respect to
    the initial velocity and dye, obstacle fractions, inflow velocity and concentration,
    buoyancy and paddle actions: Warp adjoints against torch autograd, to 1e-9 relative."""
    grads = {}
    for name in BACKENDS:
        model, params = busy_model(dim, advection, grad=True)
        acts = actions(dim, 4).requires_grad_()
        sim = Fluid(model, backend(name))
        state = sim.initial_state()
        for a in acts:
            state = sim.step(state, a[None])
        gen = torch.Generator().manual_seed(2)
        loss = (torch.randn(state.dye.shape, generator=gen, dtype=F64) * state.dye).sum()
        loss = (
            loss
            + (torch.randn(state.velocity.shape, generator=gen, dtype=F64) * state.velocity).sum()
        )
        grads[name] = torch.autograd.grad(loss, [*params, acts])
    for k, (expected, got) in enumerate(zip(grads["torch"], grads["warp"])):
        scale = float(expected.abs().max())
        assert scale > 1e-3, k  # every input really influences the loss
        assert float((got - expected).abs().max()) <= 1e-9 * scale, k


@pytest.mark.parametrize("advection", ["semi_lagrangian", "maccormack"])
def test_gradients_agree_with_torch_at_rest(advection):
    """From a fluid at rest every back-traced point sits exactly on a grid node or on the
    border, where linear interpolation has a kink: the derivative Warp gives with respect to the
    initial velocity must still be torch's (border clamps with no derivative on the border,
    one-sided at interior nodes), to 1e-12 relative."""
    n = 12
    gen = torch.Generator().manual_seed(0)
    dye = torch.rand(1, n, n, generator=gen, dtype=F64)
    weight = torch.randn(1, n, n, generator=gen, dtype=F64)
    grads = []
    for name in BACKENDS:
        model = Model((n, n), dx=1 / n, dt=0.5 / n, dye=dye, advection=advection, tolerance=1e-12)
        sim = Fluid(model, backend(name))
        velocity = torch.zeros(2, n + 1, n + 1, dtype=F64, requires_grad=True)
        state = sim.step(sim.step(sim.initial_state(velocity=velocity)))
        grads.append(torch.autograd.grad((weight * state.dye).sum(), velocity)[0])
    scale = float(grads[0].abs().max())
    assert scale > 0.1
    assert float((grads[1] - grads[0]).abs().max()) <= 1e-12 * scale


# Scenes, at toy size ---------------------------------------------------------------------------
SCENES = {
    "fluid_smoke_to_image": {"resolution": 16, "steps": 6},
    "fluid_stir_to_target": {"resolution": 16, "steps": 6},
    "fluid_obstacle_design": {"resolution": 16, "steps": 30},  # the jet reaches the outlets
    "fluid_plume_3d": {"resolution": 8, "steps": 4},
}


def _scene_gradient(name: str, backend_name: str) -> tuple[float, list[torch.Tensor]]:
    scene = load_scene(name, **SCENES[name])
    scene.model.tolerance = 1e-12
    sim = Fluid(scene.model, backend(backend_name))
    torch.manual_seed(0)
    design = scene.design(sim).to(F64)
    with torch.no_grad():  # away from the design's start (e.g. a fluid at rest)
        for p in design.parameters():
            p.add_(
                0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
            )
    loss, _, _ = scene.objective(sim, design)
    params = [p for p in design.parameters()]
    return float(loss.detach()), list(torch.autograd.grad(loss, params))


@pytest.mark.parametrize("name", list(SCENES))
def test_scene_loss_gradients_agree_with_torch(name):
    """Each fluid scene's objective and its gradient with respect to the scene's design
    parameters (initial velocity, paddle trajectory, obstacle pixels, inflow speed): Warp
    against torch, float64, loss to 1e-12 and gradients to 1e-9 relative."""
    loss_t, grads_t = _scene_gradient(name, "torch")
    loss_w, grads_w = _scene_gradient(name, "warp")
    assert abs(loss_w - loss_t) <= 1e-12 * max(abs(loss_t), 1.0)
    for expected, got in zip(grads_t, grads_w):
        scale = float(expected.abs().max())
        assert scale > 1e-3  # the gradient goes through the flow (enough steps to matter)
        assert float((got - expected).abs().max()) <= 1e-9 * scale


def test_warp_gradient_matches_central_differences():
    """d loss / d (initial velocity, obstacle, inflow velocity, actions) along one random
    direction, from Warp's adjoints, against float64 central differences (semi-Lagrangian:
    MacCormack's limiter switches branches, where finite differences are not a derivative)."""

    def loss_of(t: float, direction: list[torch.Tensor], base: list[torch.Tensor]):
        model, _ = busy_model(2, "semi_lagrangian")
        values = [b + t * d for b, d in zip(base, direction)]
        velocity, obstacle, inflow_v, acts = values
        model.inflows[0].velocity = inflow_v
        model.obstacle = obstacle
        sim = Fluid(model, backend("warp"))
        final = rollout(
            sim, sim.initial_state(velocity=velocity), lambda k, s: acts[k][None], 4
        ).final
        return (final.dye[0, 0] ** 2).sum() + 0.3 * (final.velocity**2).sum()

    _, params = busy_model(2, "semi_lagrangian")
    base = [params[0], params[2], params[3], actions(2, 4)]
    gen = torch.Generator().manual_seed(4)
    direction = [torch.randn(b.shape, generator=gen, dtype=F64) for b in base]
    direction[1] = direction[1] * ((base[1] > 0) & (base[1] < 1))  # fractions stay in (0, 1)
    leaves = [b.clone().requires_grad_() for b in base]
    loss = loss_of(0.0, [torch.zeros_like(b) for b in base], leaves)
    grads = torch.autograd.grad(loss, leaves)
    ad = sum(float((g * d).sum()) for g, d in zip(grads, direction))
    eps = 1e-6
    with torch.no_grad():
        fd = (loss_of(eps, direction, base) - loss_of(-eps, direction, base)) / (2 * eps)
    assert abs(float(fd)) > 1e-3
    assert abs(ad - float(fd)) <= 1e-6 * abs(float(fd)), (ad, float(fd))


@pytest.mark.parametrize("dim", [2, 3])
def test_warp_laplacian_equals_torch_operator_on_every_level(dim):
    """``A x``, ``r - A x`` and one V-cycle with the Warp operator equal torch's on random
    vectors (every multigrid level goes through the kernels), to 1e-12 relative."""
    from simdiff.sims.fluid.warp import Laplacian

    n = (16, 16) if dim == 2 else (8, 8, 8)
    gen = torch.Generator().manual_seed(5)
    worlds = 2  # every level's launch serves both worlds
    weights = [
        torch.rand(worlds, *(k + (b == a) for b, k in enumerate(n)), generator=gen, dtype=F64)
        for a in range(dim)
    ]
    fixed = torch.zeros(worlds, *n, dtype=F64)
    sides = frozenset({(1, 1)})
    plain = PressureSystem(weights, fixed, sides)
    kernels = PressureSystem(weights, fixed, sides, operator=Laplacian(backend("warp")))
    x = torch.randn(worlds, *n, generator=gen, dtype=F64)
    r = torch.randn(worlds, *n, generator=gen, dtype=F64)
    for got, expected in [
        (kernels.apply(x), plain.apply(x)),
        (kernels.residual(r, x), r - plain.apply(x)),
        (kernels.vcycle(r), plain.vcycle(r)),
    ]:
        assert float((got - expected).abs().max()) <= 1e-12 * float(expected.abs().max())
    assert kernels.coarse() is not None and kernels.coarse().operator is kernels.operator


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=() if name == "fluid_smoke_to_image" else pytest.mark.slow)
        for name in SCENES
    ],
)
def test_scenes_run_and_train_with_warp_from_the_cli(tmp_path, capsys, name):
    """``simdiff train/run SCENE --backend warp`` at toy size (float32 kernels): training
    writes its log and the progress names the Warp engine; the video has every frame. One
    scene by default, all with ``-m slow`` (each dimension compiles its float32 kernels)."""
    import imageio.v3 as iio

    from simdiff.cli import main

    size = ["--steps", "4", "--set", f"resolution={SCENES[name]['resolution']}"]
    out = tmp_path / name
    args = ["train", name, *size, "--backend", "warp", "--iters", "2", "--out", str(out)]
    assert main([*args, "--no-video"]) == 0
    captured = capsys.readouterr()
    assert "warp:cpu:float32" in captured.err and (out / "metrics.jsonl").is_file()
    video = tmp_path / "rollout" / f"{name}.gif"
    assert main(["run", name, *size, "--backend", "warp", "--out", str(video.parent),
                 "--video", "gif"]) == 0
    assert iio.imread(video).shape[0] == 5
