"""simdiff: differentiable simulation and inverse design on Taichi and Warp kernels, in PyTorch.

The names below are imported on first use (PEP 562), so that ``import simdiff`` and commands
that need no physics (``simdiff list``) do not pay for importing torch and the backends.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and the API docs; resolved lazily below
    from simdiff.backend import Backend, BackendError, resolve_backend  # noqa: TC004
    from simdiff.bridge import apply_step  # noqa: TC004
    from simdiff.rollout import Rollout, rollout  # noqa: TC004
    from simdiff.sims.base import SimulationError, Simulator, State, ValidationError  # noqa: TC004

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

_WHERE = {
    "Backend": "simdiff.backend",
    "BackendError": "simdiff.backend",
    "resolve_backend": "simdiff.backend",
    "apply_step": "simdiff.bridge",
    "Rollout": "simdiff.rollout",
    "rollout": "simdiff.rollout",
    "SimulationError": "simdiff.sims.base",
    "Simulator": "simdiff.sims.base",
    "State": "simdiff.sims.base",
    "ValidationError": "simdiff.sims.base",
}


class _Package(types.ModuleType):
    """The package module: public names resolve on first use."""

    def __getattr__(self, name: str) -> Any:
        if name not in _WHERE:
            raise AttributeError(f"module 'simdiff' has no attribute {name!r}")
        value = getattr(importlib.import_module(_WHERE[name]), name)
        super().__setattr__(name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        # Importing the submodule simdiff.rollout sets the package attribute ``rollout`` to
        # it; the public name is the function, as it was when this file imported eagerly.
        if name in _WHERE and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(__all__))


sys.modules[__name__].__class__ = _Package
