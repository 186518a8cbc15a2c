"""Taichi kernels of direct-summation gravity for ``B`` worlds: accelerations and jerks with
Plummer softening, and their adjoint in gather form.

Both loop over (world, body) pairs and sum over partners in registers, no atomics.
``gravity_adjoint`` is a hand-derived adjoint (formulas in :mod:`simdiff.sims.nbody.forces`),
not Taichi's autodiff: Taichi's autodiff of a gather with a loop-carried local gave wrong
gradients, and its differentiable scatter form (atomics into every partner) cost 30-60x the
forward at N = 4,096. The adjoint reads its inputs as rows per component (``[B, 13, N]``,
packed by :func:`build_forces`): with ``[B, N, 3]`` vectors the partner loop's strided loads
kept float32 slower than float64 (6x the forward at N = 4,096; 1.4x with rows, kernels alone).
Tests check both against central differences and against Warp.
"""

import functools
from collections.abc import Callable

import taichi as ti
import torch

from simdiff.backend import Backend
from simdiff.bridge import KernelLaunch, KernelStep, OutputSpec, run_forward

__all__ = ["build_forces"]


@functools.cache
def _kernels(double: bool):
    del double  # keys the cache: Taichi is re-initialized when the precision changes
    vec3 = ti.types.vector(3, float)
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

    @ti.kernel
    def gravity_adjoint(s: ti.types.ndarray(ndim=3), params: arr, out: ti.types.ndarray(ndim=3)):
        # s [B, 13, N]: rows x, v, adj_a, adj_jerk (3 each), mass; out [B, N, 9]: adj_x,
        # adj_v, adj_mass, adj_g, adj_eps2 (the last two per-body partial sums).
        for b, k in ti.ndrange(s.shape[0], s.shape[2]):
            xk = vec3(s[b, 0, k], s[b, 1, k], s[b, 2, k])
            vk = vec3(s[b, 3, k], s[b, 4, k], s[b, 5, k])
            ak = vec3(s[b, 6, k], s[b, 7, k], s[b, 8, k])
            bk = vec3(s[b, 9, k], s[b, 10, k], s[b, 11, k])
            mk = s[b, 12, k]
            g = params[b, 0]
            eps2 = params[b, 1] * params[b, 1]
            gx = vec3(0.0)
            gv = vec3(0.0)
            gm = 0.0
            ge = 0.0
            for p in range(s.shape[2]):
                own = ti.cast(p == k, float)
                d = vec3(s[b, 0, p], s[b, 1, p], s[b, 2, p]) - xk
                u = vec3(s[b, 3, p], s[b, 4, p], s[b, 5, p]) - vk
                ap = vec3(s[b, 6, p], s[b, 7, p], s[b, 8, p])
                bp = vec3(s[b, 9, p], s[b, 10, p], s[b, 11, p])
                mp = s[b, 12, p]
                # q = 0 on the self pair zeroes all its terms (there d = u = 0).
                q = (1.0 - own) / ti.sqrt(d.dot(d) + eps2 + own)
                q2 = q * q
                q3 = q2 * q
                c5 = 3.0 * q3 * q2
                du = d.dot(u)
                akd = ak.dot(d)
                bku = bk.dot(u)
                bkd = bk.dot(d)
                apd = ap.dot(d)
                bpu = bp.dot(u)
                bpd = bp.dot(d)
                # dP/dd and dP/du of the pair's two rows in one evaluation, with the combined
                # adjoints A = m_k alpha_p - m_p alpha_k, B likewise (forces.py), grouped as
                # q^3 A - 3 q^5 (d.u) B - 3 q^5 (B.d) u + 3 q^5 (5 q^2 (d.u)(B.d) - A.d - B.u) d.
                a_comb = mk * ap - mp * ak
                b_comb = mk * bp - mp * bk
                ab = mk * (apd + bpu) - mp * (akd + bku)
                bd = mk * bpd - mp * bkd
                gx += q3 * a_comb - (c5 * du) * b_comb - (c5 * bd) * u \
                    + (c5 * (5.0 * q2 * du * bd - ab)) * d
                gv += q3 * b_comb - (c5 * bd) * d
                # Own row's dP/deps^2; row p's P at (-d, -u) is -P(d, u) (P is odd).
                ge += mp * c5 * (-0.5 * (akd + bku) + 2.5 * q2 * du * bkd)
                gm -= q3 * (apd + bpu) - c5 * du * bpd
            # G factors out of every pair; a and jerk depend on G m_j only, so
            # dL/dG = sum_k m_k dL/dm_k / G: its per-body partial is m_k gm.
            for c in ti.static(range(3)):
                out[b, k, c] = g * gx[c]
                out[b, k, 3 + c] = g * gv[c]
            out[b, k, 6] = g * gm
            out[b, k, 7] = mk * gm
            out[b, k, 8] = g * ge

    return gravity, gravity_adjoint


def build_forces(backend: Backend, batch: int, n: int) -> tuple[KernelStep, Callable]:
    """The step computing ``(a, jerk)`` from ``(x, v, mass, params=[G, softening])``, and a
    function giving, in gather form, the adjoints ``(x, v, mass, G, eps^2)`` per body from
    ``(x, v, mass, params, adj_a, adj_jerk)``."""
    gravity, adjoint = _kernels(backend.torch_dtype == torch.float64)
    out = OutputSpec((batch, n, 3), accumulates=False)
    forward = KernelLaunch(backend, gravity, (batch, n), (), (
        ("x", None), ("v", None), ("mass", None), ("params", None)), (("a", out), ("jerk", out)))
    backward = KernelStep(("rows", "params"), (KernelLaunch(
        backend, adjoint, (batch, n), (), (("rows", None), ("params", None)),
        (("adj", OutputSpec((batch, n, 9), accumulates=False)),)),), ("adj",))

    def adjoints(x, v, mass, params, adj_a, adj_jerk):
        # Rows per component: the partner loop then reads contiguous memory (with [B, N, 3]
        # vectors its strided loads made float32 slower than float64, 6x the forward).
        rows = torch.cat([t.transpose(1, 2) for t in (x, v, adj_a, adj_jerk)]
                         + [mass[:, None]], 1)
        (adj,) = run_forward(backward, rows, params)
        return adj[..., 0:3], adj[..., 3:6], adj[..., 6], adj[..., 7], adj[..., 8]

    return (KernelStep(("x", "v", "mass", "params"), (forward,), ("a", "jerk")), adjoints)
