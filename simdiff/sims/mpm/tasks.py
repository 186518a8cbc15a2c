"""Task losses and inverse problems of MPM scenes.

* Locomotion: move the center of mass to the right.
* Throw to target: the launch velocity of a water blob whose center of mass reaches a target.
* Material identification: Young's modulus, or a sand's friction angle, from an observed
  trajectory.
* Piles: the flank angle of a granular pile (a measurement, not differentiable).
* Shaping: tool velocities that press a plasticine block into a target shape (soft occupancy
  loss, scored by the intersection over union of the occupied cells).

Each inverse problem is a ``design`` (a torch module holding what is optimized) and an
``objective(sim, design, record_every=0) -> (loss, rollout, metrics)``. Losses are computed per
world (``[B]``) and reduced with ``rollout.mean``; metrics are per world and mean/min/max
(``simdiff.rollout.world_metrics``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from simdiff.rollout import Rollout, rollout, world_metrics
from simdiff.sims.mpm.model import Material

__all__ = [
    "FrictionAngleFit",
    "LaunchVelocity",
    "ModulusFit",
    "ToolPath",
    "distance_travelled",
    "identify_friction_objective",
    "identify_modulus_objective",
    "locomotion_loss",
    "locomotion_metrics",
    "observe_positions",
    "occupancy",
    "pile_angle",
    "shape_objective",
    "throw_objective",
]


def _com(result: Rollout, state) -> torch.Tensor:
    return result.simulator.center_of_mass(state)


def distance_travelled(result: Rollout) -> torch.Tensor:
    """Displacement of each world's center of mass along +x over the rollout [m], ``[B]``."""
    return _com(result, result.final)[:, 0] - _com(result, result.initial)[:, 0]


def locomotion_loss(result: Rollout) -> torch.Tensor:
    """Minus the distance travelled, averaged over the worlds: lower is further right."""
    return result.mean(-distance_travelled(result))


def locomotion_metrics(result: Rollout) -> dict[str, float]:
    return world_metrics("distance", distance_travelled(result))


class LaunchVelocity(nn.Module):
    """One velocity given to every particle at the start [m/s], ``[dim]`` (every world) or
    ``[B, dim]``."""

    def __init__(self, v0: torch.Tensor) -> None:
        super().__init__()
        self.v = nn.Parameter(v0.clone())


def throw_objective(target: torch.Tensor, steps: int):
    """Squared distance between each blob's center of mass after ``steps`` and ``target``,
    averaged over the worlds."""

    def objective(sim, design: LaunchVelocity, record_every: int = 0):
        x0 = sim.initial_state().particle_x.to(design.v)
        v = design.v if design.v.dim() == 1 else design.v[:, None]
        state = sim.state_from(particle_x=x0, particle_v=v.expand_as(x0))
        result = rollout(sim, state, None, steps, record_every=record_every)
        miss = (sim.center_of_mass(result.final) - target.to(x0)).norm(dim=-1)  # [B]
        speed = design.v.detach().norm(dim=-1).reshape(-1)
        return result.mean(miss**2), result, {**world_metrics("miss_distance", miss),
                                              **world_metrics("launch_speed", speed)}

    return objective


class ModulusFit(nn.Module):
    """One Young's modulus for the whole body, as ``exp(log_E)`` so it stays positive."""

    def __init__(self, E0: float) -> None:
        super().__init__()
        self.log_E = nn.Parameter(torch.tensor(math.log(E0), dtype=torch.float64))

    def modulus(self) -> torch.Tensor:
        return self.log_E.exp()


def observe_positions(sim, count: int, every: int, *, params=None, record_every: int = 0):
    """Particle positions of every world at ``count`` times ``every`` control steps apart,
    ``[count, B, n, dim]``, and the whole trajectory as one Rollout (frames merged)."""
    params = sim.params() if params is None else params
    state = start = sim.initial_state()
    positions, frames = [], {}
    for k in range(count):
        part = rollout(sim, state, None, every, params=params, record_every=record_every)
        frames.update({k * every + t: s for t, s in part.frames.items()})
        state = part.final
        positions.append(state.particle_x)
    return torch.stack(positions), Rollout(start, state, count * every, frames, simulator=sim,
                                           params=params, alive=part.alive)


def _trajectory_error(predicted: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Per world, the mean squared distance between predicted ``[count, B, n, d]`` and
    observed positions (``[count, B or 1, n, d]``), times 1e4: ``[B]``."""
    return ((predicted - observed.to(predicted)) ** 2).sum(-1).mean((0, 2)) * 1e4


def identify_modulus_objective(observed: torch.Tensor, hidden: float, every: int):
    """Mean squared distance between simulated and observed particle positions; the metric
    ``modulus_error`` is the relative error of the recovered modulus."""

    def objective(sim, design: ModulusFit, record_every: int = 0):
        E = design.modulus()
        params = sim.params(particle_E=E * torch.ones_like(sim.model.particle_E, dtype=E.dtype))
        predicted, result = observe_positions(sim, observed.shape[0], every, params=params,
                                              record_every=record_every)
        loss = result.mean(_trajectory_error(predicted, observed))
        return loss, result, {"modulus": float(E.detach()),
                              "modulus_error": abs(float(E.detach()) / hidden - 1)}

    return objective


class FrictionAngleFit(nn.Module):
    """One friction angle for all sand particles [degrees], as ``60 sigmoid(z)`` so that it
    stays inside the model's allowed range (0, 60]."""

    def __init__(self, angle0: float) -> None:
        super().__init__()
        p = angle0 / 60.0
        self.z = nn.Parameter(torch.tensor(math.log(p / (1 - p)), dtype=torch.float64))

    def angle(self) -> torch.Tensor:
        return 60.0 * torch.sigmoid(self.z)


def identify_friction_objective(observed: torch.Tensor, hidden: float, every: int):
    """Mean squared distance between simulated and observed sand positions; the metric
    ``friction_angle_error`` is the error of the recovered angle [degrees]."""

    def objective(sim, design: FrictionAngleFit, record_every: int = 0):
        phi = design.angle()
        m = sim.model
        sand = m.particle_material == Material.SAND
        angle_of = torch.where(sand, phi.to(m.particle_friction_angle.dtype),
                               m.particle_friction_angle.detach())
        params = sim.params(particle_friction_angle=angle_of)
        predicted, result = observe_positions(sim, observed.shape[0], every, params=params,
                                              record_every=record_every)
        loss = result.mean(_trajectory_error(predicted, observed))
        angle = float(phi.detach())
        piles = [pile_angle(x, m.dx, m.ground_height) for x in result.final.particle_x.detach()]
        return loss, result, {"friction_angle": angle,
                              "friction_angle_error": abs(angle - hidden),
                              **world_metrics("pile_angle_deg", piles)}

    return objective


class ToolPath(nn.Module):
    """The tool's velocity at every control step [m/s], shape [steps, dim] (the same for
    every world) or [steps, B, dim]."""

    def __init__(self, velocities: torch.Tensor) -> None:
        super().__init__()
        self.v = nn.Parameter(velocities.clone())

    def forward(self, step: int, state) -> torch.Tensor:
        v = self.v[step]
        return v if v.dim() == 2 else v.expand(state.batch_size, -1)


def occupancy(x: torch.Tensor, lower, upper, cells: int, sigma: float) -> torch.Tensor:
    """Soft occupancy of a ``cells``^2 grid over the box ``[lower, upper]``: a Gaussian of width
    ``sigma`` around each particle, summed and saturated to [0, 1). ``x`` is ``[..., n, d]``
    (e.g. ``[B, n, d]``); the result is ``[..., cells^2]``."""
    axes = [torch.linspace(lo, hi, cells, dtype=x.dtype) for lo, hi in zip(lower, upper)]
    nodes = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, x.shape[-1])
    nodes = nodes.expand(*x.shape[:-2], *nodes.shape)
    density = torch.exp(-torch.cdist(nodes, x).square() / (2 * sigma**2)).sum(-1)
    return 1 - torch.exp(-density)


def shape_objective(target: torch.Tensor, steps: int, box: tuple, cells: int, sigma: float):
    """Squared difference of soft occupancies per world, averaged over the worlds; ``iou`` of
    the cells occupied above 1/2."""

    def objective(sim, design: ToolPath, record_every: int = 0):
        result = rollout(sim, sim.initial_state(), design, steps, record_every=record_every)
        occ = occupancy(result.final.particle_x, box[0], box[1], cells, sigma)  # [B, cells^2]
        loss = result.mean((occ - target.to(occ)).square().sum(-1))
        ours, theirs = occ.detach() > 0.5, target > 0.5
        iou = (ours & theirs).sum(-1).double() / (ours | theirs).sum(-1).clamp(min=1).double()
        return loss, result, world_metrics("iou", iou)

    return objective


def pile_angle(x: torch.Tensor, dx: float, ground: float) -> float:
    """Mean flank angle of a pile [degrees] (90 for a vertical wall).

    The pile's surface height in columns of width ``dx`` (the highest particle in each), and a
    line fitted by least squares to each flank where the height lies between 20 % and 80 % of
    the pile's; the mean of the two flanks' angles.

    Args:
        x: Particle positions [m], shape [n, 2] (x horizontal, y up).
        dx: Column width [m] (the grid spacing).
        ground: Height of the ground [m].
    """
    x = x.detach()
    cols = torch.floor(x[:, 0] / dx).long()
    first = int(cols.min())
    height = torch.full((int(cols.max()) - first + 1,), ground, dtype=x.dtype)
    height = height.scatter_reduce(0, cols - first, x[:, 1], "amax") - ground
    centers = (torch.arange(height.shape[0], dtype=x.dtype) + first + 0.5) * dx
    top, angles = int(height.argmax()), []
    for side in (slice(0, top + 1), slice(top, None)):
        h, c = height[side], centers[side]
        keep = (h > 0.2 * height.max()) & (h < 0.8 * height.max())
        if int(keep.sum()) < 2:  # a vertical wall: no column between 20 % and 80 %
            angles.append(90.0)
            continue
        c, h = c[keep] - c[keep].mean(), h[keep] - h[keep].mean()
        angles.append(math.degrees(math.atan(abs(float((c * h).sum() / (c * c).sum())))))
    return sum(angles) / len(angles)
