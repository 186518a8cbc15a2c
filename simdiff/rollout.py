"""The rollout loop: a simulator, a controller and a horizon make a trajectory of B worlds.

:func:`rollout` chains ``sim.step(state, action, params)`` with a controller. With
``checkpoint_every=K`` it keeps only the state at the start of every K-step segment and
recomputes each segment in backward (``torch.utils.checkpoint``), so memory grows with
``steps / K`` instead of ``steps``. Open-loop rollouts on Warp run as captured segments
(:func:`simdiff.bridge.apply_segment`).

Health is checked per world. ``health="stop"`` (default) raises :class:`SimulationError` naming
the world, the step and the quantity. ``health="mask"`` freezes a failed world at its last good
state, excludes it from :meth:`Rollout.mean` and zeroes its rows of every gradient (its NaNs
must not reach parameters shared by the other worlds); ``rollout.failures`` names every failed
world, so a mask never hides a failure.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.utils.checkpoint import checkpoint

from simdiff.bridge import apply_segment, capturable
from simdiff.sims.base import Params, SimulationError, Simulator, State

__all__ = ["CHECK_EVERY", "Controller", "Health", "Rollout", "reporting_progress", "rollout",
           "world_metrics"]

Controller = Callable[..., torch.Tensor | None]
"""``controller(step, state) -> [B, action_dim]`` (or ``controller(step, state, goal)``)."""

Health = Literal["stop", "mask"]

CHECK_EVERY = 10
"""Steps between health checks of ``health="stop"`` rollouts by default: a check (finiteness
and blow-up of every world's state) reduces whole state tensors and waits for the result; it
was 14% of an MPM training iteration on Warp when made every step (issue 18). A failed check
rechecks the states since the previous one, so the error names the first failed step."""

# The progress callback of rollouts that are not given one: rollouts inside a scene's own
# objective (an inverse problem) report to the command line's bar without a parameter.
_PROGRESS: contextvars.ContextVar[Callable[[int], None] | None] = contextvars.ContextVar(
    "simdiff_rollout_progress", default=None)


@contextlib.contextmanager
def reporting_progress(callback: Callable[[int], None]) -> Iterator[None]:
    """Within the block, every :func:`rollout` without its own ``progress`` reports its
    steps to ``callback`` (called with the number of steps just advanced)."""
    token = _PROGRESS.set(callback)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def world_metrics(name: str, values: torch.Tensor | float) -> dict[str, Any]:
    """Figures of one quantity over worlds: ``{name: mean}``, and for more than one world
    ``name_min``, ``name_max`` and ``name_per_world`` too."""
    v = torch.as_tensor(values).detach().double().flatten().cpu()
    if v.numel() == 1:
        return {name: float(v[0])}
    return {name: float(v.mean()), f"{name}_min": float(v.min()), f"{name}_max": float(v.max()),
            f"{name}_per_world": [float(x) for x in v]}


@dataclass
class Rollout:
    """The result of :func:`rollout`.

    Attributes:
        initial: The state the rollout started from, ``[B, ...]``.
        final: The state after the last step, differentiable.
        steps: Number of steps taken.
        frames: Detached copies of the states at every ``record_every`` steps, keyed by step.
        actions: Detached actions ``[B, action_dim]`` at the recorded steps, keyed by step.
        goals: Detached goals ``[B, goal_dim]`` at the recorded steps (goal-conditioned runs).
        params: The params every step read.
        alive: ``[B]`` bool, the worlds that did not fail (all, unless ``health="mask"``).
        failures: ``{world: (step, description)}`` of the failed worlds.
        simulator: The simulator that ran it (for diagnostics; rendering reads the frames).
        step_figures: ``{name: [B]}``, the simulator's :meth:`~simdiff.sims.base.Simulator.
            step_figures` averaged over every state of the rollout (the initial state and
            the state after each step; a failed world's frozen state counts as it stays), not
            only the recorded ones: e.g. the mass-spring ``inverted_cells``.
    """

    initial: State
    final: State
    steps: int
    frames: dict[int, State] = field(default_factory=dict)
    actions: dict[int, torch.Tensor] = field(default_factory=dict)
    goals: dict[int, torch.Tensor] = field(default_factory=dict)
    params: Params | None = None
    alive: torch.Tensor | None = None
    failures: dict[int, tuple[int, str]] = field(default_factory=dict)
    simulator: Simulator | None = None
    step_figures: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.initial.batch_size

    def recorded(self) -> list[State]:
        return [self.frames[k] for k in sorted(self.frames)]

    def mean(self, per_world: torch.Tensor) -> torch.Tensor:
        """The mean over the alive worlds of a per-world quantity ``[B]`` (a task loss).

        Raises:
            ValueError: ``per_world`` is not ``[B]``.
            SimulationError: every world failed.
        """
        b = self.batch_size
        if per_world.shape != (b,):
            raise ValueError(f"per-world value has shape {list(per_world.shape)}; expected [{b}]")
        if self.alive is None or bool(self.alive.all()):
            return per_world.mean()
        if not bool(self.alive.any()):
            raise SimulationError(f"every one of the {b} worlds failed: {self.failures}",
                                  self.failures)
        keep = self.alive.to(per_world.device)
        return torch.where(keep, per_world, torch.zeros_like(per_world)).sum() / keep.sum()

    def world(self, index: int) -> Rollout:
        """World ``index`` alone (every state ``[1, ...]``), e.g. to render it."""
        return Rollout(
            initial=self.initial.world(index), final=self.final.world(index), steps=self.steps,
            frames={t: s.world(index) for t, s in self.frames.items()},
            actions={t: a[index:index + 1] for t, a in self.actions.items()},
            goals={t: g[index:index + 1] for t, g in self.goals.items()},
            params=self.params.world(index) if self.params is not None else None,
            alive=self.alive[index:index + 1] if self.alive is not None else None,
            failures={0: self.failures[index]} if index in self.failures else {},
            simulator=self.simulator,
            step_figures={k: v[index:index + 1] for k, v in self.step_figures.items()},
        )


class _ZeroFailedRows(torch.autograd.Function):
    """Identity in forward; in backward, zeroes the gradient rows of the worlds that failed
    (read from ``failed`` at backward time, when every failure is known)."""

    @staticmethod
    def forward(ctx, failed: list, tensor: torch.Tensor):
        ctx.failed = failed
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        mask = ctx.failed[0]
        if mask is None or not bool(mask.any()):
            return None, grad
        keep = (~mask).to(grad.device).reshape(-1, *([1] * (grad.dim() - 1)))
        return None, torch.where(keep, grad, torch.zeros_like(grad))


class _StepFigures:
    """The simulator's per-state figures, kept per step (a checkpointed segment recomputed in
    backward overwrites its steps' values with equal ones) and averaged at the end.

    States are evaluated in chunks of :attr:`CHUNK`, stacked as worlds of one state: one call
    per chunk rather than per step (the mass-spring walker's per-step ``inverted_cells`` was
    about a tenth of a training iteration in small torch ops). The stacked states are the
    rollout's own tensors (no copies), kept until their chunk is evaluated.
    """

    CHUNK = 64

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.values: dict[int, dict[str, torch.Tensor]] = {}
        self.pending: list[tuple[int, State]] = []
        self.active = True

    def add(self, t: int, state: State) -> None:
        if not self.active:
            return
        self.pending.append((t, state))
        # The first state alone: a simulator that reports nothing then costs one call.
        if len(self.pending) >= self.CHUNK or not self.values:
            self._evaluate()

    def _evaluate(self) -> None:
        if not self.pending or not self.active:
            return
        steps = [t for t, _ in self.pending]
        states = [s for _, s in self.pending]
        self.pending = []
        first = states[0]
        with torch.no_grad():
            stacked = first.from_tensors(first.field_names(), tuple(
                torch.cat([s.tensors()[k].detach() for s in states])
                for k in range(len(first.field_names()))))
            figures = self.sim.step_figures(stacked)
        if not figures:
            self.active = False  # the simulator reports none: no cost for the other steps
            return
        b = first.batch_size
        for i, t in enumerate(steps):
            self.values[t] = {name: v[i * b:(i + 1) * b] for name, v in figures.items()}

    def means(self) -> dict[str, torch.Tensor]:
        self._evaluate()
        if not self.values:
            return {}
        steps = sorted(self.values)
        return {name: torch.stack([self.values[t][name] for t in steps]).mean(0)
                for name in self.values[steps[0]]}


def _failures(sim: Simulator, state: State) -> dict[int, str]:
    return sim.check_state(state) or {}


def _raise_failures(found: dict[int, str], step: int, steps: int) -> None:
    world = min(found)
    more = f" (and {len(found) - 1} more worlds)" if len(found) > 1 else ""
    raise SimulationError(f"world {world}, step {step} of {steps}: {found[world]}{more}",
                          {w: (step, d) for w, d in found.items()})


def _batched_actions(actions: torch.Tensor, steps: int, sim: Simulator) -> torch.Tensor:
    """An open-loop controller's actions as ``[steps, B, action_dim]`` (a shared sequence
    ``[steps, action_dim]`` drives every world)."""
    b, n = sim.batch_size, sim.action_dim
    if actions.dim() == 2 and tuple(actions.shape) == (steps, n):
        return actions[:, None, :].expand(steps, b, n)
    if tuple(actions.shape) != (steps, b, n):
        raise ValueError(f"controller.actions({steps}) has shape {list(actions.shape)}; "
                         f"expected [{steps}, {n}] or [{steps}, {b}, {n}]")
    return actions


def _captured_rollout(sim, spec, state, controller, steps, result, shared, segment,
                      record_every, check_every, progress=None) -> Rollout:
    figures = _StepFigures(sim)
    figures.add(0, state)
    like = getattr(state, spec.state_fields[0])
    if controller is None or sim.action_dim == 0:
        actions = like.new_zeros(steps, sim.batch_size, max(sim.action_dim, 1))
    else:
        actions = _batched_actions(controller.actions(steps).to(like.dtype), steps, sim)
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
            if figures.active:
                figures.add(t + 1, state_at(t + 1))
        # A clone of the last slot, so that the trajectory itself is not kept alive.
        current = state_at(t1, detach=False)
        if check_every and _failures(sim, current):
            # A NaN persists: the first bad step is found in the segment's trajectory.
            for t in range(t0 + 1, t1 + 1):
                found = _failures(sim, state_at(t))
                if found:
                    _raise_failures(found, t, steps)
        if progress is not None:
            progress(t1 - t0)
    if record_every > 0:
        result.frames[steps] = current.detach()
    result.final = current
    result.step_figures = figures.means()
    return result


def rollout(
    sim: Simulator,
    state: State,
    controller: Controller | None,
    steps: int,
    *,
    params: Params | None = None,
    goals: Callable[[int], torch.Tensor] | None = None,
    health: Health = "stop",
    checkpoint_every: int | None = None,
    record_every: int = 0,
    check_every: int | None = None,
    capture: bool | None = None,
    progress: Callable[[int], None] | None = None,
    truncate_every: int | None = None,
) -> Rollout:
    """Advance the B worlds of ``state`` by ``steps`` steps, asking the controller for actions.

    Args:
        sim: The simulator (``sim.batch_size`` worlds).
        state: The initial state ``[B, ...]`` (its tensors may require grad).
        controller: ``controller(step, state) -> [B, action_dim]`` (with ``goals``:
            ``controller(step, state, goal)``), or ``None`` for an unactuated rollout.
        steps: Number of steps, at least 1.
        params: What every step reads (default ``sim.params()``); fields shared or per world.
        goals: ``goals(step) -> [B, goal_dim]``, the command of each world at that step,
            passed to the controller as its third argument and recorded with the frames.
        health: ``"stop"`` raises on the first failed world; ``"mask"`` freezes failed worlds
            and excludes them from :meth:`Rollout.mean` (see the module docstring).
        checkpoint_every: If given, keep only one state every this many steps and recompute
            the segments in backward; gradients are unchanged, memory is bounded. ``None``
            (default): the simulator's rule for long horizons, if it has one
            (``sim.default_checkpoint_every(steps)``; MPM checkpoints once its saved states
            would pass 64 MiB), for rollouts without goals or truncation. ``0``: never.
        record_every: If positive, keep a detached copy of every such step's state (for
            rendering), including the first and last.
        check_every: Check for NaN or blow-up every this many steps (0 disables; default
            :data:`CHECK_EVERY` with ``health="stop"``, 1 with ``"mask"``). With ``"stop"``, a
            failed check also checks the states since the previous one, so the error still
            names the first failed step and world (a failure that recovers before the next
            check goes unseen); with ``"mask"`` a world freezes at the check that finds it.
        capture: Run open-loop segments as captured graphs (:mod:`simdiff.bridge`): each
            segment (``checkpoint_every`` steps, or all) is one graph replay and one autograd
            node that saves only its inputs. ``None`` (default) captures where possible: a
            Warp simulator with a segment spec, a controller that is ``None`` or open-loop
            (it has ``actions(steps)``), no goals and ``health="stop"``. ``True`` refuses to
            run otherwise. States are checked at segment ends, then step by step inside a
            segment that failed.
        progress: Called with the number of steps just advanced (a progress bar's
            ``update``), after each step or captured segment of the forward pass; a
            checkpointed segment recomputed in backward does not call it again. Default:
            the callback of an enclosing :func:`reporting_progress`, if any.
        truncate_every: If given, detach the state every this many steps (truncated
            backpropagation through time): gradients of a quantity measured at step t flow
            back only to the last multiple of ``truncate_every`` before t (the controller's and
            model's parameters still receive every window's gradient). Not captured.

    Raises:
        SimulationError: with ``health="stop"``, naming the world, step and quantity of the
            first failure.
        ValueError: a bad argument, or a controller whose action is not ``[B, action_dim]``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1")
    if checkpoint_every is not None and (isinstance(checkpoint_every, bool)
                                         or checkpoint_every < 0):
        raise ValueError(f"checkpoint_every={checkpoint_every} must be at least 0 or None")
    if checkpoint_every is None and goals is None and truncate_every is None:
        checkpoint_every = getattr(sim, "default_checkpoint_every", lambda steps: None)(steps)
    checkpoint_every = checkpoint_every or None  # 0: never
    if truncate_every is not None and truncate_every < 1:
        raise ValueError(f"truncate_every={truncate_every} must be at least 1 or None")
    if health not in ("stop", "mask"):
        raise ValueError(f"health={health!r} is unknown; allowed: stop, mask")
    if check_every is None:
        check_every = CHECK_EVERY if health == "stop" else 1
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 0:
        raise ValueError(f"check_every={check_every!r} must be an integer >= 0 (0: no checks)")
    progress = progress if progress is not None else _PROGRESS.get()
    batch = sim.batch_size
    if state.batch_size != batch:
        raise ValueError(f"state has {state.batch_size} worlds; the simulator has "
                         f"batch_size={batch}")
    params = (sim.params() if params is None else params).per_world(batch)
    params = params.map(torch.Tensor.contiguous)
    result = Rollout(initial=state, final=state, steps=steps, params=params,
                     alive=torch.ones(batch, dtype=torch.bool), simulator=sim)

    def record(t: int, s: State, action: torch.Tensor | None, goal: torch.Tensor | None) -> None:
        if record_every > 0 and (t % record_every == 0 or t == steps):
            result.frames[t] = s.detach()
            if action is not None:
                result.actions[t] = action.detach().clone()
            if goal is not None:
                result.goals[t] = goal.detach().clone()

    spec = None
    if capture is not False and truncate_every is None:
        open_loop = controller is None or callable(getattr(controller, "actions", None))
        spec = capturable(sim) if open_loop and goals is None and health == "stop" else None
        if spec is not None and not set(spec.shared) <= set(params.field_names()):
            spec = None
        if capture and spec is None:
            raise ValueError(
                "capture=True needs a simulator on warp that offers a segment spec "
                "(mass_spring), a controller that is None or open-loop (has actions(steps)), "
                "no goals and health='stop'"
            )
    if spec is not None:
        values = [getattr(params, n) for n in spec.shared]
        return _captured_rollout(sim, spec, state, controller, steps, result, values,
                                 checkpoint_every or steps, record_every, check_every, progress)

    # Step at which each world failed (steps + 1: not failed); decided in forward and read
    # again when checkpointed segments are recomputed, so both passes freeze alike.
    failed_at = torch.full((batch,), steps + 1, dtype=torch.long)
    final_failed: list = [None]  # read by the gradient mask in backward

    def masked(t: torch.Tensor) -> torch.Tensor:
        return _ZeroFailedRows.apply(final_failed, t) if health == "mask" else t

    reported = [0]  # steps reported to ``progress``: a recomputed segment reports none
    figures = _StepFigures(sim)
    figures.add(0, state)

    def report(done: int) -> None:
        if progress is not None and done > reported[0]:
            progress(done - reported[0])
            reported[0] = done

    def advance(t0: int, t1: int, s: State) -> State:
        unchecked: list[State] = []  # states since the last check (health="stop")
        for t in range(t0, t1):
            if truncate_every is not None and t > 0 and t % truncate_every == 0:
                s = s.detach()
            goal = goals(t) if goals is not None else None
            if controller is None:
                action = None
            elif goal is not None:
                action = controller(t, s, goal)
            else:
                action = controller(t, s)
            record(t, s, action, goal)
            step_params = params if health == "stop" else params.map(masked)
            if health == "mask":
                s = type(s).from_tensors(s.field_names(), tuple(map(masked, s.tensors())))
                action = masked(action) if action is not None else None
            nxt = sim.step(s, action, step_params)
            # Every check_every steps, and at the end of the (segment of the) rollout.
            checked = check_every and ((t + 1) % check_every == 0 or t + 1 == t1)
            if health == "mask":
                frozen = failed_at <= t + 1
                if checked:
                    for world, description in _failures(sim, nxt).items():
                        if not frozen[world]:
                            failed_at[world] = t + 1
                            result.failures[world] = (t + 1, description)
                    frozen = failed_at <= t + 1
                if bool(frozen.any()):
                    nxt = s.where(frozen.to(s.tensors()[0].device), nxt)
            elif checked:
                found = _failures(sim, nxt)
                if found:
                    # The first failed step since the last check (checks every step found).
                    first = t + 1 - len(unchecked)
                    for k, earlier in enumerate(unchecked):
                        found_earlier = _failures(sim, earlier)
                        if found_earlier:
                            _raise_failures(found_earlier, first + k, steps)
                    _raise_failures(found, t + 1, steps)
                unchecked.clear()
            elif check_every:
                unchecked.append(nxt)  # a reference (autograd keeps the state anyway)
            s = nxt
            figures.add(t + 1, s)
            report(t + 1)
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
    record(steps, final, None, None)
    result.alive = failed_at > steps
    final_failed[0] = ~result.alive
    result.final = final
    result.step_figures = figures.means()
    return result
