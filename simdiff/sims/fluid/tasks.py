"""Fluid tasks: targets, designs (what is optimized) and objectives.

* Smoke-to-image: the initial velocity that carries a smoke blob into a target image.
* Stir-to-target: a paddle trajectory that moves a dye blob into a region, or mixes two dyes
  (mixing measured by the variance of the first dye's share).
* Obstacle design: an obstacle's solid fraction, from pixels or a small CNN (neural
  reparameterization), that steers a jet into a chosen outlet.

Each design is a torch module; each ``*_objective`` returns
``objective(sim, design, record_every=0) -> (loss, rollout, metrics)`` for :class:`Scene`.
Every world of ``sim`` runs the design (a design parameter is shared by the worlds, so its
gradient sums theirs); each loss is computed per world ``[B]`` and reduced by
:meth:`~simdiff.rollout.Rollout.mean` (over the worlds that did not fail), and metrics are per
world with their mean, min and max (:func:`~simdiff.rollout.world_metrics`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from simdiff.rollout import rollout, world_metrics
from simdiff.sims.base import ValidationError
from simdiff.sims.fluid.simulator import Fluid

__all__ = [
    "SHAPES",
    "CNNObstacle",
    "InitialVelocity",
    "PaddleTrajectory",
    "PixelObstacle",
    "jet_objective",
    "load_target",
    "plume_objective",
    "smoke_objective",
    "stir_objective",
]

SHAPES = ("ring", "disk", "cross", "letter_s")
"""Built-in target shapes of smoke-to-image."""


def _shape(name: str, resolution: tuple[int, int]) -> np.ndarray:
    n0, n1 = resolution
    x = (np.arange(n0) + 0.5) / n0
    y = (np.arange(n1) + 0.5) / n1
    x, y = np.meshgrid(x, y, indexing="ij")
    r = np.hypot(x - 0.5, y - 0.55)
    if name == "ring":
        return ((r > 0.18) & (r < 0.3)).astype(float)
    if name == "disk":
        return (r < 0.22).astype(float)
    if name == "cross":
        return (
            ((abs(x - 0.5) < 0.07) & (abs(y - 0.55) < 0.3))
            | ((abs(y - 0.55) < 0.07) & (abs(x - 0.5) < 0.3))
        ).astype(float)
    # An S from two half rings.
    upper = np.abs(np.hypot(x - 0.5, y - 0.68) - 0.13) < 0.05
    lower = np.abs(np.hypot(x - 0.5, y - 0.42) - 0.13) < 0.05
    return ((upper & ((x < 0.5) | (y > 0.68))) | (lower & ((x > 0.5) | (y < 0.42)))).astype(float)


def load_target(
    target: str | Path | np.ndarray | torch.Tensor, resolution: tuple[int, ...]
) -> torch.Tensor:
    """A target density in [0, 1], shape ``resolution`` (2D), from a built-in shape name
    (:data:`SHAPES`), an image file (dark background, bright shape; resized when its aspect
    ratio matches the grid's; image rows run top to bottom, grid y bottom to top), or an
    array of exactly that shape.

    Raises:
        ValidationError: an unknown name, an unreadable file, or the wrong shape.
    """
    if len(resolution) != 2:
        raise ValidationError(f"target images are 2D; resolution={resolution}")
    if isinstance(target, (np.ndarray, torch.Tensor)):
        array = np.asarray(
            target.detach().cpu() if isinstance(target, torch.Tensor) else target, dtype=np.float64
        )
        if array.shape != tuple(resolution):
            raise ValidationError(
                f"target has shape {array.shape}; expected the grid's resolution "
                f"{tuple(resolution)}"
            )
        return torch.as_tensor(array)
    text = str(target)
    if text in SHAPES:
        return torch.as_tensor(_shape(text, resolution))
    path = Path(text)
    if not path.is_file():
        raise ValidationError(
            f"target={text!r} is neither a built-in shape ({', '.join(SHAPES)}) nor an image file"
        )
    try:
        from PIL import Image

        with Image.open(path) as image:
            gray = image.convert("L")
            width, height = gray.size
            if (
                abs(width / height - resolution[0] / resolution[1])
                > 0.01 * resolution[0] / resolution[1]
            ):
                raise ValidationError(
                    f"target image {path} has the wrong shape: {width}x{height} pixels, aspect "
                    f"ratio {width / height:.3g}, but the grid is {resolution[0]}x{resolution[1]} "
                    f"(ratio {resolution[0] / resolution[1]:.3g})"
                )
            gray = gray.resize(tuple(resolution), Image.Resampling.BILINEAR)
            pixels = np.asarray(gray, dtype=np.float64) / 255.0
    except ValidationError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoding failure is reported the same way
        raise ValidationError(f"target image {path} is unreadable ({err})") from None
    return torch.as_tensor(pixels[::-1].T.copy())


# Smoke-to-image ------------------------------------------------------------------------------
class InitialVelocity(nn.Module):
    """The initial face velocities [m/s], shape [dim, *(resolution + 1)], starting at rest."""

    def __init__(self, resolution: tuple[int, ...]) -> None:
        super().__init__()
        self.velocity = nn.Parameter(torch.zeros(len(resolution), *(k + 1 for k in resolution)))


def smoke_objective(target: torch.Tensor, steps: int, *, checkpoint_every: int | None = None):
    """Squared error between the final smoke and the target, relative to the target's own
    squared norm (1 for an empty image); metric ``overlap``: the share of the smoke inside the
    target."""

    def objective(sim: Fluid, design: InitialVelocity, record_every: int = 0):
        state = sim.initial_state(velocity=design.velocity)
        result = rollout(
            sim, state, None, steps, record_every=record_every, checkpoint_every=checkpoint_every
        )
        smoke = result.final.dye[:, 0].flatten(1)  # [B, cells]
        goal = target.to(smoke).flatten()
        per_world = ((smoke - goal) ** 2).sum(1) / (goal**2).sum()
        overlap = (smoke * (goal > 0.5)).sum(1) / smoke.sum(1).clamp_min(1e-12)
        return (
            result.mean(per_world),
            result,
            {**world_metrics("overlap", overlap), "mean_iterations": sim.stats.mean_iterations()},
        )

    return objective


# Stir-to-target ------------------------------------------------------------------------------
class PaddleTrajectory(nn.Module):
    """Open-loop paddle velocities, ``max_speed * tanh(raw[t])`` [m/s] at step ``t``, so the
    CFL bound checked on the model holds whatever the optimizer does."""

    def __init__(self, steps: int, dim: int, max_speed: float, *, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.raw = nn.Parameter(0.3 * torch.randn(steps, dim, generator=gen))
        self.max_speed = max_speed

    def forward(self, step: int, state=None) -> torch.Tensor:
        """The velocity of step ``step``, ``[B, dim]`` (the same in every world of ``state``;
        ``[1, dim]`` without a state)."""
        velocity = self.max_speed * torch.tanh(self.raw[step])
        worlds = 1 if state is None else state.batch_size
        return velocity.expand(worlds, -1)


def stir_objective(
    steps: int, *, region: torch.Tensor | None = None, checkpoint_every: int | None = None
):
    """With ``region`` (a cell mask): the squared distance from the dye's center of mass to
    the region's, relative to the initial one (smooth even while no dye is inside; metric
    ``inside``: the share of the dye in the region); without: mixing, the variance of the
    first dye's share ``c0 / (c0 + c1)`` over the box, relative to the unmixed variance."""

    def objective(sim: Fluid, design: PaddleTrajectory, record_every: int = 0):
        state = sim.initial_state()
        result = rollout(
            sim, state, design, steps, record_every=record_every, checkpoint_every=checkpoint_every
        )
        dye, dye0 = result.final.dye.flatten(2), state.dye.flatten(2)  # [B, C, cells]
        if region is not None:
            mask = region.to(dye).flatten()
            positions = sim.grid.cell_positions.to(dye).reshape(-1, sim.model.dim)

            def center(weight: torch.Tensor) -> torch.Tensor:  # [B, cells] -> [B, dim]
                return weight @ positions / weight.sum(-1, keepdim=True)

            goal = center(mask[None])
            per_world = ((center(dye[:, 0]) - goal) ** 2).sum(1) / (
                (center(dye0[:, 0]) - goal) ** 2
            ).sum(1)
            inside = (dye[:, 0] * mask).sum(1) / dye[:, 0].sum(1).clamp_min(1e-12)
            return result.mean(per_world), result, world_metrics("inside", inside)
        share = dye[:, 0] / (dye[:, 0] + dye[:, 1] + 1e-6)
        share0 = dye0[:, 0] / (dye0[:, 0] + dye0[:, 1] + 1e-6)
        variance = share.var(1)
        return result.mean(variance / share0.var(1)), result, world_metrics("variance", variance)

    return objective


# Obstacle design -----------------------------------------------------------------------------
class PixelObstacle(nn.Module):
    """Solid fraction ``sigmoid(logits)`` on the cells of ``region``, plus fixed ``walls``."""

    def __init__(self, region: torch.Tensor, walls: torch.Tensor, *, initial: float = -2.0) -> None:
        super().__init__()
        self.register_buffer("region", region.float())
        self.register_buffer("walls", walls.float())
        self.logits = nn.Parameter(torch.full(tuple(region.shape), initial))

    def forward(self) -> torch.Tensor:
        solid = torch.sigmoid(self.logits) * self.region
        return 1 - (1 - solid) * (1 - self.walls)


class CNNObstacle(PixelObstacle):
    """The logits made by a small CNN from a fixed random input (neural reparameterization:
    the network's bias towards smooth shapes regularizes the design)."""

    def __init__(
        self, region: torch.Tensor, walls: torch.Tensor, *, channels: int = 16, seed: int = 0
    ) -> None:
        super().__init__(region, walls)
        del self.logits
        gen = torch.Generator().manual_seed(seed)
        n0, n1 = region.shape
        self.register_buffer("latent", torch.randn(1, channels, n0 // 4, n1 // 4, generator=gen))
        self.net = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.Tanh(),
            nn.Upsample(scale_factor=2, mode="bilinear"),
            nn.Conv2d(channels, channels // 2, 3, padding=1),
            nn.Tanh(),
            nn.Upsample(size=(n0, n1), mode="bilinear"),
            nn.Conv2d(channels // 2, 1, 3, padding=1),
        )
        with torch.no_grad():
            self.net[-1].bias.fill_(-2.0)

    def forward(self) -> torch.Tensor:
        solid = torch.sigmoid(self.net(self.latent)[0, 0]) * self.region
        return 1 - (1 - solid) * (1 - self.walls)


def jet_objective(
    steps: int, target: torch.Tensor, other: torch.Tensor, *, checkpoint_every: int | None = None
):
    """The share of the dye reaching the ``other`` outlet region, of the dye in both regions
    (cell masks), plus a small penalty on the amount of solid (so material appears only where
    it steers)."""

    def objective(sim: Fluid, design: PixelObstacle, record_every: int = 0):
        obstacle = design()
        params = sim.params()
        params.obstacle = obstacle  # shared by every world
        state = sim.initial_state(params=params)
        result = rollout(
            sim,
            state,
            None,
            steps,
            params=params,
            record_every=record_every,
            checkpoint_every=checkpoint_every,
        )
        dye = result.final.dye[:, 0].flatten(1)  # [B, cells]
        good = (dye * target.to(dye).flatten()).sum(1)
        bad = (dye * other.to(dye).flatten()).sum(1)
        share = good / (good + bad + 1e-9)
        solid = (obstacle * design.region).sum() / design.region.sum()
        return (
            result.mean(1 - share) + 0.01 * solid,
            result,
            {**world_metrics("target_share", share), "solid_fraction": float(solid.detach())},
        )

    return objective


# Plume height ----------------------------------------------------------------------------------
class InflowSpeed(nn.Module):
    """The speed of inflow 0 along +y, ``max_speed * sigmoid(raw)`` [m/s] (inside the CFL
    bound the model was validated with)."""

    def __init__(self, max_speed: float) -> None:
        super().__init__()
        self.raw = nn.Parameter(torch.zeros(()))
        self.max_speed = max_speed

    def forward(self) -> torch.Tensor:
        return self.max_speed * torch.sigmoid(self.raw)


def plume_objective(steps: int, height: float, *, checkpoint_every: int | None = None):
    """Squared distance [m^2] between the smoke's center-of-mass height after ``steps`` and
    ``height``, by choosing the inflow speed."""

    def objective(sim: Fluid, design: InflowSpeed, record_every: int = 0):
        speed = design()
        params = sim.params()
        velocity = torch.stack([speed * (a == 1) for a in range(sim.model.dim)]).to(
            params.inflow_velocity
        )
        params.inflow_velocity = torch.cat([velocity[None], params.inflow_velocity[1:]])
        result = rollout(
            sim,
            sim.initial_state(params=params),
            None,
            steps,
            params=params,
            record_every=record_every,
            checkpoint_every=checkpoint_every,
        )
        smoke = result.final.dye[:, 0].flatten(1)  # [B, cells]
        y = sim.grid.cell_positions[..., 1].to(smoke).flatten() * sim.model.dx
        center = (smoke * y).sum(1) / smoke.sum(1)
        return (
            result.mean((center - height) ** 2),
            result,
            {**world_metrics("height", center), "speed": float(speed.detach())},
        )

    return objective
