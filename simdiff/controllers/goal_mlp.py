"""Goal-conditioned MLP controller (Fang et al. 2022): one network for every commanded task.

``forward(step, state, goal) -> [B, action_dim]``. Inputs per world, as in the paper:

* ``clocks`` phase-shifted sines of the gait clock, ``sin(omega t + 2 pi j / clocks)``;
* particle positions relative to the centre of mass, divided by ``position_scale`` (0.2 m);
  velocities are left out, as the paper's controllers do (they made training less stable);
* the goal, each component divided by its scale (the goal space's: ``vmax`` for speeds, the
  largest jump height, 1 for the crawl flag) and duplicated ``duplicate`` times, so that the
  command weighs as much in the first layer as the body's many position inputs.

Two layers (one hidden layer of ``hidden`` = 64 units, as the paper's network) with ``sin``
activations (``activation="tanh"`` for the ablation), the output's too, so actions lie in
[-1, 1]. Weights are
initialised uniformly in ``+-sqrt(6 / fan_in)`` (the paper's choice for sin networks).

For robots with many particles (MPM) ``points`` picks at most that many particles, evenly
spaced in index order, as position inputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from simdiff.locomotion import GoalSpace


class GoalMLPController(nn.Module):
    """Goal-conditioned closed-loop controller.

    Args:
        particle_count: Particles of the robot.
        dim: Spatial dimension (2 or 3).
        action_dim: Number of actuators.
        dt: Control time step [s].
        goals: The scene's goal space (goal size and scales).
        hidden: Units of the hidden layer.
        clocks: Number of phase-shifted sine clocks.
        frequency: Clock frequency [Hz].
        duplicate: Copies of each scaled goal component in the input.
        position_scale: Length the relative positions are divided by [m].
        activation: ``"sin"`` (the paper's) or ``"tanh"``.
        points: Largest number of particles used as position inputs.
        output_gain: Scale of the output layer's initial weights against the hidden
            layer's (0.1: small first actions, so the robot starts upright).
        hold: Control steps each action is held for (1: a new action every step); the
            network runs on steps ``0, hold, 2 hold, ...`` only.
    """

    def __init__(self, particle_count: int, dim: int, action_dim: int, dt: float,
                 goals: GoalSpace, *, hidden: int = 64, clocks: int = 16,
                 frequency: float = 2.0, duplicate: int = 16, position_scale: float = 0.2,
                 activation: str = "sin", points: int = 64, output_gain: float = 0.1,
                 hold: int = 1) -> None:
        super().__init__()
        if activation not in ("sin", "tanh"):
            raise ValueError(f"activation={activation!r}; allowed: 'sin', 'tanh'")
        if not 0 < output_gain <= 1:
            raise ValueError(f"output_gain={output_gain} must lie in (0, 1]")
        if not (isinstance(hold, int) and hold >= 1):
            raise ValueError(f"hold={hold!r} must be an integer >= 1 (control steps)")
        self.hold = hold
        self._held: tuple[int, torch.Tensor] | None = None
        if duplicate < 1 or clocks < 0 or hidden < 1:
            raise ValueError(f"duplicate={duplicate} and hidden={hidden} must be >= 1, "
                             f"clocks={clocks} >= 0")
        self.goal_dim = goals.goal_dim
        self.action_dim = action_dim
        self.dt = dt
        self.omega = 2 * math.pi * frequency
        self.duplicate = duplicate
        self.position_scale = position_scale
        self.activation = activation
        stride = max(1, -(-particle_count // points))
        self.register_buffer("points", torch.arange(0, particle_count, stride))
        self.register_buffer("phases", 2 * math.pi * torch.arange(clocks) / max(clocks, 1))
        self.register_buffer("goal_scale", torch.tensor(goals.scale, dtype=torch.float64))
        inputs = clocks + len(self.points) * dim + duplicate * self.goal_dim
        self.layers = nn.ModuleList([nn.Linear(inputs, hidden), nn.Linear(hidden, action_dim)])
        with torch.no_grad():
            for layer in self.layers:
                bound = math.sqrt(6.0 / layer.in_features)
                layer.weight.uniform_(-bound, bound)
                layer.bias.zero_()
            self.layers[-1].weight.mul_(output_gain)  # small first actions: starts upright

    def _act(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sin(z) if self.activation == "sin" else torch.tanh(z)

    def forward(self, step: int, state, goal: torch.Tensor) -> torch.Tensor:
        if self.hold > 1:
            start = step - step % self.hold
            if step != start and self._held is not None and self._held[0] == start:
                return self._held[1]
            action = self._act_on(start, state, goal)
            self._held = (start, action) if step == start else None
            return action
        return self._act_on(step, state, goal)

    def _act_on(self, step: int, state, goal: torch.Tensor) -> torch.Tensor:
        x = state.particle_x  # [B, n, dim]
        b = x.shape[0]
        dtype = self.layers[0].weight.dtype
        if tuple(goal.shape) != (b, self.goal_dim):
            raise ValueError(f"goal has shape {list(goal.shape)}; expected [{b}, "
                             f"{self.goal_dim}] ([batch_size, goal_dim])")
        relative = (x[:, self.points] - x.mean(dim=1, keepdim=True)) / self.position_scale
        clocks = torch.sin(self.omega * step * self.dt + self.phases).to(dtype)
        scaled = (goal / self.goal_scale.to(goal.dtype)).to(dtype)
        features = torch.cat([clocks.expand(b, -1), relative.reshape(b, -1).to(dtype),
                              scaled.repeat(1, self.duplicate)], dim=1)
        h = features
        for layer in self.layers[:-1]:
            h = self._act(layer(h))
        return self._act(self.layers[-1](h))


def controller(sim, scene, **options) -> nn.Module:
    goals = getattr(scene, "goals", None)
    if goals is None:
        raise ValueError(f"controller goal_mlp needs a goal-conditioned scene (one with goals); "
                         f"scene {scene.name!r} has none")
    dt = getattr(scene.model, "control_dt", scene.model.dt)
    x = scene.model.particle_x
    return GoalMLPController(int(x.shape[0]), int(x.shape[1]), sim.action_dim, dt, goals,
                             **options)
