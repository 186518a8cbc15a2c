"""The rollout loop: a simulator, a controller and a horizon make a trajectory.

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
from simdiff.sims.base import SimulationError, Simulator, State

__all__ = ["Controller", "Rollout", "rollout"]


Controller = Callable[[int, State], torch.Tensor | None]


@dataclass
class Rollout:
    """The result of :func:`rollout`.

    Attributes:
        initial: The state the rollout started from.
        final: The state after the last step, differentiable.
        steps: Number of steps taken.
        frames: Detached copies of the states at every ``record_every`` steps, keyed by step.
        actions: Detached actions at the recorded steps, keyed by step.
    """

    initial: State
    final: State
    steps: int
    frames: dict[int, State] = field(default_factory=dict)
    actions: dict[int, torch.Tensor] = field(default_factory=dict)
    simulator: Simulator | None = None
    """The simulator that ran it (for diagnostics; rendering reads only the frames)."""

    def recorded(self) -> list[State]:
        return [self.frames[k] for k in sorted(self.frames)]


def _captured_rollout(sim, spec, state, controller, steps, result, shared, segment,
                      record_every, check_every) -> Rollout:
    like = getattr(state, spec.state_fields[0])
    width = max(sim.action_dim, 1)
    if controller is None or sim.action_dim == 0:
        actions = like.new_zeros(steps, width)
    else:
        actions = controller.actions(steps).to(like.dtype)
        if actions.shape != (steps, sim.action_dim):
            raise ValueError(f"controller.actions({steps}) has shape {tuple(actions.shape)}; "
                             f"expected ({steps}, {sim.action_dim})")
    current = state
    for t0 in range(0, steps, segment):
        t1 = min(t0 + segment, steps)
        trajectories = apply_segment(spec, [getattr(current, f) for f in spec.state_fields],
                                     [actions[t0:t1]], [shared[n] for n in spec.shared])

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
        if check_every and sim.check_state(current) is not None:
            for t in range(t0 + 1, t1 + 1):
                problem = sim.check_state(state_at(t))
                if problem is not None:
                    raise SimulationError(f"step {t} of {steps}: {problem}")
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
    checkpoint_every: int | None = None,
    record_every: int = 0,
    check_every: int = 1,
    step_options: dict[str, Any] | None = None,
    capture: bool | None = None,
    truncate_every: int | None = None,
) -> Rollout:
    """Advance ``state`` by ``steps`` steps, asking ``controller(step, state)`` for each action.

    Args:
        sim: The simulator.
        state: The initial state (its tensors may require grad).
        controller: Maps the step index and the current state to an action, or ``None`` for an
            unactuated rollout.
        steps: Number of steps, at least 1.
        checkpoint_every: If given, keep only one state every this many steps and recompute
            the segments in backward; gradients are unchanged, memory is bounded.
        record_every: If positive, keep a detached copy of every such step's state (for
            rendering), including the first and last.
        check_every: Check for NaN or blow-up every this many steps (0 disables).
        step_options: Extra keyword arguments of every ``sim.step`` (e.g. a time step ``dt``
            that is a tensor being optimized).
        capture: Run open-loop segments as captured graphs (:mod:`simdiff.bridge`): each
            segment (``checkpoint_every`` steps, or all) is one graph replay and one autograd
            node that saves only its inputs. ``None`` (default) captures where possible: a
            Warp simulator with a segment spec and a controller that is ``None`` or open-loop
            (it has ``actions(steps)``, the whole action sequence as one tensor). ``True``
            refuses to run otherwise. States are checked for blow-up at segment ends (a NaN
            persists, so the first bad step is then found in the segment's trajectory).
        truncate_every: If given, detach the state every this many steps (truncated
            backpropagation through time): gradients of a quantity measured at step t flow
            back only to the last multiple of ``truncate_every`` before t (the controller's and
            model's parameters still receive every window's gradient). Not captured.

    Raises:
        SimulationError: naming the step and quantity if the state stops being finite or
            bounded.
    """
    if steps < 1:
        raise ValueError(f"steps={steps} must be at least 1")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"checkpoint_every={checkpoint_every} must be at least 1 or None")
    if truncate_every is not None and truncate_every < 1:
        raise ValueError(f"truncate_every={truncate_every} must be at least 1 or None")
    result = Rollout(initial=state, final=state, steps=steps, simulator=sim)

    def record(t: int, s: State, action: torch.Tensor | None) -> None:
        if record_every > 0 and (t % record_every == 0 or t == steps):
            result.frames[t] = s.detach()
            if action is not None:
                result.actions[t] = action.detach().clone()

    shared = {**sim.rollout_inputs(), **(step_options or {})}
    spec = None
    if capture is not False and truncate_every is None:
        open_loop = controller is None or callable(getattr(controller, "actions", None))
        spec = capturable(sim) if open_loop else None
        if spec is not None and set(shared) != set(spec.shared):
            spec = None  # step options the captured step does not take
        if capture and spec is None:
            raise ValueError(
                "capture=True needs a simulator on warp that offers a segment spec "
                "(mass_spring) and a controller that is None or open-loop (has actions(steps))"
            )
    if spec is not None:
        return _captured_rollout(sim, spec, state, controller, steps, result, shared,
                                 checkpoint_every or steps, record_every, check_every)

    def advance(t0: int, t1: int, s: State) -> State:
        for t in range(t0, t1):
            if truncate_every is not None and t > 0 and t % truncate_every == 0:
                s = s.detach()
            action = controller(t, s) if controller is not None else None
            record(t, s, action)
            s = sim.step(s, action, **shared)
            if check_every and ((t + 1) % check_every == 0 or t + 1 == steps):
                problem = sim.check_state(s)
                if problem is not None:
                    raise SimulationError(f"step {t + 1} of {steps}: {problem}")
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
