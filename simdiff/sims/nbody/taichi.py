"""Taichi kernel of direct-summation gravity: accelerations and jerks with Plummer softening.

A parallel loop over all ordered pairs scatters into the outputs with atomic adds. No loop body
carries a local across iterations: Taichi's autodiff of a per-body gather loop gave wrong
gradients in the mass-spring kernels, and the pair loop also spreads over all cores for small N.
"""

import functools

import taichi as ti
import torch

from simdiff.autodiff import KernelLaunch, KernelStep, OutputSpec
from simdiff.backend import Backend

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

    return gravity


def build_forces(backend: Backend, n: int) -> KernelStep:
    """Launches computing ``(a, jerk)`` from ``(x, v, mass, params=[G, softening])``."""
    kernel = _kernel(backend.torch_dtype == torch.float64)
    out = OutputSpec((n, 3))
    launch = KernelLaunch(
        backend, kernel, n, (),
        (("x", None), ("v", None), ("mass", None), ("params", None)),
        (("a", out), ("jerk", out)),
    )
    return KernelStep(("x", "v", "mass", "params"), (launch,), ("a", "jerk"))
