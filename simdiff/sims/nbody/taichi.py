"""Taichi kernels of direct-summation gravity for ``B`` worlds: accelerations and jerks with
Plummer softening, and their adjoint in gather form.

Both loop over (world, body) pairs and sum over partners in registers, no atomics.
``gravity_adjoint`` is a hand-derived adjoint (formulas in :mod:`simdiff.sims.nbody.forces`),
not Taichi's autodiff: Taichi's autodiff of a gather with a loop-carried local gave wrong
gradients, and its differentiable scatter form (atomics into every partner) cost 30-60x the
forward at N = 4,096. Tests check both against central differences and against Warp.
"""

import functools

import taichi as ti
import torch

from simdiff.backend import Backend
from simdiff.bridge import KernelLaunch, KernelStep, OutputSpec

__all__ = ["build_forces"]


@functools.cache
def _kernels(double: bool):
    del double  # keys the cache: Taichi is re-initialized when the precision changes
    vec3 = ti.types.vector(3, float)
    vec6 = ti.types.vector(6, float)
    arr_vec = ti.types.ndarray(dtype=vec3, ndim=2)
    arr = ti.types.ndarray(ndim=2)

    @ti.kernel
    def gravity(x: arr_vec, v: arr_vec, mass: arr, params: arr, a_out: arr_vec,
                jerk_out: arr_vec):
        for b, i in ti.ndrange(x.shape[0], x.shape[1]):
            acc = vec3(0.0)
            jerk = vec3(0.0)
            xi = x[b, i]
            vi = v[b, i]
            g = params[b, 0]
            eps2 = params[b, 1] * params[b, 1]
            for j in range(x.shape[1]):
                # Branch-free self-exclusion (r2 = 1, weight 0) keeps the loop vectorizable.
                own = ti.cast(i == j, float)
                dx = x[b, j] - xi
                dv = v[b, j] - vi
                inv_r = 1.0 / ti.sqrt(dx.dot(dx) + eps2 + own)
                inv_r3 = inv_r * inv_r * inv_r
                gm = g * mass[b, j] * (1.0 - own)
                rv = dx.dot(dv) * inv_r * inv_r
                acc += gm * inv_r3 * dx
                jerk += gm * inv_r3 * (dv - 3.0 * rv * dx)
            a_out[b, i] = acc
            jerk_out[b, i] = jerk

    @ti.func
    def pair_gradient(d, u, alpha, beta, q):
        # (dP/dd, dP/du) packed in 6 numbers: even in (d, u), linear in (alpha, beta), so a
        # pair's two rows share one evaluation with combined adjoints (see warp.py).
        q2 = q * q
        q3 = q2 * q
        q5 = q3 * q2
        q7 = q5 * q2
        ad = alpha.dot(d)
        bu = beta.dot(u)
        bd = beta.dot(d)
        du = d.dot(u)
        dd = q3 * alpha - 3.0 * q5 * (ad + bu) * d - 3.0 * q5 * (bd * u + du * beta) \
            + 15.0 * q7 * du * bd * d
        dv = q3 * beta - 3.0 * q5 * bd * d
        return vec6(dd[0], dd[1], dd[2], dv[0], dv[1], dv[2])

    @ti.kernel
    def gravity_adjoint(x: arr_vec, v: arr_vec, mass: arr, params: arr, adj_a: arr_vec,
                        adj_jerk: arr_vec, adj_x: arr_vec, adj_v: arr_vec, adj_mass: arr,
                        adj_g: arr, adj_eps2: arr):
        for b, k in ti.ndrange(x.shape[0], x.shape[1]):
            xk = x[b, k]
            vk = v[b, k]
            alpha_k = adj_a[b, k]
            beta_k = adj_jerk[b, k]
            g = params[b, 0]
            eps2 = params[b, 1] * params[b, 1]
            mk = mass[b, k]
            gx = vec3(0.0)
            gv = vec3(0.0)
            gm_k = 0.0
            gg = 0.0
            ge = 0.0
            for p in range(x.shape[1]):
                own = ti.cast(p == k, float)
                live = 1.0 - own
                d = x[b, p] - xk
                u = v[b, p] - vk
                q = 1.0 / ti.sqrt(d.dot(d) + eps2 + own)
                mp = mass[b, p] * live
                alpha_p = adj_a[b, p]
                beta_p = adj_jerk[b, p]
                r = pair_gradient(d, u, mk * live * alpha_p - mp * alpha_k,
                                  mk * live * beta_p - mp * beta_k, q)
                gx += g * vec3(r[0], r[1], r[2])
                gv += g * vec3(r[3], r[4], r[5])
                q2 = q * q
                q3 = q2 * q
                q5 = q3 * q2
                du = d.dot(u)
                own_lin = alpha_k.dot(d) + beta_k.dot(u)
                own_cross = du * beta_k.dot(d)
                gg += mp * (q3 * own_lin - 3.0 * q5 * own_cross)
                ge += g * mp * (-1.5 * q5 * own_lin + 7.5 * q5 * q2 * own_cross)
                # Row p's P at (-d, -u) is -P(d, u): P is odd in (d, u).
                gm_k -= g * live * (q3 * (alpha_p.dot(d) + beta_p.dot(u))
                                    - 3.0 * q5 * du * beta_p.dot(d))
            adj_x[b, k] = gx
            adj_v[b, k] = gv
            adj_mass[b, k] = gm_k
            adj_g[b, k] = gg
            adj_eps2[b, k] = ge

    return gravity, gravity_adjoint


def build_forces(backend: Backend, batch: int, n: int) -> tuple[KernelStep, KernelStep]:
    """Steps computing ``(a, jerk)`` from ``(x, v, mass, params=[G, softening])`` and, in
    gather form, the adjoints ``(x, v, mass, G, eps^2)`` per body from ``(adj_a, adj_jerk)``."""
    gravity, adjoint = _kernels(backend.torch_dtype == torch.float64)
    out = OutputSpec((batch, n, 3), accumulates=False)
    per_body = OutputSpec((batch, n), accumulates=False)
    inputs = (("x", None), ("v", None), ("mass", None), ("params", None))
    forward = KernelLaunch(backend, gravity, (batch, n), (), inputs,
                           (("a", out), ("jerk", out)))
    backward = KernelLaunch(
        backend, adjoint, (batch, n), (), (*inputs, ("adj_a", None), ("adj_jerk", None)),
        (("adj_x", out), ("adj_v", out), ("adj_mass", per_body), ("adj_g", per_body),
         ("adj_eps2", per_body)))
    return (KernelStep(("x", "v", "mass", "params"), (forward,), ("a", "jerk")),
            KernelStep(("x", "v", "mass", "params", "adj_a", "adj_jerk"), (backward,),
                       ("adj_x", "adj_v", "adj_mass", "adj_g", "adj_eps2")))
