"""Integrators: each a function ``(forces, state, dt) -> state`` over a frozen state, as the
algorithm reads. ``forces(x, v) -> (a, jerk)`` is the differentiable gravity kernel; ``dt`` may
be a float or a 0-d tensor (gradients then flow to it: a free period in an orbit search)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from simdiff.sims.nbody.state import State

__all__ = ["INTEGRATORS", "hermite", "leapfrog", "rk4"]

Forces = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def leapfrog(forces: Forces, s: State, dt) -> State:
    """Kick-drift-kick: symplectic, time-reversible, second order; one force evaluation."""
    v_half = s.body_v + 0.5 * dt * s.body_a
    x = s.body_x + dt * v_half
    a, jerk = forces(x, v_half)
    v = v_half + 0.5 * dt * a
    return State(x, v, a, jerk, s.body_snap, s.body_crackle, s.time + dt)


def rk4(forces: Forces, s: State, dt) -> State:
    """Classical fourth-order Runge-Kutta on (x, v); four force evaluations."""
    x0, v0, a0 = s.body_x, s.body_v, s.body_a
    x1, v1 = x0 + 0.5 * dt * v0, v0 + 0.5 * dt * a0
    a1, _ = forces(x1, v1)
    x2, v2 = x0 + 0.5 * dt * v1, v0 + 0.5 * dt * a1
    a2, _ = forces(x2, v2)
    x3, v3 = x0 + dt * v2, v0 + dt * a2
    a3, _ = forces(x3, v3)
    x = x0 + dt / 6 * (v0 + 2 * v1 + 2 * v2 + v3)
    v = v0 + dt / 6 * (a0 + 2 * a1 + 2 * a2 + a3)
    a, jerk = forces(x, v)
    return State(x, v, a, jerk, s.body_snap, s.body_crackle, s.time + dt)


def hermite(forces: Forces, s: State, dt) -> State:
    """Fourth-order Hermite predictor-corrector (Makino and Aarseth 1992) in its
    time-symmetric form; one force evaluation. Also estimates snap and crackle at the end of
    the step for the Aarseth time-step criterion."""
    x0, v0, a0, j0 = s.body_x, s.body_v, s.body_a, s.body_jerk
    xp = x0 + dt * (v0 + dt / 2 * (a0 + dt / 3 * j0))
    vp = v0 + dt * (a0 + dt / 2 * j0)
    a1, j1 = forces(xp, vp)
    v1 = v0 + dt / 2 * (a0 + a1) + dt**2 / 12 * (j0 - j1)
    x1 = x0 + dt / 2 * (v0 + v1) + dt**2 / 12 * (a0 - a1)
    # Snap and crackle of the interpolating polynomial, only to choose the next step.
    with torch.no_grad():
        snap0 = (-6 * (a0 - a1) - dt * (4 * j0 + 2 * j1)) / dt**2
        crackle = (12 * (a0 - a1) + 6 * dt * (j0 + j1)) / dt**3
        snap1 = snap0 + dt * crackle
    # a1, j1 are taken at the predicted state: the standard PEC scheme (no re-evaluation).
    return State(x1, v1, a1, j1, snap1.detach(), crackle.detach(), s.time + dt)


INTEGRATORS = {"leapfrog": leapfrog, "rk4": rk4, "hermite": hermite}
