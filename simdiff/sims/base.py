"""The simulator contract shared by every simulator, the State and Params containers.

Every simulator steps ``B`` independent worlds at once (``B = batch_size``, 1 by default)::

    sim = Simulator(model, backend, batch_size=B)
    state = sim.initial_state()            # every field [B, ...]
    params = sim.params()                  # a typed Params: each field shared or [B, ...]
    state = sim.step(state, action, params)  # action [B, action_dim] (None: no actuation)
    obs = sim.observe(state)               # [B, observation_dim]
    failures = sim.check_state(state)      # {world: "what is wrong"}; empty when all healthy

A State is a dataclass whose fields are torch tensors named after the physics with a leading
world axis; the unit and shape of each field are in its docstring. A Params is a dataclass of
the per-rollout tensors a step reads (stiffnesses, masses, materials): each field is either
shared by every world (its per-world shape, declared as ``ndim`` in the field's metadata) or
given per world (one more leading axis of size B). A shared field's gradient is the sum over
worlds of the per-world gradients. ``step`` is a torch autograd operation (through
:mod:`simdiff.bridge`), so losses on its outputs backpropagate to the state, the action and
every params tensor that requires grad.

Worlds never interact: one kernel launch serves all of them, and world ``b`` of a batched
rollout equals a single-world rollout of world ``b``'s state and parameters.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar, TypeVar

import torch
from typing_extensions import Self

from simdiff.backend import Backend, BackendName, require_backend

__all__ = [
    "Params",
    "SimulationError",
    "Simulator",
    "State",
    "ValidationError",
    "check_batch_size",
    "per_world",
    "world_field",
]

S = TypeVar("S", bound="State")


class ValidationError(ValueError):
    """A scene or model parameter outside its allowed range, found before any kernel compiles."""


class SimulationError(RuntimeError):
    """A rollout produced NaN or blew up; the message names the world, step and quantity.

    Attributes:
        failures: ``{world: (step, description)}`` of every world found failed.
    """

    def __init__(self, message: str, failures: dict[int, tuple[int, str]] | None = None):
        super().__init__(message)
        self.failures = failures or {}


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` as an int, or a ValueError naming it and the allowed range."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
    return batch_size


def per_world(value: torch.Tensor, batch_size: int, ndim: int, name: str) -> torch.Tensor:
    """``value`` with a leading world axis: a shared value (``ndim`` dimensions) is expanded
    (a view: its gradient sums over worlds), a per-world one (``ndim + 1``) is checked.

    Raises:
        ValueError: naming ``name``, the shape given and the shapes expected.
    """
    if value.dim() == ndim:
        return value.expand(batch_size, *value.shape)
    if value.dim() == ndim + 1 and value.shape[0] == batch_size:
        return value
    raise ValueError(
        f"{name} has shape {list(value.shape)}; expected {ndim} dimensions (shared by every "
        f"world) or {ndim + 1} with a leading world axis of size B={batch_size}"
    )


def world_field(ndim: int, doc: str = "") -> Any:
    """A Params field whose value for one world has ``ndim`` dimensions."""
    return dataclasses.field(metadata={"ndim": ndim, "doc": doc})


@dataclasses.dataclass
class State:
    """Base class of simulator states: a dataclass of torch tensors, each ``[B, ...]``."""

    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, name) for name in self.field_names())

    @classmethod
    def from_tensors(cls, names: tuple[str, ...], tensors: tuple) -> Self:
        return cls(**dict(zip(names, tensors)))

    @property
    def batch_size(self) -> int:
        """Number of worlds (the leading size of every field)."""
        return int(self.tensors()[0].shape[0])

    def detach(self) -> Self:
        return type(self)(**{n: t.detach().clone() for n, t in zip(self.field_names(), self.tensors())})

    def world(self, index: int) -> Self:
        """World ``index`` alone, as a one-world state (fields ``[1, ...]``)."""
        return type(self)(**{n: t[index:index + 1] for n, t in zip(self.field_names(),
                                                                    self.tensors())})

    def where(self, keep: torch.Tensor, other: Self) -> Self:
        """Per world, this state where ``keep`` ([B] bool) is true, else ``other``'s."""
        fields = {}
        for name, a, b in zip(self.field_names(), self.tensors(), other.tensors()):
            mask = keep.reshape(-1, *([1] * (a.dim() - 1)))
            fields[name] = torch.where(mask, a, b)
        return type(self)(**fields)

    def numpy(self) -> dict[str, Any]:
        return {n: t.detach().cpu().numpy() for n, t in zip(self.field_names(), self.tensors())}


@dataclasses.dataclass
class Params:
    """Base class of a simulator's per-rollout parameters; fields made with :func:`world_field`."""

    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, name) for name in self.field_names())

    def per_world(self, batch_size: int) -> Self:
        """Every field with a leading world axis (shared ones expanded), validated."""
        out = {}
        for f in dataclasses.fields(self):
            out[f.name] = per_world(getattr(self, f.name), batch_size, f.metadata["ndim"],
                                    f"params.{f.name}")
        return type(self)(**out)

    def world(self, index: int) -> Self:
        """World ``index``'s parameters, shared fields unchanged."""
        out = {}
        for f in dataclasses.fields(self):
            t = getattr(self, f.name)
            out[f.name] = t[index:index + 1] if t.dim() == f.metadata["ndim"] + 1 else t
        return type(self)(**out)

    def map(self, fn) -> Self:
        """A Params of ``fn(tensor)`` for every field."""
        return type(self)(**{n: fn(t) for n, t in zip(self.field_names(), self.tensors())})


class Simulator(abc.ABC):
    """A differentiable simulator of ``batch_size`` worlds: ``Simulator(model, backend,
    batch_size=B)``; ``step(state, action, params)``.

    Subclasses set ``name``, ``initial_fields`` and ``Params``, and implement the abstract
    methods. Declared here (rather than duck-typed by callers): ``batch_size``,
    ``action_dim``, ``observation_dim``, ``segment_spec`` (open-loop capture support).
    """

    name: ClassVar[str]
    initial_fields: ClassVar[tuple[str, ...]] = ()
    """Names of the independent quantities of an initial state (for gradient checks)."""
    Params: ClassVar[type[Params]] = Params
    """The simulator's params dataclass."""
    backends: ClassVar[tuple[BackendName, ...]] = (BackendName.TAICHI, BackendName.WARP)
    """The backends this simulator has steps for; another is refused in one line."""

    def __init__(self, model: Any, backend: Backend, *, batch_size: int = 1) -> None:
        if backend is not None:
            require_backend(backend, self.backends, self.name)
        self.model = model
        self.backend = backend
        self.batch_size = check_batch_size(batch_size)

    @property
    @abc.abstractmethod
    def action_dim(self) -> int:
        """Length of one world's action (0 if the simulator takes none)."""

    @property
    def observation_dim(self) -> int:
        """Length of one world's observation."""
        raise NotImplementedError(f"{type(self).__name__} declares no observation_dim")

    @abc.abstractmethod
    def initial_state(self) -> State:
        """The model's initial state for every world, on the backend's device and precision."""

    def params(self) -> Params:
        """The model's per-rollout tensors (shared by every world; differentiable in the
        model's tensors). Callers may replace fields by per-world tensors ``[B, ...]``."""
        raise NotImplementedError(f"{type(self).__name__} has no params() yet")

    @abc.abstractmethod
    def step(self, state: State, action: torch.Tensor | None = None,
             params: Params | None = None) -> State:
        """Advance every world one step; differentiable with respect to every tensor input.
        ``params`` None means ``self.params()``."""

    def state_from(self, **fields: torch.Tensor) -> State:
        """A state built from the independent initial quantities named in ``initial_fields``
        (each ``[B, ...]``; derived fields are computed from them differentiably)."""
        raise NotImplementedError(f"{type(self).__name__} does not build states from fields")

    @abc.abstractmethod
    def observe(self, state: State) -> torch.Tensor:
        """An observation per world for closed-loop controllers, ``[B, observation_dim]``."""

    @abc.abstractmethod
    def check_state(self, state: State) -> dict[int, str]:
        """``{world: description}`` of the first non-finite or blown-up quantity of each
        failed world (naming the quantity, the element and its value); empty when healthy."""

    def step_figures(self, state: State) -> dict[str, torch.Tensor]:
        """Figures of one state, per world ``{name: [B]}``, that :func:`simdiff.rollout.rollout`
        averages over every state of a rollout (the initial one and each step's), without
        gradients: ``Rollout.step_figures``. None here; the mass-spring simulator reports
        ``inverted_cells``. Each world's figures must depend on that world's state alone: the
        rollout passes several steps' states at once, stacked as worlds."""
        return {}

    def segment_spec(self) -> Any:
        """How steps chain into a captured open-loop segment (:mod:`simdiff.bridge`), or
        None where this simulator or backend cannot capture."""
        return None

    def check_action(self, action: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """The action as ``[B, max(action_dim, 1)]`` (zeros for None or a simulator without
        actuators), or a ValueError naming the shape given and the one expected."""
        b, n = self.batch_size, self.action_dim
        if action is None:
            return like.new_zeros(b, max(n, 1))
        if tuple(action.shape) != (b, n):
            raise ValueError(
                f"action has shape {list(action.shape)}; expected [{b}, {n}] "
                f"([batch_size, action_dim])"
            )
        return action.to(like.dtype) if n > 0 else like.new_zeros(b, 1)
