"""Closed-loop MLP controller: sees phase clocks and the robot's state, outputs muscle actions.

Acts on every world of a batch at once: observations ``[B, observation_dim]`` in, actions
``[B, action_dim]`` out. Input: ``clocks`` sines of the gait phase and the simulator's observation (positions relative
to the center of mass, velocities, the center's velocity), scaled to order one. One hidden
layer with tanh, tanh output so actions stay in [-1, 1].
"""

import math

import torch
from torch import nn


class MLPController(nn.Module):
    """Closed-loop controller ``u = tanh(W2 tanh(W1 [clocks, obs] + b1) + b2)``.

    Args:
        observe: Maps a state to a flat observation tensor (the simulator's ``observe``).
        observation_dim: Length of that observation.
        action_dim: Number of actuators.
        dt: Simulator time step [s].
        hidden: Hidden units.
        clocks: Number of phase-shifted sine clocks.
        frequency: Clock frequency [Hz].
        obs_scale: Factor applied to the observation.
    """

    def __init__(self, observe, observation_dim: int, action_dim: int, dt: float, *,
                 hidden: int = 32, clocks: int = 4, frequency: float = 2.0,
                 obs_scale: float = 0.2) -> None:
        super().__init__()
        self.observe = observe
        self.dt = dt
        self.omega = 2 * math.pi * frequency
        self.obs_scale = obs_scale
        self.register_buffer("phases", 2 * math.pi * torch.arange(clocks) / clocks)
        self.hidden = nn.Linear(clocks + observation_dim, hidden)
        self.out = nn.Linear(hidden, action_dim)
        with torch.no_grad():
            self.hidden.weight.mul_(0.5)
            self.out.weight.mul_(0.5)

    def forward(self, step: int, state) -> torch.Tensor:
        """Actions ``[B, action_dim]`` from the worlds' observations ``[B, observation_dim]``
        (the clocks are the same in every world)."""
        clocks = torch.sin(self.omega * step * self.dt + self.phases)
        obs = self.observe(state).to(clocks.dtype) * self.obs_scale
        clocks = clocks.expand(*obs.shape[:-1], clocks.shape[0])
        return torch.tanh(self.out(torch.tanh(self.hidden(torch.cat([clocks, obs], -1)))))


def controller(sim, scene, **options) -> nn.Module:
    # MPM models step several substeps per control step: the clock runs on control steps.
    dt = getattr(scene.model, "control_dt", scene.model.dt)
    return MLPController(sim.observe, sim.observation_dim, sim.action_dim, dt, **options)
