"""Warp kernels of the MLS-MPM substep: the same physics and layouts as ``taichi.py``.

Three kernels per substep, named after the algorithm: ``p2g`` (scatter with ``wp.atomic_add``
into a zeroed grid; its adjoint is a gather), ``grid_update`` and ``g2p`` (gather, move,
deform). As on Taichi, each kernel reads its inputs and writes a fresh output, and the grid is
rebuilt inside every substep and recomputed in backward.

Layouts: particle state ``[B, n, 2 d + 2 d^2]`` and parameters ``[B, n, 8 + d]`` as in
``taichi.py``; the grid is flat per world, ``[B, G^d, d + 1]`` (row-major node index, so it
reshapes to Taichi's ``[B] + [G]*d + [d + 1]``), one Warp vector per node. One launch serves
every world: ``dim=(B, n)`` for ``p2g`` and ``g2p``, ``(B, G^d)`` for ``grid_update``, each
thread reading its world index from ``wp.tid()``; worlds never share a grid.

Warp's adjoint does not replay a loop-carried sum of a *dynamic* loop (see
``sims/mass_spring/warp.py``), so the 3^d stencil is three nested loops of constant length,
which Warp unrolls. The material laws are two functions, :func:`kirchhoff` (stress) and
``deform`` (the update of ``F`` with the material's return map), each one branch per material
code: a new material is one more branch in each.

In 3D the elastic law is neo-Hookean (``model.py``), so no SVD is needed in either dimension:
the 2D fixed-corotated rotation has a closed form. Empty grid nodes skip the node update, in
forward and in the adjoint (most of a 3D grid is empty; this made a 3D backward ~5x faster).

Sand (``Material.SAND``) is the Taichi law term for term (``taichi.py``: closed-form 2D matrix
log and exp with power series near repeated eigenvalues, the blunted cone tip; in 3D a Jacobi
eigen decomposition with a constant sweep count, so unrolled). Float64 states agree with
Taichi's to ~1e-13 and 2D gradients to ~1e-14 relative (``tests/test_mpm_sand.py``). The 3D
adjoint runs but goes through the eigenvectors, whose derivative is singular at the repeated
eigenvalues of sand at rest (measured: 1e10 times central differences), so the simulator
refuses 3D sand gradients. Fractions such as ``1.0 / 3.0`` are evaluated in float32 inside a
Warp function (the literals are float32), so the series coefficients are computed in Python.

Warp's adjoint also lost the gradient of a vector component assigned inside a branch
(``if ...: v[k] = 0`` in the walls), so vectors that carry gradients are built element-wise
(``wall``, ``axis_vector``); ``test_warp_gradients_at_the_walls_match_taichi`` guards it.

Measured on 2 shared CPU cores (warp-lang 1.19), cold kernel cache: the three kernels with
their adjoints compile in 4-10 s in 2D and 13-18 s in 3D (either precision; the spread is
between runs); Taichi's 2D kernels took 3 s forward plus 17 s for the first backward, its 3D
forward 11 s, and its 3D reverse mode ~12 minutes. Gradients match the torch oracle's autograd
to ~1e-14 relative, Taichi's to 1e-9 over 30 substeps, and central differences in 3D to 1e-6
(``tests/test_mpm_warp.py``). Warp runs a kernel on one thread, Taichi on every core; still
Warp led at every shipped scene's size (see their docstrings) and at the 3,220-particle
benchmark (``benchmarks/mpm.py``): launches and the bridge dominate at these sizes.
"""

import functools
import math

import torch
import warp as wp

from simdiff.backend import Backend
from simdiff.bridge import KernelLaunch, KernelStep, OutputSpec
from simdiff.sims.mpm.model import BOUNDARY_CELLS, Material, boundary_constants

__all__ = ["build_step", "particle_to_grid"]

# Sand constants: the same as (and documented in) taichi.py.
_SERIES_BELOW = 1e-3
_TIP_STRAIN = 1e-5
_JACOBI_SWEEPS = 6


@functools.cache
def _kernels(dim: int, double: bool):
    """The three substep kernels for one dimension and precision, and their Warp types."""
    scalar = wp.float64 if double else wp.float32
    vec = wp.types.vector(dim, scalar)
    ivec = wp.types.vector(dim, wp.int32)
    mat = wp.types.matrix((dim, dim), scalar)
    stencil_w = wp.types.matrix((3, dim), scalar)  # row j: the weights of node offset j per axis
    node = wp.types.vector(dim + 1, scalar)
    ox, oc, of = dim, 2 * dim, 2 * dim + dim * dim  # column offsets of v, C, F
    liquid, plastic, sand = int(Material.LIQUID), int(Material.PLASTIC), int(Material.SAND)
    series_below, tip, sweeps = _SERIES_BELOW, _TIP_STRAIN, _JACOBI_SWEEPS
    # Series coefficients, computed here: Warp evaluates ``1.0 / 3.0`` in a kernel in float32.
    inv3, inv5, inv6, inv7 = 1.0 / 3, 1.0 / 5, 1.0 / 6, 1.0 / 7
    inv24, inv120, inv720, inv5040 = 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040
    depth = 3 if dim == 3 else 1  # length of the third stencil loop
    root = 1.0 / dim  # J^(1/d)
    von_mises = math.sqrt(2.0 / 3.0)
    unique = {"module": "unique"}

    @wp.func(**unique)
    def wall(c: scalar, i: int, boundary: int, size: int):
        """A velocity component with the slip walls applied: none out of the domain."""
        out = (i < boundary and c < scalar(0.0)) or (i > size - boundary and c > scalar(0.0))
        return wp.where(out, scalar(0.0), c)

    pair = wp.types.vector(2, scalar)

    @wp.func(**unique)
    def drucker_prager(trace: scalar, dev_squared: scalar, mu: scalar, lam: scalar,
                       alpha: scalar):
        """Klar et al.'s return onto the cone, with the blunted tip of ``taichi.py``:
        (trace, deviator scale) of the new log strain."""
        two = scalar(2.0)
        radius = -alpha * (scalar(dim) * lam + two * mu) / (two * mu) * trace
        norm = wp.sqrt(dev_squared + scalar(tip) * scalar(tip))
        return pair(wp.min(trace, scalar(tip)),
                    wp.max(scalar(0.0), wp.min(scalar(1.0), radius / norm)))

    # Dimension-specific helpers (element-wise construction keeps every adjoint plain; Warp's
    # adjoint of a component assigned inside a branch, ``v[k] = 0``, dropped gradients).
    if dim == 2:
        @wp.func(**unique)
        def load_vec(a: wp.array3d(dtype=scalar), w: int, i: int, s: int):
            return vec(a[w, i, s], a[w, i, s + 1])

        @wp.func(**unique)
        def load_mat(a: wp.array3d(dtype=scalar), w: int, i: int, s: int):
            return mat(a[w, i, s], a[w, i, s + 1], a[w, i, s + 2], a[w, i, s + 3])

        @wp.func(**unique)
        def store(a: wp.array3d(dtype=scalar), w: int, i: int, v: vec, C: mat, F: mat):
            a[w, i, ox] = v[0]
            a[w, i, ox + 1] = v[1]
            for r in range(2):
                for c in range(2):
                    a[w, i, oc + 2 * r + c] = C[r, c]
                    a[w, i, of + 2 * r + c] = F[r, c]

        @wp.func(**unique)
        def head(a: wp.array2d(dtype=scalar), w: int, s: int):
            return vec(a[w, s], a[w, s + 1])

        @wp.func(**unique)
        def to_float(k: ivec):
            return vec(scalar(k[0]), scalar(k[1]))

        @wp.func(**unique)
        def offset(a: int, b: int, c: int):
            return ivec(a, b)

        @wp.func(**unique)
        def weight_of(w: stencil_w, a: int, b: int, c: int):
            return w[a, 0] * w[b, 1]

        @wp.func(**unique)
        def flat(k: ivec, size: int):
            return k[0] * size + k[1]

        @wp.func(**unique)
        def unflat(t: int, size: int):
            return ivec(t // size, t % size)

        @wp.func(**unique)
        def to_node(v: vec, m: scalar):
            return node(v[0], v[1], m)

        @wp.func(**unique)
        def velocity_of(g: node):
            return vec(g[0], g[1])

        @wp.func(**unique)
        def walls(v: vec, I: ivec, boundary: int, size: int):
            return vec(wall(v[0], I[0], boundary, size), wall(v[1], I[1], boundary, size))

        @wp.func(**unique)
        def up():
            return vec(scalar(0.0), scalar(1.0))

        @wp.func(**unique)
        def axis_vector(axis: int, sign: scalar):
            return vec(wp.where(axis == 0, sign, scalar(0.0)), wp.where(axis == 1, sign, scalar(0.0)))

        @wp.func(**unique)
        def weights(fx: vec):
            h = scalar(0.5)
            w0 = h * wp.cw_mul(vec(scalar(1.5)) - fx, vec(scalar(1.5)) - fx)
            w1 = vec(scalar(0.75)) - wp.cw_mul(fx - vec(scalar(1.0)), fx - vec(scalar(1.0)))
            w2 = h * wp.cw_mul(fx - vec(h), fx - vec(h))
            return stencil_w(w0[0], w0[1], w1[0], w1[1], w2[0], w2[1])

        @wp.func(**unique)
        def elastic_stress(F: mat, mu: scalar, lam: scalar):
            # Fixed-corotated with the closed-form polar rotation (smooth where det F > 0).
            a = F[0, 0] + F[1, 1]
            b = F[1, 0] - F[0, 1]
            r = wp.sqrt(a * a + b * b)
            R = mat(a / r, -b / r, b / r, a / r)
            J = wp.determinant(F)
            one = scalar(1.0)
            return scalar(2.0) * mu * (F - R) @ wp.transpose(F) + lam * (J - one) * J * wp.identity(
                n=2, dtype=scalar)

        @wp.func(**unique)
        def log_spd_2d(b: mat):
            # log(b) of a 2x2 SPD matrix in closed form (as taichi.py: atanh(x) / x as a series
            # near repeated eigenvalues; the unused branch gets a harmless argument).
            one = scalar(1.0)
            eye = wp.identity(n=2, dtype=scalar)
            m = scalar(0.5) * wp.trace(b)
            dev = b - m * eye
            x2 = scalar(0.5) * wp.ddot(dev, dev) / (m * m)
            small = x2 < scalar(series_below)
            x = wp.sqrt(wp.where(small, scalar(0.25), x2))
            direct = scalar(0.5) * wp.log((one + x) / (one - x)) / x
            series = one + x2 * (scalar(inv3) + x2 * (scalar(inv5) + x2 * (
                scalar(inv7) + x2 / scalar(9.0))))
            ratio = wp.where(small, series, direct)
            return scalar(0.5) * wp.log(wp.determinant(b)) * eye + ratio / m * dev

        @wp.func(**unique)
        def exp_sym_2d(a: mat):
            # exp(a) = e^m (cosh(r) I + sinh(r) / r dev a), r the half eigenvalue gap.
            one = scalar(1.0)
            eye = wp.identity(n=2, dtype=scalar)
            m = scalar(0.5) * wp.trace(a)
            dev = a - m * eye
            r2 = scalar(0.5) * wp.ddot(dev, dev)
            small = r2 < scalar(series_below)
            r = wp.sqrt(wp.where(small, scalar(0.25), r2))
            cosh = wp.where(small, one + r2 * (scalar(0.5) + r2 * (scalar(inv24) + r2 * (
                scalar(inv720) + r2 / scalar(40320.0)))),
                scalar(0.5) * (wp.exp(r) + wp.exp(-r)))
            sinhc = wp.where(small, one + r2 * (scalar(inv6) + r2 * (scalar(inv120) + r2 * (
                scalar(inv5040) + r2 / scalar(362880.0)))),
                scalar(0.5) * (wp.exp(r) - wp.exp(-r)) / r)
            return wp.exp(m) * (cosh * eye + sinhc * dev)

        @wp.func(**unique)
        def sand_stress(b: mat, mu: scalar, lam: scalar):
            # St. Venant-Kirchhoff in Hencky strain eps = log(b) / 2.
            eps = scalar(0.5) * log_spd_2d(b)
            return scalar(2.0) * mu * eps + lam * wp.trace(eps) * wp.identity(n=2, dtype=scalar)

        @wp.func(**unique)
        def sand_return(b: mat, mu: scalar, lam: scalar, alpha: scalar):
            # Drucker-Prager return mapping of the trial b_e (as taichi.py).
            eye = wp.identity(n=2, dtype=scalar)
            eps = scalar(0.5) * log_spd_2d(b)
            trace = wp.trace(eps)
            dev = eps - scalar(0.5) * trace * eye
            cone = drucker_prager(trace, wp.ddot(dev, dev), mu, lam, alpha)
            return exp_sym_2d(cone[0] * eye + scalar(2.0) * cone[1] * dev)
    else:
        @wp.func(**unique)
        def load_vec(a: wp.array3d(dtype=scalar), w: int, i: int, s: int):
            return vec(a[w, i, s], a[w, i, s + 1], a[w, i, s + 2])

        @wp.func(**unique)
        def load_mat(a: wp.array3d(dtype=scalar), w: int, i: int, s: int):
            return mat(a[w, i, s], a[w, i, s + 1], a[w, i, s + 2], a[w, i, s + 3],
                       a[w, i, s + 4], a[w, i, s + 5], a[w, i, s + 6], a[w, i, s + 7],
                       a[w, i, s + 8])

        @wp.func(**unique)
        def store(a: wp.array3d(dtype=scalar), w: int, i: int, v: vec, C: mat, F: mat):
            a[w, i, ox] = v[0]
            a[w, i, ox + 1] = v[1]
            a[w, i, ox + 2] = v[2]
            for r in range(3):
                for c in range(3):
                    a[w, i, oc + 3 * r + c] = C[r, c]
                    a[w, i, of + 3 * r + c] = F[r, c]

        @wp.func(**unique)
        def head(a: wp.array2d(dtype=scalar), w: int, s: int):
            return vec(a[w, s], a[w, s + 1], a[w, s + 2])

        @wp.func(**unique)
        def to_float(k: ivec):
            return vec(scalar(k[0]), scalar(k[1]), scalar(k[2]))

        @wp.func(**unique)
        def offset(a: int, b: int, c: int):
            return ivec(a, b, c)

        @wp.func(**unique)
        def weight_of(w: stencil_w, a: int, b: int, c: int):
            return w[a, 0] * w[b, 1] * w[c, 2]

        @wp.func(**unique)
        def flat(k: ivec, size: int):
            return (k[0] * size + k[1]) * size + k[2]

        @wp.func(**unique)
        def unflat(t: int, size: int):
            return ivec(t // (size * size), (t // size) % size, t % size)

        @wp.func(**unique)
        def to_node(v: vec, m: scalar):
            return node(v[0], v[1], v[2], m)

        @wp.func(**unique)
        def velocity_of(g: node):
            return vec(g[0], g[1], g[2])

        @wp.func(**unique)
        def walls(v: vec, I: ivec, boundary: int, size: int):
            return vec(wall(v[0], I[0], boundary, size), wall(v[1], I[1], boundary, size),
                       wall(v[2], I[2], boundary, size))

        @wp.func(**unique)
        def up():
            return vec(scalar(0.0), scalar(1.0), scalar(0.0))

        @wp.func(**unique)
        def axis_vector(axis: int, sign: scalar):
            return vec(wp.where(axis == 0, sign, scalar(0.0)), wp.where(axis == 1, sign, scalar(0.0)),
                       wp.where(axis == 2, sign, scalar(0.0)))

        @wp.func(**unique)
        def weights(fx: vec):
            h = scalar(0.5)
            w0 = h * wp.cw_mul(vec(scalar(1.5)) - fx, vec(scalar(1.5)) - fx)
            w1 = vec(scalar(0.75)) - wp.cw_mul(fx - vec(scalar(1.0)), fx - vec(scalar(1.0)))
            w2 = h * wp.cw_mul(fx - vec(h), fx - vec(h))
            return stencil_w(w0[0], w0[1], w0[2], w1[0], w1[1], w1[2], w2[0], w2[1], w2[2])

        @wp.func(**unique)
        def elastic_stress(F: mat, mu: scalar, lam: scalar):
            # Neo-Hookean (model.py: the 3D polar decomposition's derivative is singular at F = I).
            J = wp.determinant(F)
            eye = wp.identity(n=3, dtype=scalar)
            return mu * (F @ wp.transpose(F) - eye) + lam * wp.log(J) * eye

        @wp.func(**unique)
        def rotation_entry(i: int, j: int, p: int, q: int, c: scalar, s: scalar):
            # Entry (i, j) of the Jacobi rotation in the (p, q) plane (element-wise: see above).
            on_pair = (i == p or i == q) and (j == p or j == q)
            diagonal = wp.where(on_pair, c, scalar(1.0))
            off = wp.where(i == p, s, -s)
            return wp.where(i == j, diagonal, wp.where(on_pair, off, scalar(0.0)))

        @wp.func(**unique)
        def jacobi_rotation(A: mat, p: int, q: int):
            # The rotation that zeroes A[p, q] (as taichi.py's eigen_sym_3d).
            one = scalar(1.0)
            apq = A[p, q]
            rotate = wp.abs(apq) > scalar(1e-300)
            theta = (A[q, q] - A[p, p]) / (scalar(2.0) * wp.where(rotate, apq, one))
            t = wp.where(theta >= scalar(0.0), one, -one) / (
                wp.abs(theta) + wp.sqrt(theta * theta + one))
            t = wp.where(rotate, t, scalar(0.0))
            c = one / wp.sqrt(t * t + one)
            s = t * c
            return mat(rotation_entry(0, 0, p, q, c, s), rotation_entry(0, 1, p, q, c, s),
                       rotation_entry(0, 2, p, q, c, s), rotation_entry(1, 0, p, q, c, s),
                       rotation_entry(1, 1, p, q, c, s), rotation_entry(1, 2, p, q, c, s),
                       rotation_entry(2, 0, p, q, c, s), rotation_entry(2, 1, p, q, c, s),
                       rotation_entry(2, 2, p, q, c, s))

        @wp.func(**unique)
        def eigen_vectors_3d(A: mat):
            # Cyclic Jacobi: A = V diag(values) V^T; V (the sweeps have a constant count, so
            # Warp unrolls them) and the rotated A, whose diagonal holds the eigenvalues.
            V = wp.identity(n=3, dtype=scalar)
            for _ in range(sweeps):
                R = jacobi_rotation(A, 0, 1)
                A = wp.transpose(R) @ A @ R
                V = V @ R
                R = jacobi_rotation(A, 0, 2)
                A = wp.transpose(R) @ A @ R
                V = V @ R
                R = jacobi_rotation(A, 1, 2)
                A = wp.transpose(R) @ A @ R
                V = V @ R
            return V, A

        @wp.func(**unique)
        def spectral(V: mat, values: vec):
            # V diag(values) V^T
            out = mat()
            for k in range(3):
                column = vec(V[0, k], V[1, k], V[2, k])
                out = out + values[k] * wp.outer(column, column)
            return out

        @wp.func(**unique)
        def half_log_eigen(D: mat):
            return scalar(0.5) * vec(wp.log(D[0, 0]), wp.log(D[1, 1]), wp.log(D[2, 2]))

        @wp.func(**unique)
        def sand_stress(b: mat, mu: scalar, lam: scalar):
            # St. Venant-Kirchhoff in Hencky strain, through the eigen decomposition of b.
            V, D = eigen_vectors_3d(b)
            eps = half_log_eigen(D)
            total = eps[0] + eps[1] + eps[2]
            return spectral(V, scalar(2.0) * mu * eps + vec(lam * total))

        @wp.func(**unique)
        def sand_return(b: mat, mu: scalar, lam: scalar, alpha: scalar):
            V, D = eigen_vectors_3d(b)
            eps = half_log_eigen(D)
            trace = eps[0] + eps[1] + eps[2]
            dev = eps - vec(trace / scalar(3.0))
            cone = drucker_prager(trace, wp.dot(dev, dev), mu, lam, alpha)
            e = vec(scalar(2.0) * cone[0] / scalar(3.0)) + scalar(2.0) * cone[1] * dev
            return spectral(V, vec(wp.exp(e[0]), wp.exp(e[1]), wp.exp(e[2])))

    @wp.func(**unique)
    def base_of(x: vec, inv_dx: scalar, size: int):
        # Clamped so that a particle that escaped (or became NaN) cannot write out of bounds;
        # the rollout's state check reports it after the step.
        k = ivec()
        for a in range(dim):
            k[a] = wp.clamp(int(x[a] * inv_dx - scalar(0.5)), 0, size - 3)
        return k

    @wp.func(**unique)
    def kirchhoff(F: mat, material: int, E: scalar, nu: scalar, active: mat):
        """Kirchhoff stress of one particle; one branch per material code."""
        one = scalar(1.0)
        two = scalar(2.0)
        mu = E / (two * (one + nu))
        lam = E * nu / ((one + nu) * (one - two * nu))
        eye = wp.identity(n=dim, dtype=scalar)
        tau = mat()
        if material == liquid:
            J = wp.determinant(F)
            tau = (lam + two * mu / scalar(dim)) * (J - one) * J * eye
        elif material == plastic:
            Je = wp.sqrt(wp.determinant(F))  # F holds b_e = F_e F_e^T
            tau = mu * (F - eye) + lam * wp.log(Je) * eye
        elif material == sand:
            tau = sand_stress(F, mu, lam)  # F holds b_e
        else:
            tau = elastic_stress(F, mu, lam) + active
        return tau

    @wp.func(**unique)
    def deform(f: mat, F: mat, material: int, E: scalar, nu: scalar, yield_stress: scalar):
        """``F`` after the substep's deformation ``f`` and the material's return map."""
        eye = wp.identity(n=dim, dtype=scalar)
        new_F = f @ F
        if material == liquid:
            new_F = wp.pow(wp.determinant(new_F), scalar(root)) * eye
        elif material == plastic:
            b = f @ F @ wp.transpose(f)
            mu = E / (scalar(2.0) * (scalar(1.0) + nu))
            mean = wp.trace(b) / scalar(dim)
            dev = b - mean * eye
            # Radial return: ||dev tau|| = mu ||dev b|| at most sqrt(2/3) * yield.
            norm = wp.sqrt(wp.ddot(dev, dev) + scalar(1e-30))
            radius = scalar(von_mises) * yield_stress / mu
            new_F = wp.min(scalar(1.0), radius / norm) * dev + mean * eye
        elif material == sand:
            mu = E / (scalar(2.0) * (scalar(1.0) + nu))
            lam = E * nu / ((scalar(1.0) + nu) * (scalar(1.0) - scalar(2.0) * nu))
            # yield_stress holds the Drucker-Prager alpha of sand particles.
            new_F = sand_return(f @ F @ wp.transpose(f), mu, lam, yield_stress)
        return new_F

    @wp.func(**unique)
    def coulomb(vt: vec, vn: scalar, friction: scalar):
        """Tangential velocity ``vt`` after Coulomb friction against normal speed ``vn < 0``
        (stick or slide with a guarded denominator, as in ``taichi.py``)."""
        speed = wp.sqrt(wp.dot(vt, vt) + scalar(1e-20))
        stick = speed <= -friction * vn
        return wp.where(stick, scalar(0.0), scalar(1.0) + friction * vn / wp.where(
            stick, scalar(1.0), speed)) * vt

    @wp.kernel(enable_backward=True, module="unique")
    def p2g(
        dt: scalar,
        inv_dx: scalar,
        size: int,
        p: wp.array3d(dtype=scalar),
        params: wp.array3d(dtype=scalar),
        action: wp.array2d(dtype=scalar),
        grid: wp.array2d(dtype=node),
    ):
        world, i = wp.tid()
        x = load_vec(p, world, i, 0)
        v = load_vec(p, world, i, ox)
        C = load_mat(p, world, i, oc)
        F = load_mat(p, world, i, of)
        mass = params[world, i, 0]
        actuator = int(params[world, i, 3])
        u = action[world, wp.max(actuator, 0)] * wp.where(actuator >= 0, scalar(1.0),
                                                          scalar(0.0))
        stretched = F @ load_vec(params, world, i, 8)
        active = params[world, i, 7] * u * wp.outer(stretched, stretched)
        tau = kirchhoff(F, int(params[world, i, 2]), params[world, i, 4], params[world, i, 5],
                        active)
        affine = (-dt * params[world, i, 1] * scalar(4.0) * inv_dx * inv_dx) * tau + mass * C
        base = base_of(x, inv_dx, size)
        fx = x * inv_dx - to_float(base)
        w = weights(fx)
        for a in range(3):
            for b in range(3):
                for c in range(depth):
                    o = offset(a, b, c)
                    weight = weight_of(w, a, b, c)
                    dpos = (to_float(o) - fx) / inv_dx
                    momentum = weight * (mass * v + affine @ dpos)
                    wp.atomic_add(grid, world, flat(base + o, size),
                                  to_node(momentum, weight * mass))

    @wp.func(**unique)
    def node_velocity(
        g: node,
        I: ivec,
        dt: scalar,
        dx: scalar,
        elapsed: scalar,
        gravity: scalar,
        ground_height: scalar,
        ground_friction: scalar,
        tool_shape: int,
        tool_size: vec,
        tool_friction: scalar,
        boundary: int,
        size: int,
        tool: wp.array2d(dtype=scalar),
        world: int,
    ):
        """Velocity of a node with mass: gravity, then ground, tool and walls."""
        zero = scalar(0.0)
        v = velocity_of(g) / g[dim] + dt * gravity * up()
        xi = to_float(I) * dx
        # Ground: a node at or below it cannot move down; friction slows its sliding.
        if xi[1] <= ground_height and v[1] < zero:
            vn = v[1]
            v = coulomb(v - vn * up(), vn, ground_friction)
        # Tool: material inside it moves with it, or slides along its surface.
        if tool_shape >= 0:
            v_tool = head(tool, world, dim)
            d = xi - (head(tool, world, 0) + elapsed * v_tool)
            inside = False
            normal = vec()
            if tool_shape == 0:
                dist = wp.sqrt(wp.dot(d, d) + scalar(1e-20))
                inside = dist - tool_size[0] < zero
                normal = d / dist
            else:
                # Inside the box exactly where the signed distance is negative: all q < 0.
                q = wp.abs(d) - tool_size
                axis = wp.int32(0)
                for k in range(1, dim):
                    if q[k] > q[axis]:
                        axis = k
                inside = q[axis] < zero
                normal = axis_vector(axis, wp.where(d[axis] < zero, scalar(-1.0), scalar(1.0)))
            if inside:
                rel = v - v_tool
                vn = wp.dot(rel, normal)
                if vn < zero:
                    rel = coulomb(rel - vn * normal, vn, tool_friction)
                v = v_tool + rel
        # Domain walls: slip, no velocity out of the domain.
        return walls(v, I, boundary, size)

    @wp.kernel(enable_backward=True, module="unique")
    def grid_update(
        dt: scalar,
        dx: scalar,
        elapsed: scalar,
        gravity: scalar,
        ground_height: scalar,
        ground_friction: scalar,
        tool_shape: int,
        tool_size: vec,
        tool_friction: scalar,
        boundary: int,
        size: int,
        mass_floor: scalar,
        grid: wp.array2d(dtype=node),
        tool: wp.array2d(dtype=scalar),
        grid_out: wp.array2d(dtype=node),
    ):
        world, t = wp.tid()
        g = grid[world, t]
        v = vec()
        # Most nodes are empty: they skip the work (forward and adjoint) and keep v = 0.
        if g[dim] > mass_floor:
            v = node_velocity(g, unflat(t, size), dt, dx, elapsed, gravity, ground_height,
                              ground_friction, tool_shape, tool_size, tool_friction, boundary,
                              size, tool, world)
        grid_out[world, t] = to_node(v, g[dim])

    @wp.kernel(enable_backward=True, module="unique")
    def g2p(
        dt: scalar,
        inv_dx: scalar,
        size: int,
        p: wp.array3d(dtype=scalar),
        params: wp.array3d(dtype=scalar),
        grid: wp.array2d(dtype=node),
        p_out: wp.array3d(dtype=scalar),
    ):
        world, i = wp.tid()
        x = load_vec(p, world, i, 0)
        F = load_mat(p, world, i, of)
        base = base_of(x, inv_dx, size)
        fx = x * inv_dx - to_float(base)
        w = weights(fx)
        new_v = vec()
        new_C = mat()
        scale = scalar(4.0) * inv_dx * inv_dx
        # Constant-length loops: unrolled, so the adjoint of these sums is right.
        for a in range(3):
            for b in range(3):
                for c in range(depth):
                    o = offset(a, b, c)
                    weight = weight_of(w, a, b, c)
                    dpos = (to_float(o) - fx) / inv_dx
                    gv = velocity_of(grid[world, flat(base + o, size)])
                    new_v = new_v + weight * gv
                    new_C = new_C + (scale * weight) * wp.outer(gv, dpos)
        f = wp.identity(n=dim, dtype=scalar) + dt * new_C
        new_F = deform(f, F, int(params[world, i, 2]), params[world, i, 4], params[world, i, 5],
                       params[world, i, 6])
        new_x = x + dt * new_v
        for k in range(dim):
            p_out[world, i, k] = new_x[k]
        store(p_out, world, i, new_v, new_C, new_F)

    return p2g, grid_update, g2p, vec, scalar, node


def build_step(backend: Backend, model, substeps: int, batch_size: int = 1) -> KernelStep:
    """``substeps`` substeps of ``batch_size`` worlds as one step reading ``p`` (particle
    state ``[B, n, 2 d + 2 d^2]``), ``params`` (``[B, n, 8 + d]``), ``action`` (``[B, A]``)
    and ``tool`` (``[B, 2 d]``), writing ``p{substeps}``; each kernel is one launch over
    ``(B, n)`` particles or ``(B, G^d)`` nodes, and the grids are recomputed in backward."""
    dim, size = model.dim, model.grid_size
    p2g, grid_update, g2p, vec, scalar, node = _kernels(dim, backend.torch_dtype == torch.float64)
    n, width = model.particle_count, 2 * dim + 2 * dim * dim
    c = boundary_constants(model, single_precision=backend.torch_dtype == torch.float32)
    nodes = size**dim
    grid_spec = OutputSpec((batch_size, nodes, dim + 1), node)
    velocity_spec = OutputSpec((batch_size, nodes, dim + 1), node, accumulates=False)
    particle_spec = OutputSpec((batch_size, n, width), scalar, accumulates=False)
    dt, inv_dx = scalar(model.dt), scalar(1.0 / model.dx)
    launches = []
    for s in range(substeps):
        p_in, p_out = ("p" if s == 0 else f"p{s}"), f"p{s + 1}"
        launches.append(KernelLaunch(
            backend, p2g, (batch_size, n), (dt, inv_dx, size),
            ((p_in, scalar), ("params", scalar), ("action", scalar)),
            ((f"grid{s}", grid_spec),),
        ))
        launches.append(KernelLaunch(
            backend, grid_update, (batch_size, nodes),
            (dt, scalar(model.dx), scalar(s * model.dt), scalar(model.gravity),
             scalar(c.ground_height), scalar(c.ground_friction), c.tool_shape,
             vec(*c.tool_size), scalar(c.tool_friction), BOUNDARY_CELLS, size,
             scalar(c.mass_floor)),
            ((f"grid{s}", node), ("tool", scalar)),
            ((f"velocity{s}", velocity_spec),),
        ))
        launches.append(KernelLaunch(
            backend, g2p, (batch_size, n), (dt, inv_dx, size),
            ((p_in, scalar), ("params", scalar), (f"velocity{s}", node)),
            ((p_out, particle_spec),),
        ))
    return KernelStep(("p", "params", "action", "tool"), tuple(launches), (f"p{substeps}",),
                      recompute=True)


def particle_to_grid(backend: Backend, model, p: torch.Tensor, params: torch.Tensor,
                     action: torch.Tensor) -> torch.Tensor:
    """The grids (momentum, mass) after ``p2g`` of packed particle states ``[B, n, W]``,
    shaped ``[B] + [G]*d + [d + 1]`` as on Taichi (diagnostics)."""
    backend.ensure_initialized()
    dim, size = model.dim, model.grid_size
    p2g, _, _, _, scalar, node = _kernels(dim, backend.torch_dtype == torch.float64)
    batch = p.shape[0]
    grid = torch.zeros((batch, size**dim, dim + 1), dtype=p.dtype, device=p.device)
    wp.launch(p2g, dim=(batch, p.shape[1]), device=backend.device,
              inputs=[scalar(model.dt), scalar(1.0 / model.dx), size,
                      wp.from_torch(p.contiguous(), dtype=scalar),
                      wp.from_torch(params.contiguous(), dtype=scalar),
                      wp.from_torch(action.contiguous(), dtype=scalar),
                      wp.from_torch(grid, dtype=node)])
    return grid.reshape((batch,) + (size,) * dim + (dim + 1,))
