"""The rollout loop over batched worlds, on a toy simulator written in torch: per-world health
(``stop`` names the failed world, ``mask`` freezes exactly the failed worlds and keeps their
NaNs out of shared gradients), per-world params, action-shape errors, and the reductions over
worlds (``Rollout.mean``, ``world_metrics``)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from simdiff.rollout import rollout, world_metrics
from simdiff.sims.base import Params, SimulationError, Simulator, State, world_field


@dataclass
class ToyState(State):
    x: torch.Tensor
    """Position [m], shape [B, 2]."""


@dataclass
class ToyParams(Params):
    gain: torch.Tensor = world_field(0, "growth per step, shape [] or [B]")


class Toy(Simulator):
    """``x <- gain * x + action``; a world whose |x| passes 1e3 turns NaN (a blow-up)."""

    name = "toy"
    Params = ToyParams

    def __init__(self, x0: torch.Tensor, gain: float, *, batch_size: int) -> None:
        super().__init__(None, None, batch_size=batch_size)
        self.x0, self.gain = x0, torch.tensor(gain, dtype=torch.float64)

    @property
    def action_dim(self) -> int:
        return 2

    @property
    def observation_dim(self) -> int:
        return 2

    def initial_state(self) -> ToyState:
        return ToyState(self.x0.clone())

    def params(self) -> ToyParams:
        return ToyParams(self.gain)

    def step(self, state, action=None, params=None) -> ToyState:
        p = (params or self.params()).per_world(self.batch_size)
        action = self.check_action(action, state.x)
        x = p.gain[:, None] * state.x + action
        return ToyState(torch.where(x.abs() > 1e3, torch.full_like(x, float("nan")), x))

    def observe(self, state):
        return state.x

    def check_state(self, state) -> dict[int, str]:
        bad = ~torch.isfinite(state.x).all(1)
        return {int(b): f"x is {state.x[b].tolist()} (NaN)" for b in torch.nonzero(bad)[:, 0]}


def _worlds():
    x0 = torch.tensor([[1.0, 0.5], [200.0, 0.0], [-1.0, 2.0]], dtype=torch.float64)
    return Toy(x0, 2.0, batch_size=3)


def test_stop_names_the_world_and_step_that_failed():
    sim = _worlds()
    with pytest.raises(SimulationError, match=r"^world 1, step 3 of 5: x is \[nan, 0.0\]") as err:
        rollout(sim, sim.initial_state(), None, 5)
    assert err.value.failures == {1: (3, "x is [nan, 0.0] (NaN)")}


def test_mask_freezes_exactly_the_failed_world_and_keeps_nan_out_of_shared_gradients():
    sim = _worlds()
    gain = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    result = rollout(sim, sim.initial_state(), None, 5, params=ToyParams(gain), health="mask")
    assert result.alive.tolist() == [True, False, True]
    assert result.failures == {1: (3, "x is [nan, 0.0] (NaN)")}
    # The failed world holds its last good state (after step 2: 200 * 2^2).
    assert result.final.x[1].tolist() == [800.0, 0.0]
    loss = result.mean(result.final.x.pow(2).sum(1))
    loss.backward()
    # Only the two alive worlds count: d/dgain of mean(|gain^5 x0|^2) over worlds 0 and 2.
    alive_x0 = sim.x0[[0, 2]]
    expected = (10 * 2.0**9 * alive_x0.pow(2).sum(1)).mean()
    assert torch.isfinite(gain.grad)
    assert float(gain.grad) == pytest.approx(float(expected), rel=1e-12)


def test_per_world_params_and_shared_gradient_is_the_sum_over_worlds():
    sim = _worlds()
    x0 = torch.tensor([[1.0, 0.5], [2.0, 0.0], [-1.0, 2.0]], dtype=torch.float64)
    sim.x0 = x0
    gains = torch.tensor([1.1, 0.9, 1.3], dtype=torch.float64, requires_grad=True)
    result = rollout(sim, sim.initial_state(), None, 4, params=ToyParams(gains))
    torch.testing.assert_close(result.final.x, gains[:, None].detach() ** 4 * x0)
    shared = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
    per_world_sum = rollout(sim, sim.initial_state(), None, 4,
                            params=ToyParams(shared)).final.x.sum()
    per_world_sum.backward()
    singles = 0.0
    for b in range(3):
        one = Toy(x0[b:b + 1], 1.2, batch_size=1)
        g = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(
            rollout(one, one.initial_state(), None, 4, params=ToyParams(g)).final.x.sum(), g)
        singles += float(grad)
    assert float(shared.grad) == pytest.approx(singles, rel=1e-13)


def test_bad_shapes_are_one_clear_error_before_stepping():
    sim = _worlds()
    with pytest.raises(ValueError, match=r"params.gain has shape \[2\]; expected 0 dimensions .* "
                                         r"leading world axis of size B=3"):
        rollout(sim, sim.initial_state(), None, 2,
                params=ToyParams(torch.ones(2, dtype=torch.float64)))
    with pytest.raises(ValueError, match=r"action has shape \[2\]; expected \[3, 2\]"):
        rollout(sim, sim.initial_state(), lambda t, s: torch.zeros(2, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match=r"action has shape \[1, 2\]; expected \[3, 2\]"):
        rollout(sim, sim.initial_state(), lambda t, s: torch.zeros(1, 2, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="batch_size=0 must be an integer >= 1"):
        Toy(sim.x0, 2.0, batch_size=0)
    with pytest.raises(ValueError, match="health='maybe' is unknown"):
        rollout(sim, sim.initial_state(), None, 2, health="maybe")


def test_goals_reach_the_controller_and_are_recorded():
    sim = _worlds()
    sim.x0 = torch.zeros(3, 2, dtype=torch.float64)
    goal = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    result = rollout(sim, sim.initial_state(), lambda t, s, g: g.expand(3, 2), 3,
                     goals=lambda t: goal, params=ToyParams(torch.tensor(0.0, dtype=torch.float64)),
                     record_every=1)
    assert result.final.x[:, 0].tolist() == [1.0, 2.0, 3.0]
    assert sorted(result.goals) == [0, 1, 2]
    torch.testing.assert_close(result.goals[1], goal)


def test_world_metrics_and_mean_reduce_over_worlds_explicitly():
    assert world_metrics("d", torch.tensor([2.0])) == {"d": 2.0}
    figures = world_metrics("d", torch.tensor([1.0, 3.0, 5.0]))
    assert figures == {"d": 3.0, "d_min": 1.0, "d_max": 5.0, "d_per_world": [1.0, 3.0, 5.0]}
    sim = _worlds()
    result = rollout(sim, sim.initial_state(), None, 1)
    with pytest.raises(ValueError, match=r"per-world value has shape \[\]; expected \[3\]"):
        result.mean(torch.tensor(1.0))
    world = result.world(2)
    assert world.batch_size == 1 and world.final.x.tolist() == [[-2.0, 4.0]]
