"""N-body scenes' tasks: diagnostics as metrics, and three inverse problems.

* Mass inference: recover hidden masses from observed positions over time (optionally noisy).
* Periodic-orbit search: from a perturbed figure-eight, find initial conditions and a period
  whose orbit closes on itself.
* Targeting: find the launch velocity that brings a light probe to a target point at time T.

Each inverse problem is a ``design`` (a torch module holding what is optimized) and an
``objective(sim, design, record_every=0) -> (loss, rollout, metrics)``.
"""

from __future__ import annotations

import dataclasses
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


def world_metrics(name: str, values: torch.Tensor) -> dict[str, float | list[float]]:
    """A per-world ``[B]`` figure as ``{name: value}`` (B = 1) or its mean, min, max and
    per-world values (the rollout module's convention)."""
    try:
        from simdiff.rollout import world_metrics as reduce
    except ImportError:
        reduce = None
    if reduce is not None:
        return reduce(name, values)
    v = values.detach().double().cpu()
    if v.numel() == 1:
        return {name: float(v[0])}
    return {name: float(v.mean()), f"{name}_min": float(v.min()), f"{name}_max": float(v.max()),
            f"{name}_per_world": v.tolist()}


def world_mean(result: Rollout, per_world: torch.Tensor) -> torch.Tensor:
    """The mean over the rollout's alive worlds of a ``[B]`` loss."""
    mean = getattr(result, "mean", None)
    return mean(per_world) if callable(mean) else per_world.mean()


def diagnostics_metrics(result: Rollout) -> dict[str, float]:
    """Energy error, momenta, closest pair and cost of the rollout's final state, per world
    reduced to mean, min and max."""
    sim = result.simulator
    if not isinstance(sim, NBody):
        return {}
    out: dict = {}
    for name, values in sim.diagnostics(result.final).items():
        out.update(world_metrics(name, values))
    return out


def observe(sim: NBody, state: State, count: int, every: int, *, params=None,
            record_every: int = 0) -> tuple[list[State], Rollout]:
    """States at ``count`` observation times ``every`` steps apart, and the whole trajectory
    as one Rollout (frames merged) for metrics and rendering."""
    states, frames, start = [], {}, state
    for k in range(count):
        part = rollout(sim, state, None, every, params=params, record_every=record_every)
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
    """Mean squared distance between simulated and observed positions ``[B or 1, T, N, 3]``
    at the observation times; the metric ``mass_error`` is the largest relative error of the
    recovered masses."""

    def objective(sim: NBody, design: MassFit, record_every: int = 0):
        masses = design.masses()
        params = dataclasses.replace(sim.params(), body_mass=masses)
        states, result = observe(sim, sim.initial_state(params=params), observed.shape[1],
                                 every, params=params, record_every=record_every)
        predicted = torch.stack([s.body_x for s in states], 1)  # [B, T, N, 3]
        observed_ = observed.to(predicted)
        per_world = ((predicted - observed_) ** 2).sum(-1).mean((1, 2))
        loss = world_mean(result, per_world)
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
        params = dataclasses.replace(sim.params(), dt=period / steps)
        start = sim.initial_state(design.x, design.v)
        result = rollout(sim, start, None, steps, params=params, record_every=record_every)
        per_world = ((result.final.body_x - design.x) ** 2).sum((1, 2)) + (
            (result.final.body_v - design.v) ** 2).sum((1, 2))
        loss = world_mean(result, per_world)
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
        mask[..., probe, :] = 1
        v = v0 * (1 - mask) + mask * design.v
        result = rollout(sim, sim.initial_state(x0, v), None, steps, record_every=record_every)
        miss = (result.final.body_x[:, probe] - target.to(v)).norm(dim=-1)  # [B]
        return world_mean(result, miss**2), result, {
            **world_metrics("miss_distance", miss.detach()),
            "launch_speed": float(design.v.detach().norm())}

    return objective


def perturbed(x: torch.Tensor, scale: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    noise[:, 2] = 0  # stay in the orbit plane
    return x + scale * noise if math.isfinite(scale) else x
