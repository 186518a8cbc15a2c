"""Gymnasium environments for goal-conditioned locomotion over simdiff's mass-spring simulator,
for reinforcement-learning baselines (stable-baselines3 PPO) on the same scenes, goals and loss
terms as the differentiable-physics trainer.

:class:`LocomotionVecEnv` is a stable-baselines3 vector environment over one batched simulator:
its ``n`` environments are the ``n`` worlds of one ``MassSpring`` of ``batch_size=n``, stepped
together in one kernel launch per step, as the trainer steps its worlds (a
``DummyVecEnv`` of single-world environments would pay the per-step overhead ``n`` times).
:class:`LocomotionEnv` is one such world as a ``gymnasium.Env``.

One environment step holds the action for ``control_steps`` simulator steps (a control window).
The observation is what the goal controller sees: sine clocks, particle positions relative to the
centre of mass (divided by 0.2 m) and velocities (divided by 1 m/s), and the goal scaled by the
goal space. The reward of a window is minus the locomotion loss terms on it: the squared error of
the window's mean velocity against the command over ``vmax^2``, the squared shortfall of the
centre of mass's rise below a jump command, the squared excess of the top above the crawl bar,
and the actuation term; each world draws its goals from the scene's distribution at reset
(every ``period`` steps a new one), seeded by ``reset(seed=...)``. A world whose state fails
(non-finite, blown up) ends its episode with reward -100.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnv

from simdiff.locomotion import GoalSchedule, LossWeights

__all__ = ["LocomotionEnv", "LocomotionVecEnv"]


class _Worlds:
    """``batch_size`` worlds of a goal scene stepped together, each with its own clock, goal
    schedule and episode (the shared core of both environments)."""

    def __init__(self, scene: str, batch_size: int, control_steps: int, clocks: int,
                 frequency: float, scene_options: dict | None) -> None:
        from simdiff.backend import resolve_backend
        from simdiff.scene import load_scene, make_simulator

        if control_steps < 1:
            raise ValueError(f"control_steps={control_steps} must be >= 1")
        self.scene = load_scene(scene, **(scene_options or {}))
        if self.scene.goals is None:
            raise ValueError(f"scene {self.scene.name!r} is not goal-conditioned (no goals)")
        self.space = self.scene.goals
        self.batch_size = batch_size
        self.sim = make_simulator(self.scene, resolve_backend("warp", "cpu", "float32"),
                                  batch_size=batch_size)
        self.control_steps = control_steps
        self.weights = LossWeights()
        self.omega = 2 * math.pi * frequency
        self.phases = 2 * math.pi * np.arange(clocks) / clocks
        n, dim = self.scene.model.particle_x.shape
        self.observation_size = clocks + 2 * n * dim + self.space.goal_dim
        self.horizon = self.scene.steps
        self._scale = np.asarray(self.space.scale, dtype=np.float64)
        self.initial = self.sim.initial_state()
        self.state = self.initial
        self.t = np.zeros(batch_size, dtype=np.int64)
        periods = -(-self.horizon // self.space.period)
        self.goals = np.zeros((periods, batch_size, self.space.goal_dim))  # SI units
        self.tasks: list[tuple[str, ...]] = []  # per world, its task per period
        self.stand = np.zeros(batch_size)

    def goal(self) -> np.ndarray:
        """Each world's goal at its own step, [B, goal_dim] (SI units)."""
        p = np.minimum(self.t // self.space.period, self.goals.shape[0] - 1)
        return self.goals[p, np.arange(self.batch_size)]

    def task(self, world: int) -> str:
        tasks = self.tasks[world]
        return tasks[min(int(self.t[world]) // self.space.period, len(tasks) - 1)]

    def reset(self, world: int, draw: int) -> None:
        """World ``world`` back to the initial state with goals drawn by seed ``draw``."""
        schedule = self.space.sample(1, self.horizon, seed=draw)
        self.goals[:, world] = schedule.goals[:, 0].numpy()
        while len(self.tasks) <= world:
            self.tasks.append(())
        self.tasks[world] = tuple(row[0] for row in schedule.tasks)
        keep = torch.zeros(self.batch_size, dtype=torch.bool)
        keep[world] = True
        self.state = self.initial.where(keep, self.state)
        self.t[world] = 0
        x = self.initial.particle_x[world].double()
        self.stand[world] = float(x[:, 1].mean()) if self.space.stand_height is None \
            else self.space.stand_height

    def observation(self) -> np.ndarray:
        x = self.state.particle_x.double().numpy()  # [B, n, dim]
        v = self.state.particle_v.double().numpy()
        clocks = np.sin(self.omega * self.t[:, None] * self.space.dt + self.phases)
        relative = (x - x.mean(1, keepdims=True)) / 0.2
        goal = self.goal() / self._scale
        b = self.batch_size
        return np.concatenate([clocks, relative.reshape(b, -1), v.reshape(b, -1), goal],
                              axis=1).astype(np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Advance every world one control window; returns ``(reward [B], failed [B], info)``."""
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(self.batch_size, -1),
                         -1.0, 1.0)
        goal = self.goal()
        a = torch.as_tensor(action, dtype=torch.float32)
        com0 = self.state.particle_x[..., 0].double().mean(1).numpy()
        peak = np.full(self.batch_size, -math.inf)
        excess = np.zeros(self.batch_size)
        with torch.no_grad():
            for _ in range(self.control_steps):
                self.state = self.sim.step(self.state, a)
                y = self.state.particle_x[..., 1].double().numpy()
                peak = np.maximum(peak, y.mean(1) - self.stand)
                excess += np.maximum(0.0, y.max(1) - self.space.crawl_height) ** 2
        failed = np.zeros(self.batch_size, dtype=bool)
        failed[list(self.sim.check_state(self.state))] = True
        seconds = self.control_steps * self.space.dt
        velocity = (self.state.particle_x[..., 0].double().mean(1).numpy() - com0) / seconds
        w, space = self.weights, self.space
        cost = w.velocity * (velocity - goal[:, 0]) ** 2 / space.vmax**2
        if space.dim == 2:
            jumping, crawling = goal[:, 1] > 0, goal[:, 2] > 0.5
            shortfall = np.maximum(0.0, goal[:, 1] - peak) ** 2 / space.jump_range[1] ** 2
            cost += np.where(jumping, w.jump * shortfall, 0.0)
            cost += np.where(crawling, w.crawl * excess / self.control_steps / 0.01**2, 0.0)
        cost += w.actuation * (action**2).mean(1)
        self.t += self.control_steps
        reward = np.where(failed, -100.0, -cost)
        return reward, failed, {"velocity": velocity, "target_velocity": goal[:, 0].copy()}


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
        self.worlds = _Worlds(scene, 1, control_steps, clocks, frequency, scene_options)
        self.scene, self.space, self.sim = self.worlds.scene, self.worlds.space, self.worlds.sim
        self.control_steps, self.horizon = control_steps, self.worlds.horizon
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.worlds.observation_size,),
                                                np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.sim.action_dim,), np.float32)

    @property
    def state(self):
        return self.worlds.state

    @property
    def t(self) -> int:
        return int(self.worlds.t[0])

    @property
    def schedule(self) -> GoalSchedule:
        """This episode's goals (one world)."""
        return GoalSchedule(self.space, torch.as_tensor(self.worlds.goals.copy()),
                            tuple((task,) for task in self.worlds.tasks[0]))

    def _observation(self) -> np.ndarray:
        return self.worlds.observation()[0]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.worlds.reset(0, int(self.np_random.integers(2**31 - 1)))
        return self._observation(), {"task": self.worlds.task(0)}

    def step(self, action):
        reward, failed, info = self.worlds.step(np.asarray(action)[None])
        failed = bool(failed[0])
        info = {"velocity": float(info["velocity"][0]),
                "target_velocity": float(info["target_velocity"][0]),
                "task": self.worlds.task(0)}
        truncated = self.t >= self.horizon
        obs = self._observation() if not failed else np.zeros(self.observation_space.shape,
                                                               np.float32)
        return obs, float(reward[0]), failed, truncated, info


class LocomotionVecEnv(VecEnv):
    """``num_envs`` goal-conditioned locomotion environments as the worlds of one batched
    simulator (stable-baselines3's vector-environment interface; episodes end and restart
    per world, with ``terminal_observation`` and ``TimeLimit.truncated`` in the infos).

    Args:
        num_envs: Worlds (environments).
        scene, control_steps, clocks, frequency, scene_options: As :class:`LocomotionEnv`.
        seed: Seed of the worlds' goal draws (world ``i`` draws from ``seed + i``).
    """

    def __init__(self, num_envs: int, scene: str = "walker_goals", *, control_steps: int = 10,
                 clocks: int = 4, frequency: float = 3.0, scene_options: dict | None = None,
                 seed: int = 0) -> None:
        self.worlds = _Worlds(scene, num_envs, control_steps, clocks, frequency, scene_options)
        self.render_mode = None
        observation = gym.spaces.Box(-np.inf, np.inf, (self.worlds.observation_size,),
                                     np.float32)
        action = gym.spaces.Box(-1.0, 1.0, (self.worlds.sim.action_dim,), np.float32)
        super().__init__(num_envs, observation, action)
        self.seed(seed)
        self._actions = np.zeros((num_envs, self.worlds.sim.action_dim))

    def seed(self, seed: int | None = None) -> list[int | None]:
        base = 0 if seed is None else int(seed)
        self._rngs = [np.random.default_rng(base + i) for i in range(self.num_envs)]
        return [base + i for i in range(self.num_envs)]

    def _draw(self, world: int) -> int:
        return int(self._rngs[world].integers(2**31 - 1))

    def reset(self) -> np.ndarray:
        for world in range(self.num_envs):
            self.worlds.reset(world, self._draw(world))
        return self.worlds.observation()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self):
        reward, failed, info = self.worlds.step(self._actions)
        truncated = self.worlds.t >= self.worlds.horizon
        done = failed | truncated
        obs = self.worlds.observation()
        infos: list[dict[str, Any]] = [
            {"velocity": float(info["velocity"][i]),
             "target_velocity": float(info["target_velocity"][i])} for i in range(self.num_envs)]
        for world in np.flatnonzero(done):
            infos[world]["terminal_observation"] = obs[world].copy()
            infos[world]["TimeLimit.truncated"] = bool(truncated[world] and not failed[world])
            self.worlds.reset(world, self._draw(world))
        if done.any():
            obs = self.worlds.observation()
        return obs, reward.astype(np.float32), done, infos

    def close(self) -> None:
        pass

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        value = getattr(self, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs):
        raise AttributeError(f"LocomotionVecEnv has no per-environment method {method_name!r}")

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]
