"""Batched fluid worlds: B worlds in one step equal B single-world runs, on both paths.

Every world has its own initial velocity and dye, obstacle density, inflow velocity and paddle
actions; buoyancy and the inflow concentration are shared. World ``b`` of the batched rollout
must equal a single-world rollout of world ``b``'s state and parameters in float64: final
states, losses and the gradients of every per-world quantity, and a shared parameter's
gradient must be the sum of the single-world gradients. The pressure solves run to a relative
residual of 1e-12 and each world's conjugate-gradient iterates are frozen once it converges,
so the worlds differ from single runs by round-off only (measured below 1e-14); the bounds
are 1e-9 relative. A world sharing a launch with others would fail this at the first step if
any operation mixed worlds (a reduction over the world axis, a wrong stride in a kernel).
"""

import pytest
import torch

from simdiff.backend import BackendError, resolve_backend
from simdiff.rollout import rollout
from simdiff.sims.fluid import Fluid, Inflow, Model, Paddle

F64 = torch.float64
N = 12
B = 3
STEPS = 4


def backend(name: str):
    return resolve_backend(name, precision="float64")


def model() -> Model:
    obstacle = torch.zeros(N, N, dtype=F64)
    obstacle[5:8, 4:7] = 0.7
    inflow = Inflow((1, 1), (3, 3), velocity=(0.2, 1.5), concentration=(1.0, 0.5))
    return Model(
        (N, N),
        dx=1.0 / N,
        dt=0.5 / N,
        dye=torch.zeros(2, N, N, dtype=F64),
        buoyancy=(0.5, 0.2),
        obstacle=obstacle,
        open_sides=("y+", "x-"),
        inflows=[inflow],
        paddle=Paddle(center=(0.3, 0.6), half_size=(0.05, 0.12), max_speed=1.0),
        advection="maccormack",
        tolerance=1e-12,
    )


def worlds(sim: Fluid) -> dict[str, torch.Tensor]:
    """Per-world initial velocity, dye, obstacle, inflow velocity and actions, and the shared
    buoyancy and concentration (the model's)."""
    gen = torch.Generator().manual_seed(0)
    p = sim.params()
    scale = torch.tensor([1.0, 0.5, 0.2], dtype=F64)
    return {
        "velocity": 0.3 * torch.randn(B, 2, N + 1, N + 1, generator=gen, dtype=F64),
        "dye": torch.rand(B, 2, N, N, generator=gen, dtype=F64),
        "obstacle": p.obstacle * scale[:, None, None],
        "inflow_velocity": p.inflow_velocity * torch.tensor([1.0, 0.7, 0.3], dtype=F64)[:, None, None],
        "actions": 0.5 * torch.randn(STEPS, B, 2, generator=gen, dtype=F64),
        "buoyancy": p.buoyancy.clone(),
        "inflow_concentration": p.inflow_concentration.clone(),
    }


PER_WORLD = ("velocity", "dye", "obstacle", "inflow_velocity", "actions")
SHARED = ("buoyancy", "inflow_concentration")


def run(sim: Fluid, values: dict[str, torch.Tensor]):
    """Per-world losses [B] and the final state of a rollout from ``values``."""
    params = sim.params()
    for name in ("obstacle", "inflow_velocity", *SHARED):
        setattr(params, name, values[name])
    state = sim.initial_state(values["velocity"], values["dye"], params=params)
    actions = values["actions"]
    result = rollout(sim, state, lambda t, s: actions[t], STEPS, params=params)
    final = result.final
    gen = torch.Generator().manual_seed(1)
    w_dye = torch.randn(final.dye.shape[1:], generator=gen, dtype=F64)
    w_vel = torch.randn(final.velocity.shape[1:], generator=gen, dtype=F64)
    per_world = (final.dye * w_dye).flatten(1).sum(1) + (final.velocity * w_vel).flatten(1).sum(1)
    return per_world, final


def world_values(values: dict[str, torch.Tensor], b: int) -> dict[str, torch.Tensor]:
    out = {n: values[n][b : b + 1] for n in ("velocity", "dye", "obstacle", "inflow_velocity")}
    out["actions"] = values["actions"][:, b : b + 1]
    out.update({n: values[n] for n in SHARED})
    return out


def leaves(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone().requires_grad_() for n, t in values.items()}


def close(got: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = 1e-9) -> None:
    got, expected = got.detach(), expected.detach()
    scale = float(expected.abs().max())
    assert scale > 0, what
    error = float((got - expected).abs().max())
    assert error <= rtol * scale, f"{what}: {error:.3g} against scale {scale:.3g}"


@pytest.mark.parametrize("name", ["torch", "warp"])
def test_batched_worlds_equal_single_world_rollouts(name):
    """Final states, per-world losses and every gradient of B = 3 worlds in one rollout against
    three single-world rollouts; shared parameters' gradients are the sums over worlds."""
    batched = Fluid(model(), backend(name), batch_size=B)
    single = Fluid(model(), backend(name))
    values = worlds(batched)
    inputs = leaves(values)
    per_world, final = run(batched, inputs)
    grads = dict(zip(inputs, torch.autograd.grad(per_world.sum(), list(inputs.values()))))
    shared_sum = {n: torch.zeros_like(values[n]) for n in SHARED}
    for b in range(B):
        one = leaves(world_values(values, b))
        loss, final_one = run(single, one)
        close(final.velocity[b : b + 1], final_one.velocity, f"world {b} velocity")
        close(final.dye[b : b + 1], final_one.dye, f"world {b} dye")
        assert torch.equal(final.paddle_x[b : b + 1], final_one.paddle_x)
        close(per_world[b : b + 1], loss, f"world {b} loss")
        got = dict(zip(one, torch.autograd.grad(loss.sum(), list(one.values()))))
        for n in PER_WORLD:
            mine = grads[n][:, b : b + 1] if n == "actions" else grads[n][b : b + 1]
            close(mine, got[n], f"world {b} d loss / d {n}")
        for n in SHARED:
            shared_sum[n] += got[n]
    for n in SHARED:
        close(grads[n], shared_sum[n], f"shared d loss / d {n}")
    # The worlds really differ (the comparison is not of one world three times).
    assert float((final.dye[0] - final.dye[1]).detach().abs().max()) > 1e-2


def test_unrolled_batched_solve_matches_the_adjoint():
    """Gradients through every (per-world, frozen-when-converged) CG iteration equal the
    adjoint solve's, for two worlds with different obstacles: the batched solve's step
    lengths are differentiable and no 0/0 of a converged world reaches autograd."""
    grads = []
    for adjoint in (True, False):
        sim = Fluid(model(), backend("torch"), batch_size=2, adjoint=adjoint)
        values = {
            n: (t[:, :2] if n == "actions" else t[:2]) if n in PER_WORLD else t
            for n, t in worlds(sim).items()
        }
        inputs = leaves(values)
        per_world, _ = run(sim, inputs)
        wanted = [inputs[n] for n in ("velocity", "obstacle", "buoyancy")]
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(per_world.sum(), wanted)]))
    assert torch.isfinite(grads[1]).all()
    close(grads[1], grads[0], "unrolled against adjoint", rtol=1e-7)


@pytest.mark.parametrize("name", ["torch", "warp"])
def test_a_failed_world_is_named_and_leaves_the_others_alone(name):
    """NaN dye in world 1 makes its step NaN, which ``check_state`` names; the pressure solve
    leaves that world out, so worlds 0 and 2 still equal their single-world steps."""
    batched = Fluid(model(), backend(name), batch_size=B)
    single = Fluid(model(), backend(name))
    values = worlds(batched)
    dye = values["dye"].clone()
    dye[1, 0, 6, 6] = float("nan")
    state = batched.initial_state(values["velocity"], dye)
    assert set(batched.check_state(state)) == {1}
    after = batched.step(state, values["actions"][0])
    failures = batched.check_state(after)
    assert set(failures) == {1} and "not finite" in failures[1]
    for b in (0, 2):
        one = single.initial_state(values["velocity"][b : b + 1], dye[b : b + 1])
        one = single.step(one, values["actions"][0, b : b + 1])
        close(after.velocity[b : b + 1], one.velocity, f"world {b} velocity")


def test_observe_divergence_and_shapes_are_per_world():
    sim = Fluid(model(), backend("torch"), batch_size=B)
    values = worlds(sim)
    state = sim.step(sim.initial_state(values["velocity"], values["dye"]), values["actions"][0])
    assert state.velocity.shape == (B, 2, N + 1, N + 1) and state.time.shape == (B,)
    obs = sim.observe(state)
    assert obs.shape == (B, sim.observation_dim) == (B, 2 + 2 * 3)
    # Totals per world and channel: world 1's dye is not world 0's.
    assert torch.allclose(obs[:, 2:4], state.dye.flatten(2).sum(2))
    assert float((obs[0] - obs[1]).abs().max()) > 1e-3
    div = sim.divergence(state)
    assert div.shape == (B, N, N) and float(div.abs().max()) < 1e-8


def test_bad_inputs_name_the_shape_given_and_expected():
    """One clear error per bad input, before any step runs."""
    with pytest.raises(BackendError, match=r"no taichi kernels; use backend='torch'.*'warp'"):
        Fluid(model(), resolve_backend("taichi", precision="float64"))
    with pytest.raises(ValueError, match=r"batch_size=0 must be an integer >= 1"):
        Fluid(model(), backend("torch"), batch_size=0)
    sim = Fluid(model(), backend("torch"), batch_size=B)
    params = sim.params()
    params.obstacle = torch.zeros(2, N, N, dtype=F64)
    with pytest.raises(ValueError, match=r"params.obstacle has shape \[2, 12, 12\]; expected "
                                         r"\[12, 12\] .* or \[3, 12, 12\]"):
        sim.initial_state(params=params)
    params.obstacle = torch.zeros(N + 1, N, dtype=F64)
    with pytest.raises(ValueError, match=r"params.obstacle has shape \[13, 12\]; expected "
                                         r"\[12, 12\] .* or \[3, 12, 12\]"):
        sim.initial_state(params=params)
    params = sim.params()
    params.inflow_velocity = torch.zeros(B, 2, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"params.inflow_velocity has shape \[3, 2, 2\]; "
                                         r"expected \[1, 2\]"):
        sim.initial_state(params=params)
    with pytest.raises(TypeError, match="params is a dict; expected"):
        sim.initial_state(params={"obstacle": params.obstacle})
    with pytest.raises(ValueError, match=r"velocity has shape \[2, 2, 13, 13\]; expected "
                                         r"\[2, 13, 13\] .* or \[3, 2, 13, 13\]"):
        sim.initial_state(velocity=torch.zeros(2, 2, N + 1, N + 1, dtype=F64))
    state = sim.initial_state()
    with pytest.raises(ValueError, match=r"action has shape \[2\]; expected \[3, 2\]"):
        sim.step(state, torch.zeros(2, dtype=F64))
    with pytest.raises(ValueError, match=r"state.velocity has shape \[1, 2, 13, 13\]; expected "
                                         r"\[3, 2, 13, 13\]"):
        sim.step(state.world(0))


def test_batch_benchmark_runs_at_toy_size():
    """``benchmarks/batch_fluid.py`` at toy size: one row per backend, mode and B, with the
    fields the batch benchmark reports (figures are not judged here: speed is benchmarked,
    not tested)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "batch_fluid.py"
    spec = importlib.util.spec_from_file_location("batch_fluid", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    rows = bench.fluid_batch(batches=(1, 2), backends=("torch",), quick=True, steps=2)
    assert torch.get_num_threads() == threads  # restored
    assert [(r["mode"], r["batch"]) for r in rows] == [
        ("forward", 1), ("forward+backward", 1), ("forward", 2), ("forward+backward", 2)]
    for r in rows:
        assert r["world_steps_per_s"] > 0 and r["loop_world_steps_per_s"] > 0
        assert r["peak_rss_mb"] > 0 and r["iterations_per_solve"] > 0
    assert [r["speedup_vs_b1"] for r in rows[:2]] == [1.0, 1.0]
