"""Taichi kernels of the mass-spring step (see ``model.py`` for the physics), for ``B`` worlds.

One kernel, ``step``, of two loops over every world (serialized for small systems,
:data:`SERIAL_ITERATIONS`): one over ``ti.ndrange(B, spring_count)`` (springs scatter their
forces into a zeroed force buffer with atomic adds), then one over
``ti.ndrange(B, particle_count)`` (integration): one launch per step and one per adjoint, not
two of each (a launch costs about 50 us on the Python side, more than the walker's kernels
compute). Unlike the Warp kernel's per-particle gather, no loop body carries a local across
iterations: Taichi's autodiff stack gave wrong position gradients for the gather form (checked
against the torch reference).
"""

import functools

import taichi as ti
import torch

from simdiff.backend import Backend
from simdiff.bridge import KernelLaunch, KernelStep, OutputSpec

__all__ = ["build_step"]


SERIAL_ITERATIONS = 4096
"""Loops of at most this many iterations (all worlds) run serialized on the calling thread.

Taichi hands a parallel loop to its thread pool and waits for every worker: for a small
robot's 20-40 iterations that wait is the launch (1.47x on a 40-element loop on an idle host;
on 2 cores shared by other jobs, 3.3 ms per launch, each worker waiting for a time slice)."""


@functools.cache
def _kernels(dim: int, double: bool, serial: bool = False):
    del double  # keys the cache: Taichi is re-initialized when the precision changes
    vec = ti.types.vector(dim, float)
    arr_vec = ti.types.ndarray(dtype=vec, ndim=2)  # [B, n] of vectors
    arr1 = ti.types.ndarray(ndim=1)
    arr2 = ti.types.ndarray(ndim=2)
    arr3 = ti.types.ndarray(ndim=3)

    @ti.func
    def spring_force(b, s, spring_indices: ti.template(), spring_actuator: ti.template(),
                     x: ti.template(), v: ti.template(), action: ti.template(),
                     spring_params: ti.template(), force: ti.template()):
        a = spring_indices[s, 0]
        c = spring_indices[s, 1]
        d = x[b, c] - x[b, a]
        length = ti.sqrt(d.dot(d) + 1e-12)
        direction = d / length
        target = spring_params[b, s, 1] * (
            1.0 + spring_params[b, s, 3] * action[b, spring_actuator[s]])
        pull = spring_params[b, s, 0] * (length - target)
        pull += spring_params[b, s, 2] * (v[b, c] - v[b, a]).dot(direction)
        force[b, a] += pull * direction
        force[b, c] -= pull * direction

    @ti.func
    def advance(b, i, up, dt, gravity, drag_factor, ground_height, friction, has_ground,
                x: ti.template(), v: ti.template(), force: ti.template(),
                inv_mass: ti.template(), x_out: ti.template(), v_out: ti.template()):
        xi = x[b, i]
        v_free = v[b, i] * drag_factor + dt * (force[b, i] * inv_mass[b, i] + gravity * up)
        x_free = xi + dt * v_free
        vn = v_free.dot(up)
        hit = has_ground != 0 and x_free.dot(up) < ground_height and vn < 0.0
        safe_vn = ti.select(hit, vn, -1.0)
        toi = ti.math.clamp((ground_height - xi.dot(up)) / safe_vn, 0.0, dt)
        vt = v_free - vn * up
        vt_len = ti.sqrt(vt.dot(vt) + 1e-12)
        v_hit = vt * ti.max(0.0, 1.0 + friction * vn / vt_len)
        x_hit = xi + toi * v_free + (dt - toi) * v_hit
        x_out[b, i] = ti.select(hit, x_hit, x_free)
        v_out[b, i] = ti.select(hit, v_hit, v_free)

    @ti.kernel
    def step(
        spring_indices: arr2,
        spring_actuator: arr1,
        up: vec,
        dt: float,
        gravity: float,
        drag_factor: float,
        ground_height: float,
        friction: float,
        has_ground: ti.i32,
        x: arr_vec,
        v: arr_vec,
        action: arr2,
        spring_params: arr3,
        inv_mass: arr2,
        force: arr_vec,
        x_out: arr_vec,
        v_out: arr_vec,
    ):
        # Two loops in one launch (Taichi runs them in order, and their adjoints in reverse):
        # the springs scatter into the zeroed force buffer, then the particles move.
        ti.loop_config(serialize=serial)
        for b, s in ti.ndrange(x.shape[0], spring_indices.shape[0]):
            spring_force(b, s, spring_indices, spring_actuator, x, v, action, spring_params,
                         force)
        ti.loop_config(serialize=serial)
        for b, i in ti.ndrange(x.shape[0], x.shape[1]):
            advance(b, i, up, dt, gravity, drag_factor, ground_height, friction, has_ground, x,
                    v, force, inv_mass, x_out, v_out)

    return step, vec


def build_step(backend: Backend, dim: int, batch_size: int, resident: dict,
               scalars: tuple) -> KernelStep:
    """The step's launch for ``batch_size`` worlds; ``resident`` holds the model's index
    tensors on the device (shared by every world)."""
    n = resident["particle_count"]
    iterations = batch_size * max(n, int(resident["spring_indices"].shape[0]))
    step, vec = _kernels(dim, backend.torch_dtype == torch.float64,
                         iterations <= SERIAL_ITERATIONS)
    up = vec([1.0 if k == 1 else 0.0 for k in range(dim)])
    launch = KernelLaunch(
        backend, step, n,
        (resident["spring_indices"], resident["spring_actuator"], up, *scalars),
        (("x", None), ("v", None), ("action", None), ("spring_params", None),
         ("particle_inv_mass", None)),
        (("force", OutputSpec((batch_size, n, dim))),
         ("x_out", OutputSpec((batch_size, n, dim), accumulates=False)),
         ("v_out", OutputSpec((batch_size, n, dim), accumulates=False))),
    )
    return KernelStep(("x", "v", "action", "spring_params", "particle_inv_mass"),
                      (launch,), ("x_out", "v_out"))
