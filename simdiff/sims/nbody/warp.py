"""Warp kernels of direct-summation gravity for ``B`` worlds: accelerations and jerks with
Plummer softening, and their adjoint in gather form.

``gravity``: one thread per (world, body) sums over the world's bodies. ``gravity_adjoint``:
one thread per (world, body) gathers that body's adjoints over its partners, each pair once as
the body's own row and once as the partner's row (the formulas are in
:mod:`simdiff.sims.nbody.forces`), with no atomic scatter: its cost is about twice the
forward's, where Warp's automatic adjoint of ``gravity`` scattered into every partner.
Self-exclusion is branch-free (the self term gets r2 = 1 and weight 0).
"""

import functools

import torch
import warp as wp

from simdiff.backend import Backend
from simdiff.bridge import KernelLaunch, KernelStep, OutputSpec

__all__ = ["build_forces"]


@functools.cache
def _kernels(double: bool):
    scalar = wp.float64 if double else wp.float32
    vec = wp.types.vector(3, scalar)

    @wp.kernel(enable_backward=False, module="unique")
    def gravity(
        x: wp.array2d(dtype=vec),
        v: wp.array2d(dtype=vec),
        mass: wp.array2d(dtype=scalar),
        params: wp.array2d(dtype=scalar),
        a_out: wp.array2d(dtype=vec),
        jerk_out: wp.array2d(dtype=vec),
    ):
        b, i = wp.tid()
        xi = x[b, i]
        vi = v[b, i]
        g = params[b, 0]
        eps2 = params[b, 1] * params[b, 1]
        acc = xi * scalar(0.0)
        jerk = xi * scalar(0.0)
        for j in range(x.shape[1]):
            own = wp.where(j == i, scalar(1.0), scalar(0.0))
            dx = x[b, j] - xi
            dv = v[b, j] - vi
            inv_r = scalar(1.0) / wp.sqrt(wp.dot(dx, dx) + eps2 + own)
            inv_r3 = inv_r * inv_r * inv_r
            gm = g * mass[b, j] * (scalar(1.0) - own)
            acc = acc + gm * inv_r3 * dx
            rv = wp.dot(dx, dv) * inv_r * inv_r
            jerk = jerk + gm * inv_r3 * (dv - scalar(3.0) * rv * dx)
        a_out[b, i] = acc
        jerk_out[b, i] = jerk

    @wp.func
    def pair_adjoint(d: vec, u: vec, alpha: vec, beta: vec, q: scalar):
        # P = q^3 (alpha.d + beta.u) - 3 q^5 (d.u)(beta.d): one pair's term of the loss per
        # unit G m_partner; returns P, dP/dd, dP/du, dP/d(eps^2).
        q2 = q * q
        q3 = q2 * q
        q5 = q3 * q2
        q7 = q5 * q2
        ad = wp.dot(alpha, d)
        bu = wp.dot(beta, u)
        bd = wp.dot(beta, d)
        du = wp.dot(d, u)
        p = q3 * (ad + bu) - scalar(3.0) * q5 * du * bd
        dp_dd = (q3 * alpha - scalar(3.0) * q5 * (ad + bu) * d
                 - scalar(3.0) * q5 * (bd * u + du * beta) + scalar(15.0) * q7 * du * bd * d)
        dp_du = q3 * beta - scalar(3.0) * q5 * bd * d
        dp_de2 = scalar(-1.5) * q5 * (ad + bu) + scalar(7.5) * q7 * du * bd
        return p, dp_dd, dp_du, dp_de2

    @wp.kernel(enable_backward=False, module="unique")
    def gravity_adjoint(
        x: wp.array2d(dtype=vec),
        v: wp.array2d(dtype=vec),
        mass: wp.array2d(dtype=scalar),
        params: wp.array2d(dtype=scalar),
        adj_a: wp.array2d(dtype=vec),
        adj_jerk: wp.array2d(dtype=vec),
        adj_x: wp.array2d(dtype=vec),
        adj_v: wp.array2d(dtype=vec),
        adj_mass: wp.array2d(dtype=scalar),
        adj_g: wp.array2d(dtype=scalar),
        adj_eps2: wp.array2d(dtype=scalar),
    ):
        b, k = wp.tid()
        xk = x[b, k]
        vk = v[b, k]
        alpha_k = adj_a[b, k]
        beta_k = adj_jerk[b, k]
        g = params[b, 0]
        eps2 = params[b, 1] * params[b, 1]
        mk = mass[b, k]
        gx = xk * scalar(0.0)
        gv = xk * scalar(0.0)
        gm_k = scalar(0.0)
        gg = scalar(0.0)
        ge = scalar(0.0)
        for p in range(x.shape[1]):
            own = wp.where(p == k, scalar(1.0), scalar(0.0))
            live = scalar(1.0) - own
            d = x[b, p] - xk
            u = v[b, p] - vk
            q = scalar(1.0) / wp.sqrt(wp.dot(d, d) + eps2 + own)
            mp = mass[b, p] * live
            # Body k's own row, partner p: d = x_p - x_k moves against x_k.
            p1, dd1, du1, de1 = pair_adjoint(d, u, alpha_k, beta_k, q)
            gx = gx - g * mp * dd1
            gv = gv - g * mp * du1
            gg = gg + mp * p1
            ge = ge + g * mp * de1
            # Row p, with k its partner: d = x_k - x_p moves with x_k.
            p2, dd2, du2, _de2 = pair_adjoint(-d, -u, adj_a[b, p], adj_jerk[b, p], q)
            gx = gx + g * mk * live * dd2
            gv = gv + g * mk * live * du2
            gm_k = gm_k + g * live * p2
        adj_x[b, k] = gx
        adj_v[b, k] = gv
        adj_mass[b, k] = gm_k
        adj_g[b, k] = gg
        adj_eps2[b, k] = ge

    return gravity, gravity_adjoint, vec, scalar


def build_forces(backend: Backend, batch: int, n: int) -> tuple[KernelStep, KernelStep]:
    """Steps computing ``(a, jerk)`` from ``(x, v, mass, params=[G, softening])`` and, in
    gather form, the adjoints ``(x, v, mass, G, eps^2)`` per body from ``(adj_a, adj_jerk)``."""
    gravity, adjoint, vec, scalar = _kernels(backend.torch_dtype == torch.float64)
    out = OutputSpec((batch, n, 3), vec, accumulates=False)
    per_body = OutputSpec((batch, n), scalar, accumulates=False)
    inputs = (("x", vec), ("v", vec), ("mass", scalar), ("params", scalar))
    forward = KernelLaunch(backend, gravity, (batch, n), (), inputs,
                           (("a", out), ("jerk", out)))
    backward = KernelLaunch(
        backend, adjoint, (batch, n), (), (*inputs, ("adj_a", vec), ("adj_jerk", vec)),
        (("adj_x", out), ("adj_v", out), ("adj_mass", per_body), ("adj_g", per_body),
         ("adj_eps2", per_body)))
    return (KernelStep(("x", "v", "mass", "params"), (forward,), ("a", "jerk")),
            KernelStep(("x", "v", "mass", "params", "adj_a", "adj_jerk"), (backward,),
                       ("adj_x", "adj_v", "adj_mass", "adj_g", "adj_eps2")))
