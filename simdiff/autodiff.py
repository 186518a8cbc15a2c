"""The one bridge between the kernel backends and torch autograd.

A simulator step is a :class:`KernelStep`: a few kernel launches, each a kernel plus the
resident (static) arguments it needs. :func:`apply_step` runs it as a ``torch.autograd.Function``
whose backward launches the backend's adjoints of the same kernels in reverse (Warp's
``adjoint=True`` launch, Taichi's ``kernel.grad``). Kernels read inputs and write fresh outputs,
so backward needs only the saved step inputs and no tape: every step is one small autograd node
and torch owns the graph.

:func:`rollout` chains steps with a controller. With ``checkpoint_every=K`` it keeps only the
state at the start of every K-step segment and recomputes each segment in backward
(``torch.utils.checkpoint``), so memory grows with ``steps / K`` instead of ``steps``.

This is the only module that touches ``torch.autograd.Function``, ``kernel.grad`` or Warp
adjoint launches.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from simdiff.backend import Backend, BackendName
from simdiff.sims.base import SimulationError, Simulator, State

__all__ = [
    "KernelLaunch",
    "KernelStep",
    "OutputSpec",
    "Rollout",
    "apply_step",
    "rollout",
    "run_forward",
]


@dataclass(frozen=True)
class OutputSpec:
    """Shape and element type of one kernel output."""

    shape: tuple[int, ...]
    warp_dtype: Any = None  # Warp element type (e.g. ``wp.vec2d``) the tensor is viewed as
    accumulates: bool = True  # the kernel adds into it (zero it first) rather than writing it


@dataclass(frozen=True)
class KernelLaunch:
    """One kernel call: ``kernel(*static_args, *inputs, *outputs)``.

    Attributes:
        backend: The backend the kernel belongs to.
        kernel: A ``@ti.kernel`` or ``@wp.kernel`` function.
        dim: Number of Warp threads, or their shape (ignored by Taichi, whose kernels loop
            themselves).
        static_args: Resident, non-differentiable arguments passed first (Warp arrays or
            scalars; torch tensors or scalars for Taichi).
        inputs: Names of the step buffers the kernel reads, with the Warp element type of each.
        outputs: Names of the buffers the kernel writes, with their specs.
    """

    backend: Backend
    kernel: Any
    dim: int | tuple[int, ...]
    static_args: tuple
    inputs: tuple[tuple[str, Any], ...]
    outputs: tuple[tuple[str, OutputSpec], ...]
    forward_kernel: Any = None
    """Optional faster kernel computing the same outputs for forward only (Taichi); backward
    always differentiates ``kernel``. Used where the differentiable form is slow (atomics)."""
    cache: dict = field(default_factory=dict, compare=False, repr=False)
    """Per-launch state of the bridge (Warp's recorded commands); lives as long as the launch."""


@dataclass(frozen=True)
class KernelStep:
    """A differentiable step made of kernel launches that run in order.

    Each launch reads named buffers (the step's inputs or earlier launches' outputs) and writes
    new ones; the step returns the buffers named in ``outputs``. Backward runs the adjoint
    launches in reverse order, each given the primal values of its own inputs and outputs. Those
    are saved in forward, or with ``recompute=True`` recomputed from the saved step inputs (for
    steps whose intermediates, such as grids, are much larger than their inputs).
    """

    inputs: tuple[str, ...]
    launches: tuple[KernelLaunch, ...]
    outputs: tuple[str, ...]
    recompute: bool = False


_NUMPY_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


def _zeros(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """Zeros of ``like``'s type; on the CPU from calloc (numpy), single-threaded.

    Torch fills a large buffer on its thread pool, which waited milliseconds per call when the
    cores were shared (a 512 kB MPM grid: 12 ms against 0.6 ms from calloc, on 2 busy cores);
    those fills were 95% of a 3D MPM backward on Warp.
    """
    if like.device.type == "cpu" and like.dtype in _NUMPY_DTYPES:
        import numpy as np

        return torch.from_numpy(np.zeros(tuple(shape), dtype=_NUMPY_DTYPES[like.dtype]))
    return torch.zeros(tuple(shape), dtype=like.dtype, device=like.device)


def _warp_ndim(tensor: torch.Tensor, dtype: Any) -> int:
    """Dimensions of the Warp array viewing ``tensor`` with element type ``dtype``."""
    import warp as wp

    length = getattr(dtype, "_length_", None) if dtype is not None else None
    return tensor.dim() - 1 if length and wp.types.type_is_vector(dtype) else tensor.dim()


@functools.cache
def _array_t() -> Any:
    """The C struct a Warp kernel receives for an array argument (None if this Warp moved it)."""
    try:
        from warp._src.types import array_t
    except ImportError:  # pragma: no cover - another Warp layout: go through a wp.array
        return None
    return array_t


def _array_struct(tensor: torch.Tensor, dtype: Any, ndim: int) -> Any:
    """The kernel-argument struct of a Warp array viewing ``tensor`` (no wp.array is made).

    Building it directly costs about a microsecond, against several for ``wp.from_torch``; a
    step launches a handful of kernels with several arrays each, so this is a large share of a
    small robot's step.
    """
    array_t = _array_t()
    if array_t is None:
        import warp as wp

        return wp.from_torch(tensor, dtype=dtype, requires_grad=False).__ctype__()
    size = tensor.element_size()
    strides = tensor.stride()
    return array_t(
        data=tensor.data_ptr(),
        ndim=ndim,
        shape=tensor.shape,
        strides=[strides[k] * size for k in range(ndim)],
    )


class _WarpCommands:
    """Recorded forward and adjoint launches of one Warp kernel (``wp.launch(record_cmd=True)``).

    Replaying a recorded launch with new array parameters costs a few microseconds, against
    tens for a full ``wp.launch`` that packs every argument again: small robots are
    launch-bound, so this is where their speed comes from.
    """

    def __init__(self, launch: KernelLaunch) -> None:
        self.launch = launch
        self.first = len(launch.static_args)
        self.forward_cmd = None
        self.adjoint_cmd = None
        self.dtypes = [d for _, d in launch.inputs] + [o.warp_dtype for _, o in launch.outputs]
        self.ndims: list[int] | None = None
        self._cuda_stream: tuple[int, Any] | None = None
        self.cuda = launch.backend.device == "cuda"

    def _record(self, arrays: list, adj_arrays: list | None) -> Any:
        import warp as wp

        launch = self.launch
        n_in = len(launch.inputs)
        kwargs = {}
        if adj_arrays is not None:
            kwargs = {
                "adj_inputs": [None] * self.first + adj_arrays[:n_in],
                "adj_outputs": adj_arrays[n_in:],
                "adjoint": True,
            }
        return wp.launch(
            launch.kernel,
            dim=launch.dim,
            inputs=[*launch.static_args, *arrays[:n_in]],
            outputs=arrays[n_in:],
            device=launch.backend.device,
            record_cmd=True,
            **kwargs,
        )

    def _arrays(self, tensors: Sequence[torch.Tensor]) -> list:
        import warp as wp

        return [wp.from_torch(t, dtype=d, requires_grad=False) for t, d in zip(tensors, self.dtypes)]

    def run(self, tensors: Sequence[torch.Tensor], adj_tensors: Sequence[torch.Tensor] | None):
        if adj_tensors is None:
            if self.forward_cmd is None:
                self.forward_cmd = self._record(self._arrays(tensors), None)
            cmd = self.forward_cmd
        else:
            if self.adjoint_cmd is None:
                self.adjoint_cmd = self._record(self._arrays(tensors), self._arrays(adj_tensors))
            cmd = self.adjoint_cmd
        if self.ndims is None:
            self.ndims = [_warp_ndim(t, d) for t, d in zip(tensors, self.dtypes)]
        structs = _array_struct
        first = self.first
        for k, (t, d, nd) in enumerate(zip(tensors, self.dtypes, self.ndims)):
            cmd.set_param_at_index_from_ctype(first + k, structs(t, d, nd))
        if adj_tensors is not None:
            for k, (t, d, nd) in enumerate(zip(adj_tensors, self.dtypes, self.ndims)):
                cmd.set_param_at_index_from_ctype(first + k, structs(t, d, nd), adjoint=True)
        cmd.launch(self._stream(tensors[0]) if self.cuda else None)

    def _stream(self, like: torch.Tensor) -> Any:
        """On CUDA, torch's current stream, so kernels order with the torch ops around them."""
        if like.device.type != "cuda":
            return None
        import warp as wp

        torch_stream = torch.cuda.current_stream(like.device)
        if self._cuda_stream is None or self._cuda_stream[0] != torch_stream.cuda_stream:
            self._cuda_stream = (torch_stream.cuda_stream, wp.stream_from_torch(torch_stream))
        return self._cuda_stream[1]


def _warp_run(launch: KernelLaunch, tensors: Sequence[torch.Tensor], adj=None) -> None:
    commands = launch.cache.get("warp_commands")
    if commands is None:
        commands = launch.cache["warp_commands"] = _WarpCommands(launch)
    commands.run(tensors, adj)


def _run_forward(step: KernelStep, inputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    buffers = dict(zip(step.inputs, inputs))
    like = inputs[0]
    for launch in step.launches:
        # Cheap when nothing changed; re-initializes Taichi if another precision ran meanwhile.
        launch.backend.ensure_initialized()
        args = [buffers[name] for name, _ in launch.inputs]
        outs = [
            _zeros(o.shape, like) if o.accumulates
            else torch.empty(o.shape, dtype=like.dtype, device=like.device)
            for _, o in launch.outputs
        ]
        if launch.backend.name is BackendName.WARP:
            _warp_run(launch, [*args, *outs])
        else:
            (launch.forward_kernel or launch.kernel)(*launch.static_args, *args, *outs)
        buffers.update(zip((name for name, _ in launch.outputs), outs))
    return buffers


def _run_adjoint(
    launch: KernelLaunch,
    inputs: Sequence[torch.Tensor],
    outputs: Sequence[torch.Tensor],
    grad_outputs: Sequence[torch.Tensor],
    accumulate: Sequence[torch.Tensor | None] = (),
) -> list[torch.Tensor]:
    """Gradients of one launch's inputs given its primal inputs, outputs and output gradients.

    On Warp, a tensor in ``accumulate`` (one entry per input, or none) receives that input's
    gradient in place (Warp's adjoints add into their arrays) and is returned; Taichi ignores it.
    """
    if launch.backend.name is BackendName.WARP:
        into = list(accumulate) or [None] * len(inputs)
        grads_in = [_zeros(t.shape, t) if a is None else a for t, a in zip(inputs, into)]
        # Warp's adjoint of a store reads the output adjoint without changing it (our kernels
        # only write fresh outputs), so the incoming gradients are passed without copies.
        _warp_run(launch, [*inputs, *outputs], [*grads_in, *grad_outputs])
        return grads_in
    grads_in = [_zeros(t.shape, t) for t in inputs]
    # Taichi reads and accumulates adjoints through each torch tensor's ``.grad``.
    leaves = []
    for value, grad in [*zip(inputs, grads_in), *zip(outputs, grad_outputs)]:
        leaf = value.detach().requires_grad_(True)
        leaf.grad = grad.clone()
        leaves.append(leaf)
    launch.kernel.grad(*launch.static_args, *leaves)
    return [leaf.grad for leaf in leaves[: len(inputs)]]


def _check_dtypes(step: KernelStep, inputs: Sequence[torch.Tensor]) -> None:
    """Kernels read raw memory: a float64 tensor given to float32 kernels would be misread
    (Warp) or silently converted (Taichi), so a mismatch is an error naming the input."""
    backend = step.launches[0].backend
    expected = backend.torch_dtype
    for name, t in zip(step.inputs, inputs):
        if t.dtype != expected and t.is_floating_point():
            raise TypeError(
                f"step input {name!r} is {t.dtype} but the backend {backend} computes in "
                f"{expected}; convert it (tensor.to({expected})) or choose that precision"
            )


class _StepFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, step: KernelStep, *inputs: torch.Tensor):
        inputs = tuple(t.detach().contiguous() for t in inputs)
        _check_dtypes(step, inputs)
        buffers = _run_forward(step, inputs)
        ctx.step = step
        ctx.names = list(step.inputs) if step.recompute else list(buffers)
        ctx.save_for_backward(*(buffers[name] for name in ctx.names))
        return tuple(buffers[name] for name in step.outputs)

    @staticmethod
    def backward(ctx, *grad_outputs: torch.Tensor):
        step: KernelStep = ctx.step
        saved = dict(zip(ctx.names, ctx.saved_tensors))
        if not any(ctx.needs_input_grad[1:]):
            return (None,) * (len(step.inputs) + 1)
        buffers = _run_forward(step, [saved[n] for n in step.inputs]) if step.recompute else saved
        adjoints = {
            name: g.contiguous() for name, g in zip(step.outputs, grad_outputs) if g is not None
        }
        # Adjoint buffers this backward made (not torch's incoming gradients): Warp adds into
        # them in place, sparing a torch addition per input and launch (a parallel op that
        # stalled for milliseconds on shared cores, most of a 2D MPM backward).
        owned: set[str] = set()
        for launch in reversed(step.launches):
            outs = [buffers[name] for name, _ in launch.outputs]
            grads = _run_adjoint(
                launch,
                [buffers[name] for name, _ in launch.inputs],
                outs,
                [adjoints[name] if name in adjoints else _zeros(o.shape, o)
                 for (name, _), o in zip(launch.outputs, outs)],
                [adjoints[name] if name in owned else None for name, _ in launch.inputs],
            )
            for (name, _), g in zip(launch.inputs, grads):
                if name in owned and g is adjoints[name]:
                    continue  # accumulated in place
                adjoints[name] = adjoints[name] + g if name in adjoints else g
                owned.add(name)
        grads_in = [adjoints.get(name) for name in step.inputs]
        return (None, *(g if need else None for g, need in zip(grads_in, ctx.needs_input_grad[1:])))


def apply_step(step: KernelStep, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Run ``step`` on torch tensors as one differentiable torch operation."""
    return _StepFunction.apply(step, *inputs)


def run_forward(step: KernelStep, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Run ``step`` outside autograd, for operators with no derivative of their own (the
    Warp Laplacian inside a pressure solve, whose derivative is the adjoint solve)."""
    buffers = _run_forward(step, [t.detach().contiguous() for t in inputs])
    return tuple(buffers[name] for name in step.outputs)


Controller = Callable[[int, State], torch.Tensor | None]


@dataclass
class Rollout:
    """The result of :func:`rollout`.

    Attributes:
        initial: The state the rollout started from.
        final: The state after the last step, differentiable.
        steps: Number of steps taken.
        frames: Detached copies of the states at every ``record_every`` steps, keyed by step.
        actions: Detached actions at the recorded steps, keyed by step.
    """

    initial: State
    final: State
    steps: int
    frames: dict[int, State] = field(default_factory=dict)
    actions: dict[int, torch.Tensor] = field(default_factory=dict)
    simulator: Simulator | None = None
    """The simulator that ran it (for diagnostics; rendering reads only the frames)."""

    def recorded(self) -> list[State]:
        return [self.frames[k] for k in sorted(self.frames)]


def _captured_rollout(sim, spec, state, controller, steps, result, shared, segment,
                      record_every, check_every) -> Rollout:
    from simdiff.capture import apply_segment

    like = getattr(state, spec.state_fields[0])
    width = max(sim.action_dim, 1)
    if controller is None or sim.action_dim == 0:
        actions = like.new_zeros(steps, width)
    else:
        actions = controller.actions(steps).to(like.dtype)
        if actions.shape != (steps, sim.action_dim):
            raise ValueError(f"controller.actions({steps}) has shape {tuple(actions.shape)}; "
                             f"expected ({steps}, {sim.action_dim})")
    current = state
    for t0 in range(0, steps, segment):
        t1 = min(t0 + segment, steps)
        trajectories = apply_segment(spec, [getattr(current, f) for f in spec.state_fields],
                                     [actions[t0:t1]], [shared[n] for n in spec.shared])

        def state_at(t: int, detach: bool = True, _tr=trajectories, _t0=t0) -> State:
            return sim.state_from(**{f: (tr[t - _t0].detach() if detach else tr[t - _t0]).clone()
                                     for f, tr in zip(spec.state_fields, _tr)})

        for t in range(t0, t1):
            if record_every > 0 and t % record_every == 0:
                result.frames[t] = state_at(t)
                if controller is not None:
                    result.actions[t] = actions[t].detach().clone()
        # A clone of the last slot, so that the trajectory itself is not kept alive.
        current = state_at(t1, detach=False)
        if check_every and sim.check_state(current) is not None:
            for t in range(t0 + 1, t1 + 1):
                problem = sim.check_state(state_at(t))
                if problem is not None:
                    raise SimulationError(f"step {t} of {steps}: {problem}")
    if record_every > 0:
        result.frames[steps] = current.detach()
    result.final = current
    return result


def rollout(
    sim: Simulator,
    state: State,
    controller: Controller | None,
    steps: int,
    *,
    checkpoint_every: int | None = None,
    record_every: int = 0,
    check_every: int = 1,
    step_options: dict[str, Any] | None = None,
    capture: bool | None = None,
) -> Rollout:
    """Advance ``state`` by ``steps`` steps, asking ``controller(step, state)`` for each action.

    Args:
        sim: The simulator.
        state: The initial state (its tensors may require grad).
        controller: Maps the step index and the current state to an action, or ``None`` for an
            unactuated rollout.
        steps: Number of steps, at least 1.
        checkpoint_every: If given, keep only one state every this many steps and recompute
            the segments in backward; gradients are unchanged, memory is bounded.
        record_every: If positive, keep a detached copy of every such step's state (for
            rendering), including the first and last.
        check_every: Check for NaN or blow-up every this many steps (0 disables).
        step_options: Extra keyword arguments of every ``sim.step`` (e.g. a time step ``dt``
            that is a tensor being optimized).
        capture: Run open-loop segments as captured graphs (:mod:`simdiff.capture`): each
            segment (``checkpoint_every`` steps, or all) is one graph replay and one autograd
            node that saves only its inputs. ``None`` (default) captures where possible: a
            Warp simulator with a segment spec and a controller that is ``None`` or open-loop
            (it has ``actions(steps)``, the whole action sequence as one tensor). ``True``
            refuses to run otherwise. States are checked for blow-up at segment ends (a NaN
            persists, so the first bad step is then found in the segment's trajectory).

    Raises:
        SimulationError: naming the step and quantity if the state stops being finite or
            bounded.
    """
    if steps < 1:
        raise ValueError(f"steps={steps} must be at least 1")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"checkpoint_every={checkpoint_every} must be at least 1 or None")
    result = Rollout(initial=state, final=state, steps=steps, simulator=sim)

    def record(t: int, s: State, action: torch.Tensor | None) -> None:
        if record_every > 0 and (t % record_every == 0 or t == steps):
            result.frames[t] = s.detach()
            if action is not None:
                result.actions[t] = action.detach().clone()

    shared = {**sim.rollout_inputs(), **(step_options or {})}
    spec = None
    if capture is not False:
        from simdiff.capture import capturable

        open_loop = controller is None or callable(getattr(controller, "actions", None))
        spec = capturable(sim) if open_loop else None
        if spec is not None and set(shared) != set(spec.shared):
            spec = None  # step options the captured step does not take
        if capture and spec is None:
            raise ValueError(
                "capture=True needs a simulator on warp that offers a segment spec "
                "(mass_spring) and a controller that is None or open-loop (has actions(steps))"
            )
    if spec is not None:
        return _captured_rollout(sim, spec, state, controller, steps, result, shared,
                                 checkpoint_every or steps, record_every, check_every)

    def advance(t0: int, t1: int, s: State) -> State:
        for t in range(t0, t1):
            action = controller(t, s) if controller is not None else None
            record(t, s, action)
            s = sim.step(s, action, **shared)
            if check_every and ((t + 1) % check_every == 0 or t + 1 == steps):
                problem = sim.check_state(s)
                if problem is not None:
                    raise SimulationError(f"step {t + 1} of {steps}: {problem}")
        return s

    if checkpoint_every is None or not torch.is_grad_enabled():
        final = advance(0, steps, state)
    else:
        final = state
        names = final.field_names()
        for t0 in range(0, steps, checkpoint_every):
            t1 = min(t0 + checkpoint_every, steps)

            def segment(*tensors: torch.Tensor, _t0: int = t0, _t1: int = t1) -> tuple:
                return advance(_t0, _t1, type(state).from_tensors(names, tensors)).tensors()

            final = type(state).from_tensors(
                names, checkpoint(segment, *final.tensors(), use_reentrant=False)
            )
    record(steps, final, None)
    result.final = final
    return result
