"""Whole-interval integration of many small systems, one Warp thread per system.

Why this exists beside :class:`~simdiff.sims.nbody.NBody`: RL time-stepping and its evaluation
run millions of steps of three-body systems. Driven from Python, every step pays a kernel
launch, the step criterion's reductions and several torch calls (~0.5 ms a step for three
bodies), so an episode at ``eta = 1e-4`` takes minutes. Here one launch advances a batch of
systems to a target time, each thread looping over its system's adaptive steps in compiled
code (~1 µs a three-body step). The integrators and step criteria are the same algorithms as
``integrators.py`` and ``NBody.next_dt``, operation for operation, and a test checks that both
paths give the same trajectory; this path is float64, forward only (step choice is not
differentiated anyway).
"""

from __future__ import annotations

import functools

import numpy as np
import warp as wp

from simdiff.backend import resolve_backend
from simdiff.sims.base import ValidationError
from simdiff.sims.nbody.model import Integrator, StepCriterion

__all__ = ["FewBody", "Status"]

_INTEGRATOR_ID = {Integrator.LEAPFROG: 0, Integrator.RK4: 1, Integrator.HERMITE: 2}
_CRITERION_ID = {StepCriterion.AARSETH: 0, StepCriterion.COLLISION: 1}


class Status:
    """Per-system outcome codes of :meth:`FewBody.advance`."""

    OK = 0
    DT_BELOW_MIN = 1
    MAX_STEPS = 2


@wp.func
def _gravity(i: int, base: int, n: int, x: wp.array(dtype=wp.vec3d), v: wp.array(dtype=wp.vec3d),
             mass: wp.array(dtype=wp.float64), g: wp.float64, eps2: wp.float64,
             a_out: wp.array(dtype=wp.vec3d), j_out: wp.array(dtype=wp.vec3d)):
    xi = x[base + i]
    vi = v[base + i]
    acc = wp.vec3d()
    jerk = wp.vec3d()
    for k in range(n):
        if k != i:
            dx = x[base + k] - xi
            dv = v[base + k] - vi
            r2 = wp.dot(dx, dx) + eps2
            inv_r = wp.float64(1.0) / wp.sqrt(r2)
            inv_r3 = inv_r * inv_r * inv_r
            gm = g * mass[base + k]
            acc = acc + gm * inv_r3 * dx
            rv = wp.dot(dx, dv) * inv_r * inv_r
            jerk = jerk + gm * inv_r3 * (dv - wp.float64(3.0) * rv * dx)
    a_out[base + i] = acc
    j_out[base + i] = jerk


@wp.func
def _all_gravity(base: int, n: int, x: wp.array(dtype=wp.vec3d), v: wp.array(dtype=wp.vec3d),
                 mass: wp.array(dtype=wp.float64), g: wp.float64, eps2: wp.float64,
                 a_out: wp.array(dtype=wp.vec3d), j_out: wp.array(dtype=wp.vec3d)):
    for i in range(n):
        _gravity(i, base, n, x, v, mass, g, eps2, a_out, j_out)


@wp.func
def _criterion_dt(base: int, n: int, criterion: int, eta: wp.float64,
                  x: wp.array(dtype=wp.vec3d), v: wp.array(dtype=wp.vec3d),
                  a: wp.array(dtype=wp.vec3d), jerk: wp.array(dtype=wp.vec3d),
                  snap: wp.array(dtype=wp.vec3d), crackle: wp.array(dtype=wp.vec3d),
                  mass: wp.array(dtype=wp.float64), g: wp.float64) -> wp.float64:
    best = wp.float64(1.0e300)
    if criterion == 1:
        for i in range(n):
            for k in range(n):
                if k != i:
                    r = wp.length(x[base + k] - x[base + i])
                    vr = wp.max(wp.length(v[base + k] - v[base + i]), wp.float64(1.0e-300))
                    free_fall = wp.sqrt(r * r * r / (g * (mass[base + i] + mass[base + k])))
                    best = wp.min(best, wp.min(free_fall, r / vr))
        return eta * best
    snap_max = wp.float64(0.0)
    for i in range(n):
        snap_max = wp.max(snap_max, wp.length(snap[base + i]))
    for i in range(n):
        an = wp.length(a[base + i])
        jn = wp.length(jerk[base + i])
        if snap_max > wp.float64(0.0):
            sn = wp.length(snap[base + i])
            cn = wp.length(crackle[base + i])
            best = wp.min(best, wp.sqrt((an * sn + jn * jn) / (jn * cn + sn * sn)))
        else:
            best = wp.min(best, an / jn)
    if best >= wp.float64(1.0e300):
        # Bodies at rest have no jerk: the shortest pair free-fall time sets the first step.
        for i in range(n):
            for k in range(n):
                if k != i:
                    r = wp.length(x[base + k] - x[base + i])
                    best = wp.min(best, wp.sqrt(r * r * r / (g * (mass[base + i]
                                                                  + mass[base + k]))))
    return eta * best


@functools.cache
def _advance_kernel():
    @wp.kernel(enable_backward=False)
    def advance(
        n: int,
        integrator: int,
        criterion: int,
        eta: wp.array(dtype=wp.float64),
        t_end: wp.array(dtype=wp.float64),
        settings: wp.array(dtype=wp.float64),  # [G, softening, dt_max, dt_min]
        max_steps: int,
        mass: wp.array(dtype=wp.float64),
        x: wp.array(dtype=wp.vec3d),
        v: wp.array(dtype=wp.vec3d),
        a: wp.array(dtype=wp.vec3d),
        jerk: wp.array(dtype=wp.vec3d),
        snap: wp.array(dtype=wp.vec3d),
        crackle: wp.array(dtype=wp.vec3d),
        time: wp.array(dtype=wp.float64),
        # Scratch, one slot a body: stage positions, velocities, forces and RK4 sums.
        sx: wp.array(dtype=wp.vec3d),
        sv: wp.array(dtype=wp.vec3d),
        sa: wp.array(dtype=wp.vec3d),
        sj: wp.array(dtype=wp.vec3d),
        sum_x: wp.array(dtype=wp.vec3d),
        sum_v: wp.array(dtype=wp.vec3d),
        evaluations: wp.array(dtype=wp.int64),
        steps: wp.array(dtype=wp.int64),
        status: wp.array(dtype=wp.int32),
    ):
        s = wp.tid()
        base = s * n
        g = settings[0]
        eps2 = settings[1] * settings[1]
        dt_max = settings[2]
        dt_min = settings[3]
        half = wp.float64(0.5)
        t = time[s]
        end = t_end[s]
        taken = wp.int32(0)  # a dynamic variable: Warp refuses to mutate a literal 0
        status[s] = wp.int32(0)
        while t < end * (wp.float64(1.0) - wp.float64(1.0e-12)):
            dt = _criterion_dt(base, n, criterion, eta[s], x, v, a, jerk, snap, crackle, mass, g)
            if not (dt >= dt_min):
                status[s] = wp.int32(1)
                break
            if taken >= max_steps:
                status[s] = wp.int32(2)
                break
            dt = wp.min(dt, dt_max)
            dt = wp.min(dt, end - t)
            if integrator == 2:
                # Hermite PEC, as integrators.hermite.
                for i in range(n):
                    p = base + i
                    sx[p] = x[p] + dt * (v[p] + dt / wp.float64(2.0) * (
                        a[p] + dt / wp.float64(3.0) * jerk[p]))
                    sv[p] = v[p] + dt * (a[p] + dt / wp.float64(2.0) * jerk[p])
                _all_gravity(base, n, sx, sv, mass, g, eps2, sa, sj)
                evaluations[s] = evaluations[s] + wp.int64(1)
                for i in range(n):
                    p = base + i
                    a0 = a[p]
                    j0 = jerk[p]
                    a1 = sa[p]
                    j1 = sj[p]
                    v1 = v[p] + dt / wp.float64(2.0) * (a0 + a1) + dt * dt / wp.float64(12.0) * (
                        j0 - j1)
                    x1 = x[p] + dt / wp.float64(2.0) * (v[p] + v1) + dt * dt / wp.float64(
                        12.0) * (a0 - a1)
                    snap0 = (wp.float64(-6.0) * (a0 - a1) - dt * (
                        wp.float64(4.0) * j0 + wp.float64(2.0) * j1)) / (dt * dt)
                    crack = (wp.float64(12.0) * (a0 - a1) + wp.float64(6.0) * dt * (
                        j0 + j1)) / (dt * dt * dt)
                    x[p] = x1
                    v[p] = v1
                    a[p] = a1
                    jerk[p] = j1
                    snap[p] = snap0 + dt * crack
                    crackle[p] = crack
            elif integrator == 0:
                # Kick-drift-kick, as integrators.leapfrog.
                for i in range(n):
                    p = base + i
                    sv[p] = v[p] + half * dt * a[p]
                    sx[p] = x[p] + dt * sv[p]
                _all_gravity(base, n, sx, sv, mass, g, eps2, sa, sj)
                evaluations[s] = evaluations[s] + wp.int64(1)
                for i in range(n):
                    p = base + i
                    x[p] = sx[p]
                    v[p] = sv[p] + half * dt * sa[p]
                    a[p] = sa[p]
                    jerk[p] = sj[p]
            else:
                # Classical RK4, as integrators.rk4: stages k = 1, 2, 3 then the final forces.
                for i in range(n):
                    p = base + i
                    sum_x[p] = v[p]
                    sum_v[p] = a[p]
                    sx[p] = x[p] + half * dt * v[p]
                    sv[p] = v[p] + half * dt * a[p]
                for stage in range(3):
                    _all_gravity(base, n, sx, sv, mass, g, eps2, sa, sj)
                    weight = wp.float64(2.0)
                    scale = half * dt
                    if stage == 2:
                        weight = wp.float64(1.0)
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
                    x[p] = x[p] + dt / wp.float64(6.0) * sum_x[p]
                    v[p] = v[p] + dt / wp.float64(6.0) * sum_v[p]
                _all_gravity(base, n, x, v, mass, g, eps2, a, jerk)
                evaluations[s] = evaluations[s] + wp.int64(4)
            t = t + dt
            taken = taken + wp.int32(1)
        time[s] = t
        steps[s] = steps[s] + wp.int64(taken)

    return advance


@functools.cache
def _forces_kernel():
    @wp.kernel(enable_backward=False)
    def forces(n: int, settings: wp.array(dtype=wp.float64), mass: wp.array(dtype=wp.float64),
               x: wp.array(dtype=wp.vec3d), v: wp.array(dtype=wp.vec3d),
               a: wp.array(dtype=wp.vec3d), jerk: wp.array(dtype=wp.vec3d)):
        s = wp.tid()
        _all_gravity(s * n, n, x, v, mass, settings[0], settings[1] * settings[1], a, jerk)

    return forces


class FewBody:
    """A batch of independent small N-body systems advanced together (float64, Warp on CPU).

    Args:
        mass: Body masses, shape ``[systems, bodies]``.
        x: Positions, shape ``[systems, bodies, 3]``.
        v: Velocities, shape ``[systems, bodies, 3]``.
        integrator: ``hermite``, ``leapfrog`` or ``rk4``.
        criterion: ``aarseth`` or ``collision`` (as :class:`~simdiff.sims.nbody.Model`).
        gravitational_constant, softening: As in the model.
        dt_max: Largest step (the model's ``dt``).
        dt_min: A smaller adaptive step stops that system with ``Status.DT_BELOW_MIN``.

    Attributes:
        evaluations: Force evaluations each system has paid, shape ``[systems]`` (the initial
            one excluded, as :class:`~simdiff.sims.nbody.NBody` counts steps only).
        steps: Steps each system has taken.
    """

    def __init__(self, mass, x, v, *, integrator: str = "hermite", criterion: str = "aarseth",
                 gravitational_constant: float = 1.0, softening: float = 0.0,
                 dt_max: float = 0.1, dt_min: float = 1e-12) -> None:
        try:
            self.integrator = Integrator(integrator)
        except ValueError:
            allowed = ", ".join(i.value for i in Integrator)
            raise ValidationError(f"integrator={integrator!r} is unknown; allowed: {allowed}") from None
        try:
            self.criterion = StepCriterion(criterion)
        except ValueError:
            allowed = ", ".join(c.value for c in StepCriterion)
            raise ValidationError(f"criterion={criterion!r} is unknown; allowed: {allowed}") from None
        mass = np.asarray(mass, dtype=np.float64)
        x, v = np.asarray(x, dtype=np.float64), np.asarray(v, dtype=np.float64)
        if mass.ndim != 2 or x.shape != (*mass.shape, 3) or v.shape != x.shape:
            raise ValidationError(
                f"mass must have shape [systems, bodies] and x, v [systems, bodies, 3]; got "
                f"{mass.shape}, {x.shape}, {v.shape}")
        if not (mass > 0).all():
            raise ValidationError("mass must be > 0 for every body")
        if not (dt_max > 0 and 0 < dt_min < dt_max):
            raise ValidationError(f"need 0 < dt_min={dt_min} < dt_max={dt_max}")
        resolve_backend("warp", precision="float64").ensure_initialized()
        self.systems, self.bodies = mass.shape
        self.settings = np.array([gravitational_constant, softening, dt_max, dt_min])
        self._settings = wp.array(self.settings, dtype=wp.float64, device="cpu")
        self._mass = wp.array(mass.reshape(-1), dtype=wp.float64, device="cpu")
        self.mass = mass

        def vectors(values=None):
            values = np.zeros((self.systems * self.bodies, 3)) if values is None else values
            return wp.array(values.reshape(-1, 3), dtype=wp.vec3d, device="cpu")

        self._x, self._v = vectors(x), vectors(v)
        self._a, self._jerk, self._snap, self._crackle = (vectors() for _ in range(4))
        self._scratch = [vectors() for _ in range(6)]
        self._time = wp.zeros(self.systems, dtype=wp.float64, device="cpu")
        self._evaluations = wp.zeros(self.systems, dtype=wp.int64, device="cpu")
        self._steps = wp.zeros(self.systems, dtype=wp.int64, device="cpu")
        self._status = wp.zeros(self.systems, dtype=wp.int32, device="cpu")
        wp.launch(_forces_kernel(), dim=self.systems, device="cpu",
                  inputs=[self.bodies, self._settings, self._mass, self._x, self._v, self._a,
                          self._jerk])
        self.initial_energy = self.energy()

    @property
    def x(self) -> np.ndarray:
        """Positions, shape ``[systems, bodies, 3]`` (a copy)."""
        return self._x.numpy().reshape(self.systems, self.bodies, 3).copy()

    @property
    def v(self) -> np.ndarray:
        """Velocities, shape ``[systems, bodies, 3]`` (a copy)."""
        return self._v.numpy().reshape(self.systems, self.bodies, 3).copy()

    @property
    def time(self) -> np.ndarray:
        return self._time.numpy().copy()

    @property
    def evaluations(self) -> np.ndarray:
        return self._evaluations.numpy().copy()

    @property
    def steps(self) -> np.ndarray:
        return self._steps.numpy().copy()

    def advance(self, t_end, eta, *, max_steps: int = 10_000_000) -> np.ndarray:
        """Advance every system to its ``t_end`` with accuracy parameter ``eta`` (scalars or
        arrays of shape ``[systems]``), the last step shortened to land on ``t_end``.

        Returns:
            The :class:`Status` code of each system; a system that stopped early keeps the
            state and time it reached.
        """
        t_end = np.broadcast_to(np.asarray(t_end, dtype=np.float64), (self.systems,))
        eta = np.broadcast_to(np.asarray(eta, dtype=np.float64), (self.systems,))
        if not (eta > 0).all():
            raise ValidationError(f"eta must be > 0; got {eta.min()}")
        wp.launch(
            _advance_kernel(), dim=self.systems, device="cpu",
            inputs=[self.bodies, _INTEGRATOR_ID[self.integrator], _CRITERION_ID[self.criterion],
                    wp.array(np.ascontiguousarray(eta), dtype=wp.float64, device="cpu"),
                    wp.array(np.ascontiguousarray(t_end), dtype=wp.float64, device="cpu"),
                    self._settings, max_steps, self._mass, self._x, self._v, self._a,
                    self._jerk, self._snap, self._crackle, self._time, *self._scratch,
                    self._evaluations, self._steps, self._status],
        )
        return self._status.numpy().copy()

    def energy(self) -> np.ndarray:
        """Kinetic plus softened potential energy of each system, shape ``[systems]``."""
        x, v, m = self.x, self.v, self.mass
        kinetic = 0.5 * (m * (v**2).sum(-1)).sum(-1)
        d2 = ((x[:, :, None, :] - x[:, None, :, :]) ** 2).sum(-1) + self.settings[1] ** 2
        upper = np.triu(np.ones((self.bodies, self.bodies), dtype=bool), 1)
        inv = np.where(upper, 1 / np.sqrt(np.where(upper, d2, 1.0)), 0.0)
        potential = -self.settings[0] * (m[:, :, None] * m[:, None, :] * inv).sum((-1, -2))
        return kinetic + potential

    def energy_error(self) -> np.ndarray:
        """``|E / E0 - 1|`` of each system."""
        return np.abs(self.energy() / self.initial_energy - 1)

    def observe(self) -> np.ndarray:
        """Positions and velocities in each system's center-of-mass frame, shape
        ``[systems, bodies * 6]``: per body its position then its velocity, as ``NBody.observe``."""
        w = (self.mass / self.mass.sum(1, keepdims=True))[:, :, None]
        x, v = self.x, self.v
        x = x - (w * x).sum(1, keepdims=True)
        v = v - (w * v).sum(1, keepdims=True)
        return np.concatenate([x, v], 2).reshape(self.systems, -1)
