"""Warp kernel of direct-summation gravity: accelerations and jerks with Plummer softening.

One thread per body sums over all others. The loop-carried sums are only stored after the loop
(never used later in the kernel), which is the form whose Warp adjoint is right (see
``sims/mass_spring/warp.py``).
"""

import functools

import torch
import warp as wp

from simdiff.backend import Backend
from simdiff.bridge import KernelLaunch, KernelStep, OutputSpec

__all__ = ["build_forces"]


@functools.cache
def _kernel(double: bool):
    scalar = wp.float64 if double else wp.float32
    vec = wp.types.vector(3, scalar)

    @wp.kernel(enable_backward=True, module="unique")
    def gravity(
        x: wp.array(dtype=vec),
        v: wp.array(dtype=vec),
        mass: wp.array(dtype=scalar),
        params: wp.array(dtype=scalar),
        a_out: wp.array(dtype=vec),
        jerk_out: wp.array(dtype=vec),
    ):
        i = wp.tid()
        xi = x[i]
        vi = v[i]
        g = params[0]
        eps2 = params[1] * params[1]
        acc = xi * scalar(0.0)
        jerk = xi * scalar(0.0)
        for j in range(x.shape[0]):
            # Branch-free self-exclusion: the self term gets r2 = 1 and weight 0.
            own = wp.where(j == i, scalar(1.0), scalar(0.0))
            dx = x[j] - xi
            dv = v[j] - vi
            r2 = wp.dot(dx, dx) + eps2 + own
            inv_r = scalar(1.0) / wp.sqrt(r2)
            inv_r3 = inv_r * inv_r * inv_r
            gm = g * mass[j] * (scalar(1.0) - own)
            acc = acc + gm * inv_r3 * dx
            rv = wp.dot(dx, dv) * inv_r * inv_r
            jerk = jerk + gm * inv_r3 * (dv - scalar(3.0) * rv * dx)
        a_out[i] = acc
        jerk_out[i] = jerk

    return gravity, vec, scalar


def build_forces(backend: Backend, n: int) -> KernelStep:
    """Launches computing ``(a, jerk)`` from ``(x, v, mass, params=[G, softening])``."""
    kernel, vec, scalar = _kernel(backend.torch_dtype == torch.float64)
    out = OutputSpec((n, 3), vec, accumulates=False)
    launch = KernelLaunch(
        backend, kernel, n, (),
        (("x", vec), ("v", vec), ("mass", scalar), ("params", scalar)),
        (("a", out), ("jerk", out)),
    )
    return KernelStep(("x", "v", "mass", "params"), (launch,), ("a", "jerk"))
