"""The optimization loop: a torch optimizer over a controller, through the simulator.

Each iteration rolls the scene out with the controller, takes the task loss, backpropagates
through the physics and takes one optimizer step (with gradient-norm clipping). Progress shows
in a bar; every iteration appends one JSON line to ``metrics.jsonl``; every
``checkpoint_every`` iterations ``checkpoint.pt`` is rewritten atomically with everything needed
to continue exactly (controller and optimizer state, iteration, RNG state, configuration).
``resume=`` continues from such a file; the metrics log is cut back to the checkpoint's
iteration, so a resumed run's log equals an uninterrupted one. A fresh run writes its first
checkpoint before iteration 0, so a run that fails at any point can be resumed. A resumed run
continues the same optimization: its learning rate and seed default to the checkpoint's, and a
different value is refused (start a new run to change them).

Checkpoints are data (tensors, dicts, lists, numbers and strings) and are loaded with
``torch.load(weights_only=True)``: a file that needs unpickling anything else is refused
unread (:mod:`simdiff.files`). The output folder is locked while a run writes into it: a second
process training into the same folder is refused.

Long contact-rich rollouts have exploding, noisy gradients (the loss landscape of a walking gait
is rough), so losses do not fall monotonically: the run also keeps the controller of its best
iteration (``best_controller.pt``), which is what ``simdiff train`` renders.

Gradient health: every iteration logs the gradient's norm before clipping (``grad_norm``, null
when it is not finite) and ``grad_finite``. An iteration whose loss or gradient is not finite is
skipped: the optimizer does not step (its moments are untouched) and the iteration is never
chosen as best. Against the growth of gradients through contact over long horizons,
``backprop_window=W`` truncates backpropagation to windows of W steps (the state is detached
every W steps; losses measured per window, such as the locomotion losses, keep their gradient
within their window), and ``grad_normalize`` rescales every gradient to norm ``clip``
(DiffTaichi's normalized steps) instead of only clipping larger ones. Measured in
``benchmarks/_gradient_health.py``: the walker's shape-keeping physics is what keeps gradients
bounded; windows cap their growth with the horizon where the physics does not.

Goal-conditioned scenes (``scene.goals``) draw a goal schedule per world every iteration
(seeded by the seed and the iteration, from the tasks of the goal space's curriculum stage of
that iteration) and roll out with :func:`simdiff.locomotion.goal_rollout`.
Their training loss is that of random goals, which change every iteration: an iteration that
drew easy goals has a low loss whatever its controller. So the best iteration is chosen on a
fixed validation set instead: every ``validate_every`` iterations (and at the last one) the
controller, before that iteration's step, is rolled out without gradients on
:func:`simdiff.locomotion.validation_schedule` (``max(batch, 2 x tasks)`` worlds, the training
horizon, the same goals every time) and the row logs ``validation_loss`` (the scene's loss
there) and the validation figures (``validation_velocity_error``, ...,
``validation_inverted_cells``); ``best_controller.pt`` is the validated iteration of the
lowest ``validation_loss``. ``validate_every=0`` chooses on the training loss, as other scenes
do.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from simdiff.backend import Backend, resolve_backend
from simdiff.files import DataFileError, hold_lock, load_data, save_data
from simdiff.locomotion import goal_rollout, validation_schedule
from simdiff.rollout import rollout
from simdiff.scene import (
    Scene,
    SceneError,
    initial_worlds,
    load_controller,
    load_scene,
    make_simulator,
)
from simdiff.sims.base import Simulator, check_batch_size
from simdiff.threads import intra_op_threads, threads_for

__all__ = ["ROLLOUT_TIME_LIMIT_S", "CheckpointError", "TrainConfig", "TrainResult",
           "check_rollout_size", "make_optimizer", "train"]

CHECKPOINT_FORMAT = 1
SATURATED_ITERATIONS = 3
"""Consecutive iterations of zero gradient after which training warns."""


class CheckpointError(DataFileError):
    """A checkpoint that is unreadable, of another format, or of another run."""


@dataclass
class TrainConfig:
    """What a training run is; stored in its checkpoint and compared on resume.

    Attributes:
        scene: Scene name or path.
        controller: Controller name or path.
        iters: Total number of iterations (a resumed run stops at the same total).
        backend: ``taichi`` or ``warp``; None takes the scene's default.
        device: ``cpu``, ``cuda`` or ``auto``.
        precision: ``float32`` or ``float64``; None takes the scene's default (else float32).
        optimizer: Optimizer name (case-insensitive), see :func:`make_optimizer`.
        lr: Learning rate; None takes the scene's default (on resume, the checkpoint's).
        lr_schedule: ``constant``, or ``cosine``: the rate of iteration ``i`` is
            ``lr * (0.05 + 0.95 * (1 + cos(pi i / iters)) / 2)``, from ``lr`` down to a
            twentieth of it at the last iteration (quiets the late iterates), over the run's
            total ``iters`` (a run continued to a larger total follows that total's schedule
            from there); None takes the scene's default, else constant.
        clip: Maximum gradient norm (0 disables clipping).
        grad_normalize: Rescale every finite gradient to norm ``clip`` (not only larger ones).
        backprop_window: Truncate backpropagation to windows of this many steps (0: the whole
            horizon; None takes the scene's default, else the whole horizon).
        seed: Seed of the controller's initial weights and of the worlds' variation; None
            takes 0 (on resume, the checkpoint's).
        batch: Worlds simulated at once (the scene's ``worlds`` hook says how they differ,
            drawn anew every iteration from ``seed`` and the iteration); None takes the
            scene's default, else 1.
        health: ``stop`` (a failed world stops the run) or ``mask`` (failed worlds are
            frozen, left out of the loss and counted in ``failed_worlds``).
        rollout_checkpoint: Keep one state every this many steps in backward (None: all).
        checkpoint_every: Iterations between checkpoints.
        validate_every: Goal-conditioned scenes: iterations between validations on the fixed
            validation goals, on which the best iteration is chosen (0: choose on the training
            loss); see the module docstring.
        scene_options: Keyword arguments of the scene function (e.g. ``steps``).
        controller_options: Keyword arguments of the controller function.
    """

    scene: str
    controller: str | None = None
    iters: int | None = None
    backend: str | None = None
    device: str = "cpu"
    precision: str | None = None
    optimizer: str = "adam"
    lr: float | None = None
    lr_schedule: str | None = None
    clip: float = 1.0
    grad_normalize: bool = False
    backprop_window: int | None = None
    seed: int | None = None
    batch: int | None = None
    health: str = "stop"
    rollout_checkpoint: int | None = None
    checkpoint_every: int = 10
    validate_every: int = 5
    scene_options: dict[str, Any] = field(default_factory=dict)
    controller_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    out: Path
    config: TrainConfig
    scene: Scene
    simulator: Simulator
    controller: torch.nn.Module
    """The trained controller, or the design module of an inverse problem."""
    metrics: list[dict[str, float]]
    best_state: dict[str, torch.Tensor] | None = None
    """Controller parameters of the best iteration (lowest validation loss of a
    goal-conditioned scene, else lowest training loss)."""
    best: dict[str, Any] = field(default_factory=dict)
    """The best iteration: ``iteration``, ``loss`` (the value it was chosen on) and ``on``
    (``"validation"`` or ``"training"``)."""

    def best_controller(self) -> torch.nn.Module:
        """The controller with its best iteration's parameters loaded."""
        if self.best_state is not None:
            self.controller.load_state_dict(self.best_state)
        return self.controller


def _optimizer_classes() -> dict[str, type]:
    """Optimizer classes by lower-case name: ``torch.optim``'s, then those of the
    ``pytorch-optimizer`` package (Lion, AdEMAMix, Grams, AdamP, ...) not already named."""
    classes = {
        k.lower(): v
        for k, v in vars(torch.optim).items()
        if isinstance(v, type) and issubclass(v, torch.optim.Optimizer)
        and v is not torch.optim.Optimizer
    }
    try:
        import pytorch_optimizer
    except ImportError:  # a dependency in pyproject.toml; torch.optim's still work without it
        return classes
    for name in pytorch_optimizer.get_supported_optimizers():
        if name.lower() not in classes:
            try:
                classes[name.lower()] = pytorch_optimizer.load_optimizer(name)
            except (ImportError, NotImplementedError):  # needs CUDA or another package
                continue
    return classes


def _offers_cautious(cls: type) -> bool:
    """Whether the optimizer reads a ``cautious`` option (``pytorch-optimizer`` passes it
    through ``**kwargs`` into the parameter groups, so the signature alone does not say)."""
    if "cautious" in inspect.signature(cls.__init__).parameters:
        return True
    try:
        return "'cautious'" in inspect.getsource(cls)
    except (OSError, TypeError):
        return False


def _optimizer_class(name: str) -> tuple[type[torch.optim.Optimizer], bool]:
    """The class named and whether its cautious variant is asked for (``cautious-NAME``)."""
    key = str(name).lower()
    cautious = key.startswith("cautious-")
    base = key.removeprefix("cautious-")
    own = {k.lower(): v for k, v in vars(torch.optim).items() if isinstance(v, type)}
    if not cautious and base == "adam":
        # torch's Adam, run without importing torch's compiler (71 MB; simdiff.optim)
        from simdiff.optim import Adam

        return Adam, False
    if not cautious and base in own and issubclass(own[base], torch.optim.Optimizer):
        return own[base], False  # torch's own: pytorch-optimizer is not even imported
    classes = _optimizer_classes()
    cls = classes.get(base)
    if cls is None:
        raise ValueError(f"optimizer={name!r} is unknown; allowed: {', '.join(sorted(classes))} "
                         f"(and cautious-NAME where NAME offers it)")
    if cautious and not _offers_cautious(cls):
        offering = sorted(k for k, c in classes.items() if _offers_cautious(c))
        raise ValueError(f"optimizer={name!r}: {base} has no cautious variant; "
                         f"cautious-NAME is allowed for: {', '.join(offering)}")
    return cls, cautious


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """An optimizer by case-insensitive name, from ``torch.optim`` (adam, sgd, lbfgs, ...; adam
    is :class:`simdiff.optim.Adam`, torch's Adam without its compiler import) or
    the ``pytorch-optimizer`` package (lion, ademamix, grams, adamp, ...). ``cautious-NAME``
    turns on the cautious masking (Liang et al. 2024) of optimizers that offer it
    (``cautious-lion``, ``cautious-ademamix``, ...).

    Raises:
        ValueError: an unknown name (listing the allowed ones) or a cautious variant of an
            optimizer without one.
    """
    cls, cautious = _optimizer_class(name)
    return cls(params, lr=lr, cautious=True) if cautious else cls(params, lr=lr)


def _needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``step`` must re-evaluate the loss (line-search methods such as L-BFGS)."""
    return isinstance(optimizer, torch.optim.LBFGS)


def _grad_norm(params: list[torch.Tensor]) -> float:
    """Euclidean norm of all gradients together (inf or nan when one is not finite)."""
    grads = [p.grad.detach().flatten() for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.cat(grads)))


def _condition_gradient(params: list[torch.Tensor], norm: float, config: TrainConfig) -> None:
    """Clip the (finite) gradient to norm ``clip``, or rescale it to that norm."""
    if config.clip <= 0 or norm == 0.0:
        return
    if config.grad_normalize or norm > config.clip:
        scale = config.clip / norm
        for p in params:
            if p.grad is not None:
                p.grad.mul_(scale)


def _load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"resume checkpoint {path} does not exist")
    try:
        data = load_data(path, "checkpoint")
    except DataFileError as err:
        raise CheckpointError(str(err)) from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} is not a simdiff training checkpoint of format {CHECKPOINT_FORMAT}"
        )
    missing = [k for k in ("config", "iteration", "controller", "optimizer", "rng", "metrics",
                           "best") if k not in data]
    if missing or not isinstance(data["config"], dict):
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing) or 'config'}; "
                              "not a complete simdiff training checkpoint")
    return data


LR_SCHEDULES = ("constant", "cosine")


def scheduled_lr(lr: float, schedule: str, iteration: int, iters: int) -> float:
    """The learning rate of ``iteration`` of ``iters`` (see :class:`TrainConfig`)."""
    if schedule == "constant" or iters <= 1:
        return lr
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * iteration / (iters - 1))))


def _check_settings(config: TrainConfig) -> None:
    """Values a run cannot start with, refused before anything is built."""
    lr = config.lr
    if lr is not None and (not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0):
        raise ValueError(f"lr={lr} must be a finite number > 0")
    if not isinstance(config.clip, (int, float)) or not math.isfinite(config.clip) or \
            config.clip < 0:
        raise ValueError(f"clip={config.clip} must be a finite number >= 0 (0 disables)")
    if config.rollout_checkpoint is not None and config.rollout_checkpoint < 1:
        raise ValueError(f"rollout_checkpoint={config.rollout_checkpoint} must be >= 1 "
                         "(steps between kept states) or None (keep all)")
    if config.checkpoint_every < 1:
        raise ValueError(f"checkpoint_every={config.checkpoint_every} must be >= 1")
    if isinstance(config.validate_every, bool) or not isinstance(config.validate_every, int) \
            or config.validate_every < 0:
        raise ValueError(f"validate_every={config.validate_every!r} must be an integer >= 0 "
                         f"(0: choose the best iteration on the training loss)")
    if config.iters is not None and config.iters < 0:
        raise ValueError(f"iters={config.iters} must be >= 0")
    if config.lr_schedule not in (None, *LR_SCHEDULES):
        raise ValueError(f"lr_schedule={config.lr_schedule!r} is unknown; allowed: "
                         f"{', '.join(LR_SCHEDULES)}")
    if config.backprop_window is not None and config.backprop_window < 0:
        raise ValueError(f"backprop_window={config.backprop_window} must be >= 1 (steps), 0 "
                         f"(the whole horizon) or None (the scene's default)")
    _optimizer_class(config.optimizer)


def _continued(config: TrainConfig, saved: dict, path: Path) -> None:
    """Take the checkpoint's learning rate and seed where none is given; refuse others: the
    restored optimizer and RNG state are the old run's, so a new value would not apply."""
    for key in ("lr", "seed"):
        given, before = getattr(config, key), saved.get(key)
        if given is None:
            setattr(config, key, before)
        elif before is not None and given != before:
            raise CheckpointError(
                f"checkpoint {path} was trained with {key}={before!r}; resuming with "
                f"{key}={given!r} is refused (the restored optimizer and RNG continue the old "
                f"run); leave --{key} out, or start a new run to change it")


def _check_same_run(saved: dict, config: TrainConfig, path: Path) -> None:
    defaults = {"batch": 1, "health": "stop",  # checkpoints from before batches, schedules
                "lr_schedule": "constant"}
    for key in ("scene", "controller", "backend", "precision", "optimizer", "scene_options",
                "controller_options", "batch", "health", "lr_schedule"):
        if saved.get(key, defaults.get(key)) != getattr(config, key):
            raise CheckpointError(
                f"checkpoint {path} belongs to another run: {key}={saved.get(key, defaults.get(key))!r} there, "
                f"{getattr(config, key)!r} here"
            )


def _available_bytes(device: torch.device) -> int | None:
    """Memory free for a rollout on ``device`` (None when it cannot be told)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


ROLLOUT_TIME_LIMIT_S = 24 * 3600.0
"""Longest a single rollout (forward, and backward where there is one) may be estimated to take
before it is refused without ``force``: a horizon beyond a day is a typo, not a plan."""
STEP_FLOOR_S = 1e-6
"""Less than any backend takes for one step of the smallest scene (a kernel launch alone costs
more): ``steps`` times it bounds a rollout's time from below before anything is compiled."""
TIMED_ABOVE_STEPS = 20_000
"""Horizons longer than this (every shipped scene's is shorter) are timed over a few steps
before they are accepted; shorter ones are estimated from :data:`STEP_FLOOR_S` alone."""
BACKWARD_COST = 3.0
"""A rollout with its backward pass, in forward rollouts (the adjoint costs about twice the
forward; a checkpointed rollout recomputes its segments once more)."""


def _seconds_per_step(sim: Simulator) -> float:
    """Measured forward time of one step of ``sim`` (all its worlds), without actuation: one
    step to compile and warm up, then the mean of three."""
    with torch.no_grad():
        state = sim.step(sim.initial_state())
        start = time.perf_counter()
        for _ in range(3):
            state = sim.step(state)
    return (time.perf_counter() - start) / 3


def _duration(seconds: float) -> str:
    for unit, size in (("years", 365 * 86400.0), ("days", 86400.0), ("h", 3600.0),
                       ("min", 60.0)):
        if seconds >= 2 * size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def check_rollout_size(sim: Simulator, steps: int, *, backward: bool,
                       rollout_checkpoint: int | None = None, record_every: int = 0,
                       force: bool = False, time_limit_s: float = ROLLOUT_TIME_LIMIT_S,
                       checkpoint_option: bool = True) -> int:
    """Estimate the memory and time of a rollout of ``steps`` and refuse one beyond this
    machine's memory or beyond ``time_limit_s``, before anything runs.

    Memory: a lower bound, one state per step kept for backward (one per
    ``rollout_checkpoint`` steps plus one segment recomputed when checkpointed) and one per
    recorded frame; the step's own temporaries come on top.

    Time: ``steps`` times :data:`STEP_FLOOR_S` first (refuses an absurd horizon without
    compiling a kernel); past :data:`TIMED_ABOVE_STEPS` steps, ``steps`` times the measured
    cost of one step (:func:`_seconds_per_step`), times :data:`BACKWARD_COST` with a backward.

    ``checkpoint_option`` False: the caller has no ``--rollout-checkpoint`` to suggest.

    Returns:
        The memory estimate in bytes.

    Raises:
        ValueError: An estimate exceeds its bound and ``force`` is False (one line, with the
            estimate).
    """
    state = sim.initial_state()
    per_state = sum(t.numel() * t.element_size() for t in vars(state).values()
                    if isinstance(t, torch.Tensor))
    kept = 0
    if backward:
        k = rollout_checkpoint
        kept = steps if k is None else -(-steps // k) + min(k, steps)
    if record_every:
        kept += steps // record_every + 1
    estimate = kept * per_state
    if force:
        return estimate
    available = _available_bytes(torch.device(sim.backend.torch_device))
    hint = ("--rollout-checkpoint K, "
            if backward and rollout_checkpoint is None and checkpoint_option else "")
    if available is not None and estimate > available:
        raise ValueError(
            f"steps={steps}: the rollout would keep at least {estimate / 1e9:.3g} GB "
            f"({per_state} bytes a state), and {available / 1e9:.3g} GB are available; use "
            f"{hint}fewer steps, or --force to run anyway")
    passes = BACKWARD_COST if backward else 1.0
    what = "forward and backward" if backward else "forward"
    per_step, how = STEP_FLOOR_S, f"{STEP_FLOOR_S * 1e6:.3g} us a step, faster than any backend"
    if steps > TIMED_ABOVE_STEPS and steps * passes * per_step <= time_limit_s:
        per_step = _seconds_per_step(sim)
        how = f"{per_step * 1e3:.3g} ms a step, measured over 3 steps"
    seconds = steps * passes * per_step
    if seconds > time_limit_s:
        raise ValueError(
            f"steps={steps}: one rollout ({what}) would take at least {_duration(seconds)} "
            f"({how}), beyond the limit of {_duration(time_limit_s)}; use fewer steps, or "
            "--force to run anyway")
    return estimate


def _has_actuators(scene: Scene) -> bool:
    """Whether the scene's model has something a controller can act on (muscles, a tool, a
    paddle); checked on the model, before any kernel is compiled."""
    model = scene.model
    if getattr(model, "actuator_count", 0) > 0:
        return True
    return any(getattr(model, name, None) is not None for name in ("tool", "paddle"))


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> TrainResult:
    """Train a controller on a scene; see the module docstring for what is written to ``out``.

    Raises:
        CheckpointError: ``resume`` is unreadable or from another run.
        FileExistsError: ``out`` already holds a run and ``resume`` is not given (nothing is
            overwritten).
    """
    out = Path(out)
    _check_settings(config)
    saved = None
    if resume is not None:
        saved = _load_checkpoint(Path(resume))
        _continued(config, saved["config"], Path(resume))
    scene = load_scene(config.scene, **config.scene_options)
    if scene.design is None and not _has_actuators(scene):
        raise SceneError(
            f"scene {scene.name!r} has nothing to train: no actuators for a controller and no "
            f"design (inverse problem); roll it out with `simdiff run {scene.name}`"
        )
    config.controller = config.controller or scene.train.get("controller", "mlp")
    if config.controller == scene.train.get("controller"):
        config.controller_options = {**scene.train.get("controller_options", {}),
                                     **config.controller_options}
    if scene.design is not None:
        config.controller = "design"
    config.backend = config.backend or scene.default_backend
    config.precision = config.precision or scene.train.get("precision", "float32")
    config.lr = config.lr if config.lr is not None else scene.train.get("lr", 0.01)
    config.lr_schedule = config.lr_schedule or scene.train.get("lr_schedule", "constant")
    config.seed = config.seed if config.seed is not None else 0
    config.iters = config.iters if config.iters is not None else scene.train.get("iters", 40)
    if config.batch is None:
        config.batch = scene.train.get("batch", 1)
    if config.backprop_window is None:
        config.backprop_window = scene.train.get("backprop_window", 0)
    _check_settings(config)
    check_batch_size(config.batch)
    if config.health not in ("stop", "mask"):
        raise ValueError(f"health={config.health!r} is unknown; allowed: stop, mask")
    if saved is not None:
        _check_same_run(saved["config"], config, Path(resume))
    with hold_lock(out, "training run"):
        return _train_locked(config, out, scene, saved, resume, progress, force)


def _holds_run(out: Path) -> bool:
    """Whether ``out`` holds iterations of a run (a checkpoint before iteration 0 and an empty
    log, left by a run that failed in its first iteration, lose nothing when replaced)."""
    log = out / "metrics.jsonl"
    if log.exists():
        return log.stat().st_size > 0
    return (out / "checkpoint.pt").exists()


def _train_locked(config: TrainConfig, out: Path, scene: Scene, saved: dict | None,
                  resume: str | Path | None, progress: bool, force: bool) -> TrainResult:
    holds_run = _holds_run(out)
    if resume is not None:
        if holds_run and Path(resume).resolve().parent != out.resolve():
            raise FileExistsError(
                f"{out} already holds another training run; resume into the checkpoint's own "
                f"folder {Path(resume).parent} or into an empty one"
            )
    elif holds_run:
        raise FileExistsError(
            f"{out} already holds a training run; pass resume={str(out / 'checkpoint.pt')!r} "
            f"(--resume) to continue it, or choose another output folder"
        )
    backend: Backend = resolve_backend(config.backend, config.device, config.precision)
    config.device = backend.device
    sim = make_simulator(scene, backend, batch_size=config.batch)
    check_rollout_size(sim, scene.steps, backward=True,
                       rollout_checkpoint=config.rollout_checkpoint, force=force)
    torch.manual_seed(config.seed)
    if scene.design is not None:
        # An inverse problem: the optimized module is the scene's design, not a controller.
        config.controller = "design"
        controller = scene.design(sim)
    else:
        controller = load_controller(config.controller, sim, scene, **config.controller_options)
    controller = controller.to(device=backend.torch_device, dtype=backend.torch_dtype)
    optimizer = make_optimizer(config.optimizer, controller.parameters(), config.lr)
    start = 0
    metrics: list[dict[str, float]] = []
    best: dict[str, Any] = {"loss": math.inf, "state": None}
    if saved is not None:
        try:
            controller.load_state_dict(saved["controller"])
            optimizer.load_state_dict(saved["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"checkpoint {resume} does not fit this controller ({err})") from None
        torch.set_rng_state(saved["rng"])
        start = int(saved["iteration"])
        metrics = list(saved["metrics"])
        best = saved["best"]
    with open(out / "config.json", "w") as f:
        json.dump(asdict(config), f, indent=2)
    # The log is rewritten from the checkpoint's metrics: lines of iterations after it are gone.
    log_path = out / "metrics.jsonl"
    with open(log_path, "w") as log:
        log.writelines(json.dumps(row) + "\n" for row in metrics)

    def save_checkpoint(iteration: int) -> None:
        save_data(
            {
                "format": CHECKPOINT_FORMAT,
                "config": asdict(config),
                "iteration": iteration,
                "controller": controller.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": torch.get_rng_state(),
                "metrics": metrics,
                "best": best,
            },
            out / "checkpoint.pt",
        )

    if saved is None:
        save_checkpoint(0)  # a run that fails in its first iteration can still be resumed
    threads = threads_for(sim.initial_state())
    validate = _validation(scene, backend, config)
    bar = tqdm(range(start, config.iters), initial=start, total=config.iters,
               desc=f"train {scene.name} [{getattr(sim, 'engine', backend)}]", disable=not progress, dynamic_ncols=True)
    flat = 0  # consecutive iterations with a gradient of exactly zero
    trainable = [p for p in controller.parameters() if p.requires_grad]
    with open(log_path, "a") as log:
        for iteration in bar:
            started = time.perf_counter()
            before_step = {k: v.detach().clone() for k, v in controller.state_dict().items()}

            def evaluate(iteration: int = iteration) -> tuple[torch.Tensor, Any, dict, float]:
                if scene.objective is not None:
                    loss, result, extra = scene.objective(sim, controller)
                else:
                    state, params = initial_worlds(
                        scene, sim, seed=config.seed * 1_000_003 + iteration)
                    if scene.goals is not None:
                        # Fresh goals every iteration, reproducible from seed and iteration.
                        schedule = scene.goals.sample(sim.batch_size, scene.steps,
                                                      seed=config.seed * 1_000_003 + iteration,
                                                      iteration=iteration)
                        result = goal_rollout(sim, state, controller, schedule, scene.steps,
                                              params=params, health=config.health,
                                              truncate_every=config.backprop_window or None)
                    else:
                        result = rollout(sim, state, controller, scene.steps, params=params,
                                         health=config.health,
                                         checkpoint_every=config.rollout_checkpoint,
                                         truncate_every=config.backprop_window or None)
                    loss, extra = scene.loss(result), {}
                optimizer.zero_grad()
                loss.backward()
                return loss, result, extra, _grad_norm(trainable)

            validated: dict[str, Any] = {}
            if validate is not None and (iteration % config.validate_every == 0
                                         or iteration + 1 == config.iters):
                with intra_op_threads(threads):
                    validated = validate(controller)
            for group in optimizer.param_groups:
                group["lr"] = scheduled_lr(config.lr, config.lr_schedule, iteration,
                                           config.iters)
            with intra_op_threads(threads):  # tiny torch ops single-threaded (threads.py)
                # The row logged is this first evaluation, at the parameters before the step.
                loss, result, extra, grad_norm = evaluate()
                healthy = math.isfinite(grad_norm) and bool(torch.isfinite(loss.detach()))
                if healthy:  # a non-finite iteration is skipped: no step, never best
                    _condition_gradient(trainable, grad_norm, config)
                    if _needs_closure(optimizer):
                        def closure() -> torch.Tensor:
                            again, *_, norm = evaluate()
                            _condition_gradient(trainable, norm, config)
                            return again

                        optimizer.step(closure)
                    else:
                        optimizer.step()
                optimizer.zero_grad()
            row = {
                "iteration": iteration,
                "lr": optimizer.param_groups[0]["lr"],
                "loss": float(loss.detach()),
                "grad_norm": grad_norm if math.isfinite(grad_norm) else None,
                "grad_finite": healthy,
                "seconds": time.perf_counter() - started,
                **scene.metrics(result),
                **extra,
                **validated,
            }
            if config.health == "mask":
                row["failed_worlds"] = len(result.failures)
            metrics.append(row)
            flat = flat + 1 if row["grad_norm"] == 0 else 0
            if flat == SATURATED_ITERATIONS:
                tqdm.write(
                    f"simdiff train: warning: the gradient has been exactly 0 for {flat} "
                    f"iterations (since iteration {iteration + 1 - flat}): the controller is "
                    f"probably saturated and will not learn; try a smaller --lr (now "
                    f"{config.lr:g})", file=sys.stderr)
            if validate is None:
                score = row["loss"]
            else:  # only validated iterations compete, on the fixed goals
                score = validated.get("validation_loss")
                score = math.nan if score is None else score
            if healthy and math.isfinite(score) and score < best["loss"]:
                best = {"loss": score, "iteration": iteration, "state": before_step,
                        "on": "training" if validate is None else "validation"}
            log.write(json.dumps(row) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{row['loss']:.4g}")
            if (iteration + 1) % config.checkpoint_every == 0 or iteration + 1 == config.iters:
                save_checkpoint(iteration + 1)
    save_data(controller.state_dict(), out / "controller.pt")
    if best["state"] is not None:
        save_data(best["state"], out / "best_controller.pt")
    return TrainResult(out, config, scene, sim, controller, metrics, best["state"],
                       {k: v for k, v in best.items() if k != "state"})


def _validation(scene: Scene, backend: Backend, config: TrainConfig):
    """``validate(controller) -> row fields`` on the scene's fixed validation goals, or None
    where the best iteration is chosen on the training loss (no goals, or validate_every 0)."""
    if scene.goals is None or config.validate_every == 0 or scene.objective is not None:
        return None
    worlds = max(config.batch, 2 * len(scene.goals.tasks))
    sim = make_simulator(scene, backend, batch_size=worlds)
    schedule = validation_schedule(scene.goals, worlds, scene.steps)

    def validate(controller: torch.nn.Module) -> dict[str, Any]:
        started = time.perf_counter()
        state, params = initial_worlds(scene, sim, seed=0)  # the same worlds every time
        with torch.no_grad():
            result = goal_rollout(sim, state, controller, schedule, scene.steps, params=params,
                                  health="mask")
            # A world that failed is no better controller: the iteration cannot be best.
            loss = math.inf if result.failures else float(scene.loss(result))
        figures = {f"validation_{k}": v for k, v in scene.metrics(result).items()
                   if isinstance(v, (int, float)) and not k.endswith(("_min", "_max"))}
        return {"validation_loss": loss if math.isfinite(loss) else None, **figures,
                "validation_seconds": time.perf_counter() - started}

    return validate
