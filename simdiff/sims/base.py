"""The simulator contract shared by every simulator, and the State container.

Every simulator takes the same positional arguments: ``Simulator(model, backend)``, and steps
with ``sim.step(state, action)``. A State is a dataclass whose fields are torch tensors named
after the physics; the unit and shape of each field are in its docstring.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar, TypeVar

import torch
from typing_extensions import Self

from simdiff.backend import Backend

__all__ = ["SimulationError", "Simulator", "State", "ValidationError"]

S = TypeVar("S", bound="State")


class ValidationError(ValueError):
    """A scene or model parameter outside its allowed range, found before any kernel compiles."""


class SimulationError(RuntimeError):
    """A rollout produced NaN or blew up; the message names the step and the quantity."""


@dataclasses.dataclass
class State:
    """Base class of simulator states: a dataclass of torch tensors only."""

    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, name) for name in self.field_names())

    @classmethod
    def from_tensors(cls, names: tuple[str, ...], tensors: tuple) -> Self:
        return cls(**dict(zip(names, tensors)))

    def detach(self) -> Self:
        return type(self)(**{n: t.detach().clone() for n, t in zip(self.field_names(), self.tensors())})

    def numpy(self) -> dict[str, Any]:
        return {n: t.detach().cpu().numpy() for n, t in zip(self.field_names(), self.tensors())}


class Simulator(abc.ABC):
    """A differentiable simulator: ``Simulator(model, backend)``; ``step(state, action)``.

    Subclasses set ``name`` and implement the abstract methods. ``step`` is a torch autograd
    operation (through :mod:`simdiff.bridge`), so losses on its outputs backpropagate to the
    state, the action and every model parameter that is a tensor requiring grad.
    """

    name: ClassVar[str]

    def __init__(self, model: Any, backend: Backend) -> None:
        self.model = model
        self.backend = backend

    @property
    @abc.abstractmethod
    def action_dim(self) -> int:
        """Length of the action vector ``step`` accepts (0 if the simulator takes none)."""

    @abc.abstractmethod
    def initial_state(self) -> State:
        """The model's initial state as tensors on the backend's device and precision."""

    @abc.abstractmethod
    def step(self, state: State, action: torch.Tensor | None = None) -> State:
        """Advance one time step; differentiable with respect to every tensor input."""

    def state_from(self, **fields: torch.Tensor) -> State:
        """A state built from the independent initial quantities named in ``initial_fields``
        (derived fields, such as accelerations, are computed from them differentiably)."""
        raise NotImplementedError(f"{type(self).__name__} does not build states from fields")

    initial_fields: ClassVar[tuple[str, ...]] = ()
    """Names of the independent quantities of an initial state (for gradient checks)."""

    def rollout_inputs(self) -> dict[str, torch.Tensor]:
        """Tensors derived from the model once per rollout and passed to every ``step`` as
        keyword arguments (so per-step work stays small); empty by default."""
        return {}

    @abc.abstractmethod
    def observe(self, state: State) -> torch.Tensor:
        """A flat observation vector for closed-loop controllers."""

    @abc.abstractmethod
    def check_state(self, state: State) -> str | None:
        """Describe the first non-finite or blown-up quantity in ``state``, or return None."""
