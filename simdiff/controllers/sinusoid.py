"""Open-loop sinusoid controller: each muscle follows a learned mix of phase-shifted sines.

``u_j(t) = tanh(sum_k W_jk sin(omega t + 2 pi k / K) + b_j)``; it never sees the state.
"""

import math

import torch
from torch import nn


class SinusoidController(nn.Module):
    """Open-loop actions from ``waves`` phase-shifted sines of angular frequency ``omega``.

    Args:
        action_dim: Number of actuators.
        dt: Simulator time step [s].
        batch_size: Number of worlds acted on (each gets the same action).
        waves: Number of phase-shifted sines K.
        frequency: Gait frequency [Hz].
        init_scale: Standard deviation of the initial weights.
    """

    def __init__(self, action_dim: int, dt: float, *, batch_size: int = 1, waves: int = 4,
                 frequency: float = 2.0, init_scale: float = 0.3) -> None:
        super().__init__()
        self.dt = dt
        self.batch_size = batch_size
        self.omega = 2 * math.pi * frequency
        self.register_buffer("phases", 2 * math.pi * torch.arange(waves) / waves)
        self.weight = nn.Parameter(init_scale * torch.randn(action_dim, waves))
        self.bias = nn.Parameter(torch.zeros(action_dim))

    def forward(self, step: int, state=None) -> torch.Tensor:
        """The action of every world, ``[B, action_dim]`` (the same in each: open loop)."""
        clocks = torch.sin(self.omega * step * self.dt + self.phases)
        action = torch.tanh(self.weight @ clocks + self.bias)
        return action.expand(self.batch_size, action.shape[0])

    def actions(self, steps: int) -> torch.Tensor:
        """The actions of steps ``0 .. steps - 1`` at once, ``[steps, action_dim]``: being
        open-loop, the whole sequence is known before the rollout (so it can be captured)."""
        t = torch.arange(steps, dtype=self.weight.dtype, device=self.weight.device)[:, None]
        clocks = torch.sin(self.omega * t * self.dt + self.phases)
        return torch.tanh(clocks @ self.weight.T + self.bias)


def controller(sim, scene, **options) -> nn.Module:
    # MPM models step several substeps per control step: the clock runs on control steps.
    dt = getattr(scene.model, "control_dt", scene.model.dt)
    return SinusoidController(sim.action_dim, dt, batch_size=sim.batch_size, **options)
