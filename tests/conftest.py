"""Shared fixtures: tiny robots in float64 on both backends."""

import pytest
import torch

from simdiff.backend import resolve_backend
from simdiff.sims.mass_spring import MassSpring
from simdiff.sims.mass_spring.builder import robot_from_ascii

BACKENDS = ["taichi", "warp"]


@pytest.fixture(params=BACKENDS)
def backend64(request):
    return resolve_backend(request.param, precision="float64")


def tiny_robot(**options):
    """A 2D robot of 9 particles and 2 muscles, standing on the ground."""
    return robot_from_ascii("##\n01", **options)


def tiny_robot_3d(**options):
    return robot_from_ascii("#\n0", dim=3, **options)


@pytest.fixture
def robot():
    return tiny_robot()


def sine_actions(steps: int, n: int, dt: float = 0.004) -> torch.Tensor:
    t = torch.arange(steps, dtype=torch.float64)[:, None]
    return torch.sin(2 * torch.pi * 2.0 * t * dt + torch.arange(n) * 1.3)


def make_sim(model, backend):
    return MassSpring(model, backend)
