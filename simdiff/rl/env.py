"""A gymnasium environment: choose the integrator's accuracy parameter as a three-body system
evolves (after Saz Ulibarrena and Portegies Zwart, "Reinforcement Learning for Adaptive
Time-Stepping in the Chaotic Gravitational Three-Body Problem").

Episode: three unit masses start at rest at positions uniform in [-1, 1]^2 (z = 0, pairs at
least 0.1 apart, center-of-mass frame; G = 1), drawn from the episode's seed. Every
``interval`` of physical time the agent picks eta from :data:`ETAS` (10 values log-spaced in
[1e-4, 0.1]); the simulator then advances with shared adaptive steps ``dt = eta * criterion``
(Aarseth's for Hermite; see ``sims/nbody/model.py``), the last step shortened to land on the
interval's end.

Observation (float32, 19 values): positions and velocities of the three bodies in the
center-of-mass frame (18), and ``log10`` of the relative energy error (clipped to [-16, 2]).

Reward of one action::

    r = -w_energy * (log10(max(err, 1e-16)) + 16) / 16  -  w_cost * log10(1 + evaluations)

where ``err`` is the relative energy error at the interval's end and ``evaluations`` the force
evaluations the interval cost. The paper also rewards large steps through a log-energy-error
term; we penalize the cost directly (force evaluations are what a run pays), with both weights
as arguments. The episode terminates when ``err`` exceeds ``energy_limit``, and is truncated
after ``max_actions`` actions.

Where it departs from the paper: the reward above (cost measured as force evaluations), and the
integrator is an argument (Hermite as in the paper, or leapfrog and RK4, which take the
``a/j`` step criterion).
"""

from __future__ import annotations

import math
from typing import ClassVar

import gymnasium as gym
import numpy as np
import torch

from simdiff.backend import resolve_backend
from simdiff.sims.base import ValidationError
from simdiff.sims.nbody import Integrator, Model, NBody
from simdiff.sims.nbody.initial import random_three_body

__all__ = ["ETAS", "ThreeBodyTimestepEnv"]

ETAS = np.logspace(-4, -1, 10)
"""The accuracy parameters the agent chooses from."""


class ThreeBodyTimestepEnv(gym.Env):
    """Choose Hermite's (or another integrator's) eta every ``interval`` of physical time.

    Args:
        integrator: ``hermite`` (the paper's), ``leapfrog`` or ``rk4``.
        interval: Physical time between decisions.
        max_actions: Decisions per episode before truncation.
        energy_limit: Relative energy error that ends an episode.
        w_energy: Weight of the energy-error penalty (>= 0).
        w_cost: Weight of the cost penalty (>= 0).
        backend: Kernel backend of the simulator (Warp: few bodies are launch-bound).
    """

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, *, integrator: str = "hermite", interval: float = 0.1,
                 max_actions: int = 50, energy_limit: float = 1e-1, w_energy: float = 1.0,
                 w_cost: float = 0.1, backend: str = "warp") -> None:
        super().__init__()
        try:
            self.integrator = Integrator(integrator)
        except ValueError:
            allowed = ", ".join(i.value for i in Integrator)
            raise ValidationError(f"integrator={integrator!r} is unknown; allowed: {allowed}") from None
        for name, value in (("w_energy", w_energy), ("w_cost", w_cost)):
            if not value >= 0:
                raise ValidationError(f"{name}={value} must be >= 0")
        if not interval > 0:
            raise ValidationError(f"interval={interval} must be > 0")
        if max_actions < 1:
            raise ValidationError(f"max_actions={max_actions} must be >= 1")
        self.interval, self.max_actions, self.energy_limit = interval, max_actions, energy_limit
        self.w_energy, self.w_cost = w_energy, w_cost
        self.backend = resolve_backend(backend, precision="float64")
        self.action_space = gym.spaces.Discrete(len(ETAS))
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(19,), dtype=np.float32)
        self.sim: NBody | None = None
        self.state = None

    def _observation(self) -> np.ndarray:
        log_error = math.log10(max(self.energy_error, 1e-16))
        obs = self.sim.observe(self.state).cpu().numpy()
        return np.append(obs, np.clip(log_error, -16, 2)).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        mass, x, v = random_three_body(int(self.np_random.integers(2**31)))
        model = Model(mass, x, v, dt=0.1, integrator=self.integrator, eta=float(ETAS[-1]))
        self.sim = NBody(model, self.backend)
        with torch.no_grad():
            self.state = self.sim.initial_state()
        self.energy_error, self.actions_taken = 0.0, 0
        return self._observation(), {"time": 0.0}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action={action!r} is outside the action space "
                             f"Discrete({self.action_space.n})")
        eta = float(ETAS[int(action)])
        t_end = (self.actions_taken + 1) * self.interval
        before = self.sim.force_evaluations
        with torch.no_grad():
            while float(self.state.time) < t_end * (1 - 1e-12):
                dt = min(self.sim.next_dt(self.state, eta), t_end - float(self.state.time))
                self.state = self.sim.step(self.state, dt=dt)
            energy = float(self.sim.energy(self.state))
        self.actions_taken += 1
        e0 = self.sim.initial_energy
        self.energy_error = abs((energy - e0) / e0)
        evaluations = self.sim.force_evaluations - before
        error_term = (math.log10(max(self.energy_error, 1e-16)) + 16) / 16
        reward = -self.w_energy * error_term - self.w_cost * math.log10(1 + evaluations)
        terminated = not self.energy_error <= self.energy_limit
        truncated = self.actions_taken >= self.max_actions
        info = {"time": float(self.state.time), "eta": eta, "evaluations": evaluations,
                "energy_error": self.energy_error}
        return self._observation(), float(reward), terminated, truncated, info
