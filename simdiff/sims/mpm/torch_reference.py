"""A plain vectorized PyTorch implementation of the MLS-MPM substep.

It is the oracle the Taichi kernels are tested against and the baseline ``simdiff bench mpm``
measures them against: the physics of ``model.py`` with ordinary torch operations (the 3^d
stencil as a loop over offsets, ``index_add`` for the scatter), differentiated by torch, which
keeps every grid for backward.
"""

from __future__ import annotations

import itertools
import math

import torch

from simdiff.sims.mpm.model import BOUNDARY_CELLS, Material, Model, ToolShape

__all__ = ["sand_hencky", "sand_return", "torch_substep"]

_STICKY = 1e20
_SERIES_BELOW = 1e-3
_TIP_STRAIN = 1e-5  # the blunted tip of the cone, as in taichi.py


def _log_spd_2d(b: torch.Tensor) -> torch.Tensor:
    """Matrix logarithm of SPD 2x2 matrices [n, 2, 2] in closed form (see ``model.py``)."""
    eye = torch.eye(2, dtype=b.dtype)
    m = b.diagonal(dim1=1, dim2=2).sum(1) / 2
    dev = b - m[:, None, None] * eye
    x2 = (dev * dev).sum((1, 2)) / 2 / (m * m)
    small = x2 < _SERIES_BELOW
    x = torch.where(small, torch.full_like(x2, 0.25), x2).sqrt()
    series = 1 + x2 * (1 / 3 + x2 * (1 / 5 + x2 * (1 / 7 + x2 / 9)))
    ratio = torch.where(small, series, torch.atanh(x) / x)
    return (torch.linalg.det(b).log() / 2)[:, None, None] * eye + (ratio / m)[:, None, None] * dev


def _exp_sym_2d(a: torch.Tensor) -> torch.Tensor:
    """Matrix exponential of symmetric 2x2 matrices [n, 2, 2] in closed form."""
    eye = torch.eye(2, dtype=a.dtype)
    m = a.diagonal(dim1=1, dim2=2).sum(1) / 2
    dev = a - m[:, None, None] * eye
    r2 = (dev * dev).sum((1, 2)) / 2
    small = r2 < _SERIES_BELOW
    r = torch.where(small, torch.full_like(r2, 0.25), r2).sqrt()
    cosh = torch.where(small, 1 + r2 * (1 / 2 + r2 * (1 / 24 + r2 * (1 / 720 + r2 / 40320))),
                       torch.cosh(r))
    sinhc = torch.where(small, 1 + r2 * (1 / 6 + r2 * (1 / 120 + r2 * (1 / 5040 + r2 / 362880))),
                        torch.sinh(r) / r)
    return m.exp()[:, None, None] * (cosh[:, None, None] * eye + sinhc[:, None, None] * dev)


def sand_hencky(b: torch.Tensor) -> torch.Tensor:
    """Hencky strain ``log(b) / 2`` of elastic left Cauchy-Green tensors [n, d, d]: closed form
    in 2D (differentiable at repeated eigenvalues), ``eigh`` in 3D (forward only)."""
    if b.shape[-1] == 2:
        return _log_spd_2d(b) / 2
    values, V = torch.linalg.eigh(b)
    return V @ torch.diag_embed(values.log() / 2) @ V.transpose(1, 2)


def sand_return(b: torch.Tensor, mu: torch.Tensor, lam: torch.Tensor,
                alpha: torch.Tensor) -> torch.Tensor:
    """Drucker-Prager return mapping (Klar et al. 2016) of trial ``b_e`` [n, d, d]."""
    d = b.shape[-1]
    eye = torch.eye(d, dtype=b.dtype)
    if d == 2:
        eps = sand_hencky(b)
        V = None
    else:
        values, V = torch.linalg.eigh(b)
        eps = torch.diag_embed(values.log() / 2)  # in the eigenbasis
    trace = eps.diagonal(dim1=1, dim2=2).sum(1)
    dev = eps - (trace / d)[:, None, None] * eye
    norm = (dev * dev).sum((1, 2)).add(_TIP_STRAIN**2).sqrt()
    radius = -alpha * (d * lam + 2 * mu) / (2 * mu) * trace
    scale = (radius / norm).clamp(min=0, max=1)
    trace = trace.clamp(max=_TIP_STRAIN)
    new = 2 * ((trace / d)[:, None, None] * eye + scale[:, None, None] * dev)
    if d == 2:
        return _exp_sym_2d(new)
    return V @ torch.diag_embed(new.diagonal(dim1=1, dim2=2).exp()) @ V.transpose(1, 2)


def _stress(model: Model, F: torch.Tensor, params: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    d = model.dim
    eye = torch.eye(d, dtype=F.dtype)
    material = params[:, 2].round().long()
    E, nu = params[:, 4], params[:, 5]
    mu, lam = E / (2 * (1 + nu)), E * nu / ((1 + nu) * (1 - 2 * nu))
    J = torch.linalg.det(F)
    liquid = ((lam + 2 * mu / d) * (J - 1) * J)[:, None, None] * eye
    plastic_J = J.clamp(min=1e-30).sqrt()
    plastic = mu[:, None, None] * (F - eye) + (lam * plastic_J.log())[:, None, None] * eye
    if d == 2:
        a, b = F[:, 0, 0] + F[:, 1, 1], F[:, 1, 0] - F[:, 0, 1]
        r = (a * a + b * b).sqrt()
        R = torch.stack([torch.stack([a / r, -b / r], 1), torch.stack([b / r, a / r], 1)], 1)
        elastic = 2 * mu[:, None, None] * (F - R) @ F.transpose(1, 2) + (
            lam * (J - 1) * J)[:, None, None] * eye
    else:
        elastic = mu[:, None, None] * (F @ F.transpose(1, 2) - eye) + (
            lam * J.clamp(min=1e-30).log())[:, None, None] * eye
    sand = params[:, 2].round().long() == Material.SAND
    # Only sand particles hold b_e: elastic ones may hold an F whose F F^T is not SPD-safe.
    b = torch.where(sand[:, None, None], F, eye.expand_as(F))
    eps = sand_hencky(b)
    sand_tau = 2 * mu[:, None, None] * eps + (
        lam * eps.diagonal(dim1=1, dim2=2).sum(1))[:, None, None] * eye
    stretched = (F @ params[:, 8:8 + d, None])[..., 0]
    elastic = elastic + (params[:, 7] * u)[:, None, None] * (
        stretched[:, :, None] * stretched[:, None, :])
    m = material[:, None, None]
    return torch.where(m == Material.LIQUID, liquid, torch.where(
        m == Material.PLASTIC, plastic, torch.where(m == Material.SAND, sand_tau, elastic)))


def _stencil(model: Model, x: torch.Tensor, world: torch.Tensor):
    """Per offset: flat node index (over every world's grid), weight and ``x_i - x_p`` of every
    particle; ``world`` is each particle's world index."""
    d, inv_dx = model.dim, 1.0 / model.dx
    base = (x * inv_dx - 0.5).floor()
    fx = x * inv_dx - base
    w = [0.5 * (1.5 - fx) ** 2, 0.75 - (fx - 1) ** 2, 0.5 * (fx - 0.5) ** 2]
    base = base.long()
    size = model.grid_size
    for offset in itertools.product(range(3), repeat=d):
        off = torch.tensor(offset, dtype=x.dtype)
        weight = math.prod(w[offset[k]][:, k] for k in range(d))
        node = base + torch.tensor(offset)
        flat = sum(node[:, k] * size ** (d - 1 - k) for k in range(d)) + world * size**d
        yield flat, weight, (off - fx) * model.dx


def _grid_update(model: Model, momentum, mass, tool: torch.Tensor, elapsed: float):
    """Node velocities of every world's grid (nodes world-major); ``tool`` is ``[B, 2 d]``."""
    d, size = model.dim, model.grid_size
    has_mass = mass > 0
    v = momentum / torch.where(has_mass, mass, torch.ones_like(mass))[:, None]
    v = v + model.dt * model.gravity * torch.eye(d, dtype=v.dtype)[1]
    idx = torch.stack(torch.meshgrid(*[torch.arange(size)] * d, indexing="ij"), -1).reshape(-1, d)
    idx = idx.repeat(tool.shape[0], 1)
    tool = tool.repeat_interleave(size**d, 0)  # each node's world's tool
    xi = idx.to(v.dtype) * model.dx

    def friction(vel, vn, mu):
        speed = (vel * vel).sum(1, keepdim=True).add(1e-20).sqrt()
        stick = speed <= -mu * vn
        return vel * torch.where(stick, 0.0, 1 + mu * vn / torch.where(stick, 1.0, speed))

    if model.ground is not None:
        mu = model.ground.friction
        mu = _STICKY if math.isinf(mu) else mu
        hit = ((xi[:, 1] <= model.ground_height) & (v[:, 1] < 0))[:, None]
        up = torch.eye(d, dtype=v.dtype)[1]
        vn = v[:, 1:2]
        v = torch.where(hit, friction(v * (1 - up), vn, mu), v)
    if model.tool is not None:
        tool_cfg = model.tool
        center = tool[:, :d] + elapsed * tool[:, d:]
        v_tool = tool[:, d:]
        diff = xi - center
        if tool_cfg.shape is ToolShape.SPHERE:
            dist = (diff * diff).sum(1, keepdim=True).add(1e-20).sqrt()
            phi = dist[:, 0] - tool_cfg.size[0]
            normal = diff / dist
        else:
            q = diff.abs() - torch.tensor(tool_cfg.size, dtype=v.dtype)
            phi = q.clamp(min=0).norm(dim=1) + q.max(1).values.clamp(max=0)
            axis = torch.nn.functional.one_hot(q.argmax(1), d).to(v.dtype)
            normal = axis * torch.where(diff < 0, -1.0, 1.0).to(v.dtype)
        rel = v - v_tool
        vn = (rel * normal).sum(1, keepdim=True)
        mu = _STICKY if math.isinf(tool_cfg.friction) else tool_cfg.friction
        slid = torch.where(vn < 0, friction(rel - vn * normal, vn, mu), rel)
        v = torch.where((phi < 0)[:, None], v_tool + slid, v)
    low = (idx < BOUNDARY_CELLS) & (v < 0)
    high = (idx > size - BOUNDARY_CELLS) & (v > 0)
    v = torch.where(low | high, torch.zeros_like(v), v)
    return torch.where(has_mass[:, None], v, torch.zeros_like(v))


def torch_substep(
    model: Model,
    p: torch.Tensor,
    params: torch.Tensor,
    action: torch.Tensor,
    tool: torch.Tensor,
    elapsed: float = 0.0,
) -> torch.Tensor:
    """One substep of every world on the packed particle states (layouts as in ``taichi.py``:
    ``p [B, n, W]``, ``params [B, n, K]``, ``action [B, A]``, ``tool [B, 2 d]``). The worlds'
    particles are one list and their grids one array, world-major."""
    batch, count = p.shape[0], p.shape[1]
    p, params = p.reshape(batch * count, -1), params.reshape(batch * count, -1)
    world = torch.arange(batch).repeat_interleave(count)
    d, n = model.dim, p.shape[0]
    dt, inv_dx = model.dt, 1.0 / model.dx
    x, v = p[:, :d], p[:, d:2 * d]
    C = p[:, 2 * d:2 * d + d * d].reshape(n, d, d)
    F = p[:, 2 * d + d * d:].reshape(n, d, d)
    mass = params[:, 0]
    actuator = params[:, 3].round().long()
    u = action[world, actuator.clamp(min=0)] * (actuator >= 0).to(p.dtype)
    tau = _stress(model, F, params, u)
    affine = -dt * params[:, 1, None, None] * 4 * inv_dx**2 * tau + mass[:, None, None] * C
    nodes = batch * model.grid_size**d
    momentum = p.new_zeros(nodes, d)
    grid_mass = p.new_zeros(nodes)
    stencil = list(_stencil(model, x, world))
    for flat, weight, dpos in stencil:
        # In place: autograd keeps no copy of the grid per offset.
        contrib = weight[:, None] * (mass[:, None] * v + (affine @ dpos[:, :, None])[..., 0])
        momentum.index_add_(0, flat, contrib)
        grid_mass.index_add_(0, flat, weight * mass)
    gv = _grid_update(model, momentum, grid_mass, tool, elapsed)
    new_v = p.new_zeros(n, d)
    new_C = p.new_zeros(n, d, d)
    for flat, weight, dpos in stencil:
        g = gv[flat]
        new_v = new_v + weight[:, None] * g
        new_C = new_C + 4 * inv_dx**2 * weight[:, None, None] * g[:, :, None] * dpos[:, None, :]
    eye = torch.eye(d, dtype=p.dtype)
    f = eye + dt * new_C
    material = params[:, 2].round().long()[:, None, None]
    elastic = f @ F
    liquid = torch.linalg.det(elastic).clamp(min=1e-30).pow(1.0 / d)[:, None, None] * eye
    b = f @ F @ f.transpose(1, 2)
    mean = (b.diagonal(dim1=1, dim2=2).sum(1) / d)[:, None, None]
    dev = b - mean * eye
    norm = (dev * dev).sum((1, 2)).add(1e-30).sqrt()
    mu = params[:, 4] / (2 * (1 + params[:, 5]))
    radius = math.sqrt(2.0 / 3.0) * params[:, 6] / mu
    plastic = (radius / norm).clamp(max=1)[:, None, None] * dev + mean * eye
    is_sand = material == Material.SAND
    lam = params[:, 4] * params[:, 5] / ((1 + params[:, 5]) * (1 - 2 * params[:, 5]))
    sand = sand_return(torch.where(is_sand, b, eye.expand_as(b)), mu, lam, params[:, 6])
    new_F = torch.where(material == Material.LIQUID, liquid,
                        torch.where(material == Material.PLASTIC, plastic,
                                    torch.where(is_sand, sand, elastic)))
    out = torch.cat([x + dt * new_v, new_v, new_C.reshape(n, -1), new_F.reshape(n, -1)], 1)
    return out.reshape(batch, count, -1)
