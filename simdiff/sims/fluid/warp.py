"""Warp kernels of the fluid step's local operators, the same discretization as
:mod:`~simdiff.sims.fluid.grid` (positions, interpolation, clamping, limiter) so that the two
paths agree to round-off.

Layout: every array is 4D (a leading axis and three grid axes); a 2D grid carries a trailing
axis of length 1, which the kernels never interpolate along. Warp arrays and launch grids have
at most four dimensions, so the world axis is folded into the leading one: velocity is the
state's padded tensor ``[B, dim, n0+1, n1+1, n2+1]`` viewed as ``[B * dim, n0+1, n1+1, n2+1]``
(entry ``b * dim + a`` is component ``a`` of world ``b``), dye ``[B, C, *n]`` as ``[B * C, *n]``,
and per-cell scalars (obstacle, lift, divergence, pressure) are ``[B, *n]``. Component ``a`` is
valid on ``n + e_a`` faces, every kernel writing velocities writes zeros on the rest. Every
launch covers all worlds (``dim=(B * dim, ...)``, ``(B * C, ...)`` or ``(B, ...)``); per-world
parameters are indexed by world (``paddle_x[b]``, ``inflow_v[b, inflow]``), the inflows' index
maps are shared geometry.

Kernels, in the order of a step (each reads its inputs and writes a fresh output, so Warp's
adjoint of each is exact through :func:`simdiff.bridge.apply_step`):

* ``advect_cells``, ``maccormack``: semi-Lagrangian and MacCormack advection of dye.
* ``hold_sources``: dye held at the inflows' concentrations (the last inflow covering a cell).
* ``advect_velocity``: semi-Lagrangian self-advection of the face velocities.
* ``buoyancy_lift``, ``add_buoyancy``: lift per cell, added to the y-faces (two kernels: the sum
  over channels is a dynamic loop whose sum must only be stored, see ``sims/mass_spring/warp.py``).
* ``solid_faces``: fluid fraction of every face (walls, obstacle, paddle, inflows) and the
  velocity the solids impose, differentiable in the obstacle, the paddle and the inflows.
* ``blend``, ``divergence``, ``subtract_gradient``: the projection's local operators.
* ``laplacian``, ``residual``: ``A p`` and ``r - A p`` of one multigrid level, forward only
  (the solve's derivative is its adjoint solve, :mod:`~simdiff.sims.fluid.solver`).

Interpolation clamps positions with torch ``grid_sample``'s border rule (zero derivative on and
beyond the border, not Warp's ``clamp``, which passes it on the border), so gradients agree
where back-traced points sit exactly on the border (a fluid at rest).

Kernels are compiled once per dimension and precision, all in one Warp module. The number of
worlds, dye channels and inflows is data (inflows enter as per-cell and per-face index maps
built once per model), so it does not recompile.
"""

import functools
from types import SimpleNamespace

import torch
import warp as wp

from simdiff.backend import Backend
from simdiff.bridge import KernelLaunch, KernelStep, OutputSpec, run_forward

__all__ = ["Laplacian", "StepKernels"]


@functools.cache
def _kernels(dim: int, double: bool) -> SimpleNamespace:
    scalar = wp.float64 if double else wp.float32
    vec3 = wp.types.vector(3, scalar)
    module = f"simdiff_fluid_b_{dim}d_{'f64' if double else 'f32'}"
    three = dim == 3
    dim_count = dim

    @wp.func(module=module)
    def border(x: scalar, hi: scalar) -> scalar:
        # grid_sample's border padding: clamp, with no derivative on or beyond the border.
        return wp.where(x <= scalar(0.0), scalar(0.0), wp.where(x >= hi, hi, x))

    @wp.func(module=module)
    def sample(
        f: wp.array4d(dtype=scalar),
        c: int,
        x: scalar,
        y: scalar,
        z: scalar,
        m0: int,
        m1: int,
        m2: int,
    ) -> scalar:
        # (Bi/tri)linear interpolation of f[c] (extent m) at index coordinates (x, y, z).
        cx = border(x, scalar(m0 - 1))
        cy = border(y, scalar(m1 - 1))
        i0 = wp.int32(wp.floor(cx))
        j0 = wp.int32(wp.floor(cy))
        fx = cx - scalar(i0)
        fy = cy - scalar(j0)
        i1 = wp.min(i0 + 1, m0 - 1)
        j1 = wp.min(j0 + 1, m1 - 1)
        one = scalar(1.0)
        value = scalar(0.0)
        if wp.static(three):
            cz = border(z, scalar(m2 - 1))
            k0 = wp.int32(wp.floor(cz))
            fz = cz - scalar(k0)
            k1 = wp.min(k0 + 1, m2 - 1)
            low = (one - fy) * ((one - fx) * f[c, i0, j0, k0] + fx * f[c, i1, j0, k0]) + fy * (
                (one - fx) * f[c, i0, j1, k0] + fx * f[c, i1, j1, k0]
            )
            high = (one - fy) * ((one - fx) * f[c, i0, j0, k1] + fx * f[c, i1, j0, k1]) + fy * (
                (one - fx) * f[c, i0, j1, k1] + fx * f[c, i1, j1, k1]
            )
            value = (one - fz) * low + fz * high
        else:
            value = (one - fy) * ((one - fx) * f[c, i0, j0, 0] + fx * f[c, i1, j0, 0]) + fy * (
                (one - fx) * f[c, i0, j1, 0] + fx * f[c, i1, j1, 0]
            )
        return value

    @wp.func(module=module)
    def cell_velocity(u: wp.array4d(dtype=scalar), o: int, i: int, j: int, k: int) -> vec3:
        # The cell's velocity in the world whose components start at entry o of u.
        h = scalar(0.5)
        w = scalar(0.0)
        if wp.static(three):
            w = h * (u[o + 2, i, j, k] + u[o + 2, i, j, k + 1])
        return vec3(
            h * (u[o, i, j, k] + u[o, i + 1, j, k]),
            h * (u[o + 1, i, j, k] + u[o + 1, i, j + 1, k]),
            w,
        )

    @wp.func(module=module)
    def extreme(q: wp.array4d(dtype=scalar), c: int, i: int, j: int, k: int, hi: int) -> scalar:
        # Max (hi=1) or min (hi=0) of q[c] over the 2^dim cells of block (i, j, k), whose
        # cells are i-1 and i per axis, clamped to the grid (replicate padding).
        n0 = q.shape[1]
        n1 = q.shape[2]
        n2 = q.shape[3]
        ia = wp.clamp(i - 1, 0, n0 - 1)
        ib = wp.clamp(i, 0, n0 - 1)
        ja = wp.clamp(j - 1, 0, n1 - 1)
        jb = wp.clamp(j, 0, n1 - 1)
        ka = wp.clamp(k - 1, 0, n2 - 1)
        kb = wp.clamp(k, 0, n2 - 1)
        lo = wp.min(
            wp.min(q[c, ia, ja, ka], q[c, ib, ja, ka]), wp.min(q[c, ia, jb, ka], q[c, ib, jb, ka])
        )
        up = wp.max(
            wp.max(q[c, ia, ja, ka], q[c, ib, ja, ka]), wp.max(q[c, ia, jb, ka], q[c, ib, jb, ka])
        )
        if wp.static(three):
            lo = wp.min(
                lo,
                wp.min(
                    wp.min(q[c, ia, ja, kb], q[c, ib, ja, kb]),
                    wp.min(q[c, ia, jb, kb], q[c, ib, jb, kb]),
                ),
            )
            up = wp.max(
                up,
                wp.max(
                    wp.max(q[c, ia, ja, kb], q[c, ib, ja, kb]),
                    wp.max(q[c, ia, jb, kb], q[c, ib, jb, kb]),
                ),
            )
        return wp.where(hi == 1, up, lo)

    @wp.kernel(enable_backward=True, module=module)
    def advect_cells(
        cells_per_step: scalar,
        channels: int,
        u: wp.array4d(dtype=scalar),
        q: wp.array4d(dtype=scalar),
        q_out: wp.array4d(dtype=scalar),
    ):
        bc, i, j, k = wp.tid()  # bc = world * channels + channel
        v = cell_velocity(u, (bc // channels) * dim_count, i, j, k)
        h = scalar(0.5)
        # Back-traced cell center, minus the centers' offset: index coordinates of q.
        x = scalar(i) + h - cells_per_step * v[0] - h
        y = scalar(j) + h - cells_per_step * v[1] - h
        z = scalar(k) + h - cells_per_step * v[2] - h
        q_out[bc, i, j, k] = sample(q, bc, x, y, z, q.shape[1], q.shape[2], q.shape[3])

    @wp.kernel(enable_backward=True, module=module)
    def maccormack(
        cells_per_step: scalar,
        channels: int,
        u: wp.array4d(dtype=scalar),
        q: wp.array4d(dtype=scalar),
        forward: wp.array4d(dtype=scalar),
        q_out: wp.array4d(dtype=scalar),
    ):
        bc, i, j, k = wp.tid()
        n0 = q.shape[1]
        n1 = q.shape[2]
        n2 = q.shape[3]
        v = cell_velocity(u, (bc // channels) * dim_count, i, j, k)
        h = scalar(0.5)
        again = sample(
            forward,
            bc,
            scalar(i) + h + cells_per_step * v[0] - h,
            scalar(j) + h + cells_per_step * v[1] - h,
            scalar(k) + h + cells_per_step * v[2] - h,
            n0,
            n1,
            n2,
        )
        plain = forward[bc, i, j, k]
        corrected = plain + h * (q[bc, i, j, k] - again)
        # The block (of the extrema grid, entry b at position b) nearest the back-traced point.
        bi = wp.int32(wp.rint(border(scalar(i) + h - cells_per_step * v[0], scalar(n0))))
        bj = wp.int32(wp.rint(border(scalar(j) + h - cells_per_step * v[1], scalar(n1))))
        bk = wp.int32(0)
        if wp.static(three):
            bk = wp.int32(wp.rint(border(scalar(k) + h - cells_per_step * v[2], scalar(n2))))
        low = extreme(q, bc, bi, bj, bk, 0)
        high = extreme(q, bc, bi, bj, bk, 1)
        inside = corrected >= low and corrected <= high
        q_out[bc, i, j, k] = wp.where(inside, corrected, plain)

    @wp.kernel(enable_backward=True, module=module)
    def hold_sources(
        channels: int,
        source: wp.array3d(dtype=wp.int32),
        q: wp.array4d(dtype=scalar),
        concentration: wp.array3d(dtype=scalar),
        q_out: wp.array4d(dtype=scalar),
    ):
        bc, i, j, k = wp.tid()
        s = source[i, j, k]
        held = concentration[bc // channels, wp.max(s, 0), bc % channels]
        q_out[bc, i, j, k] = wp.where(s >= 0, held, q[bc, i, j, k])

    @wp.func(module=module)
    def face_valid(a: int, i: int, j: int, k: int, n0: int, n1: int, n2: int) -> bool:
        return (
            i < n0 + wp.where(a == 0, 1, 0)
            and j < n1 + wp.where(a == 1, 1, 0)
            and k < n2 + wp.where(a == 2, 1, 0)
        )

    @wp.func(module=module)
    def sample_component(
        u: wp.array4d(dtype=scalar),
        o: int,
        b: int,
        px: scalar,
        py: scalar,
        pz: scalar,
        n0: int,
        n1: int,
        n2: int,
    ) -> scalar:
        # Velocity component b (of the world whose components start at entry o) at position p
        # (cell units): its faces sit at p - 1/2 along the other axes; it is valid on n + e_b
        # faces.
        h = scalar(0.5)
        e0 = wp.where(b == 0, 1, 0)
        e1 = wp.where(b == 1, 1, 0)
        e2 = wp.where(b == 2, 1, 0)
        return sample(
            u,
            o + b,
            px - h * scalar(1 - e0),
            py - h * scalar(1 - e1),
            pz - h * scalar(1 - e2),
            n0 + e0,
            n1 + e1,
            n2 + e2,
        )

    @wp.kernel(enable_backward=True, module=module)
    def advect_velocity(
        cells_per_step: scalar,
        n0: int,
        n1: int,
        n2: int,
        u: wp.array4d(dtype=scalar),
        u_out: wp.array4d(dtype=scalar),
    ):
        ba, i, j, k = wp.tid()  # ba = world * dim + component
        a = ba % dim_count
        o = ba - a
        e0 = wp.where(a == 0, 1, 0)
        e1 = wp.where(a == 1, 1, 0)
        e2 = wp.where(a == 2, 1, 0)
        h = scalar(0.5)
        # This face's position (cell units), and the velocity there: its own component as
        # stored, the others interpolated from their faces.
        px = scalar(i) + h * scalar(1 - e0)
        py = scalar(j) + h * scalar(1 - e1)
        pz = scalar(k) + h * scalar(1 - e2)
        own = u[ba, i, j, k]
        # Only the other components are interpolated (b, and c in 3D).
        b = (a + 1) % dim_count
        other_b = sample_component(u, o, b, px, py, pz, n0, n1, n2)
        v0 = wp.where(a == 0, own, other_b)
        v1 = wp.where(a == 1, own, other_b)
        v2 = scalar(0.0)
        if wp.static(three):
            c = (a + 2) % 3
            other_c = sample_component(u, o, c, px, py, pz, n0, n1, n2)
            v0 = wp.where(c == 0, other_c, v0)
            v1 = wp.where(c == 1, other_c, v1)
            v2 = wp.where(a == 2, own, wp.where(b == 2, other_b, other_c))
        bx = px - cells_per_step * v0 - h * scalar(1 - e0)
        by = py - cells_per_step * v1 - h * scalar(1 - e1)
        bz = pz - cells_per_step * v2 - h * scalar(1 - e2)
        value = sample(u, ba, bx, by, bz, n0 + e0, n1 + e1, n2 + e2)
        u_out[ba, i, j, k] = wp.where(face_valid(a, i, j, k, n0, n1, n2), value, scalar(0.0))

    @wp.kernel(enable_backward=True, module=module)
    def buoyancy_lift(
        q: wp.array4d(dtype=scalar),
        buoyancy: wp.array2d(dtype=scalar),
        lift: wp.array4d(dtype=scalar),
    ):
        b, i, j, k = wp.tid()
        channels = buoyancy.shape[1]
        total = scalar(0.0)
        for c in range(channels):
            total = total + buoyancy[b, c] * q[b * channels + c, i, j, k]
        lift[b, i, j, k] = total

    @wp.kernel(enable_backward=True, module=module)
    def add_buoyancy(
        half_dt: scalar,
        u: wp.array4d(dtype=scalar),
        lift: wp.array4d(dtype=scalar),
        u_out: wp.array4d(dtype=scalar),
    ):
        # The mean lift of the two cells beside each y-face (zero beyond the box).
        ba, i, j, k = wp.tid()
        a = ba % dim_count
        b = ba // dim_count
        n0 = lift.shape[1]
        n1 = lift.shape[2]
        n2 = lift.shape[3]
        ic = wp.min(i, n0 - 1)
        kc = wp.min(k, n2 - 1)
        below = wp.where(j >= 1, lift[b, ic, wp.max(j - 1, 0), kc], scalar(0.0))
        above = wp.where(j < n1, lift[b, ic, wp.min(j, n1 - 1), kc], scalar(0.0))
        lifted = a == 1 and i < n0 and k < n2
        u_out[ba, i, j, k] = u[ba, i, j, k] + wp.where(
            lifted, half_dt * (below + above), scalar(0.0)
        )

    @wp.func(module=module)
    def overlap(start: scalar, lo: scalar, hi: scalar) -> scalar:
        # Length of [start, start + 1] inside [lo, hi], in [0, 1].
        return wp.clamp(
            wp.min(start + scalar(1.0), hi) - wp.max(start, lo), scalar(0.0), scalar(1.0)
        )

    @wp.kernel(enable_backward=True, module=module)
    def solid_faces(
        lo_open: wp.vec3i,
        hi_open: wp.vec3i,
        half_size: vec3,
        dx: scalar,
        has_paddle: int,
        inflow_face: wp.array4d(dtype=wp.int32),
        obstacle: wp.array4d(dtype=scalar),
        paddle_x: wp.array2d(dtype=scalar),
        paddle_v: wp.array2d(dtype=scalar),
        inflow_v: wp.array3d(dtype=scalar),
        w_out: wp.array4d(dtype=scalar),
        imposed_out: wp.array4d(dtype=scalar),
    ):
        ba, i, j, k = wp.tid()
        a = ba % dim_count
        b = ba // dim_count
        n0 = obstacle.shape[1]
        n1 = obstacle.shape[2]
        n2 = obstacle.shape[3]
        e0 = wp.where(a == 0, 1, 0)
        e1 = wp.where(a == 1, 1, 0)
        e2 = wp.where(a == 2, 1, 0)
        index = i * e0 + j * e1 + k * e2
        count = n0 * e0 + n1 * e1 + n2 * e2
        one = scalar(1.0)
        zero = scalar(0.0)
        # The union of the two cells beside the face; beyond the box: wall or open side.
        left = (
            one
            - obstacle[
                b,
                wp.clamp(i - e0, 0, n0 - 1),
                wp.clamp(j - e1, 0, n1 - 1),
                wp.clamp(k - e2, 0, n2 - 1),
            ]
        )
        right = one - obstacle[b, wp.min(i, n0 - 1), wp.min(j, n1 - 1), wp.min(k, n2 - 1)]
        fluid = wp.where(index >= 1, left, one) * wp.where(index < count, right, one)
        end = wp.where(index == 0, lo_open[a], wp.where(index == count, hi_open[a], 1))
        fluid = fluid * scalar(end)
        # The paddle: exact coverage of the face's dual cell by the box.
        h = scalar(0.5)
        cover = overlap(
            scalar(i) - h * scalar(e0),
            (paddle_x[b, 0] - half_size[0]) / dx,
            (paddle_x[b, 0] + half_size[0]) / dx,
        ) * overlap(
            scalar(j) - h * scalar(e1),
            (paddle_x[b, 1] - half_size[1]) / dx,
            (paddle_x[b, 1] + half_size[1]) / dx,
        )
        if wp.static(three):
            cover = cover * overlap(
                scalar(k) - h * scalar(e2),
                (paddle_x[b, 2] - half_size[2]) / dx,
                (paddle_x[b, 2] + half_size[2]) / dx,
            )
        cover = cover * scalar(has_paddle)
        imposed = fluid * cover * paddle_v[b, a]
        fluid = fluid * (one - cover)
        # Inflows: the first inflow touching the face imposes its velocity.
        s = inflow_face[a, i, j, k]
        imposed = wp.where(s >= 0, imposed + fluid * inflow_v[b, wp.max(s, 0), a], imposed)
        fluid = wp.where(s >= 0, zero, fluid)
        valid = face_valid(a, i, j, k, n0, n1, n2)
        w_out[ba, i, j, k] = wp.where(valid, fluid, zero)
        imposed_out[ba, i, j, k] = wp.where(valid, imposed, zero)

    @wp.kernel(enable_backward=True, module=module)
    def blend(
        u: wp.array4d(dtype=scalar),
        w: wp.array4d(dtype=scalar),
        imposed: wp.array4d(dtype=scalar),
        u_out: wp.array4d(dtype=scalar),
    ):
        ba, i, j, k = wp.tid()
        u_out[ba, i, j, k] = w[ba, i, j, k] * u[ba, i, j, k] + imposed[ba, i, j, k]

    @wp.kernel(enable_backward=True, module=module)
    def divergence(u: wp.array4d(dtype=scalar), div: wp.array4d(dtype=scalar)):
        b, i, j, k = wp.tid()
        o = b * dim_count
        d = u[o, i + 1, j, k] - u[o, i, j, k] + u[o + 1, i, j + 1, k] - u[o + 1, i, j, k]
        if wp.static(three):
            d = d + u[o + 2, i, j, k + 1] - u[o + 2, i, j, k]
        div[b, i, j, k] = d

    @wp.kernel(enable_backward=True, module=module)
    def subtract_gradient(
        u: wp.array4d(dtype=scalar),
        w: wp.array4d(dtype=scalar),
        p: wp.array4d(dtype=scalar),
        u_out: wp.array4d(dtype=scalar),
    ):
        ba, i, j, k = wp.tid()
        a = ba % dim_count
        b = ba // dim_count
        n0 = p.shape[1]
        n1 = p.shape[2]
        n2 = p.shape[3]
        e0 = wp.where(a == 0, 1, 0)
        e1 = wp.where(a == 1, 1, 0)
        e2 = wp.where(a == 2, 1, 0)
        index = i * e0 + j * e1 + k * e2
        count = n0 * e0 + n1 * e1 + n2 * e2
        zero = scalar(0.0)
        left = p[
            b,
            wp.clamp(i - e0, 0, n0 - 1),
            wp.clamp(j - e1, 0, n1 - 1),
            wp.clamp(k - e2, 0, n2 - 1),
        ]
        right = p[b, wp.min(i, n0 - 1), wp.min(j, n1 - 1), wp.min(k, n2 - 1)]
        grad = wp.where(index < count, right, zero) - wp.where(index >= 1, left, zero)
        value = u[ba, i, j, k] - w[ba, i, j, k] * grad
        u_out[ba, i, j, k] = wp.where(face_valid(a, i, j, k, n0, n1, n2), value, zero)

    @wp.func(module=module)
    def apply_operator(
        w: wp.array4d(dtype=scalar),
        fixed: wp.array4d(dtype=scalar),
        x: wp.array4d(dtype=scalar),
        b: int,
        i: int,
        j: int,
        k: int,
    ) -> scalar:
        # (A x)[b,i,j,k] = diag x - sum over faces of w * neighbor, zero pressure beyond the box.
        n0 = x.shape[1]
        n1 = x.shape[2]
        n2 = x.shape[3]
        o = b * dim_count
        zero = scalar(0.0)
        wl0 = w[o, i, j, k]
        wu0 = w[o, i + 1, j, k]
        wl1 = w[o + 1, i, j, k]
        wu1 = w[o + 1, i, j + 1, k]
        out = (fixed[b, i, j, k] + wl0 + wl1 + wu0 + wu1) * x[b, i, j, k]
        out = out - wl0 * wp.where(i >= 1, x[b, wp.max(i - 1, 0), j, k], zero)
        out = out - wu0 * wp.where(i < n0 - 1, x[b, wp.min(i + 1, n0 - 1), j, k], zero)
        out = out - wl1 * wp.where(j >= 1, x[b, i, wp.max(j - 1, 0), k], zero)
        out = out - wu1 * wp.where(j < n1 - 1, x[b, i, wp.min(j + 1, n1 - 1), k], zero)
        if wp.static(three):
            wl2 = w[o + 2, i, j, k]
            wu2 = w[o + 2, i, j, k + 1]
            out = out + (wl2 + wu2) * x[b, i, j, k]
            out = out - wl2 * wp.where(k >= 1, x[b, i, j, wp.max(k - 1, 0)], zero)
            out = out - wu2 * wp.where(k < n2 - 1, x[b, i, j, wp.min(k + 1, n2 - 1)], zero)
        return out

    @wp.kernel(enable_backward=False, module=module)
    def laplacian(
        w: wp.array4d(dtype=scalar),
        fixed: wp.array4d(dtype=scalar),
        x: wp.array4d(dtype=scalar),
        out: wp.array4d(dtype=scalar),
    ):
        b, i, j, k = wp.tid()
        out[b, i, j, k] = apply_operator(w, fixed, x, b, i, j, k)

    @wp.kernel(enable_backward=False, module=module)
    def residual(
        w: wp.array4d(dtype=scalar),
        fixed: wp.array4d(dtype=scalar),
        x: wp.array4d(dtype=scalar),
        r: wp.array4d(dtype=scalar),
        out: wp.array4d(dtype=scalar),
    ):
        b, i, j, k = wp.tid()
        out[b, i, j, k] = r[b, i, j, k] - apply_operator(w, fixed, x, b, i, j, k)

    return SimpleNamespace(
        **{k: v for k, v in locals().items() if isinstance(v, wp.Kernel)}, scalar=scalar, vec3=vec3
    )


def as_grid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """A state tensor as the kernels' 4D layout: ``[B, C, *n]`` as ``[B * C, *n]``, ``[B, *n]``
    as is, and a trailing axis of 1 in 2D (views where the tensor is contiguous)."""
    if t.dim() == dim + 2:
        t = t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])
    return t.unsqueeze(-1) if dim == 2 else t


class StepKernels:
    """The launches of one model's step for ``batch`` worlds, built once per simulator.

    Args:
        backend: A Warp backend.
        resolution: Cells per axis.
        batch: Worlds B.
        channels: Dye channels.
        maccormack: MacCormack dye advection (else semi-Lagrangian).
        cells_per_step: ``dt / dx``.
        dt, dx: Time step [s] and cell size [m].
        open_sides: Open ends ``(axis, end)``.
        source: Per cell, the inflow holding its dye (the last covering it), -1 for none;
            int32, shape ``resolution`` (shared by every world).
        inflow_face: Per face, the inflow imposing its velocity (the first touching it), -1
            for none; int32, padded shape ``[dim, *(resolution + 1)]``.
        paddle_half_size: The paddle's half size [m], or None without a paddle.

    Attributes:
        advance: ``(velocity, dye, concentration [B, inflows, C], buoyancy [B, C]) ->
            (velocity, dye)``: advection, sources, buoyancy.
        advance_still: ``(velocity, dye, concentration) -> (velocity, dye)``: the same with no
            buoyancy.
        constrain: ``(velocity, obstacle [B, *n], paddle_x [B, dim], paddle_v [B, dim],
            inflow_v [B, inflows, dim]) -> (blended, weights, divergence)``: the solids'
            weights, velocity blended with theirs, and its divergence (the pressure
            equation's right-hand side, negated).
        constrain_static: ``(velocity, weights, imposed) -> (blended, divergence)``: the same
            for solids whose weights and imposed velocities are given (static ones).
        subtract: ``(blended, weights, pressure [B, *n]) -> (velocity,)``.
    """

    def __init__(
        self,
        backend: Backend,
        resolution: tuple[int, ...],
        *,
        batch: int,
        channels: int,
        maccormack: bool,
        cells_per_step: float,
        dt: float,
        dx: float,
        open_sides: set[tuple[int, int]],
        source: torch.Tensor | None,
        inflow_face: torch.Tensor,
        paddle_half_size: tuple[float, ...] | None,
    ) -> None:
        backend.ensure_initialized()
        dim = len(resolution)
        k = _kernels(dim, backend.torch_dtype == torch.float64)
        self.kernels, self.dim = k, dim
        s = k.scalar
        n = (*resolution, 1) if dim == 2 else tuple(resolution)
        faces = (batch * dim, n[0] + 1, n[1] + 1, n[2] + 1 if dim == 3 else 1)
        cells = (batch * channels, *n)
        scalars = (batch, *n)
        self.cell_shape, self.face_shape = n, faces
        # Resident index maps (kept on self: the Warp views do not own them).
        self._source = None if source is None else as_grid(source, dim).to(torch.int32).contiguous()
        face_map = inflow_face.unsqueeze(-1) if dim == 2 else inflow_face
        self._inflow_face = face_map.to(torch.int32).contiguous()

        def out(shape):
            return OutputSpec(shape, None, accumulates=False)

        def launch(kernel, threads, static, inputs, outputs):
            return KernelLaunch(
                backend,
                kernel,
                threads,
                static,
                tuple((name, None) for name in inputs),
                tuple((name, out(shape)) for name, shape in outputs),
            )

        c = s(cells_per_step)
        launches = [
            launch(k.advect_cells, cells, (c, channels), ("u", "q"), (("q_sl", cells),))
        ]
        dye = "q_sl"
        if maccormack:
            launches.append(
                launch(
                    k.maccormack, cells, (c, channels), ("u", "q", "q_sl"), (("q_mc", cells),)
                )
            )
            dye = "q_mc"
        if self._source is not None:
            launches.append(
                launch(
                    k.hold_sources,
                    cells,
                    (channels, wp.from_torch(self._source)),
                    (dye, "concentration"),
                    (("q_src", cells),),
                )
            )
            dye = "q_src"
        launches.append(launch(k.advect_velocity, faces, (c, *n), ("u",), (("u_adv", faces),)))
        # Without buoyancy (all zero, no gradient asked for): the same launches up to here.
        self.advance_still = KernelStep(
            ("u", "q", "concentration"), tuple(launches), ("u_adv", dye)
        )
        # Buoyancy is data, not a switch: zeros add nothing.
        launches.append(
            launch(k.buoyancy_lift, scalars, (), (dye, "buoyancy"), (("lift", scalars),))
        )
        launches.append(
            launch(k.add_buoyancy, faces, (s(0.5 * dt),), ("u_adv", "lift"), (("u_f", faces),))
        )
        self.advance = KernelStep(
            ("u", "q", "concentration", "buoyancy"), tuple(launches), ("u_f", dye)
        )

        lo = wp.vec3i(*[int((a, 0) in open_sides) for a in range(3)])
        hi = wp.vec3i(*[int((a, 1) in open_sides) for a in range(3)])
        half = k.vec3(*(list(paddle_half_size or ()) + [0.0] * 3)[:3])
        solids = launch(
            k.solid_faces,
            faces,
            (
                lo,
                hi,
                half,
                s(dx),
                int(paddle_half_size is not None),
                wp.from_torch(self._inflow_face),
            ),
            ("obstacle", "paddle_x", "paddle_v", "inflow_v"),
            (("w", faces), ("imposed", faces)),
        )
        blend = launch(k.blend, faces, (), ("u", "w", "imposed"), (("blended", faces),))
        divergence = launch(k.divergence, scalars, (), ("blended",), (("div", scalars),))
        self.constrain = KernelStep(
            ("u", "obstacle", "paddle_x", "paddle_v", "inflow_v"),
            (solids, blend, divergence),
            ("blended", "w", "div"),
        )
        # Static solids (walls and a fixed obstacle): their weights made once, then only these.
        self.constrain_static = KernelStep(
            ("u", "w", "imposed"), (blend, divergence), ("blended", "div")
        )
        subtract = launch(
            k.subtract_gradient, faces, (), ("blended", "w", "p"), (("u_out", faces),)
        )
        self.subtract = KernelStep(("blended", "w", "p"), (subtract,), ("u_out",))


class Laplacian:
    """``A x`` and ``r - A x`` of the pressure operator's levels by Warp kernels, plugged into
    :class:`~simdiff.sims.fluid.solver.PressureSystem` (forward only, on detached tensors),
    every world in one launch.

    Each level's weights are padded once into the kernels' layout; launches are made once per
    level shape and reused across steps (recorded commands).
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._steps: dict[tuple, tuple[KernelStep, KernelStep]] = {}

    def _launches(self, shape: tuple[int, ...], dim: int) -> tuple[KernelStep, KernelStep]:
        key = shape
        if key not in self._steps:
            k = _kernels(dim, self.backend.torch_dtype == torch.float64)
            out = OutputSpec(shape, None, accumulates=False)
            apply = KernelLaunch(
                self.backend,
                k.laplacian,
                shape,
                (),
                (("w", None), ("fixed", None), ("x", None)),
                (("out", out),),
            )
            residual = KernelLaunch(
                self.backend,
                k.residual,
                shape,
                (),
                (("w", None), ("fixed", None), ("x", None), ("r", None)),
                (("out", out),),
            )
            self._steps[key] = (
                KernelStep(("w", "fixed", "x"), (apply,), ("out",)),
                KernelStep(("w", "fixed", "x", "r"), (residual,), ("out",)),
            )
        return self._steps[key]

    @staticmethod
    def _padded(system) -> tuple[torch.Tensor, torch.Tensor]:
        cached = system.operator_cache
        if cached is None:
            n, dim = system.n, system.dim
            full = torch.zeros(
                system.batch,
                dim,
                *(k + 1 for k in n),
                dtype=system.diag.dtype,
                device=system.diag.device,
            )
            for a, w in enumerate(system.weights):
                full[:, a][(slice(None), *(slice(0, k) for k in w.shape[1:]))] = w.detach()
            cached = (as_grid(full, dim).contiguous(), as_grid(system.fixed, dim).contiguous())
            system.operator_cache = cached
        return cached

    def apply(self, system, x: torch.Tensor) -> torch.Tensor:
        w, fixed = self._padded(system)
        step = self._launches(tuple(fixed.shape), system.dim)[0]
        (out,) = run_forward(step, w, fixed, as_grid(x, system.dim))
        return out.view(x.shape)

    def residual(self, system, r: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        w, fixed = self._padded(system)
        step = self._launches(tuple(fixed.shape), system.dim)[1]
        (out,) = run_forward(step, w, fixed, as_grid(x, system.dim), as_grid(r, system.dim))
        return out.view(x.shape)


# The whole pressure solve in one launch ------------------------------------------------------
#
# Conjugate gradients preconditioned by one symmetric multigrid V-cycle, every level and every
# iteration inside one kernel thread per world. Why one thread: on the CPU a Warp launch runs
# its threads one after another anyway, and the solve of a 128^2 smoke made of vectorized torch
# operations spent most of its time in per-operation overhead (about 360 operations per
# iteration, most of them on coarse levels that do almost no arithmetic). Inside one thread
# that overhead is gone, the coarse levels cost what their cells cost, and the smoother can be
# lexicographic Gauss-Seidel: a forward sweep before the coarse correction and a backward one
# after it (its transpose), so the cycle stays symmetric, as conjugate gradients require.
#
# Layout: each level's cells are flattened (index (i * n1 + j) * n2 + k, n2 = 1 in 2D) and the
# levels concatenated, finest first, per world: coef[b, row, cell] holds the weight of the
# face to the lower and upper neighbor along each axis (rows 0..5), the diagonal (row 6), the
# fluid mask of the transfers (row 7) and the diagonal's inverse (row 8); rhs and sol hold
# each level's right-hand side and solution (level 0's are the iteration's residual r and preconditioned residual z);
# levels[l] = (n0, n1, n2, offset, coarsened mask of the transfer to level l + 1).


@functools.cache
def _solve_kernels(dim: int, double: bool) -> SimpleNamespace:
    scalar = wp.float64 if double else wp.float32
    acc = wp.float64  # dot products and norms accumulate in double precision
    module = f"simdiff_fluid_pcg_{dim}d_{'f64' if double else 'f32'}"
    three = dim == 3

    @wp.func(module=module)
    def stencil(coef: wp.array3d(dtype=scalar), x: wp.array2d(dtype=scalar), b: int, c: int,
                i: int, j: int, k: int, n0: int, n1: int, n2: int) -> scalar:
        # (A x)[c]: the diagonal times x minus each neighbor's face weight times its value
        # (zero pressure beyond the box: no term there).
        out = coef[b, 6, c] * x[b, c]
        if i > 0:
            out = out - coef[b, 0, c] * x[b, c - n1 * n2]
        if i < n0 - 1:
            out = out - coef[b, 1, c] * x[b, c + n1 * n2]
        if j > 0:
            out = out - coef[b, 2, c] * x[b, c - n2]
        if j < n1 - 1:
            out = out - coef[b, 3, c] * x[b, c + n2]
        if wp.static(three):
            if k > 0:
                out = out - coef[b, 4, c] * x[b, c - 1]
            if k < n2 - 1:
                out = out - coef[b, 5, c] * x[b, c + 1]
        return out

    @wp.func(module=module)
    def lower_sum(coef: wp.array3d(dtype=scalar), x: wp.array2d(dtype=scalar), b: int, c: int,
                  i: int, j: int, k: int, n1: int, n2: int) -> scalar:
        out = scalar(0.0)
        if i > 0:
            out = out + coef[b, 0, c] * x[b, c - n1 * n2]
        if j > 0:
            out = out + coef[b, 2, c] * x[b, c - n2]
        if wp.static(three):  # noqa: SIM102 - wp.static is resolved when the kernel compiles
            if k > 0:
                out = out + coef[b, 4, c] * x[b, c - 1]
        return out

    @wp.func(module=module)
    def upper_sum(coef: wp.array3d(dtype=scalar), x: wp.array2d(dtype=scalar), b: int, c: int,
                  i: int, j: int, k: int, n0: int, n1: int, n2: int) -> scalar:
        out = scalar(0.0)
        if i < n0 - 1:
            out = out + coef[b, 1, c] * x[b, c + n1 * n2]
        if j < n1 - 1:
            out = out + coef[b, 3, c] * x[b, c + n2]
        if wp.static(three):  # noqa: SIM102 - wp.static is resolved when the kernel compiles
            if k < n2 - 1:
                out = out + coef[b, 5, c] * x[b, c + 1]
        return out

    @wp.func(module=module)
    def own_cell(i: int, coarsened: int) -> int:
        return wp.where(coarsened == 1, i // 2, i)

    @wp.func(module=module)
    def beside_cell(i: int, m: int, coarsened: int) -> int:
        # The coarse cell beside fine cell i's own on its side (cell-centered linear
        # interpolation); beyond the box its own (a wall mirrors; an open side's zero is a
        # zero weight). An axis not coarsened keeps i.
        own = i // 2
        other = wp.where(i % 2 == 0, own - 1, own + 1)
        other = wp.where(other < 0 or other >= m, own, other)
        return wp.where(coarsened == 1, other, i)

    @wp.func(module=module)
    def own_weight(coarsened: int) -> scalar:
        return wp.where(coarsened == 1, scalar(0.75), scalar(1.0))

    @wp.func(module=module)
    def beside_weight(i: int, m: int, coarsened: int, open_mask: int, axis: int) -> scalar:
        # 1/4 from the coarse cell beside, 0 beyond an open side (zero pressure there).
        own = i // 2
        other = wp.where(i % 2 == 0, own - 1, own + 1)
        lo_open = (open_mask >> (2 * axis)) & 1
        hi_open = (open_mask >> (2 * axis + 1)) & 1
        out = scalar(0.25)
        if (other < 0 and lo_open == 1) or (other >= m and hi_open == 1):
            out = scalar(0.0)
        return wp.where(coarsened == 1, out, scalar(0.0))

    @wp.func(module=module)
    def transfer(fine: wp.array2d(dtype=scalar), coarse: wp.array2d(dtype=scalar), b: int,
                 restrict: int, off: int, n0: int, n1: int, n2: int,
                 coef: wp.array3d(dtype=scalar), coff: int, m0: int, m1: int, m2: int,
                 mask: int, open_mask: int):
        # Between level l (n cells from off) and l + 1 (m cells from coff); bit a of mask: axis
        # a is coarsened. restrict == 1: coarse += 2^-dim times the prolongation's transpose of
        # fluid * the residual of fine (a solution just swept forward from zero; fixed cells
        # are skipped); else fine += fluid * the prolongation of coarse.
        c0 = mask & 1
        c1 = (mask >> 1) & 1
        c2 = (mask >> 2) & 1
        scale = scalar(1.0)
        for a in range(3):
            if (mask >> a) & 1 == 1:
                scale = scale * scalar(0.5)
        for i in range(n0):
            i0 = own_cell(i, c0)
            i1 = beside_cell(i, m0, c0)
            a0 = own_weight(c0)
            a1 = beside_weight(i, m0, c0, open_mask, 0)
            for j in range(n1):
                j0 = own_cell(j, c1)
                j1 = beside_cell(j, m1, c1)
                b0 = own_weight(c1)
                b1 = beside_weight(j, m1, c1, open_mask, 1)
                for k in range(n2):
                    c = off + (i * n1 + j) * n2 + k
                    fluid = coef[b, 7, c]
                    if fluid != scalar(0.0):
                        r00 = coff + (i0 * m1 + j0) * m2
                        r01 = coff + (i0 * m1 + j1) * m2
                        r10 = coff + (i1 * m1 + j0) * m2
                        r11 = coff + (i1 * m1 + j1) * m2
                        k0 = k
                        k1 = k
                        g0 = scalar(1.0)
                        g1 = scalar(0.0)
                        if wp.static(three):
                            k0 = own_cell(k, c2)
                            k1 = beside_cell(k, m2, c2)
                            g0 = own_weight(c2)
                            g1 = beside_weight(k, m2, c2, open_mask, 2)
                        if restrict == 1:
                            # The residual after the forward sweep from zero: what the
                            # upper neighbors contribute now.
                            v = scale * fluid * upper_sum(coef, fine, b, c, i, j, k, n0, n1, n2)
                            coarse[b, r00 + k0] += a0 * b0 * g0 * v
                            coarse[b, r01 + k0] += a0 * b1 * g0 * v
                            coarse[b, r10 + k0] += a1 * b0 * g0 * v
                            coarse[b, r11 + k0] += a1 * b1 * g0 * v
                            if wp.static(three):
                                coarse[b, r00 + k1] += a0 * b0 * g1 * v
                                coarse[b, r01 + k1] += a0 * b1 * g1 * v
                                coarse[b, r10 + k1] += a1 * b0 * g1 * v
                                coarse[b, r11 + k1] += a1 * b1 * g1 * v
                        else:
                            v = a0 * (b0 * coarse[b, r00 + k0] + b1 * coarse[b, r01 + k0]) + a1 * (
                                b0 * coarse[b, r10 + k0] + b1 * coarse[b, r11 + k0]
                            )
                            v = g0 * v
                            if wp.static(three):
                                v = v + g1 * (
                                    a0 * (b0 * coarse[b, r00 + k1] + b1 * coarse[b, r01 + k1])
                                    + a1 * (b0 * coarse[b, r10 + k1] + b1 * coarse[b, r11 + k1])
                                )
                            fine[b, c] = fine[b, c] + fluid * v

    @wp.func(module=module)
    def forward_sweep(coef: wp.array3d(dtype=scalar), sol: wp.array2d(dtype=scalar),
                      rhs: wp.array2d(dtype=scalar), b: int, off: int, n0: int, n1: int,
                      n2: int):
        # Forward Gauss-Seidel from zero on one level (the upper neighbors are still zero).
        for i in range(n0):
            for j in range(n1):
                for k in range(n2):
                    c = off + (i * n1 + j) * n2 + k
                    sol[b, c] = (rhs[b, c] + lower_sum(coef, sol, b, c, i, j, k, n1, n2)) * (
                        coef[b, 8, c]
                    )

    @wp.func(module=module)
    def update_and_sweep(coef: wp.array3d(dtype=scalar), sol: wp.array2d(dtype=scalar),
                         rhs: wp.array2d(dtype=scalar), x: wp.array2d(dtype=scalar),
                         d: wp.array2d(dtype=scalar), q: wp.array2d(dtype=scalar), b: int,
                         n0: int, n1: int, n2: int, alpha: scalar, q_mean: scalar) -> acc:
        # The iteration's update x += alpha d, r -= alpha A d, in one pass with level 0's
        # forward sweep on the new r (wasted only on the last iteration); returns |r|^2.
        rr = acc(0.0)
        for i in range(n0):
            for j in range(n1):
                for k in range(n2):
                    c = (i * n1 + j) * n2 + k
                    x[b, c] = x[b, c] + alpha * d[b, c]
                    r = rhs[b, c] - alpha * (q[b, c] - q_mean * coef[b, 7, c])
                    rhs[b, c] = r
                    rr = rr + acc(r) * acc(r)
                    sol[b, c] = (r + lower_sum(coef, sol, b, c, i, j, k, n1, n2)) * coef[b, 8, c]
        return rr

    @wp.func(module=module)
    def finish_vcycle(coef: wp.array3d(dtype=scalar), levels: wp.array2d(dtype=int),
                      dense: wp.array3d(dtype=scalar), rhs: wp.array2d(dtype=scalar),
                      sol: wp.array2d(dtype=scalar), b: int, count: int,
                      open_mask: int) -> acc:
        # The symmetric V-cycle from zero, sol[level 0] = M^-1 rhs[level 0], after the forward
        # sweep of level 0 (made by the caller). Level 0's last sweep also masks fixed cells
        # and returns r . z.
        for l in range(count - 1):
            n0 = levels[l, 0]
            n1 = levels[l, 1]
            n2 = levels[l, 2]
            off = levels[l, 3]
            coff = levels[l + 1, 3]
            if l > 0:
                forward_sweep(coef, sol, rhs, b, off, n0, n1, n2)
            m = levels[l + 1, 0] * levels[l + 1, 1] * levels[l + 1, 2]
            for c in range(m):
                rhs[b, coff + c] = scalar(0.0)
            transfer(sol, rhs, b, 1, off, n0, n1, n2, coef, coff, levels[l + 1, 0],
                     levels[l + 1, 1], levels[l + 1, 2], levels[l, 4], open_mask)
        # The coarsest level: its dense pseudo-inverse.
        last = count - 1
        m = levels[last, 0] * levels[last, 1] * levels[last, 2]
        off = levels[last, 3]
        rz = acc(0.0)
        for row in range(m):
            s = scalar(0.0)
            for col in range(m):
                s = s + dense[b, row, col] * rhs[b, off + col]
            if count == 1:
                s = s * coef[b, 7, off + row]
                rz = rz + acc(rhs[b, off + row]) * acc(s)
            sol[b, off + row] = s
        for up in range(count - 1):
            l = count - 2 - up
            n0 = levels[l, 0]
            n1 = levels[l, 1]
            n2 = levels[l, 2]
            off = levels[l, 3]
            transfer(sol, sol, b, 0, off, n0, n1, n2, coef, levels[l + 1, 3], levels[l + 1, 0],
                     levels[l + 1, 1], levels[l + 1, 2], levels[l, 4], open_mask)
            # Backward Gauss-Seidel: the forward sweep's transpose.
            for ri in range(n0):
                i = n0 - 1 - ri
                for rj in range(n1):
                    j = n1 - 1 - rj
                    for rk in range(n2):
                        k = n2 - 1 - rk
                        c = off + (i * n1 + j) * n2 + k
                        ax = stencil(coef, sol, b, c, i, j, k, n0, n1, n2)
                        z = sol[b, c] + (rhs[b, c] - ax) * coef[b, 8, c]
                        if l == 0:
                            z = z * coef[b, 7, c]
                            rz = rz + acc(rhs[b, c]) * acc(z)
                        sol[b, c] = z
        return rz

    @wp.func(module=module)
    def precondition(coef: wp.array3d(dtype=scalar), levels: wp.array2d(dtype=int),
                     dense: wp.array3d(dtype=scalar), rhs: wp.array2d(dtype=scalar),
                     sol: wp.array2d(dtype=scalar), b: int, count: int, open_mask: int,
                     n: int) -> acc:
        # z = project(M^-1 r) into sol's level 0 (level 0's forward sweep made); returns r . z.
        rz = finish_vcycle(coef, levels, dense, rhs, sol, b, count, open_mask)
        if open_mask == 0:  # a closed box: z's mean over the fluid is removed
            total = acc(0.0)
            cells = acc(0.0)
            for c in range(n):
                fluid = coef[b, 7, c]
                total = total + acc(sol[b, c] * fluid)
                cells = cells + acc(fluid)
            mean = scalar(total / wp.max(cells, acc(1.0)))
            rz = acc(0.0)
            for c in range(n):
                z = (sol[b, c] - mean) * coef[b, 7, c]
                sol[b, c] = z
                rz = rz + acc(rhs[b, c]) * acc(z)
        return rz

    @wp.kernel(enable_backward=False, module=module)
    def pcg(coef: wp.array3d(dtype=scalar), levels: wp.array2d(dtype=int),
            dense: wp.array3d(dtype=scalar), rhs: wp.array2d(dtype=scalar),
            sol: wp.array2d(dtype=scalar), bvec: wp.array2d(dtype=scalar),
            x: wp.array2d(dtype=scalar), d: wp.array2d(dtype=scalar),
            q: wp.array2d(dtype=scalar), iterations: wp.array(dtype=int),
            relative: wp.array(dtype=acc), count: int, open_mask: int, tolerance: acc,
            max_iterations: int, warm: int):
        b = wp.tid()
        n0 = levels[0, 0]
        n1 = levels[0, 1]
        n2 = levels[0, 2]
        n = n0 * n1 * n2
        bb = acc(0.0)
        for c in range(n):
            bb = bb + acc(bvec[b, c]) * acc(bvec[b, c])
        iterations[b] = 0
        if not wp.isfinite(bb):
            for c in range(n):
                x[b, c] = scalar(wp.nan)
            relative[b] = acc(wp.nan)
            return
        if bb == acc(0.0):
            for c in range(n):
                x[b, c] = scalar(0.0)
            relative[b] = acc(0.0)
            return
        norm_b = wp.sqrt(bb)
        # r = b - A x0 (a warm start from the given x) or b; r lives in rhs's level 0.
        rr = acc(0.0)
        for i in range(n0):
            for j in range(n1):
                for k in range(n2):
                    c = (i * n1 + j) * n2 + k
                    r = bvec[b, c]
                    if warm == 1:
                        r = r - stencil(coef, x, b, c, i, j, k, n0, n1, n2)
                    else:
                        x[b, c] = scalar(0.0)
                    rhs[b, c] = r
                    rr = rr + acc(r) * acc(r)
        if warm == 1 and open_mask == 0:
            # In a closed box, b - A x0 has a round-off mean over the fluid that no iteration
            # removes: project it away.
            r_sum = acc(0.0)
            cells = acc(0.0)
            for c in range(n):
                r_sum = r_sum + acc(rhs[b, c] * coef[b, 7, c])
                cells = cells + acc(coef[b, 7, c])
            r_mean = scalar(r_sum / wp.max(cells, acc(1.0)))
            rr = acc(0.0)
            for c in range(n):
                r = rhs[b, c] - r_mean * coef[b, 7, c]
                rhs[b, c] = r
                rr = rr + acc(r) * acc(r)
        now = wp.sqrt(rr) / norm_b
        relative[b] = now
        if now <= tolerance:
            return
        forward_sweep(coef, sol, rhs, b, 0, n0, n1, n2)
        rz = precondition(coef, levels, dense, rhs, sol, b, count, open_mask, n)
        beta = scalar(0.0)
        slab = n1 * n2
        for it in range(max_iterations):
            # d = z + beta d and q = A d in one pass, A d one slab (of fixed i) behind.
            dad = acc(0.0)
            q_sum = acc(0.0)
            cells = acc(0.0)
            for s in range(n0 + 1):
                if s < n0:
                    for c in range(s * slab, (s + 1) * slab):
                        if it == 0:
                            d[b, c] = sol[b, c]
                        else:
                            d[b, c] = sol[b, c] + beta * d[b, c]
                if s >= 1:
                    i = s - 1
                    for j in range(n1):
                        for k in range(n2):
                            c = (i * n1 + j) * n2 + k
                            ad = stencil(coef, d, b, c, i, j, k, n0, n1, n2)
                            q[b, c] = ad
                            dad = dad + acc(d[b, c]) * acc(ad)
                            q_sum = q_sum + acc(ad * coef[b, 7, c])
                            cells = cells + acc(coef[b, 7, c])
            iterations[b] = it + 1
            if dad <= acc(0.0):
                break  # no descent left (round-off): report the residual reached
            alpha = scalar(rz / dad)
            # In a closed box A d has zero mean over the fluid; removing its round-off mean
            # keeps r in the range of A, or |r| stalls at that mean's size.
            q_mean = scalar(0.0)
            if open_mask == 0:
                q_mean = scalar(q_sum / wp.max(cells, acc(1.0)))
            rr = update_and_sweep(coef, sol, rhs, x, d, q, b, n0, n1, n2, alpha, q_mean)
            now = wp.sqrt(rr) / norm_b
            relative[b] = now
            if now <= tolerance:
                break
            rz_new = precondition(coef, levels, dense, rhs, sol, b, count, open_mask, n)
            beta = scalar(rz_new / rz)
            rz = rz_new

    @wp.kernel(enable_backward=False, module=module)
    def apply_preconditioner(coef: wp.array3d(dtype=scalar), levels: wp.array2d(dtype=int),
                             dense: wp.array3d(dtype=scalar), rhs: wp.array2d(dtype=scalar),
                             sol: wp.array2d(dtype=scalar), r: wp.array2d(dtype=scalar),
                             count: int, open_mask: int):
        # z = M^-1 r alone (fixed cells masked, no mean removed), for tests of its symmetry.
        b = wp.tid()
        n0 = levels[0, 0]
        n1 = levels[0, 1]
        n2 = levels[0, 2]
        for c in range(n0 * n1 * n2):
            rhs[b, c] = r[b, c]
        forward_sweep(coef, sol, rhs, b, 0, n0, n1, n2)
        finish_vcycle(coef, levels, dense, rhs, sol, b, count, open_mask)

    return SimpleNamespace(pcg=pcg, apply_preconditioner=apply_preconditioner)


class FusedSolve:
    """The pressure solve of one step's :class:`~simdiff.sims.fluid.solver.PressureSystem`
    by the one-launch kernel above (CPU only; every world one thread).

    Built from the system's multigrid hierarchy, which must end on a level of at most
    ``solver._COARSEST`` cells (solved by its dense pseudo-inverse); :meth:`build` returns None
    otherwise. One instance serves a step's forward solve and its adjoint solve, and every
    later step whose operator is the same (see ``Fluid._pressure``).
    """

    def __init__(self, system, levels: list, dense: torch.Tensor) -> None:
        from simdiff.backend import resolve_backend

        double = system.diag.dtype == torch.float64
        resolve_backend("warp", precision="float64" if double else "float32").ensure_initialized()
        self.kernels = _solve_kernels(system.dim, double)
        self.batch = system.batch
        self.n = system.n
        self.cells = levels[0][0] * levels[0][1] * levels[0][2]
        self.count = len(levels)
        self.open_mask = sum(1 << (2 * a + end) for a, end in system.open_sides)
        dtype = system.diag.dtype
        rows = []
        for s in _hierarchy(system):
            zero = torch.zeros_like(s.diag)
            faces = []
            for a in range(3):
                faces += [s.lower[a], s.upper[a]] if a < s.dim else [zero, zero]
            diag = s.diag.detach()
            rows.append(torch.stack([f.detach() for f in faces] + [diag, s.fluid, 1 / diag],
                                    1).reshape(s.batch, 9, -1))
        self._coef = torch.cat(rows, 2).to(dtype).contiguous()
        total = self._coef.shape[2]
        self._levels = torch.tensor(levels, dtype=torch.int32)
        self._dense = dense.to(dtype).contiguous()
        self._rhs = torch.zeros(self.batch, total, dtype=dtype)
        self._sol = torch.zeros(self.batch, total, dtype=dtype)
        self._d = torch.zeros(self.batch, self.cells, dtype=dtype)
        self._q = torch.zeros(self.batch, self.cells, dtype=dtype)
        self._iterations = torch.zeros(self.batch, dtype=torch.int32)
        self._relative = torch.zeros(self.batch, dtype=torch.float64)
        self._wp = [wp.from_torch(t) for t in (self._coef, self._levels, self._dense,
                                               self._rhs, self._sol)]
        self._scratch = [wp.from_torch(t) for t in (self._d, self._q, self._iterations,
                                                    self._relative)]

    @classmethod
    def build(cls, system):
        """The fused solve of ``system`` (on the CPU), or None where it does not apply."""
        if system.diag.device.type != "cpu":
            return None
        from simdiff.sims.fluid.solver import _COARSEST, _prod

        levels, offset = [], 0
        chain = _hierarchy(system)
        last = chain[-1]
        if _prod(last.n) > _COARSEST:
            return None  # odd sizes ending on a Jacobi polynomial: the torch path
        for index, s in enumerate(chain):
            n = (*s.n, 1) if s.dim == 2 else s.n
            mask = 0
            if index + 1 < len(chain):
                mask = sum(1 << a for a in range(s.dim) if chain[index + 1].n[a] != s.n[a])
            levels.append([*n, offset, mask])
            offset += _prod(n)
        return cls(system, levels, last._dense_inverse())

    def solve(self, b: torch.Tensor, tolerance: float, max_iterations: int,
              guess: torch.Tensor | None = None):
        """``A x = b`` per world, from ``guess`` (in the operator's range) or zero; returns
        the solutions ``[B, *n]`` and per world the iterations and final relative residual
        (as :func:`~simdiff.sims.fluid.solver.pcg`)."""
        flat = b.detach().reshape(self.batch, -1).contiguous()
        if guess is not None:
            x = guess.detach().reshape(self.batch, -1).to(flat.dtype).clone()
        else:
            x = torch.empty_like(flat)
        wp.launch(self.kernels.pcg, dim=self.batch,
                  inputs=[*self._wp, wp.from_torch(flat), wp.from_torch(x), *self._scratch,
                          self.count, self.open_mask, float(tolerance), int(max_iterations),
                          int(guess is not None)],
                  device="cpu")
        return (x.view(b.shape), self._iterations.to(torch.long),
                self._relative.to(b.dtype))

    def precondition(self, r: torch.Tensor) -> torch.Tensor:
        """One V-cycle ``M^-1 r`` (no projection), ``[B, *n]``; for tests."""
        flat = r.detach().reshape(self.batch, -1).to(self._coef.dtype).contiguous()
        wp.launch(self.kernels.apply_preconditioner, dim=self.batch,
                  inputs=[*self._wp, wp.from_torch(flat), self.count, self.open_mask],
                  device="cpu")
        return self._sol[:, : self.cells].clone().view(r.shape)


def _hierarchy(system) -> list:
    chain = [system]
    while chain[-1].coarse() is not None:
        chain.append(chain[-1].coarse())
    return chain
