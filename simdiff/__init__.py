"""simdiff: differentiable simulation and inverse design on Taichi and Warp kernels, in PyTorch."""

from simdiff.backend import Backend, BackendError, resolve_backend
from simdiff.bridge import apply_step
from simdiff.rollout import Rollout, rollout
from simdiff.sims.base import SimulationError, Simulator, State, ValidationError

__all__ = [
    "Backend",
    "BackendError",
    "Rollout",
    "SimulationError",
    "Simulator",
    "State",
    "ValidationError",
    "apply_step",
    "resolve_backend",
    "rollout",
]
__version__ = "0.1.0"
