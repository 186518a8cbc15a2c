"""Taichi kernel of direct-summation gravity: accelerations and jerks with Plummer softening.

Two forms of the same sum. ``gravity`` loops over all ordered pairs and scatters into the outputs
with atomic adds: no loop body carries a local across iterations, the form Taichi differentiates
right (its autodiff of a per-body gather gave wrong gradients in the mass-spring kernels), so
backward uses it. ``gravity_gather`` loops over bodies and sums over partners in registers, no
atomics: several times faster, so forward uses it. Tests check the two agree through gradients
against finite differences and against Warp.
"""

import functools

import taichi as ti
import torch

from simdiff.backend import Backend
from simdiff.bridge import KernelLaunch, KernelStep, OutputSpec

__all__ = ["build_forces"]


@functools.cache
def _kernel(double: bool):
    del double  # keys the cache: Taichi is re-initialized when the precision changes
    vec3 = ti.types.vector(3, float)
    arr_vec = ti.types.ndarray(dtype=vec3, ndim=1)
    arr = ti.types.ndarray(ndim=1)

    @ti.kernel
    def gravity(x: arr_vec, v: arr_vec, mass: arr, params: arr, a_out: arr_vec, jerk_out: arr_vec):
        for i, j in ti.ndrange(x.shape[0], x.shape[0]):
            if i != j:
                dx = x[j] - x[i]
                dv = v[j] - v[i]
                r2 = dx.dot(dx) + params[1] * params[1]
                inv_r = 1.0 / ti.sqrt(r2)
                inv_r3 = inv_r * inv_r * inv_r
                gm = params[0] * mass[j]
                rv = dx.dot(dv) * inv_r * inv_r
                a_out[i] += gm * inv_r3 * dx
                jerk_out[i] += gm * inv_r3 * (dv - 3.0 * rv * dx)

    @ti.kernel
    def gravity_gather(x: arr_vec, v: arr_vec, mass: arr, params: arr, a_out: arr_vec,
                       jerk_out: arr_vec):
        for i in range(x.shape[0]):
            acc = vec3(0.0)
            jerk = vec3(0.0)
            xi = x[i]
            vi = v[i]
            eps2 = params[1] * params[1]
            for j in range(x.shape[0]):
                # Branch-free self-exclusion (r2 = 1, weight 0) keeps the inner loop vectorizable.
                own = ti.cast(i == j, float)
                dx = x[j] - xi
                dv = v[j] - vi
                inv_r = ti.rsqrt(dx.dot(dx) + eps2 + own)
                inv_r3 = inv_r * inv_r * inv_r
                gm = params[0] * mass[j] * (1.0 - own)
                rv = dx.dot(dv) * inv_r * inv_r
                acc += gm * inv_r3 * dx
                jerk += gm * inv_r3 * (dv - 3.0 * rv * dx)
            a_out[i] = acc
            jerk_out[i] = jerk

    return gravity, gravity_gather


def build_forces(backend: Backend, n: int) -> KernelStep:
    """Launches computing ``(a, jerk)`` from ``(x, v, mass, params=[G, softening])``."""
    kernel, gather = _kernel(backend.torch_dtype == torch.float64)
    out = OutputSpec((n, 3))
    launch = KernelLaunch(
        backend, kernel, n, (),
        (("x", None), ("v", None), ("mass", None), ("params", None)),
        (("a", out), ("jerk", out)),
        forward_kernel=gather,
    )
    return KernelStep(("x", "v", "mass", "params"), (launch,), ("a", "jerk"))
