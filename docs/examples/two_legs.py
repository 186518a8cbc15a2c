"""A two-legged mass-spring robot that walks right, with worlds of different stiffness.

A scene file for the "Write a scene" tutorial: ``simdiff run docs/examples/two_legs.py``.
"""

import dataclasses

import torch

from simdiff.rollout import Rollout, world_metrics
from simdiff.scene import Scene
from simdiff.sims.mass_spring.builder import robot_from_ascii

# '#' a passive cell, a digit a cell whose vertical springs are muscle number <digit>.
ART = """
####
0..1
"""


def distance(rollout: Rollout) -> torch.Tensor:
    """Per world, how far the centre of mass moved along +x [m], shape [B]."""
    x0 = rollout.initial.particle_x[..., 0].mean(dim=1)  # mean over particles, per world
    x1 = rollout.final.particle_x[..., 0].mean(dim=1)
    return x1 - x0


def loss(rollout: Rollout) -> torch.Tensor:
    """Minus the distance, averaged over the worlds that did not fail."""
    return -rollout.mean(distance(rollout))


def metrics(rollout: Rollout) -> dict:
    return world_metrics("distance", distance(rollout).detach())


def worlds(sim, state, params, generator):
    """World b's springs are stiffer or softer by up to +-20% (drawn from the seeded
    generator); the initial state is the same in every world."""
    b = sim.batch_size
    scale = 1 + 0.4 * (torch.rand(b, 1, generator=generator) - 0.5)
    springs = params.spring_params.expand(b, -1, -1).clone()  # [B, springs, 4], per world
    springs[..., 0] = springs[..., 0] * scale.to(springs)    # column 0: stiffness [N/m]
    return state, dataclasses.replace(params, spring_params=springs)


def scene(*, steps: int = 400, stiffness: float = 1e4, friction: float = 1.0) -> Scene:
    return Scene(
        name="two_legs",
        simulator="mass_spring",
        model=robot_from_ascii(ART, stiffness=stiffness, friction=friction),
        steps=steps,
        loss=loss,
        metrics=metrics,
        description="2D robot on two legs, one muscle each; walk right",
        default_backend="warp",
        train={"controller": "mlp", "lr": 0.01, "iters": 40},
        worlds=worlds,
    )
