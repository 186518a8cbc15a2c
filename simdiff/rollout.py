"""The rollout loop: a simulator of B worlds, a controller and a horizon make a trajectory.

PROVISIONAL (massspring branch): a small implementation of the batched signature the lead is
landing on main, so that the mass-spring code and tests run against it; main's version
replaces this file on merge.

:func:`rollout` chains steps with a controller. With ``checkpoint_every=K`` it keeps only the
state at the start of every K-step segment and recomputes each segment in backward
(``torch.utils.checkpoint``), so memory grows with ``steps / K`` instead of ``steps``. Open-loop
rollouts on Warp run as captured segments (:func:`simdiff.bridge.apply_segment`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from simdiff.bridge import apply_segment, capturable
from simdiff.sims.base import Params, SimulationError, Simulator, State

__all__ = ["Controller", "Rollout", "rollout", "world_metrics"]


Controller = Callable[[int, State], torch.Tensor | None]


@dataclass
class Rollout:
    """The result of :func:`rollout`.

    Attributes:
        initial: The state the rollout started from, ``[B, ...]``.
        final: The state after the last step, differentiable.
        steps: Number of steps taken.
        frames: Detached copies of the states at every ``record_every`` steps, keyed by step.
        actions: Detached actions ``[B, action_dim]`` at the recorded steps, keyed by step.
        params: The params every step read.
        alive: ``[B]`` bool, the worlds that did not fail.
        failures: ``{world: (step, description)}`` of the failed worlds.
    """

    initial: State
    final: State
    steps: int
    frames: dict[int, State] = field(default_factory=dict)
    actions: dict[int, torch.Tensor] = field(default_factory=dict)
    params: Params | None = None
    alive: torch.Tensor | None = None
    failures: dict[int, tuple[int, str]] = field(default_factory=dict)
    simulator: Simulator | None = None
    """The simulator that ran it (for diagnostics; rendering reads only the frames)."""

    def recorded(self) -> list[State]:
        return [self.frames[k] for k in sorted(self.frames)]

    def mean(self, per_world: torch.Tensor) -> torch.Tensor:
        """The mean of a ``[B]`` tensor over the worlds that did not fail."""
        if self.alive is None or bool(self.alive.all()):
            return per_world.mean()
        return per_world[self.alive.to(per_world.device)].mean()


def world_metrics(name: str, values: torch.Tensor) -> dict[str, Any]:
    """``{name: mean, name_min, name_max, name_per_world}`` of per-world ``values`` ``[B]``
    (for one world only ``{name: value}``)."""
    values = values.detach().double().cpu().reshape(-1)
    if values.numel() == 1:
        return {name: float(values[0])}
    return {name: float(values.mean()), f"{name}_min": float(values.min()),
            f"{name}_max": float(values.max()), f"{name}_per_world": values.tolist()}


def _fail(failures: dict[int, str], t: int, steps: int) -> SimulationError:
    b = min(failures)
    return SimulationError(f"world {b}, step {t} of {steps}: {failures[b]}",
                           {w: (t, d) for w, d in failures.items()})


def _captured_rollout(sim, spec, state, controller, steps, result, params, segment,
                      record_every, check_every) -> Rollout:
    like = getattr(state, spec.state_fields[0])
    width, b = max(sim.action_dim, 1), sim.batch_size
    if controller is None or sim.action_dim == 0:
        actions = like.new_zeros(steps, b, width)
    else:
        actions = controller.actions(steps).to(like.dtype)
        if actions.shape == (steps, sim.action_dim):  # one sequence for every world
            actions = actions[:, None].expand(steps, b, sim.action_dim)
        if actions.shape != (steps, b, sim.action_dim):
            raise ValueError(f"controller.actions({steps}) has shape {list(actions.shape)}; "
                             f"expected [{steps}, {b}, {sim.action_dim}]")
    per_world = params.per_world(b)
    shared = [getattr(per_world, n) for n in spec.shared]
    current = state
    for t0 in range(0, steps, segment):
        t1 = min(t0 + segment, steps)
        trajectories = apply_segment(spec, [getattr(current, f) for f in spec.state_fields],
                                     [actions[t0:t1]], shared)

        def state_at(t: int, detach: bool = True, _tr=trajectories, _t0=t0) -> State:
            return sim.state_from(**{f: (tr[t - _t0].detach() if detach else tr[t - _t0]).clone()
                                     for f, tr in zip(spec.state_fields, _tr)})

        for t in range(t0, t1):
            if record_every > 0 and t % record_every == 0:
                result.frames[t] = state_at(t)
                if controller is not None:
                    result.actions[t] = actions[t].detach().clone()
        # A clone of the last slot, so that the trajectory itself is not kept alive.
        current = state_at(t1, detach=False)
        if check_every and sim.check_state(current):
            for t in range(t0 + 1, t1 + 1):
                failures = sim.check_state(state_at(t))
                if failures:
                    raise _fail(failures, t, steps)
    if record_every > 0:
        result.frames[steps] = current.detach()
    result.final = current
    return result


def rollout(
    sim: Simulator,
    state: State,
    controller: Controller | None,
    steps: int,
    *,
    params: Params | None = None,
    health: str = "stop",
    checkpoint_every: int | None = None,
    record_every: int = 0,
    check_every: int = 1,
    capture: bool | None = None,
    truncate_every: int | None = None,
) -> Rollout:
    """Advance ``state`` (``[B, ...]``) by ``steps`` steps, asking ``controller(step, state)``
    for each action ``[B, action_dim]``.

    Args:
        sim: The simulator.
        state: The initial state (its tensors may require grad).
        controller: Maps the step index and the current state to an action, or ``None``.
        steps: Number of steps, at least 1.
        params: What every step reads (``sim.params()`` when None).
        health: ``"stop"`` raises on the first failed world; ``"mask"`` freezes failed worlds
            and leaves them out of ``Rollout.mean``.
        checkpoint_every: Keep one state every this many steps, recompute in backward.
        record_every: If positive, keep a detached copy of every such step's state.
        check_every: Check for NaN or blow-up every this many steps (0 disables).
        capture: Run open-loop segments as captured graphs (None: where possible).
        truncate_every: If given, detach the state every this many steps (truncated
            backpropagation through time): gradients of a quantity measured at step t flow
            back only to the last multiple of ``truncate_every`` before t (the controller's and
            model's parameters still receive every window's gradient). Not captured.

    Raises:
        SimulationError: naming the world, step and quantity (``health="stop"``).
    """
    if steps < 1:
        raise ValueError(f"steps={steps} must be at least 1")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"checkpoint_every={checkpoint_every} must be at least 1 or None")
    if truncate_every is not None and truncate_every < 1:
        raise ValueError(f"truncate_every={truncate_every} must be at least 1 or None")
    if health not in ("stop", "mask"):
        raise ValueError(f"health={health!r}; allowed: 'stop', 'mask'")
    params = sim.params() if params is None else params
    alive = torch.ones(sim.batch_size, dtype=torch.bool)
    result = Rollout(initial=state, final=state, steps=steps, params=params, alive=alive,
                     simulator=sim)

    def record(t: int, s: State, action: torch.Tensor | None) -> None:
        if record_every > 0 and (t % record_every == 0 or t == steps):
            result.frames[t] = s.detach()
            if action is not None:
                result.actions[t] = action.detach().clone()

    spec = None
    if capture is not False and health == "stop" and truncate_every is None:
        open_loop = controller is None or callable(getattr(controller, "actions", None))
        spec = capturable(sim) if open_loop else None
    if capture and spec is None:
        raise ValueError(
            "capture=True needs a simulator on warp that offers a segment spec "
            "(mass_spring), a controller that is None or open-loop (has actions(steps)) "
            "and health='stop'"
        )
    if spec is not None:
        return _captured_rollout(sim, spec, state, controller, steps, result, params,
                                 checkpoint_every or steps, record_every, check_every)

    def advance(t0: int, t1: int, s: State) -> State:
        for t in range(t0, t1):
            if truncate_every is not None and t > 0 and t % truncate_every == 0:
                s = s.detach()
            action = controller(t, s) if controller is not None else None
            record(t, s, action)
            new = sim.step(s, action, params)
            if check_every and ((t + 1) % check_every == 0 or t + 1 == steps):
                failures = {w: d for w, d in sim.check_state(new).items() if bool(alive[w])}
                if failures and health == "stop":
                    raise _fail(failures, t + 1, steps)
                for w, d in failures.items():
                    alive[w] = False
                    result.failures[w] = (t + 1, d)
            if not bool(alive.all()):
                new = new.where(alive.to(s.tensors()[0].device), s)
            s = new
        return s

    if checkpoint_every is None or not torch.is_grad_enabled():
        final = advance(0, steps, state)
    else:
        final = state
        names = final.field_names()
        for t0 in range(0, steps, checkpoint_every):
            t1 = min(t0 + checkpoint_every, steps)

            def segment(*tensors: torch.Tensor, _t0: int = t0, _t1: int = t1) -> tuple:
                return advance(_t0, _t1, type(state).from_tensors(names, tensors)).tensors()

            final = type(state).from_tensors(
                names, checkpoint(segment, *final.tensors(), use_reentrant=False)
            )
    record(steps, final, None)
    result.final = final
    return result
