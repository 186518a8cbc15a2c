"""The compiled few-body loop behind ``NBody.evolve``, forward and backward: Warp kernels, one
thread per world.

RL time-stepping, its evaluation and IAS15 runs take millions of steps of three-body systems.
Driven from Python, every step pays kernel launches, the step criterion's reductions and many
small torch calls (~0.5 ms a Hermite step, ~3 ms an IAS15 step); here one launch advances every
world to its end time, each thread looping over its world's adaptive steps in compiled code
(about a microsecond per three-body Hermite step). The integrators and step criteria are those
of :mod:`~simdiff.sims.nbody.integrators` and ``NBody.next_dt`` operation for operation but for
IAS15's force evaluation (below; tests check that both give the same trajectories). float64;
positions and velocities are Kahan-compensated as in the torch integrators. IAS15 here
evaluates its forces at the compensated positions (``x - x_err``, node positions kept as
compensated pairs too), each pair once: the round-off of absolute positions in a close pair's
separation, which set the energy error of close encounters (1e-10 on the Pythagorean problem,
as REBOUND's), is gone (~1e-13); the stepped torch path evaluates at the rounded positions.

Gradients (:func:`backward`, every integrator): :func:`advance` records every accepted step
size; the backward launch, one thread per world, takes those steps again through Warp
functions of the forward loop's operations (``_leapfrog_step``, ``_rk4_step`` and
``_hermite_step``, which the forward loop calls; ``_ias15_predict``, ``_ias15_iterate`` and
``_ias15_accept``, which it writes out for speed: the same values bit for bit, which a test
checks over a close encounter), keeping the state before each step, then runs back step by
step through hand-written adjoints (``_leapfrog_reverse``, ``_rk4_reverse``,
``_hermite_reverse``, ``_ias15_reverse``; the gravity adjoints ``_gravity_vjp`` and
``_accelerations_vjp`` at the forward's own positions). An RK4 step is re-run from its saved
start with its stage positions on a tape, an IAS15 step's iterations with their node
positions, then unrolled in reverse; the iteration count, the predictor and the step size are
constants, as in the torch replay of :mod:`~simdiff.sims.nbody.evolve` (the reference: tests
check both agree). Memory: the state before every step, about 0.5 KB per body and IAS15 step
(0.15 KB for the others), held only during the backward launch.
Warp's automatic adjoints are not used: they do not replay loop-carried state through
dynamic loops.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import warp as wp

from simdiff.backend import resolve_backend
from simdiff.sims.nbody.integrators import (
    MAX_ITERATIONS,
    PREDICTOR_CORRECTOR_EPSILON,
    RADAU,
    RADAU_NODES,
    SAFETY,
)
from simdiff.sims.nbody.model import Integrator, StepCriterion
from simdiff.sims.nbody.state import State

__all__ = ["advance", "backward", "supports"]

FEW_BODIES = 16
"""Worlds of at most this many bodies take the compiled loop."""

# Every kernel here has a hand-written backward (or none): no automatic adjoints to compile.
wp.set_module_options({"enable_backward": False})

_INTEGRATOR_ID = {Integrator.LEAPFROG: 0, Integrator.RK4: 1, Integrator.HERMITE: 2,
                  Integrator.IAS15: 3}
_CRITERION_ID = {StepCriterion.AARSETH: 0, StepCriterion.COLLISION: 1}
RECORD_OVERFLOW = 4
F64 = wp.float64


@wp.func
def _kahan(total: wp.vec3d, error: wp.vec3d, increment: wp.vec3d):
    y = increment - error
    t = total + y
    return t, (t - total) - y


@wp.func
def _all_gravity(s: int, n: int, x: wp.array(dtype=wp.vec3d), v: wp.array(dtype=wp.vec3d),
                 mass: wp.array(dtype=F64), g: F64, eps2: F64,
                 a_out: wp.array(dtype=wp.vec3d), j_out: wp.array(dtype=wp.vec3d)):
    base = s * n
    for i in range(n):
        xi = x[base + i]
        vi = v[base + i]
        acc = wp.vec3d()
        jerk = wp.vec3d()
        for k in range(n):
            if k != i:
                dx = x[base + k] - xi
                dv = v[base + k] - vi
                inv_r = F64(1.0) / wp.sqrt(wp.dot(dx, dx) + eps2)
                inv_r3 = inv_r * inv_r * inv_r
                gm = g * mass[base + k]
                acc = acc + gm * inv_r3 * dx
                rv = wp.dot(dx, dv) * inv_r * inv_r
                jerk = jerk + gm * inv_r3 * (dv - F64(3.0) * rv * dx)
        a_out[base + i] = acc
        j_out[base + i] = jerk


@wp.func
def _accelerations(s: int, n: int, x: wp.array(dtype=wp.vec3d), x_err: wp.array(dtype=wp.vec3d),
                   mass: wp.array(dtype=F64), g: F64, eps2: F64,
                   a_out: wp.array(dtype=wp.vec3d)):
    """Accelerations only (IAS15 needs no jerk), each pair once and applied to both bodies, at
    the compensated positions ``x - x_err``: a close pair's separation is then exact to far
    below one unit in the last place of the positions (the rounding of absolute positions is
    what limits the energy error in close encounters)."""
    base = s * n
    for i in range(n):
        a_out[base + i] = wp.vec3d()
    for i in range(1, n):
        xi = x[base + i]
        acc = a_out[base + i]
        for k in range(i):
            dx = (xi - x[base + k]) - (x_err[base + i] - x_err[base + k])
            r = wp.sqrt(wp.dot(dx, dx) + eps2)
            prefact = g / (r * r * r)
            acc = acc - (prefact * mass[base + k]) * dx
            a_out[base + k] = a_out[base + k] + (prefact * mass[base + i]) * dx
        a_out[base + i] = acc


@wp.func
def _criterion(s: int, n: int, criterion: int, x: wp.array(dtype=wp.vec3d),
               v: wp.array(dtype=wp.vec3d), a: wp.array(dtype=wp.vec3d),
               jerk: wp.array(dtype=wp.vec3d), snap: wp.array(dtype=wp.vec3d),
               crackle: wp.array(dtype=wp.vec3d), mass: wp.array(dtype=F64), g: F64) -> F64:
    """The time scale of NBody._criterion (next_dt / eta)."""
    base = s * n
    best = F64(1.0e300)
    if criterion == 1:
        for i in range(n):
            for k in range(n):
                if k != i:
                    r = wp.length(x[base + k] - x[base + i])
                    vr = wp.max(wp.length(v[base + k] - v[base + i]), F64(1.0e-300))
                    free_fall = wp.sqrt(r * r * r / (g * (mass[base + i] + mass[base + k])))
                    best = wp.min(best, wp.min(free_fall, r / vr))
        return best
    snap_max = F64(0.0)
    for i in range(n):
        snap_max = wp.max(snap_max, wp.length(snap[base + i]))
    for i in range(n):
        an = wp.length(a[base + i])
        jn = wp.length(jerk[base + i])
        if an > F64(0.0) and jn > F64(0.0):
            if snap_max > F64(0.0):
                sn = wp.length(snap[base + i])
                cn = wp.length(crackle[base + i])
                value = wp.sqrt((an * sn + jn * jn) / (jn * cn + sn * sn))
                if value > F64(0.0) and value < F64(1.0e300):
                    best = wp.min(best, value)
            else:
                best = wp.min(best, an / jn)
    if best >= F64(1.0e300):
        # No body with both an acceleration and a jerk: the shortest pair free-fall time.
        for i in range(n):
            for k in range(n):
                if k != i:
                    r = wp.length(x[base + k] - x[base + i])
                    best = wp.min(best, wp.sqrt(r * r * r / (g * (mass[base + i]
                                                                  + mass[base + k]))))
    return best


@wp.func
def _hermite_predictor(x: wp.vec3d, v: wp.vec3d, a: wp.vec3d, j: wp.vec3d, dt: F64):
    """Hermite's predicted position and velocity (the Taylor series to the jerk)."""
    xp = x + dt * (v + dt / F64(2.0) * (a + dt / F64(3.0) * j))
    vp = v + dt * (a + dt / F64(2.0) * j)
    return xp, vp


@wp.func
def _hermite_step(s: int, n: int, dt: F64, x: wp.array(dtype=wp.vec3d),
                  v: wp.array(dtype=wp.vec3d), a: wp.array(dtype=wp.vec3d),
                  jerk: wp.array(dtype=wp.vec3d), snap: wp.array(dtype=wp.vec3d),
                  crackle: wp.array(dtype=wp.vec3d), cx: wp.array(dtype=wp.vec3d),
                  cv: wp.array(dtype=wp.vec3d), sx: wp.array(dtype=wp.vec3d),
                  sv: wp.array(dtype=wp.vec3d), sa: wp.array(dtype=wp.vec3d),
                  sj: wp.array(dtype=wp.vec3d), mass: wp.array(dtype=F64), g: F64, eps2: F64):
    """One Hermite PEC step of world ``s`` in place, as integrators.hermite."""
    base = s * n
    for i in range(n):
        p = base + i
        xp, vp = _hermite_predictor(x[p], v[p], a[p], jerk[p], dt)
        sx[p] = xp
        sv[p] = vp
    _all_gravity(s, n, sx, sv, mass, g, eps2, sa, sj)
    for i in range(n):
        p = base + i
        a0 = a[p]
        j0 = jerk[p]
        a1 = sa[p]
        j1 = sj[p]
        dv = dt / F64(2.0) * (a0 + a1) + dt * dt / F64(12.0) * (j0 - j1)
        v1, cv1 = _kahan(v[p], cv[p], dv)
        dx = dt / F64(2.0) * (v[p] + v1) + dt * dt / F64(12.0) * (a0 - a1)
        x1, cx1 = _kahan(x[p], cx[p], dx)
        snap0 = (F64(-6.0) * (a0 - a1) - dt * (
            F64(4.0) * j0 + F64(2.0) * j1)) / (dt * dt)
        crack = (F64(12.0) * (a0 - a1) + F64(6.0) * dt * (j0 + j1)) / (dt * dt * dt)
        x[p] = x1
        cx[p] = cx1
        v[p] = v1
        cv[p] = cv1
        a[p] = a1
        jerk[p] = j1
        snap[p] = snap0 + dt * crack
        crackle[p] = crack


@wp.func
def _leapfrog_step(s: int, n: int, dt: F64, x: wp.array(dtype=wp.vec3d),
                   v: wp.array(dtype=wp.vec3d), a: wp.array(dtype=wp.vec3d),
                   jerk: wp.array(dtype=wp.vec3d), cx: wp.array(dtype=wp.vec3d),
                   cv: wp.array(dtype=wp.vec3d), sx: wp.array(dtype=wp.vec3d),
                   sv: wp.array(dtype=wp.vec3d), sa: wp.array(dtype=wp.vec3d),
                   sj: wp.array(dtype=wp.vec3d), mass: wp.array(dtype=F64), g: F64, eps2: F64):
    """One kick-drift-kick step of world ``s`` in place, as integrators.leapfrog."""
    base = s * n
    half = F64(0.5)
    for i in range(n):
        p = base + i
        vh, cvh = _kahan(v[p], cv[p], half * dt * a[p])
        sv[p] = vh
        cv[p] = cvh
        x1, cx1 = _kahan(x[p], cx[p], dt * vh)
        sx[p] = x1
        cx[p] = cx1
    _all_gravity(s, n, sx, sv, mass, g, eps2, sa, sj)
    for i in range(n):
        p = base + i
        x[p] = sx[p]
        v1, cv1 = _kahan(sv[p], cv[p], half * dt * sa[p])
        v[p] = v1
        cv[p] = cv1
        a[p] = sa[p]
        jerk[p] = sj[p]


@wp.func
def _rk4_step(s: int, n: int, dt: F64, x: wp.array(dtype=wp.vec3d),
              v: wp.array(dtype=wp.vec3d), a: wp.array(dtype=wp.vec3d),
              jerk: wp.array(dtype=wp.vec3d), cx: wp.array(dtype=wp.vec3d),
              cv: wp.array(dtype=wp.vec3d), sx: wp.array(dtype=wp.vec3d),
              sv: wp.array(dtype=wp.vec3d), sa: wp.array(dtype=wp.vec3d),
              sj: wp.array(dtype=wp.vec3d), sum_x: wp.array(dtype=wp.vec3d),
              sum_v: wp.array(dtype=wp.vec3d), mass: wp.array(dtype=F64), g: F64, eps2: F64,
              taping: int, tape_hi: wp.array(dtype=wp.vec3d),
              tape_lo: wp.array(dtype=wp.vec3d)):
    """One classical RK4 step of world ``s`` in place, as integrators.rk4: stages k = 1, 2, 3
    then the final forces. With ``taping``, the stages' positions go to ``tape_hi``
    ``[B, 7, N]`` (their first three rows; ``tape_lo`` gets zeros, no compensation)."""
    base = s * n
    half = F64(0.5)
    for i in range(n):
        p = base + i
        sum_x[p] = v[p]
        sum_v[p] = a[p]
        sx[p] = x[p] + half * dt * v[p]
        sv[p] = v[p] + half * dt * a[p]
    for stage in range(3):
        if taping != 0:
            for i in range(n):
                tape_hi[(s * 7 + stage) * n + i] = sx[base + i]
                tape_lo[(s * 7 + stage) * n + i] = wp.vec3d()
        _all_gravity(s, n, sx, sv, mass, g, eps2, sa, sj)
        weight = F64(2.0)
        scale = half * dt
        if stage == 2:
            weight = F64(1.0)
        if stage == 1:
            scale = dt
        for i in range(n):
            p = base + i
            vk = sv[p]
            sum_x[p] = sum_x[p] + weight * vk
            sum_v[p] = sum_v[p] + weight * sa[p]
            if stage < 2:
                sx[p] = x[p] + scale * vk
                sv[p] = v[p] + scale * sa[p]
    for i in range(n):
        p = base + i
        x1, cx1 = _kahan(x[p], cx[p], dt / F64(6.0) * sum_x[p])
        v1, cv1 = _kahan(v[p], cv[p], dt / F64(6.0) * sum_v[p])
        x[p] = x1
        cx[p] = cx1
        v[p] = v1
        cv[p] = cv1
    _all_gravity(s, n, x, v, mass, g, eps2, a, jerk)


@wp.func
def _ias15_predict(s: int, n: int, dt: F64, last: F64, radau: wp.array(dtype=F64),
                   ias_b: wp.array(dtype=wp.vec3d), ias_e: wp.array(dtype=wp.vec3d),
                   wb: wp.array(dtype=wp.vec3d), wg: wp.array(dtype=wp.vec3d),
                   we: wp.array(dtype=wp.vec3d), wcs: wp.array(dtype=wp.vec3d)):
    """IAS15's starting b (and g) for a step ``dt``, as integrators.predicted_coefficients."""
    ratio = F64(0.0)
    if last > F64(0.0):
        ratio = dt / last
    predict = last > F64(0.0) and ratio <= F64(20.0)
    for i in range(n):
        q = ratio
        for j in range(7):
            e_j = wp.vec3d()
            for k in range(j, 7):
                e_j = e_j + radau[106 + j * 7 + k] * ias_b[(s * 7 + k) * n + i]
            w = (s * 7 + j) * n + i
            wcs[w] = wp.vec3d()
            if predict:
                we[w] = q * e_j
                wb[w] = q * e_j + (ias_b[w] - ias_e[w])
            else:
                we[w] = wp.vec3d()
                wb[w] = wp.vec3d()
            q = q * ratio
        for k in range(7):
            gk = wp.vec3d()
            for j in range(7):
                gk = gk + radau[57 + j * 7 + k] * wb[(s * 7 + j) * n + i]
            wg[(s * 7 + k) * n + i] = gk


@wp.func
def _ias15_iterate(s: int, n: int, dt: F64, radau: wp.array(dtype=F64),
                   x: wp.array(dtype=wp.vec3d), v: wp.array(dtype=wp.vec3d),
                   a: wp.array(dtype=wp.vec3d), cx: wp.array(dtype=wp.vec3d),
                   mass: wp.array(dtype=F64), g: F64, eps2: F64,
                   sx: wp.array(dtype=wp.vec3d), sv: wp.array(dtype=wp.vec3d),
                   sa: wp.array(dtype=wp.vec3d), wb: wp.array(dtype=wp.vec3d),
                   wg: wp.array(dtype=wp.vec3d), wcs: wp.array(dtype=wp.vec3d),
                   taping: int, tape_hi: wp.array(dtype=wp.vec3d),
                   tape_lo: wp.array(dtype=wp.vec3d)) -> wp.int32:
    """IAS15's predictor-corrector iterations on b from the prediction in ``wb``/``wg``, as
    integrators.ias15; returns their number. With ``taping``, every node position (a
    compensated pair) is kept in ``tape_hi``/``tape_lo`` ``[B, MAX_ITERATIONS, 7, N]`` for
    the backward pass."""
    base = s * n
    error = F64(1.0e300)
    error_last = F64(2.0)
    iterations = wp.int32(0)
    while True:
        if error < F64(PREDICTOR_CORRECTOR_EPSILON):
            break
        if iterations > 2 and error_last <= error:
            break
        if iterations >= MAX_ITERATIONS:
            break
        error_last = error
        iterations = iterations + wp.int32(1)
        for m in range(1, 8):
            hm = radau[m]
            for i in range(n):
                p = base + i
                # Multiplications by reciprocals, not divisions: divisions were most of a
                # three-body step's time.
                poly = wb[(s * 7 + 6) * n + i] * (hm * radau[225])
                for k in range(5, -1, -1):
                    poly = (poly + wb[(s * 7 + k) * n + i] * radau[219 + k]) * hm
                poly = poly + a[p] / F64(2.0)
                # The node's position as a compensated pair (sx - sv).
                y = dt * hm * (v[p] + dt * hm * poly) - cx[p]
                hi = x[p] + y
                sx[p] = hi
                sv[p] = (hi - x[p]) - y
            if taping != 0:
                t = ((s * MAX_ITERATIONS + iterations - 1) * 7 + m - 1) * n
                for i in range(n):
                    tape_hi[t + i] = sx[base + i]
                    tape_lo[t + i] = sv[base + i]
            _accelerations(s, n, sx, sv, mass, g, eps2, sa)
            largest = F64(0.0)
            changed = F64(0.0)
            for i in range(n):
                p = base + i
                tmp = (sa[p] - a[p]) * radau[155 + m * 8]
                for r in range(1, m):
                    tmp = (tmp - wg[(s * 7 + r - 1) * n + i]) * radau[155 + m * 8 + r]
                w = (s * 7 + m - 1) * n + i
                change = tmp - wg[w]
                wg[w] = tmp
                for j in range(m):
                    wj = (s * 7 + j) * n + i
                    bj, cj = _kahan(wb[wj], wcs[wj], radau[8 + (m - 1) * 7 + j] * change)
                    wb[wj] = bj
                    wcs[wj] = cj
                if m == 7:
                    for c in range(3):
                        largest = wp.max(largest, wp.abs(sa[p][c]))
                        changed = wp.max(changed, wp.abs(change[c]))
            if m == 7:
                error = changed / largest
    return iterations


@wp.func
def _ias15_accept(s: int, n: int, dt: F64, x: wp.array(dtype=wp.vec3d),
                  v: wp.array(dtype=wp.vec3d), a: wp.array(dtype=wp.vec3d),
                  cx: wp.array(dtype=wp.vec3d), cv: wp.array(dtype=wp.vec3d),
                  ias_b: wp.array(dtype=wp.vec3d), ias_e: wp.array(dtype=wp.vec3d),
                  wb: wp.array(dtype=wp.vec3d), we: wp.array(dtype=wp.vec3d),
                  mass: wp.array(dtype=F64), g: F64, eps2: F64):
    """The accepted IAS15 step's new position, velocity, coefficients and forces."""
    base = s * n
    for i in range(n):
        p = base + i
        # Term by term into the compensated sums, smallest first (each term's rounding is
        # then kept, not only the sum's).
        x1 = x[p]
        cx1 = cx[p]
        v1 = v[p]
        cv1 = cv[p]
        for term in range(9):
            # Increments from b_6 down to a0 and v0 (term = 7, 8).
            ix = v[p] * dt
            iv = a[p] * dt
            if term < 7:
                kb = 6 - term
                bk = wb[(s * 7 + kb) * n + i]
                ix = bk / F64(float((kb + 2) * (kb + 3))) * dt * dt
                iv = bk / F64(float(kb + 2)) * dt
            if term == 7:
                ix = a[p] / F64(2.0) * dt * dt
            y = ix - cx1
            tx = x1 + y
            cx1 = (tx - x1) - y
            x1 = tx
            if term != 7:
                y = iv - cv1
                tv = v1 + y
                cv1 = (tv - v1) - y
                v1 = tv
        x[p] = x1
        cx[p] = cx1
        v[p] = v1
        cv[p] = cv1
        for k in range(7):
            w = (s * 7 + k) * n + i
            ias_b[w] = wb[w]
            ias_e[w] = we[w]
    _accelerations(s, n, x, cx, mass, g, eps2, a)


@functools.cache
def _advance_kernel():
    @wp.kernel(enable_backward=False)
    def advance(
        n: int, integrator: int, criterion: int, tolerance: F64, dt_min: F64, max_steps: int,
        capacity: int, recording: int,
        radau: wp.array(dtype=F64),  # constants: see _radau
        eta: wp.array(dtype=F64), t_end: wp.array(dtype=F64), gp: wp.array(dtype=F64),
        dt_max: wp.array(dtype=F64), mass: wp.array(dtype=F64),
        x: wp.array(dtype=wp.vec3d), v: wp.array(dtype=wp.vec3d), a: wp.array(dtype=wp.vec3d),
        jerk: wp.array(dtype=wp.vec3d), snap: wp.array(dtype=wp.vec3d),
        crackle: wp.array(dtype=wp.vec3d), cx: wp.array(dtype=wp.vec3d),
        cv: wp.array(dtype=wp.vec3d), ias_b: wp.array(dtype=wp.vec3d),
        ias_e: wp.array(dtype=wp.vec3d), last_step: wp.array(dtype=F64),
        time_step: wp.array(dtype=F64), time: wp.array(dtype=F64),
        evaluations: wp.array(dtype=wp.int64),
        # Scratch: stage positions, velocities, forces, RK4 sums; IAS15's b, g, e.
        sx: wp.array(dtype=wp.vec3d), sv: wp.array(dtype=wp.vec3d),
        sa: wp.array(dtype=wp.vec3d), sj: wp.array(dtype=wp.vec3d),
        sum_x: wp.array(dtype=wp.vec3d), sum_v: wp.array(dtype=wp.vec3d),
        wb: wp.array(dtype=wp.vec3d), wg: wp.array(dtype=wp.vec3d),
        we: wp.array(dtype=wp.vec3d), wcs: wp.array(dtype=wp.vec3d),
        record: wp.array(dtype=F64), recorded: wp.array(dtype=wp.int32),
        status: wp.array(dtype=wp.int32),
    ):
        s = wp.tid()
        base = s * n
        g = gp[2 * s]
        eps2 = gp[2 * s + 1] * gp[2 * s + 1]
        t = time[s]
        end = t_end[s]
        taken = wp.int32(0)  # a dynamic variable: Warp refuses to mutate a literal 0
        status[s] = wp.int32(0)
        trial = time_step[s]
        if not (trial > F64(0.0)):
            trial = dt_max[s]
        while t < end * (F64(1.0) - F64(1.0e-14)):
            if taken >= max_steps:
                status[s] = wp.int32(2)
                break
            if recording != 0 and recorded[s] >= capacity:
                status[s] = wp.int32(4)
                break
            dt = dt_max[s]
            if integrator == 3:
                dt = trial
            elif eta[s] > F64(0.0):
                dt = eta[s] * _criterion(s, n, criterion, x, v, a, jerk, snap, crackle, mass, g)
                if not (dt >= dt_min):
                    status[s] = wp.int32(1)
                    break
                dt = wp.min(dt, dt_max[s])
            dt = wp.min(dt, end - t)
            if integrator == 2:
                # Hermite PEC, as integrators.hermite.
                _hermite_step(s, n, dt, x, v, a, jerk, snap, crackle, cx, cv, sx, sv, sa, sj,
                              mass, g, eps2)
                evaluations[s] = evaluations[s] + wp.int64(1)
            elif integrator == 0:
                _leapfrog_step(s, n, dt, x, v, a, jerk, cx, cv, sx, sv, sa, sj, mass, g, eps2)
                evaluations[s] = evaluations[s] + wp.int64(1)
            elif integrator == 1:
                _rk4_step(s, n, dt, x, v, a, jerk, cx, cv, sx, sv, sa, sj, sum_x, sum_v, mass, g,
                          eps2, 0, sx, sv)
                evaluations[s] = evaluations[s] + wp.int64(4)
            else:
                # IAS15, as integrators.ias15 with NBody._advance's rejection: _ias15_predict,
                # _ias15_iterate and _ias15_accept written out, with PRS23 between them (called
                # as functions they cost 3% of a batched three-body step, the iterations alone
                # 14% of a single system's). The backward's replay calls the functions; a test
                # checks that both take the same steps bit for bit.
                proposal = F64(0.0)
                tries = wp.int32(0)
                while tries < 64:
                    tries = tries + wp.int32(1)
                    last = last_step[s]
                    ratio = F64(0.0)
                    if last > F64(0.0):
                        ratio = dt / last
                    predict = last > F64(0.0) and ratio <= F64(20.0)
                    for i in range(n):
                        q = ratio
                        for j in range(7):
                            e_j = wp.vec3d()
                            for k in range(j, 7):
                                e_j = e_j + radau[106 + j * 7 + k] * ias_b[(s * 7 + k) * n + i]
                            w = (s * 7 + j) * n + i
                            wcs[w] = wp.vec3d()
                            if predict:
                                we[w] = q * e_j
                                wb[w] = q * e_j + (ias_b[w] - ias_e[w])
                            else:
                                we[w] = wp.vec3d()
                                wb[w] = wp.vec3d()
                            q = q * ratio
                        for k in range(7):
                            gk = wp.vec3d()
                            for j in range(7):
                                gk = gk + radau[57 + j * 7 + k] * wb[(s * 7 + j) * n + i]
                            wg[(s * 7 + k) * n + i] = gk
                    error = F64(1.0e300)
                    error_last = F64(2.0)
                    iterations = wp.int32(0)
                    while True:
                        if error < F64(PREDICTOR_CORRECTOR_EPSILON):
                            break
                        if iterations > 2 and error_last <= error:
                            break
                        if iterations >= MAX_ITERATIONS:
                            break
                        error_last = error
                        iterations = iterations + wp.int32(1)
                        for m in range(1, 8):
                            hm = radau[m]
                            for i in range(n):
                                p = base + i
                                # Multiplications by reciprocals, not divisions: divisions
                                # were most of a three-body step's time.
                                poly = wb[(s * 7 + 6) * n + i] * (hm * radau[225])
                                for k in range(5, -1, -1):
                                    poly = (poly + wb[(s * 7 + k) * n + i] * radau[219 + k]) * hm
                                poly = poly + a[p] / F64(2.0)
                                # The node's position as a compensated pair (sx - sv).
                                y = dt * hm * (v[p] + dt * hm * poly) - cx[p]
                                hi = x[p] + y
                                sx[p] = hi
                                sv[p] = (hi - x[p]) - y
                            _accelerations(s, n, sx, sv, mass, g, eps2, sa)
                            evaluations[s] = evaluations[s] + wp.int64(1)
                            largest = F64(0.0)
                            changed = F64(0.0)
                            for i in range(n):
                                p = base + i
                                tmp = (sa[p] - a[p]) * radau[155 + m * 8]
                                for r in range(1, m):
                                    tmp = (tmp - wg[(s * 7 + r - 1) * n + i]) * radau[
                                        155 + m * 8 + r]
                                w = (s * 7 + m - 1) * n + i
                                change = tmp - wg[w]
                                wg[w] = tmp
                                for j in range(m):
                                    wj = (s * 7 + j) * n + i
                                    bj, cj = _kahan(wb[wj], wcs[wj],
                                                    radau[8 + (m - 1) * 7 + j] * change)
                                    wb[wj] = bj
                                    wcs[wj] = cj
                                if m == 7:
                                    for c in range(3):
                                        largest = wp.max(largest, wp.abs(sa[p][c]))
                                        changed = wp.max(changed, wp.abs(change[c]))
                            if m == 7:
                                error = changed / largest
                    # PRS23 on the converged polynomial, as integrators._prs23.
                    tau2 = F64(1.0e300)
                    for i in range(n):
                        p = base + i
                        y2v = a[p]
                        y3v = wp.vec3d()
                        y4v = wp.vec3d()
                        for k in range(7):
                            bk = wb[(s * 7 + k) * n + i]
                            kk = F64(float(k + 1))
                            y2v = y2v + bk
                            y3v = y3v + kk * bk
                            y4v = y4v + kk * (kk - F64(1.0)) * bk
                        y2 = wp.dot(y2v, y2v)
                        y3 = wp.dot(y3v, y3v)
                        y4 = wp.dot(y4v, y4v)
                        value = F64(2.0) * y2 / (y3 + wp.sqrt(y2 * y4))
                        if wp.dot(a[p], a[p]) > F64(0.0) and value > F64(0.0) and value < F64(
                                1.0e300):
                            tau2 = wp.min(tau2, value)
                    grow = dt / F64(SAFETY)
                    proposal = grow
                    if tau2 < F64(1.0e300):
                        proposal = wp.min(wp.sqrt(tau2) * dt * wp.pow(
                            tolerance * F64(5040.0), F64(1.0) / F64(7.0)), grow)
                    if proposal < F64(SAFETY) * dt and dt > dt_min:
                        dt = wp.max(proposal, dt_min)
                        continue
                    break
                for i in range(n):
                    p = base + i
                    # Term by term into the compensated sums, smallest first (each term's
                    # rounding is then kept, not only the sum's).
                    x1 = x[p]
                    cx1 = cx[p]
                    v1 = v[p]
                    cv1 = cv[p]
                    for term in range(9):
                        # Increments from b_6 down to a0 and v0 (term = 7, 8).
                        ix = v[p] * dt
                        iv = a[p] * dt
                        if term < 7:
                            kb = 6 - term
                            bk = wb[(s * 7 + kb) * n + i]
                            ix = bk / F64(float((kb + 2) * (kb + 3))) * dt * dt
                            iv = bk / F64(float(kb + 2)) * dt
                        if term == 7:
                            ix = a[p] / F64(2.0) * dt * dt
                        y = ix - cx1
                        tx = x1 + y
                        cx1 = (tx - x1) - y
                        x1 = tx
                        if term != 7:
                            y = iv - cv1
                            tv = v1 + y
                            cv1 = (tv - v1) - y
                            v1 = tv
                    x[p] = x1
                    cx[p] = cx1
                    v[p] = v1
                    cv[p] = cv1
                    for k in range(7):
                        w = (s * 7 + k) * n + i
                        ias_b[w] = wb[w]
                        ias_e[w] = we[w]
                _accelerations(s, n, x, cx, mass, g, eps2, a)
                evaluations[s] = evaluations[s] + wp.int64(1)
                last_step[s] = dt
                time_step[s] = proposal
                trial = proposal
            if integrator != 3:
                last_step[s] = dt
            if recording != 0:
                record[s * capacity + recorded[s]] = dt
            recorded[s] = recorded[s] + wp.int32(1)
            t = t + dt
            taken = taken + wp.int32(1)
            worst = F64(0.0)
            for i in range(n):
                worst = wp.max(worst, wp.dot(x[base + i], x[base + i]) + wp.dot(v[base + i],
                                                                                v[base + i]))
            if not (worst < F64(1.0e300)):
                status[s] = wp.int32(3)
                break
        if integrator == 3:
            # The state's jerk, which IAS15's steps do not need, once at the end.
            _all_gravity(s, n, x, v, mass, g, eps2, sa, sj)
            for i in range(n):
                jerk[base + i] = sj[base + i]
        time[s] = t

    return advance



# --- The compiled backward ------------------------------------------------------------------
# Hand-written adjoints (Warp's automatic adjoint does not replay loop-carried state through
# dynamic loops). Each function below is the reverse of a forward function above; ``adj_*``
# arrays accumulate (+=) unless said otherwise.


@wp.func
def _gravity_vjp(n: int, xo: int, x: wp.array(dtype=wp.vec3d), v: wp.array(dtype=wp.vec3d),
                 base: int, mass: wp.array(dtype=F64), g: F64, eps2: F64,
                 adj_a: wp.array(dtype=wp.vec3d), adj_j: wp.array(dtype=wp.vec3d),
                 adj_x: wp.array(dtype=wp.vec3d), adj_v: wp.array(dtype=wp.vec3d),
                 adj_mass: wp.array(dtype=F64)):
    """The adjoint of _all_gravity at positions and velocities ``x[xo:xo + n]``,
    ``v[xo:xo + n]`` (adjoints of accelerations and jerks in ``adj_a``, ``adj_j`` at
    ``base``); returns the adjoints of G and eps^2. Each pair once, its two rows' adjoints
    combined (the formulas are in :mod:`simdiff.sims.nbody.forces`)."""
    dg = F64(0.0)
    de2 = F64(0.0)
    for i in range(n):
        for k in range(i + 1, n):
            d = x[xo + k] - x[xo + i]
            u = v[xo + k] - v[xo + i]
            q = F64(1.0) / wp.sqrt(wp.dot(d, d) + eps2)
            q2 = q * q
            q3 = q2 * q
            q5 = q3 * q2
            q7 = q5 * q2
            mi = mass[base + i]
            mk = mass[base + k]
            ai = adj_a[base + i]
            ak = adj_a[base + k]
            ji = adj_j[base + i]
            jk = adj_j[base + k]
            du = wp.dot(d, u)
            # The pair's terms of the loss per unit G m_partner, row i and row k.
            pi = q3 * (wp.dot(ai, d) + wp.dot(ji, u)) - F64(3.0) * q5 * du * wp.dot(ji, d)
            pk = q3 * (wp.dot(ak, d) + wp.dot(jk, u)) - F64(3.0) * q5 * du * wp.dot(jk, d)
            w = mk * ai - mi * ak
            z = mk * ji - mi * jk
            wz = wp.dot(w, d) + wp.dot(z, u)
            zd = wp.dot(z, d)
            dp_dd = (q3 * w - F64(3.0) * q5 * wz * d - F64(3.0) * q5 * (zd * u + du * z)
                     + F64(15.0) * q7 * du * zd * d)
            dp_du = q3 * z - F64(3.0) * q5 * zd * d
            adj_x[base + k] = adj_x[base + k] + g * dp_dd
            adj_x[base + i] = adj_x[base + i] - g * dp_dd
            adj_v[base + k] = adj_v[base + k] + g * dp_du
            adj_v[base + i] = adj_v[base + i] - g * dp_du
            adj_mass[base + k] = adj_mass[base + k] + g * pi
            adj_mass[base + i] = adj_mass[base + i] - g * pk
            dg = dg + (mk * pi - mi * pk)
            de2 = de2 + g * (F64(-1.5) * q5 * wz + F64(7.5) * q7 * du * zd)
    return dg, de2


@wp.func
def _accelerations_vjp(n: int, xo: int, x: wp.array(dtype=wp.vec3d),
                       x_err: wp.array(dtype=wp.vec3d), base: int, mass: wp.array(dtype=F64),
                       g: F64, eps2: F64, adj_a: wp.array(dtype=wp.vec3d),
                       adj_x: wp.array(dtype=wp.vec3d), adj_mass: wp.array(dtype=F64)):
    """The adjoint of _accelerations at the compensated positions ``x - x_err`` (from
    ``xo``); returns the adjoints of G and eps^2."""
    dg = F64(0.0)
    de2 = F64(0.0)
    for i in range(1, n):
        for k in range(i):
            # d = x_k - x_i, the separation _accelerations forms (with the opposite sign).
            d = -((x[xo + i] - x[xo + k]) - (x_err[xo + i] - x_err[xo + k]))
            q = F64(1.0) / wp.sqrt(wp.dot(d, d) + eps2)
            q3 = q * q * q
            q5 = q3 * q * q
            mi = mass[base + i]
            mk = mass[base + k]
            ai = adj_a[base + i]
            ak = adj_a[base + k]
            pi = q3 * wp.dot(ai, d)
            pk = q3 * wp.dot(ak, d)
            w = mk * ai - mi * ak
            wd = wp.dot(w, d)
            dp_dd = q3 * w - F64(3.0) * q5 * wd * d
            adj_x[base + k] = adj_x[base + k] + g * dp_dd
            adj_x[base + i] = adj_x[base + i] - g * dp_dd
            adj_mass[base + k] = adj_mass[base + k] + g * pi
            adj_mass[base + i] = adj_mass[base + i] - g * pk
            dg = dg + (mk * pi - mi * pk)
            de2 = de2 + F64(-1.5) * g * q5 * wd
    return dg, de2


@wp.func
def _hermite_reverse(s: int, n: int, dt: F64, x: wp.array(dtype=wp.vec3d),
                     v: wp.array(dtype=wp.vec3d), a: wp.array(dtype=wp.vec3d),
                     jerk: wp.array(dtype=wp.vec3d), sx: wp.array(dtype=wp.vec3d),
                     sv: wp.array(dtype=wp.vec3d), mass: wp.array(dtype=F64), g: F64, eps2: F64,
                     adj_x: wp.array(dtype=wp.vec3d), adj_v: wp.array(dtype=wp.vec3d),
                     adj_a: wp.array(dtype=wp.vec3d), adj_j: wp.array(dtype=wp.vec3d),
                     adj_mass: wp.array(dtype=F64), adj_a1: wp.array(dtype=wp.vec3d),
                     adj_j1: wp.array(dtype=wp.vec3d), adj_xp: wp.array(dtype=wp.vec3d),
                     adj_vp: wp.array(dtype=wp.vec3d)):
    """The reverse of _hermite_step from its start ``x, v, a, jerk``: ``adj_x .. adj_j`` hold
    the adjoints of the step's end on entry and of its start on return (the state's
    compensation terms have zero derivative); returns the adjoints of G and eps^2."""
    base = s * n
    half = F64(0.5)
    c = dt * dt / F64(12.0)
    for i in range(n):
        p = base + i
        xp, vp = _hermite_predictor(x[p], v[p], a[p], jerk[p], dt)
        sx[p] = xp
        sv[p] = vp
        big_x = adj_x[p]
        big_v = adj_v[p]
        # x1 = x0 + dt/2 (v0 + v1) + c (a0 - a1); v1 = v0 + dt/2 (a0 + a1) + c (j0 - j1).
        v1 = big_v + dt * half * big_x
        adj_a1[p] = adj_a[p] - c * big_x + dt * half * v1
        adj_j1[p] = adj_j[p] - c * v1
        adj_x[p] = big_x
        adj_v[p] = dt * half * big_x + v1
        adj_a[p] = c * big_x + dt * half * v1
        adj_j[p] = c * v1
        adj_xp[p] = wp.vec3d()
        adj_vp[p] = wp.vec3d()
    dg, de2 = _gravity_vjp(n, base, sx, sv, base, mass, g, eps2, adj_a1, adj_j1, adj_xp, adj_vp,
                           adj_mass)
    for i in range(n):
        p = base + i
        bx = adj_xp[p]
        bv = adj_vp[p]
        adj_x[p] = adj_x[p] + bx
        adj_v[p] = adj_v[p] + dt * bx + bv
        adj_a[p] = adj_a[p] + dt * dt * half * bx + dt * bv
        adj_j[p] = adj_j[p] + dt * dt * dt / F64(6.0) * bx + dt * dt * half * bv
    return dg, de2


@wp.func
def _leapfrog_reverse(s: int, n: int, dt: F64, v: wp.array(dtype=wp.vec3d),
                      a: wp.array(dtype=wp.vec3d), cv: wp.array(dtype=wp.vec3d), x1o: int,
                      kx: wp.array(dtype=wp.vec3d), sx: wp.array(dtype=wp.vec3d),
                      sv: wp.array(dtype=wp.vec3d), mass: wp.array(dtype=F64), g: F64,
                      eps2: F64, adj_x: wp.array(dtype=wp.vec3d),
                      adj_v: wp.array(dtype=wp.vec3d), adj_a: wp.array(dtype=wp.vec3d),
                      adj_j: wp.array(dtype=wp.vec3d), adj_mass: wp.array(dtype=F64),
                      adj_a1: wp.array(dtype=wp.vec3d), adj_xf: wp.array(dtype=wp.vec3d),
                      adj_vf: wp.array(dtype=wp.vec3d)):
    """The reverse of _leapfrog_step from its start (``v, a, cv``; its end position from
    ``kx`` at ``x1o``), as _hermite_reverse: ``vh = v0 + dt/2 a0``, ``x1 = x0 + dt vh``,
    ``(a1, j1) = F(x1, vh)``, ``v1 = vh + dt/2 a1``."""
    base = s * n
    half = F64(0.5)
    for i in range(n):
        p = base + i
        vh, _unused = _kahan(v[p], cv[p], half * dt * a[p])
        sx[p] = kx[x1o + i]
        sv[p] = vh
        adj_a1[p] = adj_a[p] + half * dt * adj_v[p]
        adj_xf[p] = wp.vec3d()
        adj_vf[p] = wp.vec3d()
    dg, de2 = _gravity_vjp(n, base, sx, sv, base, mass, g, eps2, adj_a1, adj_j, adj_xf, adj_vf,
                           adj_mass)
    for i in range(n):
        p = base + i
        big_x = adj_x[p] + adj_xf[p]
        adj_vh = adj_v[p] + adj_vf[p] + dt * big_x
        adj_x[p] = big_x
        adj_v[p] = adj_vh
        adj_a[p] = half * dt * adj_vh
        adj_j[p] = wp.vec3d()
    return dg, de2


@wp.func
def _rk4_reverse(s: int, n: int, dt: F64, x1o: int, kx: wp.array(dtype=wp.vec3d),
                 kv: wp.array(dtype=wp.vec3d), tape_hi: wp.array(dtype=wp.vec3d),
                 tape_lo: wp.array(dtype=wp.vec3d), mass: wp.array(dtype=F64), g: F64,
                 eps2: F64, adj_x: wp.array(dtype=wp.vec3d), adj_v: wp.array(dtype=wp.vec3d),
                 adj_a: wp.array(dtype=wp.vec3d), adj_j: wp.array(dtype=wp.vec3d),
                 adj_mass: wp.array(dtype=F64), adj_sum_x: wp.array(dtype=wp.vec3d),
                 adj_sum_v: wp.array(dtype=wp.vec3d), adj_vk: wp.array(dtype=wp.vec3d),
                 adj_ak: wp.array(dtype=wp.vec3d), adj_node: wp.array(dtype=wp.vec3d)):
    """The reverse of _rk4_step whose stage positions are on the tape and whose end is
    ``kx, kv`` at ``x1o``. Stage k (1..3) evaluates ``a_k = F(x_k)`` at
    ``x_k = x0 + c_k v_{k-1}``, ``v_k = v0 + c_k a_{k-1}`` (``c = dt/2, dt/2, dt``); the step
    adds ``dt/6 (v0 + 2 v1 + 2 v2 + v3)`` and ``dt/6 (a0 + 2 a1 + 2 a2 + a3)``."""
    base = s * n
    half = F64(0.5)
    # The end state's forces and jerks.
    dg, de2 = _gravity_vjp(n, x1o, kx, kv, base, mass, g, eps2, adj_a, adj_j, adj_x, adj_v,
                           adj_mass)
    for i in range(n):
        p = base + i
        sxb = dt / F64(6.0) * adj_x[p]
        svb = dt / F64(6.0) * adj_v[p]
        adj_sum_x[p] = sxb
        adj_sum_v[p] = svb
        adj_v[p] = adj_v[p] + sxb
        adj_a[p] = svb
        adj_j[p] = wp.vec3d()
        adj_vk[p] = sxb  # v3 and a3 enter the sums with weight 1
        adj_ak[p] = svb
    for back in range(3):
        stage = 2 - back  # the tape's row of stage k = stage + 1
        scale = half * dt
        if stage == 2:
            scale = dt
        for i in range(n):
            adj_node[base + i] = wp.vec3d()
        dgk, de2k = _accelerations_vjp(n, (s * 7 + stage) * n, tape_hi, tape_lo, base, mass, g,
                                       eps2, adj_ak, adj_node, adj_mass)
        dg = dg + dgk
        de2 = de2 + de2k
        for i in range(n):
            p = base + i
            node = adj_node[p]
            adj_x[p] = adj_x[p] + node
            adj_v[p] = adj_v[p] + adj_vk[p]
            previous_v = scale * node
            previous_a = scale * adj_vk[p]
            if stage > 0:
                adj_vk[p] = previous_v + F64(2.0) * adj_sum_x[p]
                adj_ak[p] = previous_a + F64(2.0) * adj_sum_v[p]
            else:
                adj_v[p] = adj_v[p] + previous_v
                adj_a[p] = adj_a[p] + previous_a
    return dg, de2


@wp.func
def _ias15_reverse(s: int, n: int, dt: F64, iterations: wp.int32, radau: wp.array(dtype=F64),
                   x1o: int, kx: wp.array(dtype=wp.vec3d), kcx: wp.array(dtype=wp.vec3d),
                   tape_hi: wp.array(dtype=wp.vec3d), tape_lo: wp.array(dtype=wp.vec3d),
                   mass: wp.array(dtype=F64), g: F64, eps2: F64,
                   adj_x: wp.array(dtype=wp.vec3d), adj_v: wp.array(dtype=wp.vec3d),
                   adj_a: wp.array(dtype=wp.vec3d), adj_mass: wp.array(dtype=F64),
                   adj_b: wp.array(dtype=wp.vec3d), adj_g: wp.array(dtype=wp.vec3d),
                   adj_node: wp.array(dtype=wp.vec3d), adj_at: wp.array(dtype=wp.vec3d)):
    """The reverse of an accepted IAS15 step (_ias15_iterate, then _ias15_accept) whose node
    positions are on the tape and whose end (compensated) is ``kx, kcx`` from ``x1o``:
    ``adj_x, adj_v, adj_a`` hold the adjoints of the step's end on entry and of its start on
    return. The prediction b starts from is a constant (as in integrators.ias15); returns
    the adjoints of G and eps^2."""
    base = s * n
    half = F64(0.5)
    for i in range(n):
        adj_node[base + i] = wp.vec3d()
    # The new accelerations at the step's end.
    dg, de2 = _accelerations_vjp(n, x1o, kx, kcx, base, mass, g, eps2, adj_a, adj_node,
                                 adj_mass)
    for i in range(n):
        p = base + i
        big_x = adj_x[p] + adj_node[p]
        big_v = adj_v[p]
        # x1 = x0 + dt v0 + dt^2 (a0 / 2 + sum_k b_k / ((k+2)(k+3))),
        # v1 = v0 + dt (a0 + sum_k b_k / (k+2)).
        for k in range(7):
            w = (s * 7 + k) * n + i
            adj_b[w] = big_x * (dt * dt * radau[219 + k]) + big_v * (dt / F64(float(k + 2)))
            adj_g[w] = wp.vec3d()
        adj_x[p] = big_x
        adj_v[p] = big_v + dt * big_x
        adj_a[p] = big_x * (dt * dt * half) + big_v * dt
    it = iterations
    while it > 0:
        it = it - wp.int32(1)
        for mm in range(7):
            m = 7 - mm
            hm = radau[m]
            for i in range(n):
                p = base + i
                # b_j += C[m-1, j] change (j < m); change = tmp - g_{m-1}; g_{m-1} = tmp.
                adj_change = wp.vec3d()
                for j in range(m):
                    adj_change = adj_change + radau[8 + (m - 1) * 7 + j] * adj_b[
                        (s * 7 + j) * n + i]
                w = (s * 7 + m - 1) * n + i
                adj_tmp = adj_g[w] + adj_change
                adj_g[w] = -adj_change
                # The divided differences, last first.
                for rr in range(m - 1):
                    r = m - 1 - rr
                    adj_tmp = adj_tmp * radau[155 + m * 8 + r]
                    wr = (s * 7 + r - 1) * n + i
                    adj_g[wr] = adj_g[wr] - adj_tmp
                adj_tmp = adj_tmp * radau[155 + m * 8]
                adj_a[p] = adj_a[p] - adj_tmp
                adj_at[p] = adj_tmp
                adj_node[p] = wp.vec3d()
            t = ((s * MAX_ITERATIONS + it) * 7 + m - 1) * n
            dgn, de2n = _accelerations_vjp(n, t, tape_hi, tape_lo, base, mass, g, eps2, adj_at,
                                           adj_node, adj_mass)
            dg = dg + dgn
            de2 = de2 + de2n
            for i in range(n):
                p = base + i
                # node = x0 + dt hm v0 + (dt hm)^2 (a0 / 2 + sum_k b_k hm^(k+1) / ((k+2)(k+3))).
                node = adj_node[p]
                adj_x[p] = adj_x[p] + node
                adj_v[p] = adj_v[p] + (dt * hm) * node
                adj_poly = (dt * hm) * (dt * hm) * node
                adj_a[p] = adj_a[p] + half * adj_poly
                q = hm
                for k in range(7):
                    w = (s * 7 + k) * n + i
                    adj_b[w] = adj_b[w] + (q * radau[219 + k]) * adj_poly
                    q = q * hm
    return dg, de2


@wp.func
def _checkpoint(s: int, n: int, c: int, ias: int, x: wp.array(dtype=wp.vec3d),
                v: wp.array(dtype=wp.vec3d), a: wp.array(dtype=wp.vec3d),
                jerk: wp.array(dtype=wp.vec3d), cx: wp.array(dtype=wp.vec3d),
                cv: wp.array(dtype=wp.vec3d), ias_b: wp.array(dtype=wp.vec3d),
                ias_e: wp.array(dtype=wp.vec3d), last_step: wp.array(dtype=F64),
                kx: wp.array(dtype=wp.vec3d), kv: wp.array(dtype=wp.vec3d),
                ka: wp.array(dtype=wp.vec3d), kj: wp.array(dtype=wp.vec3d),
                kcx: wp.array(dtype=wp.vec3d), kcv: wp.array(dtype=wp.vec3d),
                kb: wp.array(dtype=wp.vec3d), ke: wp.array(dtype=wp.vec3d),
                klast: wp.array(dtype=F64), save: int):
    """World ``s``'s state stored as checkpoint ``c`` (``save``) or loaded from it."""
    base = s * n
    for i in range(n):
        p = base + i
        q = c * n + i
        if save != 0:
            kx[q] = x[p]
            kv[q] = v[p]
            ka[q] = a[p]
            kj[q] = jerk[p]
            kcx[q] = cx[p]
            kcv[q] = cv[p]
        else:
            x[p] = kx[q]
            v[p] = kv[q]
            a[p] = ka[q]
            jerk[p] = kj[q]
            cx[p] = kcx[q]
            cv[p] = kcv[q]
        if ias != 0:
            for j in range(7):
                w = (s * 7 + j) * n + i
                u = (c * 7 + j) * n + i
                if save != 0:
                    kb[u] = ias_b[w]
                    ke[u] = ias_e[w]
                else:
                    ias_b[w] = kb[u]
                    ias_e[w] = ke[u]
    if save != 0:
        klast[c] = last_step[s]
    else:
        last_step[s] = klast[c]


@functools.cache
def _backward_kernel():
    @wp.kernel(enable_backward=False, module="unique")
    def backward(
        n: int, integrator: int, capacity: int, radau: wp.array(dtype=F64),
        gp: wp.array(dtype=F64), mass: wp.array(dtype=F64), steps: wp.array(dtype=F64),
        counts: wp.array(dtype=wp.int32), offsets: wp.array(dtype=wp.int32),
        # The state at the start (overwritten: the replay's working state).
        x: wp.array(dtype=wp.vec3d), v: wp.array(dtype=wp.vec3d), a: wp.array(dtype=wp.vec3d),
        jerk: wp.array(dtype=wp.vec3d), snap: wp.array(dtype=wp.vec3d),
        crackle: wp.array(dtype=wp.vec3d), cx: wp.array(dtype=wp.vec3d),
        cv: wp.array(dtype=wp.vec3d), ias_b: wp.array(dtype=wp.vec3d),
        ias_e: wp.array(dtype=wp.vec3d), last_step: wp.array(dtype=F64),
        # Checkpoints: the state before every step and after the last, world by world.
        kx: wp.array(dtype=wp.vec3d), kv: wp.array(dtype=wp.vec3d),
        ka: wp.array(dtype=wp.vec3d), kj: wp.array(dtype=wp.vec3d),
        kcx: wp.array(dtype=wp.vec3d), kcv: wp.array(dtype=wp.vec3d),
        kb: wp.array(dtype=wp.vec3d), ke: wp.array(dtype=wp.vec3d), klast: wp.array(dtype=F64),
        # Scratch of the steps and the tape of IAS15's node positions.
        sx: wp.array(dtype=wp.vec3d), sv: wp.array(dtype=wp.vec3d),
        sa: wp.array(dtype=wp.vec3d), sj: wp.array(dtype=wp.vec3d),
        wb: wp.array(dtype=wp.vec3d), wg: wp.array(dtype=wp.vec3d),
        we: wp.array(dtype=wp.vec3d), wcs: wp.array(dtype=wp.vec3d),
        tape_hi: wp.array(dtype=wp.vec3d), tape_lo: wp.array(dtype=wp.vec3d),
        # Adjoints: of the end state on entry, of the start on return; masses, [G, eps^2].
        adj_x: wp.array(dtype=wp.vec3d), adj_v: wp.array(dtype=wp.vec3d),
        adj_a: wp.array(dtype=wp.vec3d), adj_j: wp.array(dtype=wp.vec3d),
        adj_mass: wp.array(dtype=F64), adj_params: wp.array(dtype=F64),
        # Adjoint scratch.
        adj_b: wp.array(dtype=wp.vec3d), adj_g: wp.array(dtype=wp.vec3d),
        adj_1: wp.array(dtype=wp.vec3d), adj_2: wp.array(dtype=wp.vec3d),
        adj_3: wp.array(dtype=wp.vec3d), adj_4: wp.array(dtype=wp.vec3d),
    ):
        s = wp.tid()
        base = s * n
        g = gp[2 * s]
        eps2 = gp[2 * s + 1] * gp[2 * s + 1]
        ias = wp.where(integrator == 3, 1, 0)
        count = counts[s]
        first = offsets[s]
        # The forward again through the recorded steps (the forward loop's operations, so
        # the same values bit for bit), keeping the state before each step.
        for k in range(count + 1):
            _checkpoint(s, n, first + k, ias, x, v, a, jerk, cx, cv, ias_b, ias_e, last_step,
                        kx, kv, ka, kj, kcx, kcv, kb, ke, klast, 1)
            if k < count:
                dt = steps[s * capacity + k]
                if integrator == 0:
                    _leapfrog_step(s, n, dt, x, v, a, jerk, cx, cv, sx, sv, sa, sj, mass, g,
                                   eps2)
                elif integrator == 1:
                    _rk4_step(s, n, dt, x, v, a, jerk, cx, cv, sx, sv, sa, sj, adj_3, adj_4,
                              mass, g, eps2, 0, tape_hi, tape_lo)
                elif integrator == 2:
                    _hermite_step(s, n, dt, x, v, a, jerk, snap, crackle, cx, cv, sx, sv, sa,
                                  sj, mass, g, eps2)
                else:
                    _ias15_predict(s, n, dt, last_step[s], radau, ias_b, ias_e, wb, wg, we, wcs)
                    _ias15_iterate(s, n, dt, radau, x, v, a, cx, mass, g, eps2, sx, sv, sa, wb,
                                   wg, wcs, 0, tape_hi, tape_lo)
                    _ias15_accept(s, n, dt, x, v, a, cx, cv, ias_b, ias_e, wb, we, mass, g,
                                  eps2)
                    last_step[s] = dt
        dg = F64(0.0)
        de2 = F64(0.0)
        if integrator == 3:
            # The end state's jerk, evaluated once at the end of the forward loop.
            for i in range(n):
                adj_1[base + i] = wp.vec3d()
            dgj, de2j = _gravity_vjp(n, (first + count) * n, kx, kv, base, mass, g, eps2,
                                     adj_1, adj_j, adj_x, adj_v, adj_mass)
            dg = dg + dgj
            de2 = de2 + de2j
            for i in range(n):
                adj_j[base + i] = wp.vec3d()
        k = count
        while k > 0:
            k = k - 1
            _checkpoint(s, n, first + k, ias, x, v, a, jerk, cx, cv, ias_b, ias_e, last_step,
                        kx, kv, ka, kj, kcx, kcv, kb, ke, klast, 0)
            dt = steps[s * capacity + k]
            if integrator == 0:
                dgk, de2k = _leapfrog_reverse(s, n, dt, v, a, cv, (first + k + 1) * n, kx, sx,
                                              sv, mass, g, eps2, adj_x, adj_v, adj_a, adj_j,
                                              adj_mass, adj_1, adj_2, adj_3)
                dg = dg + dgk
                de2 = de2 + de2k
            elif integrator == 1:
                _rk4_step(s, n, dt, x, v, a, jerk, cx, cv, sx, sv, sa, sj, adj_3, adj_4, mass, g,
                          eps2, 1, tape_hi, tape_lo)
                dgk, de2k = _rk4_reverse(s, n, dt, (first + k + 1) * n, kx, kv, tape_hi,
                                         tape_lo, mass, g, eps2, adj_x, adj_v, adj_a, adj_j,
                                         adj_mass, adj_1, adj_2, adj_3, adj_4, sa)
                dg = dg + dgk
                de2 = de2 + de2k
            elif integrator == 2:
                dgk, de2k = _hermite_reverse(s, n, dt, x, v, a, jerk, sx, sv, mass, g, eps2,
                                             adj_x, adj_v, adj_a, adj_j, adj_mass, adj_1, adj_2,
                                             adj_3, adj_4)
                dg = dg + dgk
                de2 = de2 + de2k
            else:
                _ias15_predict(s, n, dt, last_step[s], radau, ias_b, ias_e, wb, wg, we, wcs)
                iterations = _ias15_iterate(s, n, dt, radau, x, v, a, cx, mass, g, eps2, sx, sv,
                                            sa, wb, wg, wcs, 1, tape_hi, tape_lo)
                dgk, de2k = _ias15_reverse(s, n, dt, iterations, radau, (first + k + 1) * n, kx,
                                           kcx, tape_hi, tape_lo, mass, g, eps2, adj_x, adj_v,
                                           adj_a, adj_mass, adj_b, adj_g, adj_1, adj_2)
                dg = dg + dgk
                de2 = de2 + de2k
        adj_params[2 * s] = dg
        adj_params[2 * s + 1] = de2

    return backward


@functools.cache
def _radau(device: str):
    nodes = np.array(RADAU_NODES)
    inverse_gaps = np.zeros((8, 8))  # 1 / (h_m - h_r), r < m
    for m in range(1, 8):
        inverse_gaps[m, :m] = 1.0 / (nodes[m] - nodes[:m])
    poly = 1.0 / np.array([(k + 2) * (k + 3) for k in range(7)], dtype=float)
    # nodes [8] at 0, C [49] at 8, D [49] at 57, shift [49] at 106, 1 / gaps [64] at 155,
    # 1 / ((k + 2)(k + 3)) [7] at 219.
    values = np.concatenate([nodes, RADAU["C"].ravel(), RADAU["D"].ravel(),
                             RADAU["shift"].ravel(), inverse_gaps.ravel(), poly])
    return wp.array(values, dtype=wp.float64, device=device)


def supports(sim) -> bool:
    """Whether ``sim``'s worlds take the compiled loop (few bodies)."""
    return sim.model.body_count <= FEW_BODIES


def advance(sim, state: State, p, t_end: torch.Tensor, etas: torch.Tensor | None,
            max_steps: int, *, record: bool = False, capacity: int = 4096):
    """Every world of ``state`` advanced to its ``t_end`` in one launch.

    Args:
        record: Record every accepted step size (for :func:`backward`).
        capacity: Steps recorded per world and launch; a world that fills its record
            carries on from there in a further launch (the same steps as one launch).

    Returns:
        The final state (on the simulator's device and precision, detached), each world's
        status code ``[B]`` (``sim.last_steps`` gets each world's step count), and (with
        ``record``) the accepted step sizes ``[B, S]`` (0 past a world's last step).
    """
    resolve_backend("warp", precision="float64").ensure_initialized()
    b, n = sim.batch_size, sim.model.body_count
    model = sim.model
    device = "cpu" if state.body_x.device.type == "cpu" else f"cuda:{state.body_x.device.index or 0}"
    f64 = torch.float64

    def buf(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(f64).contiguous().clone()

    vec_names = ("body_x", "body_v", "body_a", "body_jerk", "body_snap", "body_crackle",
                 "body_x_err", "body_v_err")
    if model.integrator is Integrator.IAS15:
        coefficient_names = ("ias_b", "ias_e")
    else:
        coefficient_names = ()
    values = {name: buf(getattr(state, name)) for name in vec_names}
    stages = 7
    zeros = state.body_x.new_zeros(b, stages, n, 3, dtype=f64)
    coefficients = {name: buf(getattr(state, name)) if name in coefficient_names
                    else zeros.clone() for name in ("ias_b", "ias_e")}
    scalars = {name: buf(getattr(state, name)) for name in ("last_step", "time_step", "time")}
    evaluations = state.force_evaluations.detach().to(torch.int64).contiguous().clone()
    like = values["body_x"]
    scratch = [torch.zeros_like(like) for _ in range(6)]
    coefficient_scratch = [torch.zeros_like(zeros) for _ in range(4)]
    cap = capacity if record else 1
    gp = torch.stack([p.gravitational_constant, p.softening], 1).detach().to(f64)
    eta = (etas if etas is not None else torch.zeros(b)).to(like).contiguous()
    if model.integrator is Integrator.IAS15:
        eta = torch.zeros_like(eta)
    end = t_end.detach().to(like).contiguous()

    def vec(t: torch.Tensor):
        return wp.from_torch(t.reshape(-1, 3), dtype=wp.vec3d)

    def flat(t: torch.Tensor, dtype=wp.float64):
        return wp.from_torch(t.reshape(-1), dtype=dtype)

    chunks: list[tuple[torch.Tensor, torch.Tensor]] = []  # recorded steps, counts
    resumed = torch.ones(b, dtype=torch.bool, device=like.device)
    final_status = torch.zeros(b, dtype=torch.int32, device=like.device)
    budget = int(min(max_steps, 2**31 - 1))
    while True:
        steps = torch.zeros(b, cap, dtype=f64, device=like.device)
        recorded = torch.zeros(b, dtype=torch.int32, device=like.device)
        status = torch.zeros(b, dtype=torch.int32, device=like.device)
        wp.launch(
            _advance_kernel(), dim=b, device=device,
            inputs=[n, _INTEGRATOR_ID[model.integrator], _CRITERION_ID[model.criterion],
                    float(model.tolerance), float(model.dt_min), budget, cap, int(record),
                    _radau(device), flat(eta), flat(end), flat(gp.contiguous()),
                    flat(p.dt.detach().to(like).contiguous()),
                    flat(p.body_mass.detach().to(like).contiguous()),
                    *(vec(values[name]) for name in vec_names),
                    vec(coefficients["ias_b"]), vec(coefficients["ias_e"]),
                    *(flat(scalars[name]) for name in ("last_step", "time_step", "time")),
                    flat(evaluations, wp.int64), *(vec(t) for t in scratch),
                    *(vec(t) for t in coefficient_scratch), flat(steps),
                    flat(recorded, wp.int32), flat(status, wp.int32)],
        )
        chunks.append((steps, recorded.long()))
        full = status == RECORD_OVERFLOW
        final_status = torch.where(resumed, status, final_status)
        if not (record and bool(full.any())):
            break
        # The record is full: carry on from where the loop stopped (it stops before a step,
        # the state intact) with a fresh record; worlds that were done stay where they are.
        resumed = full
        end = torch.where(full, end, scalars["time"])
        budget -= cap
    counts = sum(c for _, c in chunks)
    # A world's records are full but in its last launch (and empty after it): end to end,
    # the launches' records are each world's steps, then zeros.
    steps = torch.cat([steps for steps, _ in chunks], 1)
    status = final_status
    dtype = state.body_x.dtype
    fields = {name: values[name].to(dtype) for name in vec_names}
    for name in ("ias_b", "ias_e"):
        fields[name] = (coefficients[name].to(dtype) if name in coefficient_names
                        else getattr(state, name).detach())
    fields.update({name: scalars[name].to(dtype) for name in scalars})
    fields["force_evaluations"] = evaluations
    final = State(**fields)
    used = int(counts.max()) if record else 0
    sim.last_steps = counts.cpu()
    return final, status.long().cpu(), (steps[:, :used] if record else None)


def backward(sim, state: State, p, steps: torch.Tensor, counts: torch.Tensor,
             adjoints: tuple[torch.Tensor | None, ...]) -> tuple[torch.Tensor, ...]:
    """The gradient of :func:`advance`, in one launch, one thread per world.

    Each thread takes its world's recorded steps again from ``state`` (the forward loop's
    operations, so the same values bit for bit), keeping the state before each step,
    then goes back step by step: a leapfrog or Hermite step's adjoint from its start state,
    an RK4 step's after re-running it with its stage positions on a tape, an IAS15 step's
    after re-running its iterations with the node positions on a tape. Step sizes
    and iteration counts are constants, as in the torch replay.

    Args:
        state: The start state ``advance`` was given.
        p: Per-world parameters.
        steps: The accepted step sizes ``[B, S]`` that ``advance`` recorded.
        counts: Steps per world ``[B]``.
        adjoints: Adjoints of the end state's positions, velocities, accelerations and jerks
            ``[B, N, 3]`` (None for zero).

    Returns:
        Adjoints of the start state's positions, velocities, accelerations and jerks
        ``[B, N, 3]``, of the masses ``[B, N]``, of G ``[B]`` and of the softening ``[B]``
        (float64); and the positions and velocities ``[B, N, 3]`` the replay ended at (those
        of ``advance``: the gradient is that of the trajectory the forward loop took).
    """
    model = sim.model
    resolve_backend("warp", precision="float64").ensure_initialized()
    b, n = sim.batch_size, model.body_count
    like = state.body_x
    device = "cpu" if like.device.type == "cpu" else f"cuda:{like.device.index or 0}"
    f64 = torch.float64
    ias = model.integrator is Integrator.IAS15

    def buf(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(f64).contiguous().clone()

    def zeros(*shape) -> torch.Tensor:
        return torch.zeros(*shape, dtype=f64, device=like.device)

    def unset(*shape) -> torch.Tensor:
        # Checkpoints, tape and scratch: the kernel writes each entry before it reads it
        # (zeroing megabytes of checkpoints cost as much as the kernel).
        return torch.empty(*shape, dtype=f64, device=like.device)

    def vec(t: torch.Tensor):
        return wp.from_torch(t.reshape(-1, 3), dtype=wp.vec3d)

    def flat(t: torch.Tensor, dtype=wp.float64):
        return wp.from_torch(t.reshape(-1), dtype=dtype)

    counts = counts.to(device=like.device, dtype=torch.int32).contiguous()
    offsets = (torch.cumsum(counts + 1, 0) - (counts + 1)).to(torch.int32).contiguous()
    total = int((counts + 1).sum())
    steps = steps.detach().to(f64).contiguous()
    capacity = max(int(steps.shape[1]), 1)
    if steps.shape[1] == 0:
        steps = zeros(b, 1)
    start = [buf(getattr(state, name)) for name in (
        "body_x", "body_v", "body_a", "body_jerk", "body_snap", "body_crackle", "body_x_err",
        "body_v_err")]
    coefficients = [buf(state.ias_b) if ias else zeros(b, 7, n, 3),
                    buf(state.ias_e) if ias else zeros(b, 7, n, 3)]
    checkpoints = [unset(total, n, 3) for _ in range(6)]
    checkpoint_b = [unset(total if ias else 1, 7, n, 3) for _ in range(2)]
    scratch = [unset(b, n, 3) for _ in range(4)] + [unset(b, 7, n, 3) for _ in range(4)]
    tape = [unset(b, MAX_ITERATIONS if ias else 1, 7, n, 3) for _ in range(2)]
    adj = [zeros(b, n, 3) if t is None else buf(t) for t in adjoints]
    adj_mass, adj_params = zeros(b, n), zeros(b, 2)
    adj_scratch = [unset(b, 7, n, 3) for _ in range(2)] + [unset(b, n, 3) for _ in range(4)]
    gp = torch.stack([p.gravitational_constant, p.softening], 1).detach().to(f64).contiguous()
    wp.launch(
        _backward_kernel(), dim=b, device=device,
        inputs=[n, _INTEGRATOR_ID[model.integrator], capacity, _radau(device), flat(gp),
                flat(p.body_mass.detach().to(f64).contiguous()), flat(steps),
                flat(counts, wp.int32), flat(offsets, wp.int32),
                *(vec(t) for t in start), *(vec(t) for t in coefficients),
                flat(buf(state.last_step)),
                *(vec(t) for t in checkpoints), *(vec(t) for t in checkpoint_b), flat(unset(total)),
                *(vec(t) for t in scratch), *(vec(t) for t in tape),
                *(vec(t) for t in adj), flat(adj_mass), flat(adj_params),
                *(vec(t) for t in adj_scratch)],
    )
    eps = p.softening.detach().to(f64)
    end = checkpoints[0][(offsets + counts).long()], checkpoints[1][(offsets + counts).long()]
    return (*adj, adj_mass, adj_params[:, 0], 2 * eps * adj_params[:, 1]), end
