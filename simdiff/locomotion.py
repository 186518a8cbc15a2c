"""Goal-conditioned locomotion, shared by the mass-spring and MPM robots (Fang et al. 2022,
"Complex Locomotion Skill Learning via Differentiable Physics").

A goal is a vector per world, ``[B, goal_dim]``, drawn from a scene's :class:`GoalSpace` and
held for ``period`` steps (500, as in the paper) before the next one is drawn
(:class:`GoalSchedule`). Goal components, by dimension:

* 2D: ``(velocity_x [m/s], jump_height [m], crawl [0 or 1])``.
* 3D: ``(velocity_x [m/s], velocity_z [m/s], turn [rad/s])``.

Tasks (what a world is asked in one period): ``stand`` (all zero), ``walk`` (a speed drawn
uniformly in ``[-vmax, vmax]``), ``jump`` (a peak height drawn in ``jump_range``, at a speed
drawn as in walk: the paper's "move and jump"),
``crawl`` (a speed as in walk, under a bar at ``crawl_height``), and in 3D ``turn`` (a yaw rate
drawn in ``[-turn_max, turn_max]``).

Losses read a rollout's trace (:func:`trace_state`: centre of mass, top height, yaw, actions at
every step, differentiable) and its goal schedule, and return one value per world ``[B]``:

* velocity: over every window of ``window`` steps (100) that lies inside one goal period, the
  squared difference between the centre of mass's mean velocity over the window and the
  command [(m/s)^2];
* jump: per jump period, the squared difference between the peak rise of the centre of mass
  and the commanded height [m^2];
* crawl: per crawl step, the squared excess of the robot's top above the bar [m^2];
* heading (3D): per window, the squared difference between the yaw change and the command
  [rad^2];
* actuation: the mean squared action.

Rollout API: :func:`goal_rollout` runs :func:`simdiff.rollout.rollout` with
``goals=schedule.at`` (the rollout calls ``controller(step, state, goal)``) and a controller
wrapper that keeps the differentiable per-step trace; the Rollout it returns carries
``goal_schedule`` and ``trace``. Controllers declare ``goal_dim``; a controller without it, a
goal of another size or a schedule of another number of worlds is refused with one line. The
trainer draws ``scene.goals.sample(B, steps, seed=seed * 1_000_003 + iteration,
iteration=iteration)`` every iteration (from the tasks of the space's ``curriculum`` stage
that iteration is in: a robot can learn to walk first, then to jump and crawl too) and chooses
its best iteration on the fixed :func:`validation_schedule` of every task; ``simdiff
evaluate`` rolls :func:`held_out_schedule` out.

Gradient health: ``benchmarks/_gradient_health.py`` (the gradient norm against the horizon,
with the shape-keeping and the older walker physics, with and without 100-step windows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "GoalSchedule",
    "GoalSpace",
    "LossWeights",
    "check_goal_controller",
    "evaluate_goals",
    "goal_loss",
    "goal_metrics",
    "goal_rollout",
    "held_out_schedule",
    "locomotion_losses",
    "period_figures",
    "trace_state",
    "tracking_metrics",
    "validation_schedule",
]

TASKS_2D = ("stand", "walk", "jump", "crawl")
TASKS_3D = ("stand", "walk", "turn")


@dataclass(frozen=True)
class GoalSpace:
    """A scene's goal distribution.

    Attributes:
        dim: 2 or 3 (the robot's dimension; it fixes the goal layout).
        vmax: Largest commanded speed [m/s].
        tasks: Tasks drawn with equal probability (subset of the dimension's tasks).
        jump_range: Commanded peak rise of the centre of mass [m], (low, high).
        crawl_height: Height of the bar of the crawl task [m].
        stand_height: Height of the centre of mass of the robot standing at rest [m], from
            which jump heights are measured; None measures from its height at step 0.
        turn_max: Largest commanded yaw rate [rad/s] (3D).
        period: Steps a goal is held before the next is drawn.
        window: Steps of a velocity or heading window.
        dt: Time step of one control step [s].
        curriculum: Training stages, ``((iteration, tasks), ...)`` in increasing iteration:
            from each stage's first training iteration on, goals are drawn from its tasks
            only (a subset of ``tasks``); iterations before the first stage, and every
            iteration when empty, draw from all ``tasks``. Validation and evaluation always
            use all ``tasks``. See :meth:`tasks_at`.
    """

    dim: int
    vmax: float
    dt: float
    tasks: tuple[str, ...] = TASKS_2D
    jump_range: tuple[float, float] = (0.05, 0.15)
    crawl_height: float = 0.15
    stand_height: float | None = None
    turn_max: float = 0.5
    period: int = 500
    window: int = 100
    curriculum: tuple[tuple[int, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        if self.dim not in (2, 3):
            raise ValueError(f"GoalSpace dim={self.dim} is not allowed; use 2 or 3")
        allowed = TASKS_2D if self.dim == 2 else TASKS_3D
        unknown = [t for t in self.tasks if t not in allowed]
        if not self.tasks or unknown:
            raise ValueError(f"GoalSpace tasks={self.tasks!r}; allowed (dim {self.dim}): "
                             f"a non-empty subset of {allowed}")
        if not self.vmax > 0:
            raise ValueError(f"GoalSpace vmax={self.vmax} must be > 0 [m/s]")
        if not 1 <= self.window <= self.period:
            raise ValueError(f"GoalSpace window={self.window} must lie in [1, period="
                             f"{self.period}]")
        starts = [int(start) for start, _ in self.curriculum]
        if starts != sorted(set(starts)) or any(start < 0 for start in starts):
            raise ValueError(f"GoalSpace curriculum starts {starts} must be increasing "
                             "iterations >= 0")
        for start, tasks in self.curriculum:
            if not tasks or any(t not in self.tasks for t in tasks):
                raise ValueError(f"GoalSpace curriculum stage at iteration {start} has tasks "
                                 f"{tuple(tasks)!r}; allowed: a non-empty subset of "
                                 f"{self.tasks}")

    def tasks_at(self, iteration: int | None) -> tuple[str, ...]:
        """The tasks training iteration ``iteration`` draws from (all ``tasks`` for None)."""
        current = self.tasks
        if iteration is not None:
            for start, tasks in self.curriculum:
                if iteration >= start:
                    current = tuple(tasks)
        return current

    @property
    def goal_dim(self) -> int:
        return 3

    @property
    def names(self) -> tuple[str, str, str]:
        if self.dim == 2:
            return ("velocity_x", "jump_height", "crawl")
        return ("velocity_x", "velocity_z", "turn")

    @property
    def scale(self) -> tuple[float, float, float]:
        """What each goal component is divided by to be of order one (controller inputs)."""
        if self.dim == 2:
            return (self.vmax, max(self.jump_range[1], 1e-6), 1.0)
        return (self.vmax, self.vmax, self.turn_max)

    def goal(self, task: str, value: float = 0.0, value_z: float = 0.0, *,
             speed: float = 0.0) -> list[float]:
        """One goal vector: ``value`` is the speed (walk, crawl), height (jump) or yaw rate
        (turn) [SI]; ``value_z`` the speed along z in 3D walks; ``speed`` the speed of a jump
        [m/s] (the robot jumps while it moves at that speed).

        Raises:
            ValueError: an unknown task or a value outside the space's range.
        """
        if task not in self.tasks:
            raise ValueError(f"task={task!r} is not in this goal space; allowed: {self.tasks}")
        if task in ("walk", "crawl", "jump"):
            for name, v in (("velocity", speed if task == "jump" else value),
                            ("velocity_z", value_z)):
                if abs(v) > self.vmax + 1e-12:
                    raise ValueError(f"commanded {name}={v} m/s is outside [-{self.vmax}, "
                                     f"{self.vmax}] (the scene's vmax)")
        if task == "jump" and not self.jump_range[0] <= value <= self.jump_range[1]:
            raise ValueError(f"commanded jump height={value} m is outside {self.jump_range}")
        if task == "turn" and abs(value) > self.turn_max + 1e-12:
            raise ValueError(f"commanded turn={value} rad/s is outside [-{self.turn_max}, "
                             f"{self.turn_max}]")
        if self.dim == 2:
            return {"stand": [0.0, 0.0, 0.0], "walk": [value, 0.0, 0.0],
                    "jump": [speed, value, 0.0], "crawl": [value, 0.0, 1.0]}[task]
        return {"stand": [0.0, 0.0, 0.0], "walk": [value, value_z, 0.0],
                "turn": [0.0, 0.0, value]}[task]

    def sample(self, batch_size: int, steps: int, *, seed: int,
               iteration: int | None = None) -> GoalSchedule:
        """A goal per world and period, drawn with a seeded generator from the tasks of
        training iteration ``iteration`` (:meth:`tasks_at`; None: all tasks)."""
        gen = torch.Generator().manual_seed(int(seed))
        periods = -(-steps // self.period)
        drawn = self.tasks_at(iteration)
        task = torch.randint(len(drawn), (periods, batch_size), generator=gen)
        u = torch.rand(periods, batch_size, 2, generator=gen, dtype=torch.float64)
        goals = torch.zeros(periods, batch_size, 3, dtype=torch.float64)
        labels = []
        for p in range(periods):
            row = []
            for b in range(batch_size):
                name = drawn[int(task[p, b])]
                speed = float(2 * u[p, b, 0] - 1) * self.vmax
                if name == "jump":
                    low, high = self.jump_range
                    value = low + float(u[p, b, 0]) * (high - low)
                    speed = float(2 * u[p, b, 1] - 1) * self.vmax  # 2D: the free draw
                elif name == "turn":
                    value = float(2 * u[p, b, 0] - 1) * self.turn_max
                else:
                    value = speed
                side = float(2 * u[p, b, 1] - 1) * self.vmax if self.dim == 3 else 0.0
                goals[p, b] = torch.tensor(
                    self.goal(name, value, side, speed=speed if name == "jump" else 0.0),
                    dtype=torch.float64)
                row.append(name)
            labels.append(tuple(row))
        return GoalSchedule(self, goals, tuple(labels))

    def schedule(self, tasks: list[tuple], batch_size: int = 1) -> GoalSchedule:
        """A scripted schedule: one ``(task, value)`` or, in 3D walks, ``(task, value,
        value_z)`` per period (see :meth:`goal`), the same in every world."""
        goals = torch.tensor([self.goal(*task) for task in tasks], dtype=torch.float64)
        labels = tuple(tuple(task[0] for _ in range(batch_size)) for task in tasks)
        return GoalSchedule(self, goals[:, None].expand(-1, batch_size, -1).clone(), labels)


@dataclass
class GoalSchedule:
    """Goals per period and world.

    Attributes:
        space: The goal space they were drawn from.
        goals: Goal vectors, [periods, B, goal_dim] (SI units, see the module docstring).
        tasks: Task name per period and world.
    """

    space: GoalSpace
    goals: torch.Tensor
    tasks: tuple[tuple[str, ...], ...]

    @property
    def batch_size(self) -> int:
        return int(self.goals.shape[1])

    @property
    def goal_dim(self) -> int:
        return int(self.goals.shape[2])

    def at(self, step: int, like: torch.Tensor | None = None) -> torch.Tensor:
        """The goals of every world at ``step``, [B, goal_dim] (the last period's goals hold
        after the schedule ends), in ``like``'s dtype and device."""
        p = min(step // self.space.period, self.goals.shape[0] - 1)
        g = self.goals[p]
        return g if like is None else g.to(dtype=like.dtype, device=like.device)

    def per_step(self, steps: int, like: torch.Tensor) -> torch.Tensor:
        """Goals of steps ``0 .. steps - 1``, [steps, B, goal_dim]."""
        index = torch.clamp(torch.arange(steps) // self.space.period, max=self.goals.shape[0] - 1)
        return self.goals[index].to(dtype=like.dtype, device=like.device)


def trace_state(state) -> dict[str, torch.Tensor]:
    """The per-step quantities the losses read, differentiable, from a state with
    ``particle_x`` [B, n, dim] [m] (mass-spring and MPM robots of equal particle masses):
    ``com`` [B, dim] [m], ``top`` [B] [m] (highest particle) and, in 3D, ``x``."""
    x = state.particle_x
    out = {"com": x.mean(dim=-2), "top": x[..., 1].amax(dim=-1)}
    if x.shape[-1] == 3:
        out["x"] = x  # the yaw of the heading loss needs every particle
    return out


def _yaw(x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Yaw [rad] of each world's body about +y relative to its rest offsets: the angle of the
    best rotation (2D Procrustes in the xz plane) taking the rest offsets onto the current ones.

    Args:
        x: Positions [..., n, 3]; x0: rest positions [n, 3].
    """
    r = x - x.mean(dim=-2, keepdim=True)
    r0 = x0 - x0.mean(dim=-2, keepdim=True)
    # Rotation by yaw about +y maps (x, z) to (x cos + z sin, -x sin + z cos).
    dot = (r0[..., 0] * r[..., 0] + r0[..., 2] * r[..., 2]).sum(-1)
    cross = (r0[..., 2] * r[..., 0] - r0[..., 0] * r[..., 2]).sum(-1)
    return torch.atan2(cross, dot)


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (the paper weighs velocity and height most), and the crawl
    term's margin: it penalizes the top's excess over ``crawl_height - crawl_margin`` [m], so
    that its optimum lies under the bar rather than on it (a squared excess has no gradient
    left at the bar, where half the steps may still be over it)."""

    velocity: float = 1.0
    jump: float = 10.0
    crawl: float = 10.0
    heading: float = 1.0
    actuation: float = 1e-3
    crawl_margin: float = 0.0


def _stand(space: GoalSpace, com: torch.Tensor) -> torch.Tensor:
    """The standing height jumps are measured from: the space's, else the COM's at step 0."""
    return com[0, :, 1] if space.stand_height is None else com.new_tensor(space.stand_height)


def _windows(steps: int, space: GoalSpace) -> torch.Tensor:
    """Start steps of the velocity windows lying inside one goal period."""
    starts = torch.arange(0, steps - space.window + 1)
    inside = (starts % space.period) + space.window <= space.period
    return starts[inside]


def locomotion_losses(rollout, weights: LossWeights = LossWeights()) -> dict[str, torch.Tensor]:
    """Per-world loss terms ``{name: [B]}`` and their weighted sum under ``"total"``.

    Reads ``rollout.goal_schedule`` (a :class:`GoalSchedule`) and ``rollout.trace`` (``com``
    [T + 1, B, dim], ``top`` [T + 1, B], ``action`` [T, B, A], as recorded by
    :func:`simdiff.rollout.rollout` with ``trace=trace_state``).
    """
    schedule: GoalSchedule = rollout.goal_schedule
    space = schedule.space
    com, top = rollout.trace["com"], rollout.trace["top"]
    steps = com.shape[0] - 1
    goal = schedule.per_step(steps, com)  # [T, B, 3]
    starts = _windows(steps, space)
    w, seconds = space.window, space.window * space.dt
    terms: dict[str, torch.Tensor] = {}
    zero = com.new_zeros(com.shape[1])
    if len(starts):
        velocity = (com[starts + w] - com[starts]) / seconds  # [W, B, dim]
        target = goal[starts]
        if space.dim == 2:
            error = (velocity[..., 0] - target[..., 0]) ** 2
        else:
            error = (velocity[..., 0] - target[..., 0]) ** 2 + (velocity[..., 2]
                                                                - target[..., 1]) ** 2
        terms["velocity"] = error.mean(dim=0)
    else:
        terms["velocity"] = zero
    if space.dim == 2:
        rise = com[1:, :, 1] - _stand(space, com)  # [T, B]
        jumping = goal[..., 1] > 0
        jump = zero
        for p0 in range(0, steps, space.period):
            p1 = min(p0 + space.period, steps)
            active = jumping[p0]
            peak = rise[p0:p1].amax(dim=0)
            jump = jump + torch.where(active, (peak - goal[p0, :, 1]) ** 2, zero)
        terms["jump"] = jump / max(1, -(-steps // space.period))
        crawling = (goal[..., 2] > 0.5).to(com.dtype)
        excess = torch.relu(top[1:] - (space.crawl_height - weights.crawl_margin)) ** 2
        terms["crawl"] = (excess * crawling).mean(dim=0)
    else:
        x, x0 = rollout.trace["x"], rollout.trace["x"][0, 0]
        yaw = _yaw(x, x0)  # [T + 1, B]
        if len(starts):
            change = torch.remainder(yaw[starts + w] - yaw[starts] + math.pi, 2 * math.pi) - math.pi
            terms["heading"] = ((change - goal[starts][..., 2] * seconds) ** 2).mean(dim=0)
        else:
            terms["heading"] = zero
    action = rollout.trace.get("action")
    terms["actuation"] = (action ** 2).mean(dim=(0, 2)) if action is not None else zero
    total = zero
    for name, value in terms.items():
        total = total + getattr(weights, name) * value
    terms["total"] = total
    return terms


def goal_loss(rollout, weights: LossWeights = LossWeights()) -> torch.Tensor:
    """A goal-conditioned scene's loss: the total locomotion loss, mean over alive worlds
    (a scene weighs its terms with ``functools.partial(goal_loss, weights=...)``)."""
    return rollout.mean(locomotion_losses(rollout, weights)["total"])


def goal_metrics(rollout, base) -> dict:
    """``base(rollout)`` (the simulator's locomotion figures) and every tracking figure over
    the worlds where it is defined (a task a world never had is NaN there)."""
    from simdiff.rollout import world_metrics

    out = base(rollout)
    for name, values in tracking_metrics(rollout).items():
        kept = values[~values.isnan()]
        if kept.numel():
            out.update(world_metrics(name, kept))
    return out


def tracking_metrics(rollout) -> dict[str, torch.Tensor]:
    """Per-world figures of merit ``[B]``: ``velocity_error`` (mean absolute difference between
    window velocity and command, m/s, over windows of walk, stand and crawl periods),
    ``jump_height_error`` (mean absolute peak-rise error over jump periods, m, NaN where a world
    had none), ``crawl_violation`` (fraction of crawl steps with the top above the bar) and, in
    3D, ``heading_error`` (rad per window)."""
    schedule: GoalSchedule = rollout.goal_schedule
    space = schedule.space
    com, top = rollout.trace["com"].detach(), rollout.trace["top"].detach()
    steps = com.shape[0] - 1
    goal = schedule.per_step(steps, com)
    starts = _windows(steps, space)
    w, seconds = space.window, space.window * space.dt
    nan = com.new_full((com.shape[1],), math.nan)
    out = {}
    velocity = (com[starts + w] - com[starts]) / seconds
    target = goal[starts]
    if space.dim == 2:
        err = (velocity[..., 0] - target[..., 0]).abs()
        moving = target[..., 1] <= 0  # jump periods are judged by their height
    else:
        err = torch.hypot(velocity[..., 0] - target[..., 0], velocity[..., 2] - target[..., 1])
        moving = torch.ones_like(err, dtype=torch.bool)
    count = moving.sum(0)
    out["velocity_error"] = torch.where(count > 0, (err * moving).sum(0) / count.clamp(min=1), nan)
    if space.dim == 2:
        rise = com[1:, :, 1] - _stand(space, com)
        errors, counts = torch.zeros_like(nan), torch.zeros_like(nan)
        for p0 in range(0, steps, space.period):
            active = goal[p0, :, 1] > 0
            peak = rise[p0:p0 + space.period].amax(dim=0)
            errors = errors + torch.where(active, (peak - goal[p0, :, 1]).abs(), 0 * peak)
            counts = counts + active.to(counts.dtype)
        out["jump_height_error"] = torch.where(counts > 0, errors / counts.clamp(min=1), nan)
        crawling = goal[..., 2] > 0.5
        over = (top[1:] > space.crawl_height) & crawling
        n = crawling.sum(0)
        out["crawl_violation"] = torch.where(n > 0, over.sum(0) / n.clamp(min=1), nan)
    else:
        yaw = _yaw(rollout.trace["x"].detach(), rollout.trace["x"][0, 0].detach())
        change = torch.remainder(yaw[starts + w] - yaw[starts] + math.pi, 2 * math.pi) - math.pi
        out["heading_error"] = (change - target[..., 2] * seconds).abs().mean(0)
    return out


class _Traced:
    """The rollout's controller: a goal-conditioned controller that also keeps the
    differentiable trace of every step (state summaries before the step, and actions)."""

    def __init__(self, controller) -> None:
        self.controller = controller
        self.traces: list[dict[str, torch.Tensor]] = []
        self.actions: list[torch.Tensor] = []

    def __call__(self, step: int, state, goal: torch.Tensor) -> torch.Tensor:
        action = self.controller(step, state, goal)
        self.traces.append(trace_state(state))
        self.actions.append(action)
        return action


def check_goal_controller(controller, schedule: GoalSchedule, batch_size: int) -> None:
    """Raise a ValueError naming what does not fit: a controller without goal inputs, a goal
    vector of another size, a schedule of another number of worlds."""
    goal_dim = getattr(controller, "goal_dim", None)
    if goal_dim is None:
        raise ValueError(f"controller {type(controller).__name__} takes no goal (it declares no "
                         f"goal_dim); this goal-conditioned scene needs one with goal inputs, "
                         f"e.g. --controller goal_mlp")
    if goal_dim != schedule.goal_dim:
        raise ValueError(f"controller goal_dim={goal_dim}; the scene's goals have size "
                         f"{schedule.goal_dim}")
    if schedule.batch_size != batch_size:
        raise ValueError(f"goal schedule has {schedule.batch_size} worlds; the simulator "
                         f"batch_size={batch_size}")


def goal_rollout(sim, state, controller, schedule: GoalSchedule, steps: int, **options):
    """:func:`simdiff.rollout.rollout` with ``goals=schedule.at``: ``controller(step, state,
    goal)`` receives each world's goal ``[B, goal_dim]``. The returned Rollout also carries
    ``goal_schedule`` and ``trace`` (``com`` [T + 1, B, dim], ``top`` [T + 1, B], ``action``
    [T, B, A], and ``x`` in 3D), which the locomotion losses read.

    Not with ``checkpoint_every`` (the trace is kept whole, so checkpointing would save no
    memory); ``params``, ``truncate_every``, ``health`` and ``record_every`` pass through.
    """
    from simdiff.rollout import rollout

    if options.get("checkpoint_every") is not None:
        raise ValueError("goal_rollout keeps a per-step trace; checkpoint_every must be None")
    check_goal_controller(controller, schedule, sim.batch_size)
    traced = _Traced(controller)
    like = state.tensors()[0]
    result = rollout(sim, state, traced, steps, goals=lambda t: schedule.at(t, like=like),
                     **options)
    traces = traced.traces + [trace_state(result.final)]
    result.trace = {name: torch.stack([t[name] for t in traces]) for name in traces[0]}
    result.trace["action"] = torch.stack(traced.actions)
    result.goal_schedule = schedule
    return result


def held_out_schedule(space: GoalSpace, batch_size: int) -> GoalSchedule:
    """Fixed evaluation goals (never drawn in training, whose draws are random): per world a
    speed on an even grid over ``[-vmax, vmax]`` (excluding 0), then, in 2D, a stand, a jump to
    the middle of the jump range and a crawl at half speed, one period each (tasks of the
    space only)."""
    speeds = torch.linspace(-space.vmax, space.vmax, batch_size + 2)[1:-1]
    if batch_size == 1:
        speeds = torch.tensor([0.5 * space.vmax])
    periods: list[list[list[float]]] = []
    labels: list[tuple[str, ...]] = []

    def add(task: str, values: list[float]) -> None:
        if task in space.tasks:
            periods.append([space.goal(task, v) for v in values])
            labels.append(tuple(task for _ in values))

    add("walk", [float(v) for v in speeds])
    if space.dim == 2:
        add("stand", [0.0] * batch_size)
        add("jump", [0.5 * sum(space.jump_range)] * batch_size)
        add("crawl", [0.5 * float(v) for v in speeds])
    else:
        add("turn", [space.turn_max * (1 if b % 2 == 0 else -1) for b in range(batch_size)])
    return GoalSchedule(space, torch.tensor(periods, dtype=torch.float64), tuple(labels))


VALIDATION_SEED = 0x5EED_0F_BE57
"""Seed of :func:`validation_schedule`'s values (a stream of its own: the trainer's draws are
``GoalSpace.sample`` per iteration)."""


def validation_schedule(space: GoalSpace, batch_size: int, steps: int) -> GoalSchedule:
    """Fixed goals a training run chooses its best iteration on: the same at every call, so
    iterations are compared on equal terms (the training draws change every iteration, and a
    lucky draw of easy goals is no better controller). World ``b`` in period ``p`` has task
    ``tasks[(b + p) % len(tasks)]`` (every task in every period when ``batch_size`` is at least
    their number), its value drawn once, uniformly over the task's range, from
    :data:`VALIDATION_SEED`; not :func:`held_out_schedule`'s grid, which ``simdiff evaluate``
    reports on."""
    gen = torch.Generator().manual_seed(VALIDATION_SEED)
    periods = -(-steps // space.period)
    u = torch.rand(periods, batch_size, 2, generator=gen, dtype=torch.float64)
    goals = torch.zeros(periods, batch_size, space.goal_dim, dtype=torch.float64)
    labels = []
    for p in range(periods):
        row = []
        for b in range(batch_size):
            name = space.tasks[(b + p) % len(space.tasks)]
            x, y = float(u[p, b, 0]), float(u[p, b, 1])
            if name == "jump":
                value = space.jump_range[0] + x * (space.jump_range[1] - space.jump_range[0])
            elif name == "turn":
                value = (2 * x - 1) * space.turn_max
            elif name == "stand":
                value = 0.0
            else:
                value = (2 * x - 1) * space.vmax
            side = (2 * y - 1) * space.vmax if space.dim == 3 and name == "walk" else 0.0
            speed = (2 * y - 1) * space.vmax if name == "jump" else 0.0
            goals[p, b] = torch.tensor(space.goal(name, value, side, speed=speed),
                                       dtype=torch.float64)
            row.append(name)
        labels.append(tuple(row))
    return GoalSchedule(space, goals, tuple(labels))


def evaluate_goals(sim, controller, schedule: GoalSchedule, *, record_every: int = 0):
    """Roll a goal schedule out without gradients; returns ``(metrics, rollout)`` with the
    per-world figures of :func:`tracking_metrics` reduced to means over worlds (NaN-free)."""
    steps = schedule.goals.shape[0] * schedule.space.period
    with torch.no_grad():
        result = goal_rollout(sim, sim.initial_state(), controller, schedule, steps,
                              record_every=record_every)
    metrics = {}
    for name, values in tracking_metrics(result).items():
        kept = values[~values.isnan()]
        if kept.numel():
            metrics[name] = float(kept.double().mean())
    return metrics, result


def period_figures(rollout) -> list[dict]:
    """What each world did in each goal period, against its command: one dict per period and
    world with ``period``, ``world``, ``task``, ``goal`` (the command, SI) and the measured
    mean ``velocity`` [m/s] (x, and z in 3D) and, in 3D, ``yaw_rate`` [rad/s] (positive is a
    left turn), over the period less its first window (the switch from the previous
    command)."""
    schedule: GoalSchedule = rollout.goal_schedule
    space = schedule.space
    com = rollout.trace["com"].detach().double()
    steps = com.shape[0] - 1
    yaw = None
    if space.dim == 3:
        x = rollout.trace["x"].detach().double()
        step_change = torch.remainder(_yaw(x[1:], x[0, 0]) - _yaw(x[:-1], x[0, 0]) + math.pi,
                                      2 * math.pi) - math.pi  # [T, B], unwrapped per step
        yaw = torch.cat([torch.zeros_like(step_change[:1]), torch.cumsum(step_change, 0)])
    out = []
    for p in range(min(schedule.goals.shape[0], -(-steps // space.period))):
        t0 = min(p * space.period + space.window, steps)
        t1 = min((p + 1) * space.period, steps)
        if t1 <= t0:
            continue
        seconds = (t1 - t0) * space.dt
        for b in range(schedule.batch_size):
            velocity = ((com[t1, b] - com[t0, b]) / seconds).tolist()
            entry = {"period": p, "world": b, "task": schedule.tasks[p][b],
                     "goal": schedule.goals[p, b].tolist(),
                     "velocity": [velocity[0]] if space.dim == 2 else [velocity[0], velocity[2]]}
            if yaw is not None:
                entry["yaw_rate"] = float(yaw[t1, b] - yaw[t0, b]) / seconds
            out.append(entry)
    return out
