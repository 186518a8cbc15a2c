"""A plain vectorized PyTorch implementation of the mass-spring step, for ``B`` worlds.

It is the oracle the kernel backends are tested against and the baseline that
``simdiff bench mass_spring`` measures them against: the same physics as ``model.py`` written
with ordinary torch operations (``index_add`` for spring forces), differentiated by torch.
"""

from __future__ import annotations

import math

import torch

from simdiff.sims.mass_spring.model import Model
from simdiff.sims.mass_spring.state import Params

__all__ = ["torch_step"]


def torch_step(
    model: Model,
    x: torch.Tensor,
    v: torch.Tensor,
    action: torch.Tensor,
    params: Params,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the model in plain torch.

    Args:
        model: The model (springs, gravity, ground, drag, time step).
        x, v: Positions and velocities, ``[B, n, dim]``.
        action: ``[B, action_dim]`` (``[B, 1]`` of zeros for a robot without actuators).
        params: Spring parameters and inverse masses, each shared or per world.

    Returns:
        The next positions and velocities, ``[B, n, dim]``.
    """
    p = params.per_world(x.shape[0])
    idx = model.spring_indices.to(x.device)
    a, b = idx[:, 0], idx[:, 1]
    stiffness, rest, damping, amp = p.spring_params.unbind(2)  # each [B, S]
    # Passive springs read action 0 with amplitude 0, as in the kernels.
    act = action[:, model.spring_actuator.clamp(min=0).to(x.device)]
    d = x[:, b] - x[:, a]
    length = torch.sqrt((d * d).sum(2) + 1e-12)
    direction = d / length[..., None]
    target = rest * (1 + amp * act)
    pull = stiffness * (length - target) + damping * ((v[:, b] - v[:, a]) * direction).sum(2)
    f = pull[..., None] * direction
    force = torch.zeros_like(x).index_add(1, a, f).index_add(1, b, -f)
    up = torch.zeros(x.shape[2], dtype=x.dtype, device=x.device)
    up[1] = 1.0
    v_new = v * math.exp(-model.drag * model.dt) + model.dt * (
        force * p.particle_inv_mass[..., None] + model.gravity * up
    )
    x_new = x + model.dt * v_new
    ground = model.ground
    if ground is None:
        return x_new, v_new
    friction = 1e20 if math.isinf(ground.friction) else ground.friction
    vn = v_new[..., 1]
    hit = (x_new[..., 1] < ground.height) & (vn < 0)
    safe_vn = torch.where(hit, vn, -torch.ones_like(vn))
    toi = torch.clamp((ground.height - x[..., 1]) / safe_vn, 0.0, model.dt)
    vt = v_new - vn[..., None] * up
    vt_len = torch.sqrt((vt * vt).sum(2) + 1e-12)
    v_after = vt * torch.clamp(1 + friction * vn / vt_len, min=0.0)[..., None]
    x_hit = x + toi[..., None] * v_new + (model.dt - toi)[..., None] * v_after
    return (torch.where(hit[..., None], x_hit, x_new),
            torch.where(hit[..., None], v_after, v_new))
