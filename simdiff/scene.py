"""Scenes and controllers: what a user defines in Python, and how simdiff finds it.

A scene file (``simdiff/scenes/NAME.py`` or any path) defines ``scene(**options) -> Scene``. A
controller file (``simdiff/controllers/NAME.py`` or any path) defines
``controller(sim, scene, **options) -> torch.nn.Module`` whose ``forward(step, state)`` returns
the action for that step. Both are loaded by name or by path.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from simdiff.backend import Backend
from simdiff.catalog import DEFAULT_BACKEND, controller_dir, scene_dir
from simdiff.rollout import Rollout
from simdiff.sims.base import Simulator, check_batch_size

__all__ = [
    "Scene",
    "SceneError",
    "controller_dir",
    "initial_worlds",
    "list_controllers",
    "list_scenes",
    "load_controller",
    "load_scene",
    "make_simulator",
    "scene_dir",
    "vary_worlds",
]

class SceneError(ValueError):
    """A scene or controller that cannot be found or does not define what it must."""


@dataclass
class Scene:
    """A physical scene with its task.

    Attributes:
        name: Short name, used for output folders.
        simulator: Simulator name, a key of :data:`SIMULATORS`.
        model: The simulator's validated model.
        steps: Horizon of one rollout.
        loss: Task loss of a rollout (lower is better), differentiable.
        metrics: Human-readable figures of a rollout (e.g. distance travelled).
        description: One line shown by ``simdiff list``.
        default_backend: Backend measured fastest for this scene's size (see benchmarks/).
        render_every: Steps between rendered frames.
        train: Default training options (``lr``, ``iters``, ``controller``...).
        design: For inverse problems: builds the torch module whose parameters are optimized
            (masses, initial conditions, a period...) instead of a controller.
        objective: For inverse problems: ``objective(sim, design, record_every=0)`` runs the
            simulation with the design and returns ``(loss, rollout, metrics)``.
        truth: For inverse problems with hidden parameters (observations or a target made by
            them): builds the design holding them, which ``simdiff run`` renders unless given
            fitted ``--weights``. None: the problem has no hidden answer.
        render_options: Keyword arguments of the simulator's frame renderer
            (:func:`~simdiff.render.render_nbody`, ``render_mpm``, ``render_fluid``,
            ``render_mass_spring``): what the task is about (a target point, shape, region or
            image, observed positions) and the view (bounds, a log-radius view, labels);
            N-body scenes may add ``time_unit`` for the time readout. Data, read by the
            renderers; never a simulator.
        worlds: How the worlds of a batch differ: ``worlds(sim, state, params, generator) ->
            (state, params)`` perturbs the initial state ``[B, ...]`` or sets per-world params
            fields, drawing from the seeded ``generator``. None: every world is the same.
        goals: For goal-conditioned scenes: the goal distribution
            (:class:`simdiff.locomotion.GoalSpace`); the trainer draws a goal schedule per
            iteration and world, and the controller receives ``forward(step, state, goal)``.
    """

    name: str
    simulator: str
    model: Any
    steps: int
    loss: Callable[[Rollout], torch.Tensor]
    metrics: Callable[[Rollout], dict[str, float]] = lambda rollout: {}
    description: str = ""
    default_backend: str = DEFAULT_BACKEND
    render_every: int = 4
    train: dict[str, Any] = field(default_factory=dict)
    design: Callable[[Simulator], torch.nn.Module] | None = None
    objective: Callable[..., tuple[torch.Tensor, Rollout, dict[str, float]]] | None = None
    truth: Callable[[Simulator], torch.nn.Module] | None = None
    render_options: dict[str, Any] = field(default_factory=dict)
    worlds: Callable[..., tuple[Any, Any]] | None = None
    goals: Any = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise SceneError(f"scene {self.name!r}: steps={self.steps} must be at least 1")
        if (self.design is None) != (self.objective is None):
            raise SceneError(f"scene {self.name!r}: design and objective come together")
        if self.truth is not None and self.design is None:
            raise SceneError(f"scene {self.name!r}: truth is the hidden design; it needs a design")
        if self.simulator not in SIMULATORS:
            raise SceneError(
                f"scene {self.name!r}: simulator={self.simulator!r} is unknown; "
                f"allowed: {', '.join(SIMULATORS)}"
            )


def _mass_spring(model: Any, backend: Backend, **options: Any) -> Simulator:
    from simdiff.sims.mass_spring import MassSpring

    return MassSpring(model, backend, **options)


def _nbody(model: Any, backend: Backend, **options: Any) -> Simulator:
    from simdiff.sims.nbody import NBody

    return NBody(model, backend, **options)


def _fluid(model: Any, backend: Backend, **options: Any) -> Simulator:
    from simdiff.sims.fluid import Fluid

    return Fluid(model, backend, **options)


def _mpm(model: Any, backend: Backend, **options: Any) -> Simulator:
    from simdiff.sims.mpm import MPM

    return MPM(model, backend, **options)


SIMULATORS: dict[str, Callable[..., Simulator]] = {
    "mass_spring": _mass_spring,
    "nbody": _nbody,
    "fluid": _fluid,
    "mpm": _mpm,
}


def make_simulator(scene: Scene, backend: Backend, *, batch_size: int = 1) -> Simulator:
    """The scene's simulator of ``batch_size`` worlds on ``backend``."""
    return SIMULATORS[scene.simulator](scene.model, backend,
                                       batch_size=check_batch_size(batch_size))


def vary_worlds(
    *,
    state_noise: dict[str, float] | None = None,
    param_spread: dict[str, tuple[int | None, float]] | None = None,
) -> Callable[..., tuple[Any, Any]]:
    """A :attr:`Scene.worlds` hook: world 0 is the scene as built, and every other world

    - adds Gaussian noise of standard deviation ``state_noise[field]`` to that initial state
      field (one of the simulator's ``initial_fields``; derived fields are recomputed),
    - scales column ``c`` of params field ``f`` (``param_spread[f] = (c, spread)``; ``c`` None:
      the whole field) by one factor per world drawn uniformly from ``[1 - spread, 1 + spread]``
      (that field becomes per world, ``[B, ...]``).

    Example: ``vary_worlds(param_spread={"spring_params": (0, 0.2)})`` gives every world but
    the first its own spring stiffness, within 20% of the scene's.
    """
    state_noise, param_spread = state_noise or {}, param_spread or {}

    def worlds(sim: Simulator, state, params, generator: torch.Generator):
        b = sim.batch_size
        others = torch.arange(b) > 0
        fields = {}
        for name, std in state_noise.items():
            value = getattr(state, name)
            noise = torch.randn(value.shape, generator=generator, dtype=torch.float64)
            noise[~others] = 0
            fields[name] = value + std * noise.to(value)
        if fields:  # derived fields (accelerations, deformation) follow the perturbed ones
            state = sim.state_from(**{n: fields.get(n, getattr(state, n))
                                      for n in sim.initial_fields})
        changed = {}
        for name, (column, spread) in param_spread.items():
            value = getattr(params.per_world(b), name).clone()
            factor = 1 + spread * (2 * torch.rand(b, generator=generator, dtype=torch.float64) - 1)
            factor = torch.where(others, factor, torch.ones_like(factor)).to(value)
            shape = (b, *([1] * (value.dim() - 1)))
            if column is None:
                value = value * factor.reshape(shape)
            else:
                value[..., column] = value[..., column] * factor.reshape(shape[:-1])
            changed[name] = value
        params = type(params)(**{**dict(zip(params.field_names(), params.tensors())), **changed})
        return state, params

    return worlds


def initial_worlds(scene: Scene, sim: Simulator, *, seed: int = 0) -> tuple[Any, Any]:
    """The initial state and params of the simulator's worlds, varied by the scene's
    ``worlds`` hook (seeded: the same ``seed`` gives the same worlds)."""
    state = sim.initial_state()
    params = sim.params()
    if scene.worlds is not None:
        generator = torch.Generator().manual_seed(seed)
        state, params = scene.worlds(sim, state, params, generator)
    return state, params


def _names(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))


def list_scenes() -> list[str]:
    return _names(scene_dir())


def list_controllers() -> list[str]:
    return _names(controller_dir())


def _load_module(name_or_path: str | Path, folder: Path, kind: str) -> ModuleType:
    text = str(name_or_path)
    path = Path(text) if text.endswith(".py") or os.sep in text else folder / f"{text}.py"
    if not path.is_file():
        known = ", ".join(_names(folder)) or "none"
        raise SceneError(f"{kind} {text!r} not found (looked for {path}); known {kind}s: {known}")
    module_name = f"simdiff_{kind}_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def load_scene(name_or_path: str | Path, **options: Any) -> Scene:
    """Build a scene by name (``simdiff/scenes/NAME.py``) or from a file path.

    Raises:
        SceneError: the file does not exist, defines no ``scene`` function, or it returns no
            :class:`Scene`.
    """
    module = _load_module(name_or_path, scene_dir(), "scene")
    build = getattr(module, "scene", None)
    if not callable(build):
        raise SceneError(f"scene file {module.__file__} defines no function `scene(**options)`")
    _check_options(module, build, options)
    try:
        result = build(**options)
    except TypeError as err:
        # A scene passing **options on to a builder: name the builder's options too.
        found = re.search(r"(\w+)\(\) got an unexpected keyword argument '(\w+)'", str(err))
        if not found or found.group(2) not in options:
            raise
        inner = getattr(module, found.group(1), None)
        _check_options(module, build, options, inner if callable(inner) else None, force=True)
        raise
    if not isinstance(result, Scene):
        raise SceneError(
            f"scene() in {module.__file__} returned {type(result).__name__}, not a Scene"
        )
    return result


def _named_options(function: Callable) -> tuple[list[str], bool]:
    """Keyword options of ``function`` (those with defaults) and whether it takes **options."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return [], True
    names = [p.name for p in parameters if p.default is not inspect.Parameter.empty
             and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return names, any(p.kind is p.VAR_KEYWORD for p in parameters)


def _check_options(module: ModuleType, build: Callable, options: dict[str, Any],
                   inner: Callable | None = None, *, force: bool = False) -> None:
    """Refuse an option the scene does not take, listing the ones it does."""
    names, open_ended = _named_options(build)
    if inner is not None:
        names += [n for n in _named_options(inner)[0] if n not in names]
        open_ended = False
    unknown = [k for k in options if k not in names]
    if unknown and (force or not open_ended):
        name = Path(module.__file__).stem
        # A length set otherwise (observations x interval, a final time) is no horizon to set.
        why = (" (it has no horizon: its length follows from its other options, so --steps "
               "does not apply)") if unknown[0] == "steps" else ""
        raise SceneError(f"scene {name!r} has no option {unknown[0]!r}{why}; its options: "
                         f"{', '.join(sorted(names)) or '(none)'}")


def load_controller(
    name_or_path: str | Path, sim: Simulator, scene: Scene, **options: Any
) -> torch.nn.Module:
    """Build a controller by name (``simdiff/controllers/NAME.py``) or from a file path."""
    module = _load_module(name_or_path, controller_dir(), "controller")
    build = getattr(module, "controller", None)
    if not callable(build):
        raise SceneError(
            f"controller file {module.__file__} defines no function `controller(sim, scene)`"
        )
    result = build(sim, scene, **options)
    if not isinstance(result, torch.nn.Module):
        raise SceneError(
            f"controller() in {module.__file__} returned {type(result).__name__}, "
            f"not a torch.nn.Module"
        )
    return result
