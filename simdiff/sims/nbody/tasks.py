"""N-body scenes' tasks: diagnostics as metrics, and three inverse problems.

* Mass inference: recover hidden masses from observed positions over time (optionally noisy).
* Periodic-orbit search: from a perturbed figure-eight, find initial conditions and a period
  whose orbit closes on itself.
* Targeting: find the launch velocity that brings a light probe to a target point at time T.

Each inverse problem is a ``design`` (a torch module holding what is optimized) and an
``objective(sim, design, record_every=0) -> (loss, rollout, metrics)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from simdiff.rollout import Rollout, rollout
from simdiff.sims.nbody.simulator import NBody
from simdiff.sims.nbody.state import State

__all__ = [
    "LaunchFit",
    "MassFit",
    "OrbitFit",
    "diagnostics_metrics",
    "infer_masses_objective",
    "observe",
    "periodic_orbit_objective",
    "perturbed",
    "targeting_objective",
]


def diagnostics_metrics(result: Rollout) -> dict[str, float]:
    """Energy error, momenta, closest pair and cost of the rollout's final state."""
    sim = result.simulator
    return sim.diagnostics(result.final) if isinstance(sim, NBody) else {}


def observe(sim: NBody, state: State, count: int, every: int, *,
            record_every: int = 0) -> tuple[list[State], Rollout]:
    """States at ``count`` observation times ``every`` steps apart, and the whole trajectory
    as one Rollout (frames merged) for metrics and rendering."""
    states, frames, start = [], {}, state
    for k in range(count):
        part = rollout(sim, state, None, every, record_every=record_every)
        frames.update({k * every + t: s for t, s in part.frames.items()})
        state = part.final
        states.append(state)
    return states, Rollout(start, state, count * every, frames, simulator=sim)


class MassFit(nn.Module):
    """Masses as ``exp(log_mass)``: positive whatever the optimizer does."""

    def __init__(self, initial: torch.Tensor) -> None:
        super().__init__()
        self.log_mass = nn.Parameter(initial.log())

    def masses(self) -> torch.Tensor:
        return self.log_mass.exp()


def infer_masses_objective(observed: torch.Tensor, hidden: torch.Tensor, every: int):
    """Mean squared distance between simulated and observed positions at the observation
    times; the metric ``mass_error`` is the largest relative error of the recovered masses."""

    def objective(sim: NBody, design: MassFit, record_every: int = 0):
        masses = design.masses()
        sim.model.body_mass = masses
        states, result = observe(sim, sim.initial_state(), observed.shape[0], every,
                                 record_every=record_every)
        predicted = torch.stack([s.body_x for s in states])
        loss = ((predicted - observed.to(predicted)) ** 2).sum(-1).mean()
        error = ((masses.detach() - hidden.to(masses)) / hidden.to(masses)).abs().max()
        return loss, result, {"mass_error": float(error)}

    return objective


class OrbitFit(nn.Module):
    """Initial positions and velocities, and a period confined to ``period0 (1 +- 0.1)``
    (unconfined, the period would shrink to zero, where every orbit trivially closes)."""

    def __init__(self, x: torch.Tensor, v: torch.Tensor, period0: float) -> None:
        super().__init__()
        self.x = nn.Parameter(x.clone())
        self.v = nn.Parameter(v.clone())
        self.period_logit = nn.Parameter(torch.zeros((), dtype=x.dtype))
        self.period0 = period0

    def period(self) -> torch.Tensor:
        return self.period0 * (1 + 0.1 * torch.tanh(self.period_logit))


def periodic_orbit_objective(steps: int):
    """Squared mismatch between the state after one period and the initial state."""

    def objective(sim: NBody, design: OrbitFit, record_every: int = 0):
        period = design.period()
        start = sim.initial_state(design.x, design.v)
        result = rollout(sim, start, None, steps, record_every=record_every,
                         step_options={"dt": period / steps})
        loss = ((result.final.body_x - design.x) ** 2).sum() + (
            (result.final.body_v - design.v) ** 2).sum()
        return loss, result, {"period": float(period.detach())}

    return objective


class LaunchFit(nn.Module):
    """The launch velocity of one body (the probe)."""

    def __init__(self, v0: torch.Tensor) -> None:
        super().__init__()
        self.v = nn.Parameter(v0.clone())


def targeting_objective(probe: int, target: torch.Tensor, steps: int):
    """Squared distance from the probe's position at the final time to the target."""

    def objective(sim: NBody, design: LaunchFit, record_every: int = 0):
        x0 = sim.model.body_x.to(design.v)
        v0 = sim.model.body_v.to(design.v)
        mask = torch.zeros_like(v0)
        mask[probe] = 1
        v = v0 * (1 - mask) + mask * design.v
        result = rollout(sim, sim.initial_state(x0, v), None, steps, record_every=record_every)
        miss = (result.final.body_x[probe] - target.to(v)).norm()
        return miss**2, result, {"miss_distance": float(miss.detach()),
                                 "launch_speed": float(design.v.detach().norm())}

    return objective


def perturbed(x: torch.Tensor, scale: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    noise[:, 2] = 0  # stay in the orbit plane
    return x + scale * noise if math.isfinite(scale) else x
