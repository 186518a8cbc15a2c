"""Taichi kernels of the MLS-MPM substep (see ``model.py`` for the physics).

Three kernels per substep, named after the algorithm: ``p2g`` (scatter into a zeroed grid),
``grid_update`` (velocities, gravity, walls, ground, tool) and ``g2p`` (gather, move, deform).
Each reads its inputs and writes a fresh output, so a substep is a pure function of the packed
particle state: the grid is rebuilt inside every substep and recomputed in backward, never kept
(a Taichi tape over a grid reused across substeps gives NaN gradients).

Layouts (one tensor each, because every tensor argument costs a launch ~60 us), each with a
leading world axis ``B``; one launch serves every world (``ti.ndrange(B, n)`` over particles,
``ti.ndrange(B, G, ..., G)`` over nodes), and worlds never share a grid:

* particle state ``[B, n, 2 d + 2 d^2]``: position, velocity, ``C`` and ``F`` (row-major);
  the kernels read it, and the parameters, flat (``KernelLaunch.flat``).
* particle parameters ``[B, n, 8 + d]``: ``PARAM_COLUMNS`` then the fiber direction;
  ``yield`` holds the Drucker-Prager ``alpha`` of sand particles.
* action ``[B, max(actuators, 1)]``: the muscles' signals.
* grid ``[B G^d, d + 1]`` (flat; nodes row-major, world by world): momentum then mass after
  ``p2g``; velocity then mass after ``grid_update``.
* tool ``[B, 2 d]``: center at the control step's start, then its velocity.
"""

import functools

import taichi as ti
import torch

from simdiff.backend import Backend
from simdiff.bridge import KernelLaunch, KernelStep, OutputSpec
from simdiff.sims.mpm.model import BOUNDARY_CELLS, boundary_constants
from simdiff.sims.mpm.state import PARAM_COLUMNS

__all__ = ["PARAM_COLUMNS", "build_step", "particle_to_grid"]


_ELASTIC, _LIQUID, _PLASTIC = 0, 1, 2
_SAND = 3
_SERIES_BELOW = 1e-3  # squared ratio below which divided differences use their power series
_TIP_STRAIN = 1e-5
"""Log strains below this are the Drucker-Prager cone's tip: sand keeps a volumetric tension
up to it (Klar's return sets it to 0), and the deviator's norm is regularized by it."""
_JACOBI_SWEEPS = 6  # cyclic Jacobi sweeps of a 3x3 eigen decomposition (float64 round-off)


@functools.cache
def _kernels(dim: int, double: bool, size: int, materials: frozenset = frozenset((0, 1, 2, 3))):
    """The kernels for a grid of ``size``^d nodes and the given material codes: the others'
    branches are compiled out (the sand return's logarithms, exponentials and eigen
    decompositions made every particle loop slower, and their adjoints more so, where no
    particle was sand). The grid is flat (``[B G^d, d + 1]``, its index arithmetic on
    compile-time constants): Taichi's multi-dimensional ndarray indexing cost about 2.5x a
    flat one (a copy of a 128^2 grid: 175 us against 50 us)."""
    del double  # keys the cache: Taichi is re-initialized when the precision changes
    vec = ti.types.vector(dim, float)
    mat = ti.types.matrix(dim, dim, float)
    node = ti.types.vector(dim + 1, float)
    arr2 = ti.types.ndarray(ndim=2)
    flat = ti.types.ndarray(ndim=1)  # [B n W] particle rows, read flat (see above)
    width = 2 * dim + 2 * dim * dim  # particle state columns
    pwidth = 8 + dim  # particle parameter columns
    grid_arr = ti.types.ndarray(dtype=node, ndim=1)  # [B G^d], node (world, i, j, k) row-major
    nodes = size**dim
    stencil = ti.ndrange(*((3,) * dim))
    ox, oc, of = dim, 2 * dim, 2 * dim + dim * dim  # column offsets of v, C, F

    @ti.func
    def identity():
        return ti.Matrix.identity(float, dim)

    @ti.func
    def load_vec(a: ti.template(), row, start) -> vec:
        return vec([a[row + start + k] for k in ti.static(range(dim))])

    @ti.func
    def load_mat(a: ti.template(), row, start) -> mat:
        return mat([[a[row + start + r * dim + c] for c in ti.static(range(dim))]
                    for r in ti.static(range(dim))])

    @ti.func
    def node_of(world, I):
        # The flat grid index of node I of a world.
        index = world * nodes
        for k in ti.static(range(dim)):
            index += I[k] * size ** (dim - 1 - k)
        return index

    @ti.func
    def weights(x, inv_dx):
        # Clamped so that a particle that escaped (or became NaN) cannot write out of bounds;
        # the rollout's state check reports it after the step.
        base = ti.max(ti.min(ti.cast(x * inv_dx - 0.5, ti.i32), size - 3), 0)
        fx = x * inv_dx - ti.cast(base, float)
        w = [0.5 * (1.5 - fx) ** 2, 0.75 - (fx - 1.0) ** 2, 0.5 * (fx - 0.5) ** 2]
        return base, fx, w

    @ti.func
    def rotation_2d(F):
        # Closed-form polar rotation of a 2x2 matrix: smooth wherever det F > 0.
        a = F[0, 0] + F[1, 1]
        b = F[1, 0] - F[0, 1]
        r = ti.sqrt(a * a + b * b)
        c, s = a / r, b / r
        return ti.Matrix([[c, -s], [s, c]])

    @ti.func
    def log_spd_2d(b):
        # log(b) = log(det b) / 2 I + atanh(x) / (x m) dev b, with m = tr b / 2 and x the half
        # eigenvalue gap over m; atanh(x) / x is a series in x^2 near repeated eigenvalues, and
        # the unused branch gets a harmless argument so that its derivative is never 0 * inf.
        m = 0.5 * b.trace()
        dev = b - m * identity()
        x2 = 0.5 * (dev * dev).sum() / (m * m)
        small = x2 < _SERIES_BELOW
        x = ti.sqrt(ti.select(small, 0.25, x2))
        direct = 0.5 * ti.log((1.0 + x) / (1.0 - x)) / x
        series = 1.0 + x2 * (1.0 / 3.0 + x2 * (1.0 / 5.0 + x2 * (1.0 / 7.0 + x2 / 9.0)))
        ratio = ti.select(small, series, direct)
        return 0.5 * ti.log(b.determinant()) * identity() + ratio / m * dev

    @ti.func
    def exp_sym_2d(a):
        # exp(a) = e^m (cosh(r) I + sinh(r) / r dev a), r the half eigenvalue gap (as above).
        m = 0.5 * a.trace()
        dev = a - m * identity()
        r2 = 0.5 * (dev * dev).sum()
        small = r2 < _SERIES_BELOW
        r = ti.sqrt(ti.select(small, 0.25, r2))
        cosh = ti.select(small, 1.0 + r2 * (0.5 + r2 * (1.0 / 24 + r2 * (1.0 / 720 + r2 / 40320))),
                         0.5 * (ti.exp(r) + ti.exp(-r)))
        sinhc = ti.select(small,
                          1.0 + r2 * (1.0 / 6 + r2 * (1.0 / 120 + r2 * (1.0 / 5040 + r2 / 362880))),
                          0.5 * (ti.exp(r) - ti.exp(-r)) / r)
        return ti.exp(m) * (cosh * identity() + sinhc * dev)

    @ti.func
    def eigen_sym_3d(A):
        # Cyclic Jacobi (forward only): accurate at repeated eigenvalues, where Cardano's
        # formulas lose their eigenvectors; A = V diag(values) V^T.
        # A dynamic loop over sweeps: unrolled, the kernels took minutes to compile.
        V = identity()
        for _ in range(_JACOBI_SWEEPS):
            for p, q in ti.static(((0, 1), (0, 2), (1, 2))):
                apq = A[p, q]
                rotate = ti.abs(apq) > 1e-300
                theta = (A[q, q] - A[p, p]) / (2.0 * ti.select(rotate, apq, 1.0))
                t = ti.select(theta >= 0.0, 1.0, -1.0) / (
                    ti.abs(theta) + ti.sqrt(theta * theta + 1.0))
                t = ti.select(rotate, t, 0.0)
                c = 1.0 / ti.sqrt(t * t + 1.0)
                R = identity()
                R[p, p], R[q, q], R[p, q], R[q, p] = c, c, t * c, -t * c
                A = R.transpose() @ A @ R
                V = V @ R
        return vec([A[k, k] for k in ti.static(range(dim))]), V

    @ti.func
    def spectral(V, values):
        # V diag(values) V^T
        out = mat(0.0)
        for k in ti.static(range(dim)):
            column = vec([V[r, k] for r in ti.static(range(dim))])
            out += values[k] * column.outer_product(column)
        return out

    @ti.func
    def drucker_prager(trace, dev_squared, mu, lam, alpha):
        # Klar et al.'s return onto the cone: (trace, deviator scale) of the new log strain.
        # In tension (radius < 0) the deviator goes and the trace is capped: continuous, so
        # central differences across the switch stay right. The cone's tip, where a particle
        # at rest sits (b_e = I), has no derivative; there the trace and the deviator are
        # round-off, so the tip is blunted (see _TIP_STRAIN) to make gradients independent of it.
        radius = -alpha * (dim * lam + 2.0 * mu) / (2.0 * mu) * trace
        norm = ti.sqrt(dev_squared + _TIP_STRAIN * _TIP_STRAIN)
        return ti.min(trace, _TIP_STRAIN), ti.max(0.0, ti.min(1.0, radius / norm))

    @ti.func
    def sand_stress(b, mu, lam):
        # St. Venant-Kirchhoff in Hencky strain eps = log(b) / 2: tau = 2 mu eps + lam tr(eps) I.
        tau = mat(0.0)
        if ti.static(dim == 2):
            eps = 0.5 * log_spd_2d(b)
            tau = 2.0 * mu * eps + lam * eps.trace() * identity()
        else:
            values, V = eigen_sym_3d(b)
            eps = 0.5 * ti.log(values)
            tau = spectral(V, 2.0 * mu * eps + lam * eps.sum()) 
        return tau

    @ti.func
    def sand_return(b, mu, lam, alpha):
        # Drucker-Prager return mapping of the trial b_e = f b_e f^T (see model.py).
        new_b = mat(0.0)
        if ti.static(dim == 2):
            eps = 0.5 * log_spd_2d(b)
            trace = eps.trace()
            dev = eps - 0.5 * trace * identity()
            trace, scale = drucker_prager(trace, (dev * dev).sum(), mu, lam, alpha)
            new_b = exp_sym_2d(trace * identity() + 2.0 * scale * dev)
        else:
            values, V = eigen_sym_3d(b)
            eps = 0.5 * ti.log(values)
            trace = eps.sum()
            dev = eps - trace / 3.0
            trace, scale = drucker_prager(trace, dev.dot(dev), mu, lam, alpha)
            new_b = spectral(V, ti.exp(2.0 * trace / 3.0 + 2.0 * scale * dev))
        return new_b

    @ti.func
    def kirchhoff(F, material, E, nu, active):
        mu = E / (2.0 * (1.0 + nu))
        lam = E * nu / ((1.0 + nu) * (1.0 - 2.0 * nu))
        tau = ti.Matrix.zero(float, dim, dim)
        if ti.static(_LIQUID in materials):  # noqa: SIM102 (a static guard)
            if material == _LIQUID:
                J = F.determinant()
                tau = (lam + 2.0 * mu / dim) * (J - 1.0) * J * identity()
        if ti.static(_PLASTIC in materials):  # noqa: SIM102 (a static guard)
            if material == _PLASTIC:
                J = ti.sqrt(F.determinant())  # F holds b_e = F_e F_e^T
                tau = mu * (F - identity()) + lam * ti.log(J) * identity()
        if ti.static(_SAND in materials):  # noqa: SIM102 (a static guard)
            if material == _SAND:
                tau = sand_stress(F, mu, lam)  # F holds b_e
        if ti.static(_ELASTIC in materials):  # noqa: SIM102 (a static guard)
            if material == _ELASTIC:
                J = F.determinant()
                if ti.static(dim == 2):
                    tau = 2.0 * mu * (F - rotation_2d(F)) @ F.transpose() \
                        + lam * (J - 1.0) * J * identity()
                else:
                    tau = mu * (F @ F.transpose() - identity()) + lam * ti.log(J) * identity()
                tau += active
        return tau

    @ti.func
    def coulomb(vt, vn, friction):
        """Tangential velocity ``vt`` after Coulomb friction against normal speed ``vn < 0``.

        Written as stick-or-slide with a guarded denominator rather than
        ``vt * max(0, 1 + mu vn / |vt|)``: that form's derivative grows like 1 / |vt|^2 when
        the sliding speed vanishes, and overflowed to NaN in float32 training.
        """
        speed = ti.sqrt(vt.dot(vt) + 1e-20)
        stick = speed <= -friction * vn
        return ti.select(stick, 0.0, 1.0 + friction * vn / ti.select(stick, 1.0, speed)) * vt

    @ti.kernel
    def p2g(dt: float, inv_dx: float, n: ti.i32, p: flat, params: flat, action: arr2,
            grid: grid_arr):
        for t in range(p.shape[0] // width):  # world * n + particle
            world = t // n
            row, prow = t * width, t * pwidth
            x = load_vec(p, row, 0)
            v = load_vec(p, row, ox)
            C = load_mat(p, row, oc)
            F = load_mat(p, row, of)
            mass = params[prow]
            actuator = ti.cast(params[prow + 3], ti.i32)
            u = action[world, ti.max(actuator, 0)] * ti.cast(actuator >= 0, float)
            stretched = F @ load_vec(params, prow, 8)
            active = params[prow + 7] * u * stretched.outer_product(stretched)
            tau = kirchhoff(F, ti.cast(params[prow + 2], ti.i32), params[prow + 4],
                            params[prow + 5], active)
            affine = -dt * params[prow + 1] * 4.0 * inv_dx * inv_dx * tau + mass * C
            base, fx, w = weights(x, inv_dx)
            for offset in ti.static(ti.grouped(stencil)):
                dpos = (offset.cast(float) - fx) / inv_dx
                weight = 1.0
                for k in ti.static(range(dim)):
                    weight *= w[offset[k]][k]
                momentum = weight * (mass * v + affine @ dpos)
                grid[node_of(world, base + offset)] += node(
                    [momentum[k] for k in ti.static(range(dim))] + [weight * mass])

    @ti.kernel
    def grid_update(
        dt: float,
        dx: float,
        elapsed: float,
        gravity: float,
        ground_height: float,
        ground_friction: float,
        tool_shape: ti.i32,
        tool_size: vec,
        tool_friction: float,
        boundary: ti.i32,
        mass_floor: float,
        grid: grid_arr,
        tool: arr2,
        grid_out: grid_arr,
    ):
        for J in range(grid.shape[0]):  # world, node
            world = J // nodes
            I = ti.Vector([(J // size ** (dim - 1 - k)) % size for k in ti.static(range(dim))])
            g = grid[J]
            m = g[dim]
            # Most nodes are empty: they skip the boundary conditions (velocity 0).
            if m > mass_floor:
                v = vec([g[k] for k in ti.static(range(dim))]) / m
                v[1] += dt * gravity
                xi = I.cast(float) * dx
                # Ground: a node at or below it cannot move down; friction slows its sliding.
                if xi[1] <= ground_height and v[1] < 0.0:
                    vn = v[1]
                    v[1] = 0.0
                    v = coulomb(v, vn, ground_friction)
                # Tool: material inside it moves with it, or slides along its surface.
                if tool_shape >= 0:
                    center = vec([tool[world, k] + elapsed * tool[world, dim + k]
                                  for k in ti.static(range(dim))])
                    v_tool = vec([tool[world, dim + k] for k in ti.static(range(dim))])
                    d = xi - center
                    phi = 0.0
                    normal = vec(0.0)
                    if tool_shape == 0:
                        dist = ti.sqrt(d.dot(d) + 1e-20)
                        phi = dist - tool_size[0]
                        normal = d / dist
                    else:
                        q = ti.abs(d) - tool_size
                        outside = ti.max(q, 0.0)
                        phi = ti.sqrt(outside.dot(outside)) + ti.min(q.max(), 0.0)
                        axis = 0
                        for k in ti.static(range(1, dim)):
                            if q[k] > q[axis]:
                                axis = k
                        for k in ti.static(range(dim)):
                            normal[k] = ti.select(k == axis, ti.select(d[k] < 0.0, -1.0, 1.0), 0.0)
                    if phi < 0.0:
                        rel = v - v_tool
                        vn = rel.dot(normal)
                        if vn < 0.0:
                            rel = coulomb(rel - vn * normal, vn, tool_friction)
                        v = v_tool + rel
                # Domain walls: slip, no velocity out of the domain.
                for k in ti.static(range(dim)):
                    if (I[k] < boundary and v[k] < 0.0) or (I[k] > size - boundary and v[k] > 0.0):
                        v[k] = 0.0
                grid_out[J] = node([v[k] for k in ti.static(range(dim))] + [m])
            else:
                grid_out[J] = node([0.0] * dim + [m])

    @ti.kernel
    def g2p(dt: float, inv_dx: float, n: ti.i32, p: flat, params: flat, grid: grid_arr,
            p_out: flat):
        for t in range(p.shape[0] // width):  # world * n + particle
            world = t // n
            row, prow = t * width, t * pwidth
            x = load_vec(p, row, 0)
            F = load_mat(p, row, of)
            base, fx, w = weights(x, inv_dx)
            new_v = vec(0.0)
            new_C = mat(0.0)
            for offset in ti.static(ti.grouped(stencil)):
                dpos = (offset.cast(float) - fx) / inv_dx
                weight = 1.0
                for k in ti.static(range(dim)):
                    weight *= w[offset[k]][k]
                g = grid[node_of(world, base + offset)]
                gv = vec([g[k] for k in ti.static(range(dim))])
                new_v += weight * gv
                new_C += 4.0 * inv_dx * inv_dx * weight * gv.outer_product(dpos)
            f = identity() + dt * new_C
            material = ti.cast(params[prow + 2], ti.i32)
            new_F = f @ F
            if ti.static(_LIQUID in materials):  # noqa: SIM102 (a static guard)
                if material == _LIQUID:
                    new_F = ti.pow(new_F.determinant(), 1.0 / dim) * identity()
            if ti.static(_PLASTIC in materials):  # noqa: SIM102 (a static guard)
                if material == _PLASTIC:
                    b = f @ F @ f.transpose()
                    mu = params[prow + 4] / (2.0 * (1.0 + params[prow + 5]))
                    mean = b.trace() / dim
                    dev = b - mean * identity()
                    # Radial return: ||dev tau|| = mu ||dev b|| at most sqrt(2/3) * yield.
                    norm = ti.sqrt((dev * dev).sum() + 1e-30)
                    radius = ti.sqrt(2.0 / 3.0) * params[prow + 6] / mu
                    new_F = ti.min(1.0, radius / norm) * dev + mean * identity()
            if ti.static(_SAND in materials):  # noqa: SIM102 (a static guard)
                if material == _SAND:
                    E, nu = params[prow + 4], params[prow + 5]
                    mu, lam = E / (2.0 * (1.0 + nu)), E * nu / ((1.0 + nu) * (1.0 - 2.0 * nu))
                    new_F = sand_return(f @ F @ f.transpose(), mu, lam, params[prow + 6])
            new_x = x + dt * new_v
            for k in ti.static(range(dim)):
                p_out[row + k] = new_x[k]
                p_out[row + ox + k] = new_v[k]
            for r in ti.static(range(dim)):
                for c in ti.static(range(dim)):
                    p_out[row + oc + r * dim + c] = new_C[r, c]
                    p_out[row + of + r * dim + c] = new_F[r, c]

    return p2g, grid_update, g2p, vec


def _materials(model) -> frozenset:
    """The material codes of the model's particles (fixed by the model, never by params)."""
    return frozenset(int(m) for m in model.particle_material.unique())


def build_step(backend: Backend, model, substeps: int, batch_size: int = 1) -> KernelStep:
    """``substeps`` substeps of ``batch_size`` worlds as one step reading ``p`` (particle
    state), ``params``, ``action`` and ``tool`` (layouts above), writing ``p{substeps}``; each
    kernel is one launch over every world, and the grids are recomputed in backward."""
    dim, size = model.dim, model.grid_size
    p2g, grid_update, g2p, vec = _kernels(dim, backend.torch_dtype == torch.float64, size,
                                          _materials(model))
    n, width = model.particle_count, 2 * dim + 2 * dim * dim
    c = boundary_constants(model, single_precision=backend.torch_dtype == torch.float32)
    grid_shape = (batch_size * size**dim, dim + 1)
    grid_spec = OutputSpec(grid_shape)
    velocity_spec = OutputSpec(grid_shape, accumulates=False)
    particle_spec = OutputSpec((batch_size, n, width), accumulates=False)
    launches = []
    for s in range(substeps):
        p_in, p_out = ("p" if s == 0 else f"p{s}"), f"p{s + 1}"
        launches.append(KernelLaunch(
            backend, p2g, n, (model.dt, 1.0 / model.dx, n),
            ((p_in, None), ("params", None), ("action", None)),
            ((f"grid{s}", grid_spec),), flat=frozenset((p_in, "params")),
        ))
        launches.append(KernelLaunch(
            backend, grid_update, size**dim,
            (model.dt, model.dx, s * model.dt, model.gravity, c.ground_height,
             c.ground_friction, c.tool_shape, vec(c.tool_size), c.tool_friction,
             BOUNDARY_CELLS, c.mass_floor),
            ((f"grid{s}", None), ("tool", None)),
            ((f"velocity{s}", velocity_spec),),
        ))
        launches.append(KernelLaunch(
            backend, g2p, n, (model.dt, 1.0 / model.dx, n),
            ((p_in, None), ("params", None), (f"velocity{s}", None)),
            ((p_out, particle_spec),), flat=frozenset((p_in, "params", p_out)),
        ))
    return KernelStep(("p", "params", "action", "tool"), tuple(launches), (f"p{substeps}",),
                      recompute=True)


def particle_to_grid(backend: Backend, model, p: torch.Tensor, params: torch.Tensor,
                     action: torch.Tensor) -> torch.Tensor:
    """The grids (momentum, mass) after ``p2g`` of packed particle states ``[B, n, W]``,
    ``[B] + [G]*d + [d + 1]`` (diagnostics)."""
    backend.ensure_initialized()
    dim, size = model.dim, model.grid_size
    p2g = _kernels(dim, backend.torch_dtype == torch.float64, size, _materials(model))[0]
    grid = torch.zeros((p.shape[0] * size**dim, dim + 1), dtype=p.dtype)
    p2g(model.dt, 1.0 / model.dx, model.particle_count, p.contiguous().view(-1),
        params.contiguous().view(-1), action.contiguous(), grid)
    return grid.view((p.shape[0],) + (size,) * dim + (dim + 1,))
