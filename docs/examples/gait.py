"""An open-loop gait: muscle j follows ``a_j sin(2 pi f t + phi_j)``, learned amplitude and
phase, the same in every world. A controller file for the "Write a controller" tutorial."""

import math

import torch
from torch import nn


class Gait(nn.Module):
    """Per-muscle amplitude and phase of one sine of frequency ``frequency`` [Hz].

    Args:
        action_dim: Number of muscles (``sim.action_dim``).
        batch_size: Number of worlds (``sim.batch_size``); each gets the same action.
        dt: Time of one control step [s].
        frequency: Gait frequency [Hz].
    """

    def __init__(self, action_dim: int, batch_size: int, dt: float, *,
                 frequency: float = 2.0) -> None:
        super().__init__()
        self.batch_size, self.dt = batch_size, dt
        self.omega = 2 * math.pi * frequency
        self.amplitude_logit = nn.Parameter(torch.zeros(action_dim))
        self.phase = nn.Parameter(torch.linspace(0, math.pi, action_dim))

    def actions(self, steps: int) -> torch.Tensor:
        """Actions of steps 0 .. steps - 1, ``[steps, action_dim]``, each in [-1, 1]. Having
        this method marks the controller open-loop: on Warp a rollout then runs as captured
        segments instead of calling forward step by step."""
        t = torch.arange(steps, dtype=self.phase.dtype)[:, None] * self.dt
        return torch.sigmoid(self.amplitude_logit) * torch.sin(self.omega * t + self.phase)

    def forward(self, step: int, state=None) -> torch.Tensor:
        """The action of every world at ``step``, ``[B, action_dim]``."""
        return self.actions(step + 1)[step].expand(self.batch_size, -1)


def controller(sim, scene, **options) -> nn.Module:
    """What ``simdiff train SCENE --controller gait.py`` calls: options come from the scene's
    ``train`` defaults or the caller."""
    return Gait(sim.action_dim, sim.batch_size, scene.model.dt, **options)
