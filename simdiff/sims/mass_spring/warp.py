"""Warp kernels of the mass-spring step (see ``model.py`` for the physics), for ``B`` worlds.

Two launches, each over ``dim=(B, particle_count)`` threads (``b, i = wp.tid()``: world,
particle): ``spring_forces`` (one thread per particle gathers the forces of its incident
springs from a CSR adjacency built once per model and shared by every world: no atomics in
forward; the adjoint scatters spring-parameter gradients with atomic adds) and ``integrate``.
They are separate kernels because Warp's adjoint does not replay the loop-carried force sum of
a dynamic loop: any use of the sum later in the same kernel saw its initial value (checked
against the torch reference).
"""

import functools

import torch
import warp as wp

from simdiff.backend import Backend
from simdiff.bridge import KernelLaunch, KernelStep, OutputSpec

__all__ = ["build_step"]


@functools.cache
def _kernels(dim: int, double: bool):
    scalar = wp.float64 if double else wp.float32
    vec = wp.types.vector(dim, scalar)

    @wp.kernel(enable_backward=True, module="unique")
    def spring_forces(
        adjacency_offsets: wp.array(dtype=wp.int32),
        adjacency: wp.array2d(dtype=wp.int32),
        spring_actuator: wp.array(dtype=wp.int32),
        x: wp.array2d(dtype=vec),
        v: wp.array2d(dtype=vec),
        action: wp.array2d(dtype=scalar),
        spring_params: wp.array3d(dtype=scalar),
        force_out: wp.array2d(dtype=vec),
    ):
        b, i = wp.tid()
        xi = x[b, i]
        vi = v[b, i]
        one = scalar(1.0)
        force = xi * scalar(0.0)
        for e in range(adjacency_offsets[i], adjacency_offsets[i + 1]):
            s = adjacency[e, 0]
            j = adjacency[e, 1]
            d = x[b, j] - xi
            length = wp.sqrt(wp.dot(d, d) + scalar(1e-12))
            direction = d / length
            target = spring_params[b, s, 1] * (
                one + spring_params[b, s, 3] * action[b, spring_actuator[s]])
            pull = spring_params[b, s, 0] * (length - target)
            pull = pull + spring_params[b, s, 2] * wp.dot(v[b, j] - vi, direction)
            force = force + pull * direction
        force_out[b, i] = force

    @wp.kernel(enable_backward=True, module="unique")
    def integrate(
        up: vec,
        dt: scalar,
        gravity: scalar,
        drag_factor: scalar,
        ground_height: scalar,
        friction: scalar,
        has_ground: wp.int32,
        x: wp.array2d(dtype=vec),
        v: wp.array2d(dtype=vec),
        force: wp.array2d(dtype=vec),
        inv_mass: wp.array2d(dtype=scalar),
        x_out: wp.array2d(dtype=vec),
        v_out: wp.array2d(dtype=vec),
    ):
        b, i = wp.tid()
        zero = scalar(0.0)
        one = scalar(1.0)
        xi = x[b, i]
        v_free = v[b, i] * drag_factor + dt * (force[b, i] * inv_mass[b, i] + gravity * up)
        x_free = xi + dt * v_free
        vn = wp.dot(v_free, up)
        hit = has_ground != 0 and wp.dot(x_free, up) < ground_height and vn < zero
        safe_vn = wp.where(hit, vn, -one)
        toi = wp.clamp((ground_height - wp.dot(xi, up)) / safe_vn, zero, dt)
        vt = v_free - vn * up
        vt_len = wp.sqrt(wp.dot(vt, vt) + scalar(1e-12))
        v_hit = vt * wp.max(zero, one + friction * vn / vt_len)
        x_hit = xi + toi * v_free + (dt - toi) * v_hit
        x_out[b, i] = wp.where(hit, x_hit, x_free)
        v_out[b, i] = wp.where(hit, v_hit, v_free)

    return spring_forces, integrate, vec, scalar


def _csr_adjacency(spring_indices: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per particle, the (spring, other end) pairs of its incident springs, and the offsets."""
    idx = spring_indices.cpu().long()
    springs = torch.arange(idx.shape[0])
    owner = torch.cat([idx[:, 0], idx[:, 1]])
    entries = torch.stack([torch.cat([springs, springs]), torch.cat([idx[:, 1], idx[:, 0]])], 1)
    adjacency = entries[torch.argsort(owner, stable=True)].to(torch.int32).contiguous()
    offsets = torch.zeros(n + 1, dtype=torch.int32)
    offsets[1:] = torch.cumsum(torch.bincount(owner, minlength=n), 0)
    return offsets, adjacency


def build_step(backend: Backend, dim: int, batch_size: int, resident: dict,
               scalars: tuple) -> KernelStep:
    """The step's launches for ``batch_size`` worlds; ``resident`` holds the model's index
    tensors on the device (shared by every world)."""
    spring_forces, integrate, vec, scalar = _kernels(dim, backend.torch_dtype == torch.float64)
    n = resident["particle_count"]
    offsets, adjacency = _csr_adjacency(resident["spring_indices"], n)
    # Kept in ``resident`` so the tensors outlive the Warp views of them.
    resident["adjacency_offsets"] = offsets.to(backend.torch_device)
    resident["adjacency"] = adjacency.to(backend.torch_device)
    view = {name: wp.from_torch(resident[name]) for name in
            ("adjacency_offsets", "adjacency", "spring_actuator")}
    up = vec(*[1.0 if k == 1 else 0.0 for k in range(dim)])
    threads = (batch_size, n)
    per_particle = OutputSpec((batch_size, n, dim), vec, accumulates=False)  # all written
    forces = KernelLaunch(
        backend, spring_forces, threads,
        (view["adjacency_offsets"], view["adjacency"], view["spring_actuator"]),
        (("x", vec), ("v", vec), ("action", scalar), ("spring_params", scalar)),
        (("force", per_particle),),
    )
    advance = KernelLaunch(
        backend, integrate, threads,
        (up, *[scalar(s) for s in scalars[:-1]], int(scalars[-1])),
        (("x", vec), ("v", vec), ("force", vec), ("particle_inv_mass", scalar)),
        (("x_out", per_particle), ("v_out", per_particle)),
    )
    return KernelStep(("x", "v", "action", "spring_params", "particle_inv_mass"),
                      (forces, advance), ("x_out", "v_out"))
