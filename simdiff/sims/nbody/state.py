"""The N-body state of ``B`` worlds."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simdiff.sims.base import State as BaseState

__all__ = ["State"]


@dataclass
class State(BaseState):
    """Positions, velocities and their derivatives at one time, per world.

    Positions and velocities are Kahan-compensated sums: the exact sum of the increments is
    ``body_x - body_x_err`` (the error terms are below one unit in the last place of
    ``body_x``; kernels and losses read ``body_x``).
    """

    body_x: torch.Tensor
    """Positions [length], shape [B, N, 3]."""
    body_v: torch.Tensor
    """Velocities [length / time], shape [B, N, 3]."""
    body_a: torch.Tensor
    """Accelerations at ``body_x`` [length / time^2], shape [B, N, 3] (kept so that a step
    evaluates forces once)."""
    body_jerk: torch.Tensor
    """Time derivatives of the accelerations, shape [B, N, 3]."""
    body_snap: torch.Tensor
    """Second derivatives of the accelerations estimated by the last Hermite step (zero before
    it, detached: they only choose time steps), shape [B, N, 3]."""
    body_crackle: torch.Tensor
    """Third derivatives, as ``body_snap``, shape [B, N, 3]."""
    time: torch.Tensor
    """Time [time], shape [B] (adaptive steps differ per world)."""
    body_x_err: torch.Tensor
    """Compensation terms of the positions' Kahan sums, shape [B, N, 3]."""
    body_v_err: torch.Tensor
    """Compensation terms of the velocities' Kahan sums, shape [B, N, 3]."""
    ias_b: torch.Tensor
    """IAS15: the last step's Gauss-Radau coefficients b_0..b_6 of the acceleration
    polynomial [length / time^2], shape [B, 7, N, 3] ([B, 0, N, 3] for other integrators)."""
    ias_e: torch.Tensor
    """IAS15: the prediction the last step started from (before its correction), shape as
    ``ias_b``; with ``ias_b`` it predicts the next step's coefficients."""
    last_step: torch.Tensor
    """The last step taken [time], shape [B] (0 before the first)."""
    time_step: torch.Tensor
    """The step the integrator proposes next [time], shape [B] (IAS15's PRS23 estimate; 0
    before the first step: the model's ``dt`` is then tried)."""
    force_evaluations: torch.Tensor
    """Gravity evaluations (each of all pairs) paid since the initial state, int64 [B]."""
