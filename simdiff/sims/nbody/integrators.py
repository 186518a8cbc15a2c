"""Integrators: each a function ``(forces, state, dt) -> state`` over a frozen state of ``B``
worlds, as the algorithm reads. ``forces(x, v) -> (a, jerk)`` is the differentiable gravity
kernel on ``[B, N, 3]``; ``dt`` is ``[B]`` (one step per world) and may require grad
(gradients then flow to it: a free period in an orbit search).

Positions and velocities are updated by compensated (Kahan) sums, :func:`add_compensated`.
Its derivative is that of the plain sum: the compensation term's derivative is zero in exact
arithmetic, and autodiff of ``(t - p) - y`` gives exactly zero.

IAS15 (:func:`ias15`) is Everhart's Gauss-Radau scheme as Rein and Spiegel (2015) made it: the
acceleration over a step is a degree-7 polynomial in ``h = t / dt`` whose coefficients ``b`` are
refined by predictor-corrector iterations at the seven Gauss-Radau nodes until the change of the
last one falls below 1e-16 of the acceleration; the next step comes from the PRS23 criterion
(Pham, Rein and Spiegel 2024) on the converged polynomial. Its constants are derived here from
the nodes (:data:`RADAU_NODES`). As in REBOUND, the node positions add the position's
compensation to the increment before the position (one rounding) and the b coefficients'
updates within a step are compensated sums. The compiled loop
(:mod:`~simdiff.sims.nbody.fewbody`) goes one step further and evaluates the forces at the
compensated positions (a close pair's separation exact far below the positions' last place):
on the Pythagorean problem that takes the energy error from REBOUND's 1e-11..1e-10 to ~1e-13.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from simdiff.sims.nbody.state import State

__all__ = ["INTEGRATORS", "add_compensated", "hermite", "ias15", "leapfrog", "rk4"]

Forces = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def add_compensated(total: torch.Tensor, error: torch.Tensor,
                    increment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kahan summation: ``total - error`` stays the exact running sum to twice the precision."""
    y = increment - error
    t = total + y
    return t, (t - total) - y


def _w(dt: torch.Tensor) -> torch.Tensor:
    """A per-world ``[B]`` quantity shaped to broadcast over ``[B, N, 3]``."""
    return dt[:, None, None]


def _done(s: State, x, v, cx, cv, a, jerk, dt, evaluations, snap=None, crackle=None) -> State:
    return State(x, v, a, jerk, s.body_snap if snap is None else snap,
                 s.body_crackle if crackle is None else crackle, s.time + dt, cx, cv,
                 s.ias_b, s.ias_e, dt.detach(), s.time_step, s.force_evaluations + evaluations)


def leapfrog(forces: Forces, s: State, dt: torch.Tensor) -> State:
    """Kick-drift-kick: symplectic, time-reversible, second order; one force evaluation."""
    h = _w(dt)
    v, cv = add_compensated(s.body_v, s.body_v_err, 0.5 * h * s.body_a)
    x, cx = add_compensated(s.body_x, s.body_x_err, h * v)
    a, jerk = forces(x, v)
    v, cv = add_compensated(v, cv, 0.5 * h * a)
    return _done(s, x, v, cx, cv, a, jerk, dt, 1)


def rk4(forces: Forces, s: State, dt: torch.Tensor) -> State:
    """Classical fourth-order Runge-Kutta on (x, v); four force evaluations."""
    h = _w(dt)
    x0, v0, a0 = s.body_x, s.body_v, s.body_a
    x1, v1 = x0 + 0.5 * h * v0, v0 + 0.5 * h * a0
    a1, _ = forces(x1, v1)
    x2, v2 = x0 + 0.5 * h * v1, v0 + 0.5 * h * a1
    a2, _ = forces(x2, v2)
    x3, v3 = x0 + h * v2, v0 + h * a2
    a3, _ = forces(x3, v3)
    x, cx = add_compensated(x0, s.body_x_err, h / 6 * (v0 + 2 * v1 + 2 * v2 + v3))
    v, cv = add_compensated(v0, s.body_v_err, h / 6 * (a0 + 2 * a1 + 2 * a2 + a3))
    a, jerk = forces(x, v)
    return _done(s, x, v, cx, cv, a, jerk, dt, 4)


def hermite(forces: Forces, s: State, dt: torch.Tensor) -> State:
    """Fourth-order Hermite predictor-corrector (Makino and Aarseth 1992) in its
    time-symmetric form; one force evaluation. Also estimates snap and crackle at the end of
    the step for the Aarseth time-step criterion."""
    h = _w(dt)
    x0, v0, a0, j0 = s.body_x, s.body_v, s.body_a, s.body_jerk
    xp = x0 + h * (v0 + h / 2 * (a0 + h / 3 * j0))
    vp = v0 + h * (a0 + h / 2 * j0)
    a1, j1 = forces(xp, vp)
    dv = h / 2 * (a0 + a1) + h**2 / 12 * (j0 - j1)
    v1, cv = add_compensated(v0, s.body_v_err, dv)
    x1, cx = add_compensated(x0, s.body_x_err, h / 2 * (v0 + v1) + h**2 / 12 * (a0 - a1))
    # Snap and crackle of the interpolating polynomial, only to choose the next step.
    with torch.no_grad():
        hd = h.detach()
        snap0 = (-6 * (a0 - a1) - hd * (4 * j0 + 2 * j1)) / hd**2
        crackle = (12 * (a0 - a1) + 6 * hd * (j0 + j1)) / hd**3
        snap1 = snap0 + hd * crackle
    # a1, j1 are taken at the predicted state: the standard PEC scheme (no re-evaluation).
    return _done(s, x1, v1, cx, cv, a1, j1, dt, 1, snap1.detach(), crackle.detach())


# --- IAS15 -------------------------------------------------------------------------------

RADAU_NODES = (0.0, 0.0562625605369221464656521910318, 0.180240691736892364987579942780,
               0.352624717113169637373907769648, 0.547153626330555383001448554766,
               0.734210177215410531523210605558, 0.885320946839095768090359771030,
               0.977520613561287501891174488626)
"""Gauss-Radau nodes of [0, 1] with the left end (the zeros of the Radau polynomial of
degree 7, shifted)."""

SAFETY = 0.25
"""A step may shrink or grow by at most this factor (its inverse) from one to the next; a
proposal below ``SAFETY`` times the step just taken rejects that step."""

PREDICTOR_CORRECTOR_EPSILON = 1e-16
MAX_ITERATIONS = 12


def _radau_constants() -> dict[str, np.ndarray]:
    """The matrices between the Newton form on the nodes and the monomial form.

    ``a(h) - a0 = sum_k g_k h (h - h_1) ... (h - h_k) = sum_k b_k h^(k+1)``, so
    ``b = C^T g`` with ``C[k, j]`` the coefficient of ``h^(j+1)`` in ``prod_{m<=k} (h - h_m)``
    (``h_0 = 0``), and ``g = D^T b`` with ``D = C^-1``. ``shift[j, k] = binom(k+1, j+1)``
    re-expands the polynomial about the end of a step (``e_j = q^(j+1) sum_k shift[j,k] b_k``
    for a next step ``q`` times as long).
    """
    h = RADAU_NODES
    c = np.zeros((7, 7))
    poly = np.array([1.0])  # coefficients in increasing powers
    for k in range(7):
        poly = np.convolve(poly, [-h[k], 1.0])  # times (h - h_k)
        c[k, :k + 1] = poly[1:k + 2]
    shift = np.array([[math.comb(k + 1, j + 1) if k >= j else 0 for k in range(7)]
                      for j in range(7)], dtype=float)
    return {"C": c, "D": np.linalg.inv(c), "shift": shift}


RADAU = _radau_constants()


def _tensor(name: str, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(RADAU[name], dtype=like.dtype, device=like.device)


def predicted_coefficients(s: State, dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IAS15's starting coefficients for a step ``dt`` [B] from state ``s``: the last step's
    polynomial re-expanded about its end (``e``), plus the correction the last prediction
    needed (``b - e`` of the last step). Zero before the first step and when the step grows
    more than 20-fold (the extrapolation is then worthless). Detached: a predictor only
    changes how many iterations converge, not the converged step."""
    with torch.no_grad():
        last = s.last_step
        ratio = torch.where(last > 0, dt.detach() / torch.where(last > 0, last, 1.0), 0.0)
        use = (last > 0) & (ratio <= 20)
        powers = ratio[:, None] ** torch.arange(1, 8, dtype=dt.dtype, device=dt.device)
        e = torch.einsum("jk,bknd->bjnd", _tensor("shift", dt), s.ias_b) * powers[..., None, None]
        b = e + (s.ias_b - s.ias_e)
        keep = use[:, None, None, None]
        return torch.where(keep, e, 0.0), torch.where(keep, b, 0.0)


def ias15(forces: Forces, s: State, dt: torch.Tensor, tolerance: float) -> State:
    """One IAS15 step of ``dt`` [B] (taken as given: rejection is the caller's, see
    ``NBody``); the state's ``time_step`` becomes the PRS23 proposal for the next step.

    Per world, iterations stop when the last coefficient changes by less than 1e-16 of the
    largest acceleration component, when that change stops shrinking (after 2), or after 12.
    The iteration count and the proposal are data-dependent choices, constant in backward;
    the gradient is that of the unrolled iterations.
    """
    h = RADAU_NODES
    big = _w(dt)
    x0, v0, a0 = s.body_x, s.body_v, s.body_a
    cx = s.body_x_err
    c_mat, d_mat = _tensor("C", x0), _tensor("D", x0)
    e_pred, b = predicted_coefficients(s, dt)
    g = torch.einsum("kj,bjnd->bknd", d_mat.T, b)  # g_k = sum_j D[j, k] b_j
    b = list(b.unbind(1))
    g = list(g.unbind(1))
    b_err = [torch.zeros_like(x0) for _ in range(7)]  # compensation of b's sums, per step
    count = torch.zeros_like(s.force_evaluations)
    batch = x0.shape[0]
    active = torch.ones(batch, dtype=torch.bool, device=x0.device)
    error = torch.full((batch,), 1e300, dtype=x0.dtype, device=x0.device)
    error_last = torch.full_like(error, 2.0)
    iterations = torch.zeros(batch, dtype=torch.int64, device=x0.device)
    while True:
        with torch.no_grad():
            active = (active & ~(error < PREDICTOR_CORRECTOR_EPSILON)
                      & ~((iterations > 2) & (error_last <= error))
                      & (iterations < MAX_ITERATIONS))
        if not bool(active.any()):
            break
        error_last = torch.where(active, error, error_last)
        iterations = iterations + active.long()
        count = count + 7 * active.long()
        keep = active[:, None, None]
        for n in range(1, 8):
            hn = h[n]
            # x(h) = x0 + dt h v0 + (dt h)^2 (a0/2 + b0 h/6 + b1 h^2/12 + ... + b6 h^7/72)
            poly = b[6] * (hn / 72)
            for k, denominator in zip(range(5, -1, -1), (56, 42, 30, 20, 12, 6)):
                poly = (poly + b[k] / denominator) * hn
            poly = poly + a0 / 2
            # The compensation joins the (small) increment before the position: one rounding.
            x = (big * hn * (v0 + big * hn * poly) - cx) + x0
            at, _ = forces(x, v0)
            # Divided differences give g_{n-1}; b changes by C[n-1, :] times its change.
            tmp = (at - a0) / hn
            for m in range(1, n):
                tmp = (tmp - g[m - 1]) / (hn - h[m])
            change = torch.where(keep, tmp - g[n - 1], 0.0)
            g[n - 1] = g[n - 1] + change
            for j in range(n):
                b[j], b_err[j] = add_compensated(b[j], b_err[j], float(c_mat[n - 1, j]) * change)
            if n == 7:
                with torch.no_grad():
                    largest = at.abs().flatten(1).amax(1)
                    new_error = change.abs().flatten(1).amax(1) / largest
                    error = torch.where(active, new_error, error)
    bs = torch.stack(b, 1)
    with torch.no_grad():
        proposal = _prs23(a0.detach(), bs.detach(), dt.detach(), tolerance)
    # Term by term into the compensated sums, smallest first (each term's rounding is then
    # kept, not only the sum's): what brings the energy error to REBOUND's.
    x, v, cv = x0, v0, s.body_v_err
    for k in range(6, -1, -1):
        x, cx = add_compensated(x, cx, b[k] / ((k + 2) * (k + 3)) * big * big)
        v, cv = add_compensated(v, cv, b[k] / (k + 2) * big)
    x, cx = add_compensated(x, cx, a0 / 2 * big * big)
    x, cx = add_compensated(x, cx, v0 * big)
    v, cv = add_compensated(v, cv, a0 * big)
    a, jerk = forces(x, v)
    return State(x, v, a, jerk, s.body_snap, s.body_crackle, s.time + dt, cx, cv,
                 bs.detach(), e_pred, dt.detach(), proposal, s.force_evaluations + count + 1)


def _prs23(a0: torch.Tensor, b: torch.Tensor, dt: torch.Tensor, tolerance: float) -> torch.Tensor:
    """The next step by the PRS23 criterion: per body the acceleration, jerk and snap at the
    end of the step from the polynomial, ``tau^2 = 2 y2 / (y3 + sqrt(y2 y4))`` (in units of
    ``dt^2``), the smallest over bodies with a nonzero acceleration; ``dt_new = tau dt
    (5040 tolerance)^(1/7)``, grown by at most ``1 / SAFETY`` (also when no body qualifies)."""
    k = torch.arange(1, 8, dtype=b.dtype, device=b.device)[None, :, None, None]
    y2 = (a0 + b.sum(1)).square().sum(-1)
    y3 = (k * b).sum(1).square().sum(-1)
    y4 = (k * (k - 1) * b).sum(1).square().sum(-1)
    tau2 = 2 * y2 / (y3 + torch.sqrt(y2 * y4))
    usable = (a0.square().sum(-1) > 0) & torch.isfinite(tau2) & (tau2 > 0)
    tau2 = torch.where(usable, tau2, math.inf).amin(1)
    grow = dt / SAFETY
    proposal = torch.sqrt(tau2) * dt * (tolerance * 5040.0) ** (1 / 7)
    return torch.where(torch.isfinite(proposal), torch.minimum(proposal, grow), grow)


INTEGRATORS = {"leapfrog": leapfrog, "rk4": rk4, "hermite": hermite}
