"""Gradient health in training: non-finite iterations are skipped and never chosen as best,
truncated backpropagation cuts exactly the gradient paths it should, optimizers by name."""

import json
import textwrap

import pytest
import torch

from simdiff.backend import resolve_backend
from simdiff.rollout import rollout
from simdiff.scene import load_scene, make_simulator
from simdiff.train import TrainConfig, make_optimizer, train

POISONED_SCENE = textwrap.dedent('''
    import torch
    from simdiff.scene import load_scene

    CALLS = {"n": 0}


    class Poison(torch.autograd.Function):
        """Identity forward; an infinite gradient backward."""

        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * float("inf")


    def scene(**options):
        base = load_scene("walker_small", **options)
        walk = base.loss

        def loss(rollout):
            CALLS["n"] += 1
            value = walk(rollout)
            # The second evaluation has the lowest loss of the run and an infinite gradient.
            return Poison.apply(value) - 100.0 if CALLS["n"] == 2 else value

        base.loss = loss
        return base
''')


def test_non_finite_gradient_iteration_is_skipped_and_never_best(tmp_path):
    path = tmp_path / "poisoned.py"
    path.write_text(POISONED_SCENE)
    config = TrainConfig(scene=str(path), controller="sinusoid", iters=3, backend="warp",
                         lr=0.05, scene_options={"steps": 20}, checkpoint_every=10)
    result = train(config, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["grad_finite"] for r in rows] == [True, False, True]
    assert rows[1]["grad_norm"] is None and rows[0]["grad_norm"] > 0
    assert rows[1]["loss"] < min(rows[0]["loss"], rows[2]["loss"])  # the lowest, yet not best
    best = torch.load(tmp_path / "run" / "best_controller.pt")
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert saved["best"]["iteration"] != 1
    for name, value in best.items():
        assert torch.isfinite(value).all(), name
    # The skipped iteration did not step: Adam counted two steps in three iterations.
    assert [float(s["step"]) for s in saved["optimizer"]["state"].values()] == [2.0, 2.0]
    assert all(torch.isfinite(p).all() for p in result.controller.parameters())


def test_truncated_backprop_cuts_gradients_at_window_starts():
    """Gradients of the final state reach only the actions of the last window, and there they
    equal the untruncated gradients (the forward trajectory is the same)."""
    scene = load_scene("walker_small", steps=12)
    sim = make_simulator(scene, resolve_backend("warp", "cpu", "float64"))
    actions = (0.5 * torch.randn(12, 1, sim.action_dim, dtype=torch.float64)).requires_grad_(True)

    def grad(truncate_every):
        result = rollout(sim, sim.initial_state(), lambda t, s: actions[t], 12,
                         truncate_every=truncate_every)
        (g,) = torch.autograd.grad(result.final.particle_x[..., 0].sum(), actions)
        return g, result.final.particle_x.detach()

    full, x_full = grad(None)
    cut, x_cut = grad(5)
    assert torch.equal(x_full, x_cut)
    assert torch.count_nonzero(cut[:10]) == 0
    assert torch.count_nonzero(full[:10]) > 0
    torch.testing.assert_close(cut[10:], full[10:], rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="truncate_every=0 must be at least 1"):
        rollout(sim, sim.initial_state(), None, 3, truncate_every=0)


def test_optimizers_by_name_from_torch_and_pytorch_optimizer():
    weight = torch.nn.Parameter(torch.ones(3))
    for name in ("adam", "SGD", "lion", "ademamix", "grams", "adamp", "cautious-lion"):
        optimizer = make_optimizer(name, [weight], 1e-3)
        weight.grad = torch.ones(3)
        optimizer.step()
    # torch's Adam (simdiff.optim.Adam is it, run without importing torch's compiler).
    from simdiff.optim import Adam

    assert type(make_optimizer("adam", [weight], 1e-3)) is Adam
    assert isinstance(make_optimizer("Adam", [weight], 1e-3), torch.optim.Adam)
    assert make_optimizer("cautious-lion", [weight], 1e-3).defaults["cautious"] is True
    assert float(weight.detach().max()) < 1.0  # every step moved the weight down
    with pytest.raises(ValueError, match="optimizer='cautious-sgd': sgd has no cautious variant"):
        make_optimizer("cautious-sgd", [weight], 1e-3)
    with pytest.raises(ValueError, match="optimizer='lyon' is unknown; allowed: .*lion"):
        make_optimizer("lyon", [weight], 1e-3)


LUCKY_GOAL_SCENE = textwrap.dedent('''
    from simdiff.scene import load_scene

    CALLS = {"training": 0}


    def scene(**options):
        base = load_scene("walker_goals", **options)
        goal = base.loss

        def loss(rollout):
            value = goal(rollout)
            if rollout.batch_size == 1:  # a training rollout (validation runs 2 worlds)
                CALLS["training"] += 1
                # The second iteration's random goals are "easy": the lowest training loss of
                # the run, with an ordinary finite gradient.
                return value - 100.0 if CALLS["training"] == 2 else value
            return value

        base.loss = loss
        return base
''')


def test_best_iteration_is_chosen_on_the_fixed_validation_goals(tmp_path):
    """The training loss of random goals says little (iteration 1 drew 'easy' goals, the
    lowest loss of the run); the best iteration is the one of the lowest loss on the fixed
    validation goals, and best_controller.pt, rolled out again on them, gives that loss."""
    from simdiff.locomotion import goal_rollout, held_out_schedule, validation_schedule

    path = tmp_path / "lucky.py"
    path.write_text(LUCKY_GOAL_SCENE)
    options = {"steps": 20, "period": 20, "window": 10, "tasks": ["walk"]}
    config = TrainConfig(scene=str(path), iters=4, backend="warp", lr=0.05, batch=1,
                         validate_every=1,
                         scene_options=options, checkpoint_every=10)
    result = train(config, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
    losses = [r["loss"] for r in rows]
    validation = [r["validation_loss"] for r in rows]
    assert min(range(4), key=losses.__getitem__) == 1
    assert len(set(validation)) == 4  # the controller changed, the goals did not
    chosen = min(range(4), key=validation.__getitem__)
    assert result.best == {"loss": validation[chosen], "iteration": chosen, "on": "validation"}
    assert chosen != 1  # choosing on the training loss would have taken iteration 1
    assert {"validation_velocity_error", "validation_inverted_cells"} <= set(rows[0])
    # The validation goals are fixed (the same at every call) and are not the held-out ones.
    space = result.scene.goals
    schedule = validation_schedule(space, 2, 20)
    assert torch.equal(schedule.goals, validation_schedule(space, 2, 20).goals)
    assert not torch.equal(schedule.goals[:1], held_out_schedule(space, 2).goals[:1])
    # Rolled out again, the saved best controller scores its logged validation loss.
    from simdiff.scene import make_simulator

    controller = result.controller
    controller.load_state_dict(torch.load(tmp_path / "run" / "best_controller.pt"))
    sim = make_simulator(result.scene, result.simulator.backend, batch_size=2)
    with torch.no_grad():
        again = goal_rollout(sim, sim.initial_state(), controller, schedule, 20)
    assert float(result.scene.loss(again)) == pytest.approx(validation[chosen], rel=1e-5)


def test_validate_every_is_checked():
    with pytest.raises(ValueError, match="validate_every=-1 must be an integer >= 0"):
        train(TrainConfig(scene="walker_goals", validate_every=-1), "unused", progress=False)
