"""A gymnasium environment for goal-conditioned locomotion over simdiff's mass-spring simulator,
for reinforcement-learning baselines (stable-baselines3 PPO) on the same scenes, goals and loss
terms as the differentiable-physics trainer.

One environment step holds the action for ``control_steps`` simulator steps (a control window).
The observation is what the goal controller sees: sine clocks, particle positions relative to the
centre of mass (divided by 0.2 m) and velocities (divided by 1 m/s), and the goal scaled by the
goal space. The reward of a window is minus the locomotion loss terms on it: the squared error of
the window's mean velocity against the command over ``vmax^2``, the squared shortfall of the
centre of mass's rise below a jump command, the squared excess of the top above the crawl bar,
and the actuation term; goals are drawn from the scene's distribution at reset (every ``period``
steps a new one), seeded by ``reset(seed=...)``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import gymnasium as gym
import numpy as np
import torch

from simdiff.locomotion import GoalSchedule, LossWeights

__all__ = ["LocomotionEnv"]


class LocomotionEnv(gym.Env):
    """Goal-conditioned locomotion of one world of a goal scene (default ``walker_goals``).

    Args:
        scene: Scene name or path (a goal-conditioned mass-spring scene).
        control_steps: Simulator steps per environment step.
        clocks: Sine clocks in the observation.
        frequency: Clock frequency [Hz].
        scene_options: Keyword arguments of the scene function.
    """

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, scene: str = "walker_goals", *, control_steps: int = 10, clocks: int = 4,
                 frequency: float = 3.0, scene_options: dict | None = None) -> None:
        from simdiff.backend import resolve_backend
        from simdiff.scene import load_scene, make_simulator

        if control_steps < 1:
            raise ValueError(f"control_steps={control_steps} must be >= 1")
        self.scene = load_scene(scene, **(scene_options or {}))
        if self.scene.goals is None:
            raise ValueError(f"scene {self.scene.name!r} is not goal-conditioned (no goals)")
        self.space = self.scene.goals
        self.sim = make_simulator(self.scene, resolve_backend("warp", "cpu", "float32"))
        self.control_steps = control_steps
        self.weights = LossWeights()
        self.omega = 2 * math.pi * frequency
        self.phases = 2 * math.pi * np.arange(clocks) / clocks
        n, dim = self.scene.model.particle_x.shape
        size = clocks + 2 * n * dim + self.space.goal_dim
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.sim.action_dim,), np.float32)
        self.horizon = self.scene.steps
        self._scale = np.asarray(self.space.scale, dtype=np.float64)

    def _observation(self) -> np.ndarray:
        x = self.state.particle_x[0].double().numpy()
        v = self.state.particle_v[0].double().numpy()
        clocks = np.sin(self.omega * self.t * self.space.dt + self.phases)
        goal = self.schedule.at(self.t).numpy()[0] / self._scale
        parts = [clocks, ((x - x.mean(0)) / 0.2).ravel(), v.ravel(), goal]
        return np.concatenate(parts).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        draw = int(self.np_random.integers(2**31 - 1))
        self.schedule: GoalSchedule = self.space.sample(1, self.horizon, seed=draw)
        self.state = self.sim.initial_state()
        self.t = 0
        self.stand = float(self.state.particle_x[0, :, 1].mean()) if self.space.stand_height \
            is None else self.space.stand_height
        return self._observation(), {"task": self.schedule.tasks[0][0]}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        goal = self.schedule.at(self.t).numpy()[0]
        a = torch.as_tensor(action, dtype=torch.float32)[None]
        com0 = float(self.state.particle_x[0, :, 0].mean())
        peak, excess = -math.inf, 0.0
        with torch.no_grad():
            for _ in range(self.control_steps):
                self.state = self.sim.step(self.state, a)
                y = self.state.particle_x[0, :, 1]
                peak = max(peak, float(y.mean()) - self.stand)
                excess += max(0.0, float(y.max()) - self.space.crawl_height) ** 2
        failed = bool(self.sim.check_state(self.state))
        seconds = self.control_steps * self.space.dt
        velocity = (float(self.state.particle_x[0, :, 0].mean()) - com0) / seconds
        w = self.weights
        cost = w.velocity * (velocity - goal[0]) ** 2 / self.space.vmax**2
        if self.space.dim == 2:
            if goal[1] > 0:
                cost += w.jump * max(0.0, goal[1] - peak) ** 2 / self.space.jump_range[1] ** 2
            if goal[2] > 0.5:
                cost += w.crawl * excess / self.control_steps / 0.01**2
        cost += w.actuation * float((action**2).mean())
        self.t += self.control_steps
        terminated = failed
        truncated = self.t >= self.horizon
        info = {"velocity": velocity, "target_velocity": float(goal[0]),
                "task": self.schedule.tasks[min(self.t // self.space.period,
                                                len(self.schedule.tasks) - 1)][0]}
        reward = -cost if not failed else -100.0
        obs = self._observation() if not failed else np.zeros(self.observation_space.shape,
                                                               np.float32)
        return obs, float(reward), terminated, truncated, info
