"""A gymnasium environment: choose the integrator's accuracy parameter as a three-body system
evolves (after Saz Ulibarrena and Portegies Zwart, "Reinforcement Learning for Adaptive
Time-Stepping in the Chaotic Gravitational Three-Body Problem").

Initial conditions: three unit masses (G = 1) at rest at positions drawn uniformly from the
square [-1, 1]^2 in the plane z = 0, redrawn until every pair is at least 0.1 apart, then moved
to the center-of-mass frame (:func:`~simdiff.sims.nbody.initial.random_three_body`). The
episode's seed fixes them. Such a system has negative energy, no angular momentum, and meets
its first close encounter within a few time units.

Decisions: every ``interval`` of physical time the agent picks eta from :data:`ETAS` (10
values log-spaced in [1e-4, 0.1]); the integrator then advances with shared adaptive steps
``dt = eta * criterion`` (Aarseth's for Hermite; ``|a|/|j|`` for leapfrog and RK4; see
``NBody.next_dt``), the last step shortened to land on the interval's end.

Observation (float32, 19 values): positions and velocities of the three bodies in the
center-of-mass frame (18), and ``log10`` of the relative energy error ``|E/E0 - 1|`` (clipped
to [-16, 2]).

Reward of one action, two forms (``reward``):

``telescoping`` (the default): the per-interval *increase* of the scores, so that the episode's
undiscounted return is the score of the final state::

    r_k = -w_energy     * (s(err_E[k]) - s(err_E[k-1]))
          -w_cost       * (log10(1 + n[k]) - log10(1 + n[k-1]))
          -w_trajectory * (s(err_x[k]) - s(err_x[k-1]))               (optional, off by default)

    sum_k r_k = -w_energy * s(err_E[K]) - w_cost * log10(1 + n[K]) - w_trajectory * s(err_x[K])

with ``s(e) = (log10(max(e, 1e-16)) + 16) / 16`` (0 at 1e-16, 1 at 1), ``n[k]`` the force
evaluations paid up to the end of interval ``k`` and ``s(err[0]) = 0, n[0] = 0``. The return is
then a straight line in the plane of the evaluation's Pareto plot (log error against log
evaluations): ``w_cost / (w_energy / 16)`` decades of error are worth one decade of cost (1.6
with the defaults; the fixed-eta front trades 3.5 to 5 decades of error per decade of cost above
eta = 1e-2 and none below, where float64 round-off sets the error), and each action is charged
exactly what it adds to the final error and cost. Train with ``gamma`` near 1, so that the
discounted return is this sum.

``cumulative`` (the paper's form of the energy term)::

    r_k = -w_energy     * s(err_E[k])
          -w_cost       * log10(1 + (n[k] - n[k-1]))
          -w_trajectory * s(err_x[k])

It charges the error reached so far at every interval, so an error made early is charged once
per remaining interval, and the cost term is the log of each interval's own evaluations, which
makes an evaluation in a cheap interval dearer than one in an encounter; neither sums to the
final error or the total cost the evaluation measures.

``err_E`` is the cumulative relative energy error ``|E/E0 - 1|`` at the interval's end, and
``err_x`` the RMS distance of the bodies from a reference run with ``reference_eta`` (1e-5 by
default, 625 times more accurate than the smallest action for a fourth-order scheme). The
episode terminates when ``err_E`` exceeds ``energy_limit``, when the step falls below
``dt_min`` or an interval needs more than ``max_interval_steps`` steps (a near-collision the
integrator cannot afford to resolve); it is truncated after ``max_actions`` actions. Ending
early must not pay, so a terminated episode is charged what the worst run would: in the
cumulative form the worst reward of each action it did not take (error 1,
``max_interval_steps`` evaluations of the integrator); in the telescoping form the rise of the
energy (and trajectory) score to 1 and the evaluations of ``max_interval_steps`` steps for each
action not taken.

The three-body problem from rest has near-collisions so close that float64 positions limit
the energy error: there a smaller eta takes millions of steps and ends with a *larger* error,
which is one reason a fixed eta is not the best choice.

Where it departs from the paper: the telescoping reward above (the paper's form is
``reward="cumulative"``); the paper's reward rewards large steps through the step size itself; we charge the cost a run actually pays, force evaluations, so that one reward serves
integrators of different cost per step (RK4 evaluates forces four times a step). The trajectory
term is ours: in a chaotic system a small energy error does not make a trajectory right. The
integrator is an argument (Hermite as in the paper, or leapfrog and RK4), to ask whether one
policy transfers.

Speed: the system advances with :meth:`NBody.evolve <simdiff.sims.nbody.NBody.evolve>`
(:class:`System`), whose compiled few-body loop takes whole intervals in one launch and the same
steps as ``NBody.step``; a test checks that a fixed action reproduces NBody's own steps.
"""

from __future__ import annotations

import math
from typing import ClassVar

import gymnasium as gym
import numpy as np
import torch

from simdiff.sims.base import ValidationError
from simdiff.sims.nbody import Integrator
from simdiff.sims.nbody.evolve import Status
from simdiff.sims.nbody.initial import random_three_body

__all__ = ["ETAS", "OBSERVATION_SIZE", "REWARDS", "Status", "System", "ThreeBodyTimestepEnv",
           "initial_conditions", "log_error_score", "observations"]

ETAS = np.logspace(-4, -1, 10)
"""The accuracy parameters the agent chooses from."""

OBSERVATION_SIZE = 19

REWARDS = ("telescoping", "cumulative")
"""The reward forms (module docstring)."""


def log_error_score(error) -> np.ndarray:
    """``(log10(max(error, 1e-16)) + 16) / 16``: 0 for an error of 1e-16, 1 for an error of 1."""
    return (np.log10(np.maximum(error, 1e-16)) + 16) / 16


def initial_conditions(seeds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masses ``[S, 3]``, positions and velocities ``[S, 3, 3]`` of the episodes with the given
    integer seeds (the distribution in the module docstring)."""
    ics = [random_three_body(int(seed)) for seed in seeds]
    return tuple(np.stack([ic[k].numpy() for ic in ics]) for k in range(3))


def check_integrator(integrator: str) -> Integrator:
    try:
        return Integrator(integrator)
    except ValueError:
        allowed = ", ".join(i.value for i in Integrator)
        raise ValidationError(f"integrator={integrator!r} is unknown; allowed: {allowed}") from None


class System:
    """A batch of independent small systems advanced together by the batched
    :class:`~simdiff.sims.nbody.NBody` (float64, Warp; whole intervals in its compiled loop).

    Args:
        mass: Body masses, shape ``[systems, bodies]``.
        x: Positions, shape ``[systems, bodies, 3]``.
        v: Velocities, shape ``[systems, bodies, 3]``.
        integrator: ``hermite``, ``leapfrog``, ``rk4`` or ``ias15``.
        dt_max: Largest step (the model's ``dt``).
        dt_min: A smaller adaptive step stops that system with ``Status.DT_BELOW_MIN``.
    """

    def __init__(self, mass, x, v, *, integrator: str = "hermite", dt_max: float = 0.1,
                 dt_min: float = 1e-12) -> None:
        from simdiff.backend import resolve_backend
        from simdiff.sims.nbody import Model, NBody

        check_integrator(integrator)
        mass, x, v = (torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (mass, x, v))
        if mass.ndim != 2 or tuple(x.shape) != (*mass.shape, 3) or x.shape != v.shape:
            raise ValidationError(
                f"mass must have shape [systems, bodies] and x, v [systems, bodies, 3]; got "
                f"{tuple(mass.shape)}, {tuple(x.shape)}, {tuple(v.shape)}")
        self.sim = NBody(Model(mass, x, v, dt=dt_max, integrator=integrator, eta=1e-2,
                               dt_min=dt_min), resolve_backend("warp", precision="float64"))
        self.state = self.sim.initial_state()
        self.mass = mass.numpy()
        self.systems, self.bodies = self.mass.shape
        self.steps = np.zeros(self.systems, dtype=np.int64)
        self.initial_energy = self.sim.initial_energy.numpy().copy()

    @property
    def x(self) -> np.ndarray:
        """Positions, shape ``[systems, bodies, 3]`` (a copy)."""
        return self.state.body_x.numpy().copy()

    @property
    def v(self) -> np.ndarray:
        """Velocities, shape ``[systems, bodies, 3]`` (a copy)."""
        return self.state.body_v.numpy().copy()

    @property
    def time(self) -> np.ndarray:
        return self.state.time.numpy().copy()

    @property
    def evaluations(self) -> np.ndarray:
        """Force evaluations each system has paid (the initial one excluded)."""
        return self.state.force_evaluations.numpy().copy()

    def advance(self, t_end, eta, *, max_steps: int = 10_000_000) -> np.ndarray:
        """Advance every system to its ``t_end`` with accuracy parameter ``eta`` (scalars or
        arrays of shape ``[systems]``), the last step shortened to land on ``t_end``.

        Returns:
            The :class:`Status` code of each system; a system that stopped early keeps the
            state and time it reached.
        """
        t_end = torch.as_tensor(np.broadcast_to(np.asarray(t_end, np.float64), (self.systems,)))
        eta = np.broadcast_to(np.asarray(eta, dtype=np.float64), (self.systems,))
        if not (eta > 0).all():
            raise ValidationError(f"eta must be > 0; got {eta.min()}")
        with torch.no_grad():
            self.state = self.sim.evolve(self.state, t_end, eta=torch.as_tensor(eta.copy()),
                                         max_steps=max_steps, health="mask")
        self.steps += self.sim.last_steps.numpy()
        return self.sim.last_status.numpy().copy()

    def energy_error(self) -> np.ndarray:
        """``|E / E0 - 1|`` of each system."""
        return self.sim.energy_error(self.state).numpy().copy()

    def observe(self) -> np.ndarray:
        """Positions and velocities in each system's center-of-mass frame, shape
        ``[systems, bodies * 6]``: per body its position then its velocity."""
        return self.sim.observe(self.state).numpy().copy()


def observations(system: System) -> np.ndarray:
    """The observation of every system of a batch, ``[systems, 19]`` float32: phase space in
    the center-of-mass frame and the clipped log10 relative energy error."""
    log_error = np.clip(np.log10(np.maximum(system.energy_error(), 1e-16)), -16, 2)
    return np.concatenate([system.observe(), log_error[:, None]], 1).astype(np.float32)


def rms_distance(x: np.ndarray, x_ref: np.ndarray) -> np.ndarray:
    """RMS over bodies of the distance between two position sets ``[S, N, 3]`` -> ``[S]``."""
    return np.sqrt(((x - x_ref) ** 2).sum(-1).mean(-1))


class ThreeBodyTimestepEnv(gym.Env):
    """Choose Hermite's (or another integrator's) eta every ``interval`` of physical time.

    Args:
        integrator: ``hermite`` (the paper's), ``leapfrog`` or ``rk4``.
        interval: Physical time between decisions (> 0).
        max_actions: Decisions per episode before truncation (>= 1).
        energy_limit: Relative energy error that ends an episode (> 0).
        w_energy: Weight of the energy-error penalty (>= 0).
        w_cost: Weight of the cost penalty (>= 0).
        w_trajectory: Weight of the trajectory-error penalty (>= 0; > 0 runs a reference).
        reference_eta: Accuracy parameter of the reference run (Hermite).
        dt_min: Smallest step; a smaller one ends the episode.
        max_interval_steps: Most steps one interval may take; more end the episode.
        reward: ``telescoping`` (default) or ``cumulative`` (the paper's; module docstring).
    """

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, *, integrator: str = "hermite", interval: float = 0.2,
                 max_actions: int = 50, energy_limit: float = 1e-1, w_energy: float = 1.0,
                 w_cost: float = 0.1, w_trajectory: float = 0.0, reference_eta: float = 1e-5,
                 dt_min: float = 1e-14, max_interval_steps: int = 50_000,
                 reward: str = "telescoping") -> None:
        super().__init__()
        if reward not in REWARDS:
            raise ValidationError(f"reward={reward!r} is unknown; allowed: {', '.join(REWARDS)}")
        self.reward = reward
        self.integrator = check_integrator(integrator)
        for name, value in (("w_energy", w_energy), ("w_cost", w_cost),
                            ("w_trajectory", w_trajectory)):
            if not value >= 0:
                raise ValidationError(f"{name}={value} must be >= 0")
        for name, value in (("interval", interval), ("energy_limit", energy_limit),
                            ("reference_eta", reference_eta), ("dt_min", dt_min)):
            if not value > 0:
                raise ValidationError(f"{name}={value} must be > 0")
        for name, value in (("max_actions", max_actions),
                            ("max_interval_steps", max_interval_steps)):
            if not (isinstance(value, int) and value >= 1):
                raise ValidationError(f"{name}={value!r} must be an integer >= 1")
        self.max_interval_steps = max_interval_steps
        self.interval, self.max_actions, self.energy_limit = interval, max_actions, energy_limit
        self.w_energy, self.w_cost, self.w_trajectory = w_energy, w_cost, w_trajectory
        self.reference_eta, self.dt_min = reference_eta, dt_min
        self.action_space = gym.spaces.Discrete(len(ETAS))
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(OBSERVATION_SIZE,),
                                                dtype=np.float32)
        self.system: System | None = None
        self.reference: System | None = None

    @property
    def settings(self) -> dict:
        """The constructor's arguments (saved beside a policy, to rebuild its environment)."""
        return {"integrator": self.integrator.value, "interval": self.interval,
                "max_actions": self.max_actions, "energy_limit": self.energy_limit,
                "w_energy": self.w_energy, "w_cost": self.w_cost,
                "w_trajectory": self.w_trajectory, "reference_eta": self.reference_eta,
                "dt_min": self.dt_min, "max_interval_steps": self.max_interval_steps,
                "reward": self.reward}

    @property
    def worst_interval_evaluations(self) -> int:
        """Force evaluations of an interval that takes ``max_interval_steps`` steps."""
        return {Integrator.RK4: 4}.get(self.integrator, 1) * self.max_interval_steps

    @property
    def worst_reward(self) -> float:
        """The magnitude of the worst reward one action can get (cumulative form)."""
        return (self.w_energy + self.w_trajectory
                + self.w_cost * math.log10(1 + self.worst_interval_evaluations))

    def _observation(self) -> np.ndarray:
        return observations(self.system)[0]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.episode_seed = int(self.np_random.integers(2**31))
        mass, x, v = initial_conditions([self.episode_seed])
        self.system = System(mass, x, v, integrator=self.integrator.value, dt_min=self.dt_min)
        self.reference = None
        if self.w_trajectory > 0:
            self.reference = System(mass, x, v, integrator="hermite", dt_min=self.dt_min)
        self.energy_error, self.trajectory_error, self.actions_taken = 0.0, 0.0, 0
        self.evaluations = 0
        return self._observation(), {"time": 0.0, "seed": self.episode_seed}

    def step(self, action):
        if self.system is None:
            raise RuntimeError("call reset() before step()")
        if not self.action_space.contains(action):
            raise ValidationError(f"action={action!r} is outside the action space "
                                  f"Discrete({self.action_space.n}): use 0..{self.action_space.n - 1}")
        eta = float(ETAS[int(action)])
        t_end = (self.actions_taken + 1) * self.interval
        before = int(self.system.evaluations[0])
        status = int(self.system.advance(t_end, eta, max_steps=self.max_interval_steps)[0])
        self.actions_taken += 1
        previous_energy, previous_trajectory = self.energy_error, self.trajectory_error
        self.energy_error = float(self.system.energy_error()[0])
        self.evaluations = int(self.system.evaluations[0])
        evaluations = self.evaluations - before
        if self.reference is not None:
            self.reference.advance(t_end, self.reference_eta, max_steps=100 * self.max_interval_steps)
            self.trajectory_error = float(rms_distance(self.system.x, self.reference.x)[0])
        terminated = not self.energy_error <= self.energy_limit or status != Status.OK
        truncated = self.actions_taken >= self.max_actions
        w_x = self.w_trajectory if self.reference is not None else 0.0
        if self.reward == "cumulative":
            reward = (-self.w_energy * log_error_score(self.energy_error)
                      - self.w_cost * math.log10(1 + evaluations)
                      - w_x * log_error_score(self.trajectory_error))
            if terminated:
                reward -= (self.max_actions - self.actions_taken) * self.worst_reward
        else:
            energy_score = log_error_score(self.energy_error)
            trajectory_score = log_error_score(self.trajectory_error)
            total = self.evaluations
            if terminated:  # as if the error reached 1 and every action left cost the most
                energy_score = trajectory_score = 1.0
                total += (self.max_actions - self.actions_taken) * self.worst_interval_evaluations
            reward = (-self.w_energy * (energy_score - log_error_score(previous_energy))
                      - self.w_cost * (math.log10(1 + total) - math.log10(1 + before))
                      - w_x * (trajectory_score - log_error_score(previous_trajectory)))
        info = {"time": float(self.system.time[0]), "eta": eta, "evaluations": evaluations,
                "energy_error": self.energy_error, "status": status}
        if self.reference is not None:
            info["trajectory_error"] = self.trajectory_error
        return self._observation(), float(reward), terminated, truncated, info
