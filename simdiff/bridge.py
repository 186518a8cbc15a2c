"""The one bridge between the kernel backends and torch autograd.

A simulator step is a :class:`KernelStep`: a few kernel launches, each a kernel plus the
resident (static) arguments it needs. :func:`apply_step` runs it as a ``torch.autograd.Function``
whose backward launches the backend's adjoints of the same kernels in reverse (Warp's
``adjoint=True`` launch, Taichi's ``kernel.grad``). Kernels read inputs and write fresh outputs,
so backward needs only the saved step inputs and no tape: every step is one small autograd node
and torch owns the graph.

Whole open-loop segments run as one captured Warp graph and one autograd node
(:func:`apply_segment`, :class:`SegmentSpec`). An open-loop segment of ``K`` steps (actions known
up front, e.g. a sinusoid controller's) needs no Python between steps: its ``K`` steps' forward
launches are captured once into a graph (a CUDA graph on CUDA, Warp's CPU graph on the CPU) and
replayed, and so are its adjoint launches in reverse. Every step reads and writes its own slot of
buffers preallocated per segment length: carried state ``[K + 1, ...]``, per-step inputs and
intermediates ``[K, ...]``. The carried output of step ``k`` *is* the input slot of step
``k + 1``, so in backward Warp's accumulating adjoints chain the steps exactly as a tape would,
and a shared input (spring parameters) sums its adjoint over all steps. Measured
(``benchmarks/mass_spring.py``, idle 2-core host): an open-loop 680-step training iteration of
the small walker takes 0.0059 s captured against 0.171 s step by step (29x). Only Warp captures.

This is the only module that touches ``torch.autograd.Function`` for kernels, ``kernel.grad``
or Warp adjoint launches; the rollout loop (:mod:`simdiff.rollout`) imports it, never the
reverse.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from simdiff.backend import Backend, BackendName, taichi_runtime

__all__ = [
    "KernelLaunch",
    "KernelStep",
    "OutputSpec",
    "SegmentSpec",
    "apply_segment",
    "apply_step",
    "capturable",
    "return_free_memory",
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
    flat: frozenset = frozenset()
    """Names of inputs and outputs a Taichi kernel takes as 1D ndarrays (flat views of the
    contiguous buffers): Taichi's multi-dimensional ndarray indexing cost about 2.5x a flat
    one's in a particle loop."""
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
    cache: dict = field(default_factory=dict, compare=False, repr=False)
    """The bridge's facts about the step (when each buffer is last read)."""


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


def _empty(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """An uninitialized buffer of ``like``'s type; on the CPU from numpy (``malloc``).

    Torch's CPU allocator asks ``posix_memalign`` for 64-byte aligned blocks, and glibc serves
    an aligned request only from a free block larger than the request by the alignment: the
    block a step's output leaves when it is freed then fits no later output of the same size,
    so every step left one such hole in the heap (a 155 kB particle state per control step of
    an MPM rollout: 7 MB of free but resident heap after 51 steps). Plain ``malloc`` blocks
    of one size reuse each other's holes.
    """
    if like.device.type == "cpu" and like.dtype in _NUMPY_DTYPES:
        import numpy as np

        return torch.from_numpy(np.empty(tuple(shape), dtype=_NUMPY_DTYPES[like.dtype]))
    return torch.empty(tuple(shape), dtype=like.dtype, device=like.device)


def _copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``t``; on the CPU a single-threaded numpy copy, for the reason of
    :func:`_zeros` (the threaded ``clone`` of batched MPM grids in the Taichi adjoint below
    made grid_update's adjoint 14.5 ms instead of 3.8 ms, B = 8 crawlers, busy cores)."""
    if t.device.type == "cpu" and t.dtype in _NUMPY_DTYPES:
        return torch.from_numpy(t.detach().numpy().copy())
    return t.clone()


class _Pool:
    """Free CPU buffers of one step's intermediates, by shape and dtype, reused by its later
    launches, substeps and calls instead of being freed and allocated again.

    A step of 20 MPM substeps allocates and frees three buffers of 150-200 kB per substep, and
    its backward holds all 60 of a step's recomputed buffers at once while the rollout's saved
    states (tensors of the same size class) stay allocated between them. Returned to malloc,
    those blocks fragment its heap: the process held ~15 MB of free but resident heap beyond
    what it used (``benchmarks/mpm.py``'s crawler on Taichi, 1,020 substeps: peak 374 MB, 357
    MB with malloc's large blocks mapped apart, which made every buffer a fresh mapping and the
    iteration ~20% slower on page faults). Kept here instead, the same blocks serve every
    substep and step: the pool holds what one step's backward needs at most (11 MB for that
    crawler) and the heap no longer grows around it. Only buffers this bridge made and gave to
    no one are returned (one holding a view, a Warp array or a numpy view of a buffer keeps
    it out), and none over :data:`POOL_BUFFER_BYTES` (large blocks are mapped apart by malloc
    itself, and a pool would hold them after the step).
    """

    def __init__(self) -> None:
        self.free: dict[tuple, list[torch.Tensor]] = {}

    def take(self, shape: Sequence[int], like: torch.Tensor, zero: bool) -> torch.Tensor:
        """A buffer of ``shape`` and ``like``'s type: zeros when ``zero``, else uninitialized."""
        stack = self.free.get((tuple(shape), like.dtype)) if like.device.type == "cpu" else None
        if not stack:
            return _zeros(shape, like) if zero else _empty(shape, like)
        buffer = stack.pop()
        if zero:
            if buffer.dtype in _NUMPY_DTYPES:
                buffer.numpy().fill(0)  # single-threaded, as _zeros (no thread-pool fill)
            else:
                buffer.zero_()
        return buffer

    def give(self, buffer: torch.Tensor) -> None:
        """Take ``buffer`` back for reuse if no one else can still reach its memory."""
        if (buffer.device.type != "cpu" or buffer.requires_grad or buffer._base is not None
                or not buffer.is_contiguous()
                or buffer.numel() * buffer.element_size() > POOL_BUFFER_BYTES
                # 2: this tensor's reference and the temporary storage object's
                or torch._C._storage_Use_Count(buffer.untyped_storage()._cdata) > 2):
            return
        self.free.setdefault((tuple(buffer.shape), buffer.dtype), []).append(buffer)


POOL_BUFFER_BYTES = 8 * 2**20
"""Largest buffer a step's :class:`_Pool` keeps for reuse [bytes]."""


def _pool(step: KernelStep) -> _Pool:
    pool = step.cache.get("pool")
    if pool is None:
        pool = step.cache["pool"] = _Pool()
    return pool


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


_TAICHI_DTYPES = {torch.float32: "f32", torch.float64: "f64", torch.int32: "i32",
                  torch.int64: "i64", torch.uint8: "u8"}


def _taichi_resident(tensor: torch.Tensor, annotation: Any) -> Any:
    """A Taichi ndarray holding ``tensor``'s values for an ``ndarray`` kernel argument, or None
    where the annotation asks for something this does not build (then the tensor is passed)."""
    import taichi as ti
    from taichi.types.ndarray_type import NdarrayType

    if (not isinstance(annotation, NdarrayType) or tensor.dtype not in _TAICHI_DTYPES
            or tensor.numel() == 0):  # Taichi makes no empty ndarray (a robot without springs)
        return None
    element = annotation.dtype
    shape = tuple(tensor.shape)
    if element is None:
        array = ti.ndarray(getattr(ti, _TAICHI_DTYPES[tensor.dtype]), shape)
    elif isinstance(element, ti.lang.matrix.VectorType) and shape and shape[-1] == element.n:
        array = ti.ndarray(element, shape[:-1])
    else:
        return None
    array.from_numpy(tensor.detach().cpu().numpy())
    return array


def _taichi_static_args(launch: KernelLaunch, kernel: Any) -> tuple:
    """``launch.static_args`` with each torch tensor replaced by a Taichi ndarray copy, made
    once and remade only when the tensor changes (its in-place version counter moves) or
    Taichi was re-initialized (a precision switch frees every ndarray).

    Taichi's Python side handles a torch argument at every launch (about 60-75 us: pointer and
    shape extraction, environment lookups, a dtype-limits object), against a few us for its own
    ndarray; model data (spring indices, inverse masses) is passed on every step and every
    adjoint, so a small robot's step spent about a third of its launch time on it.
    """
    tensors = [(k, a) for k, a in enumerate(launch.static_args) if isinstance(a, torch.Tensor)]
    if not tensors:
        return launch.static_args
    versions = (taichi_runtime(), *((id(a), a._version) for _, a in tensors))
    cached = launch.cache.get(("taichi_static", kernel))
    if cached is not None and cached[0] == versions:
        return cached[1]
    arguments = kernel._primal.arguments  # Taichi's parsed signature: annotation per argument
    args = list(launch.static_args)
    for k, tensor in tensors:
        resident = _taichi_resident(tensor, arguments[k].annotation)
        if resident is not None:
            args[k] = resident
    static = tuple(args)  # the same object while it holds: a launcher compares identities
    launch.cache[("taichi_static", kernel)] = (versions, static)
    return static


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim`` (None where the C library has none)."""
    import ctypes
    import ctypes.util

    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c")), "malloc_trim", None)
    except OSError:  # pragma: no cover - no C library to load
        return None


def return_free_memory() -> None:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim``; nothing
    elsewhere). Called after a Taichi kernel compiles: compiling frees its temporaries into the
    heap in blocks that later, smaller allocations fragment, so they stayed resident (1-3 MB
    of an MPM training run's peak); and by ``simdiff train`` before its plots."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class _TaichiLauncher:
    """A Taichi kernel's launch with its static arguments set once, then only the tensors'
    pointers per call.

    Taichi's own ``kernel(*args)`` re-derives, for every argument of every launch, its
    template key, type checks, dtype limits and environment lookups (about 200 us per launch
    on the walker, more than the kernel). The launcher makes that first call through Taichi
    (which compiles), then keeps the compiled kernel and a setter per static argument, and
    sets each torch tensor's pointer, byte size, shape and gradient pointer directly. A call
    whose tensors differ in dtype, dimensions or ``requires_grad`` from the first, a CUDA
    tensor, or a Taichi that lacks these internals goes through Taichi's call instead.
    """

    def __init__(self, kernel: Any, static: tuple, tensors: Sequence[torch.Tensor]) -> None:
        kernel(*static, *tensors)  # compiles (or loads) it and checks every argument
        return_free_memory()
        self.kernel, self.static = kernel, static
        self.signature = self._signature(tensors)
        self.plan = None
        try:
            self.plan = self._plan(kernel, static, tensors)
        except (AttributeError, ImportError, KeyError, TypeError):  # pragma: no cover
            self.plan = None  # another Taichi: its own call path stays

    @staticmethod
    def _signature(tensors: Sequence[torch.Tensor]) -> tuple:
        return tuple([(t.dtype, t.dim(), t.requires_grad, t.is_cpu) for t in tensors])

    @staticmethod
    def _plan(kernel: Any, static: tuple, tensors: Sequence[torch.Tensor]):
        from taichi.lang import impl
        from taichi.lang._ndarray import Ndarray
        from taichi.lang.enums import Layout
        from taichi.lang.matrix import MatrixType
        from taichi.lang.util import cook_dtype
        from taichi.types import primitive_types
        from taichi.types.ndarray_type import NdarrayType
        from taichi.types.utils import is_signed

        if any(t.device.type != "cpu" for t in tensors):
            return None
        primal = getattr(kernel, "_primal", kernel)
        arguments = primal.arguments
        if len(arguments) != len(static) + len(tensors):
            return None
        prog = impl.get_runtime().prog
        target = kernel if hasattr(kernel, "compiled_kernels") else primal  # a Kernel object
        instance, _ = target.mapper.lookup((*static, *tensors))
        t_kernel = target.compiled_kernels[(target.func, instance, target.autodiff_mode)]
        compiled = prog.compile_kernel(prog.config(), prog.get_device_caps(), t_kernel)
        setters = []
        for k, (value, argument) in enumerate(zip(static, arguments)):
            needed = argument.annotation
            if id(needed) in primitive_types.real_type_ids:
                setters.append(("set_arg_float", (k,), float(value)))
            elif id(needed) in primitive_types.integer_type_ids and is_signed(cook_dtype(needed)):
                setters.append(("set_arg_int", (k,), int(value)))
            elif isinstance(needed, NdarrayType) and isinstance(value, Ndarray):
                if value.grad:
                    return None
                setters.append(("set_arg_ndarray", (k,), value.arr))
            elif isinstance(needed, MatrixType) and needed.ndim == 1 \
                    and needed.dtype in primitive_types.real_types:
                setters += [("set_struct_arg_float", (k, i), float(value[i]))
                            for i in range(needed.n)]
            else:
                return None
        element_dims = []
        for argument in arguments[len(static):]:
            needed = argument.annotation
            if not isinstance(needed, NdarrayType) or needed.layout != Layout.AOS:
                return None
            dtype = needed.dtype
            element_dims.append(0 if dtype is None or id(dtype) in primitive_types.type_ids
                                else dtype.ndim)
        first = len(static)
        return prog, compiled, t_kernel, setters, first, element_dims

    def __call__(self, static: tuple, tensors: Sequence[torch.Tensor]) -> None:
        if (self.plan is None or static is not self.static
                or self._signature(tensors) != self.signature):
            self.kernel(*static, *tensors)
            return
        prog, compiled, t_kernel, setters, first, element_dims = self.plan
        ctx = t_kernel.make_launch_context()
        for method, index, value in setters:
            getattr(ctx, method)(index, value)
        for k, (t, element) in enumerate(zip(tensors, element_dims)):
            shape = t.shape[:-element] if element else t.shape
            grad = t.grad if t.requires_grad else None
            ctx.set_arg_external_array_with_shape(
                (first + k,), t.data_ptr(), t.element_size() * t.numel(), list(shape),
                grad.data_ptr() if grad is not None else 0)
        prog.launch_kernel(compiled, ctx)


def _taichi_launch(launch: KernelLaunch, kernel: Any, tensors: Sequence[torch.Tensor],
                   owner: Any = None) -> None:
    """``kernel(*static_args, *tensors)`` through a :class:`_TaichiLauncher` kept per launch,
    kernel and Taichi runtime; ``owner`` is the ``@ti.kernel`` whose resident arguments a
    gradient kernel shares (default ``kernel``)."""
    static = _taichi_static_args(launch, owner or kernel)
    key = ("taichi_launcher", kernel)
    launcher = launch.cache.get(key)
    if launcher is None or launcher[0] != taichi_runtime():
        launch.cache[key] = (taichi_runtime(), _TaichiLauncher(kernel, static, tensors))
        return
    launcher[1](static, tensors)


def _flat_views(launch: KernelLaunch, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The launch's tensors (inputs then outputs), those named in ``launch.flat`` viewed 1D."""
    if not launch.flat:
        return tensors
    names = [name for name, _ in (*launch.inputs, *launch.outputs)]
    return [t.view(-1) if name in launch.flat else t for name, t in zip(names, tensors)]


def _last_reads(step: KernelStep) -> dict[str, int]:
    """The index of the last launch reading each buffer (the step's inputs and outputs: past
    the end, they are kept)."""
    last = {name: k for k, launch in enumerate(step.launches) for name, _ in launch.inputs}
    last.update({name: len(step.launches) for name in (*step.inputs, *step.outputs)})
    return last


def _run_forward(step: KernelStep, inputs: Sequence[torch.Tensor], keep: bool = True,
                 pooled: bool = False) -> dict[str, torch.Tensor]:
    """Every buffer of the step after running its launches; with ``keep=False`` only its
    outputs (intermediates go back to the step's pool after their last read: a step of 20 MPM
    substeps then holds one substep's grids at a time, not 20). ``pooled``: the outputs too
    are taken from the pool (the caller gives them back)."""
    buffers = dict(zip(step.inputs, inputs))
    last = step.cache.get("last_reads")
    if last is None:
        last = step.cache["last_reads"] = _last_reads(step)
    like = inputs[0]
    pool = _pool(step)
    # Cheap when nothing changed; re-initializes Taichi if another precision ran meanwhile.
    for backend in {launch.backend for launch in step.launches}:
        backend.ensure_initialized()
    for k, launch in enumerate(step.launches):
        args = [buffers[name] for name, _ in launch.inputs]
        # Intermediates come from the step's pool; the step's outputs leave it (``pooled``:
        # a recomputation for backward, whose outputs are the bridge's own).
        outs = [
            pool.take(o.shape, like, o.accumulates) if pooled or name not in step.outputs
            else _zeros(o.shape, like) if o.accumulates else _empty(o.shape, like)
            for name, o in launch.outputs
        ]
        if launch.backend.name is BackendName.WARP:
            _warp_run(launch, [*args, *outs])
        else:
            _taichi_launch(launch, launch.forward_kernel or launch.kernel,
                           _flat_views(launch, [*args, *outs]))
        buffers.update(zip((name for name, _ in launch.outputs), outs))
        if not keep:
            del args, outs
            for name, _ in launch.inputs:
                if last.get(name, -1) <= k and name in buffers:
                    pool.give(buffers.pop(name))
    return buffers


def _run_adjoint(
    launch: KernelLaunch,
    inputs: Sequence[torch.Tensor],
    outputs: Sequence[torch.Tensor],
    grad_outputs: Sequence[torch.Tensor],
    accumulate: Sequence[torch.Tensor | None] = (),
    scratch: Sequence[bool] = (),
    pool: _Pool | None = None,
) -> list[torch.Tensor]:
    """Gradients of one launch's inputs given its primal inputs, outputs and output gradients.

    A tensor in ``accumulate`` (one entry per input, or none) receives that input's gradient
    in place and is returned: both backends' adjoints add into their input adjoints. An
    output gradient marked in ``scratch`` (one entry per output, or none) is not read again
    by the caller, so Taichi may be given it without a copy. New input gradients come from
    ``pool`` where one is given.
    """
    def zeros(t: torch.Tensor) -> torch.Tensor:
        return _zeros(t.shape, t) if pool is None else pool.take(t.shape, t, True)

    if launch.backend.name is BackendName.WARP:
        into = list(accumulate) or [None] * len(inputs)
        grads_in = [zeros(t) if a is None else a for t, a in zip(inputs, into)]
        # Warp's adjoint of a store reads the output adjoint without changing it (our kernels
        # only write fresh outputs), so the incoming gradients are passed without copies.
        _warp_run(launch, [*inputs, *outputs], [*grads_in, *grad_outputs])
        return grads_in
    # Taichi reads and accumulates adjoints through each torch tensor's ``.grad``: the inputs'
    # are the buffers to accumulate into (or fresh zeros), which it adds into, as Warp does
    # (a torch addition per input and launch stalled for milliseconds on shared cores: 26 s of
    # a 95 s MPM iteration); the outputs' are copies, so torch's incoming gradients stay as
    # they were.
    into = list(accumulate) or [None] * len(inputs)
    grads_in = [zeros(t) if a is None else a for t, a in zip(inputs, into)]
    spare = list(scratch) or [False] * len(outputs)
    pairs = [*zip(inputs, grads_in),
             *((t, g if free else _copy(g)) for t, g, free in zip(outputs, grad_outputs, spare))]
    values = _flat_views(launch, [v for v, _ in pairs])
    grads = _flat_views(launch, [g for _, g in pairs])  # views: Taichi adds into grads_in
    leaves = []
    for value, grad in zip(values, grads):
        leaf = value.detach().requires_grad_(True)
        leaf.grad = grad
        leaves.append(leaf)
    _taichi_launch(launch, launch.kernel.grad, leaves, owner=launch.kernel)
    return grads_in


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
        buffers = _run_forward(step, inputs, keep=not step.recompute)
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
        pool = _pool(step) if step.recompute else None
        buffers = (_run_forward(step, [saved[n] for n in step.inputs], pooled=True)
                   if step.recompute else saved)
        adjoints = {
            name: g.contiguous() for name, g in zip(step.outputs, grad_outputs) if g is not None
        }
        # Adjoint buffers this backward made (not torch's incoming gradients): the adjoints
        # add into them in place, sparing a torch addition per input and launch (a parallel op
        # that stalled for milliseconds on shared cores, most of a 2D MPM backward).
        owned: set[str] = set()
        # Where a buffer is last needed going backward: once the launch that wrote it has run
        # its adjoint, neither its value nor its adjoint is read again, so a recomputed
        # substep's grids are freed as the backward passes them (memory of one substep's
        # grids, not of the whole step's).
        for launch in reversed(step.launches):
            outs = [buffers[name] for name, _ in launch.outputs]
            grads = _run_adjoint(
                launch,
                [buffers[name] for name, _ in launch.inputs],
                outs,
                [adjoints[name] if name in adjoints else _zeros(o.shape, o)
                 for (name, _), o in zip(launch.outputs, outs)],
                [adjoints[name] if name in owned else None for name, _ in launch.inputs],
                # Adjoints of this launch's outputs are freed right after it (below), and
                # those this backward made are not torch's incoming gradients.
                [name in owned or name not in adjoints for name, _ in launch.outputs],
                pool,
            )
            for (name, _), g in zip(launch.inputs, grads):
                if name in owned and g is adjoints[name]:
                    continue  # accumulated in place
                adjoints[name] = adjoints[name] + g if name in adjoints else g
                owned.add(name)
            del outs, grads
            for name, _ in launch.outputs:
                # A recomputed buffer is the bridge's own, the step's outputs too; adjoints of
                # intermediates are the bridge's (torch's incoming ones are the outputs').
                value = buffers.pop(name, None) if pool is not None or \
                    name not in step.outputs else None
                adjoint = adjoints.pop(name, None) if name not in step.outputs else None
                if pool is not None:
                    for t in (value, adjoint if name in owned else None):
                        if t is not None:
                            pool.give(t)
                del value, adjoint
        grads_in = [adjoints.get(name) for name in step.inputs]
        return (None, *(g if need else None for g, need in zip(grads_in, ctx.needs_input_grad[1:])))


def apply_step(step: KernelStep, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Run ``step`` on torch tensors as one differentiable torch operation."""
    return _StepFunction.apply(step, *inputs)


def run_forward(step: KernelStep, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Run ``step`` outside autograd, for operators with no derivative of their own (the
    Warp Laplacian inside a pressure solve, whose derivative is the adjoint solve)."""
    buffers = _run_forward(step, [t.detach().contiguous() for t in inputs], keep=False)
    return tuple(buffers[name] for name in step.outputs)


@dataclass(frozen=True)
class SegmentSpec:
    """How one :class:`~simdiff.bridge.KernelStep` chains into a segment.

    Attributes:
        step: The step's launches (Warp).
        carried: ``(input, output)`` pairs: the output of step ``k`` is the input of ``k + 1``.
        state_fields: The state fields the carried inputs are, in the same order.
        per_step: Inputs that take a new value every step (the action), given as ``[K, ...]``.
        shared: Inputs that are the same for every step of the segment, named as the
            simulator's ``rollout_inputs()``.
    """

    step: KernelStep
    carried: tuple[tuple[str, str], ...]
    state_fields: tuple[str, ...]
    per_step: tuple[str, ...]
    shared: tuple[str, ...]
    cache: dict = field(default_factory=dict, compare=False, repr=False)
    """Buffers and graphs per segment length; lives as long as the spec."""


def capturable(sim) -> SegmentSpec | None:
    """The simulator's segment spec if it runs on Warp and offers one, else None."""
    spec = getattr(sim, "segment_spec", lambda: None)()
    if spec is None or spec.step.launches[0].backend.name is not BackendName.WARP:
        return None
    return spec


class _Graphs:
    """One segment length's buffers (torch tensors that Warp views) and captured graphs."""

    def __init__(self, spec: SegmentSpec, steps: int, examples: dict[str, torch.Tensor]):
        import warp as wp

        self.spec, self.steps = spec, steps
        like = next(iter(examples.values()))
        self.device = spec.step.launches[0].backend.device
        carried_in = {i for i, _ in spec.carried}
        carried_out = {o: i for i, o in spec.carried}
        shapes: dict[str, tuple[int, ...]] = {}
        for name in spec.step.inputs:
            shapes[name] = tuple(examples[name].shape)
        for launch in spec.step.launches:
            for name, out in launch.outputs:
                shapes[name] = out.shape

        def new(shape):
            return torch.zeros(shape, dtype=like.dtype, device=like.device)

        # Primal buffers: carried [K+1, ...] (outputs alias the next slot), others [K, ...].
        self.values = {i: new((steps + 1, *shapes[i])) for i in carried_in}
        self.values.update({n: new((steps, *shapes[n])) for n in spec.per_step})
        self.values.update({n: new(shapes[n]) for n in spec.shared})
        for launch in spec.step.launches:
            for name, out in launch.outputs:
                if name not in carried_out:
                    self.values[name] = new((steps, *out.shape))
        self.adjoints = {n: torch.zeros_like(t) for n, t in self.values.items()}

        def slot(buffers, name, k):
            if name in carried_out:
                return buffers[carried_out[name]][k + 1]
            if name in spec.shared:
                return buffers[name]
            return buffers[name][k]

        def views(buffers, names_dtypes, k):
            return [wp.from_torch(slot(buffers, n, k), dtype=d, requires_grad=False)
                    for n, d in names_dtypes]

        for launch in spec.step.launches:  # compile before capturing
            wp.load_module(launch.kernel.module, device=self.device)
        with wp.ScopedCapture(device=self.device) as forward:
            for k in range(steps):
                for launch in spec.step.launches:
                    zeroed = [slot(self.values, n, k) for n, o in launch.outputs if o.accumulates]
                    for buffer in zeroed:  # accumulating outputs start from zero every replay
                        wp.from_torch(buffer, requires_grad=False).zero_()
                    wp.launch(launch.kernel, dim=launch.dim, device=self.device,
                              inputs=[*launch.static_args, *views(self.values, launch.inputs, k)],
                              outputs=views(self.values, [(n, o.warp_dtype) for n, o in
                                                          launch.outputs], k))
        with wp.ScopedCapture(device=self.device) as backward:
            for k in reversed(range(steps)):
                for launch in reversed(spec.step.launches):
                    outs = [(n, o.warp_dtype) for n, o in launch.outputs]
                    wp.launch(launch.kernel, dim=launch.dim, device=self.device, adjoint=True,
                              inputs=[*launch.static_args, *views(self.values, launch.inputs, k)],
                              outputs=views(self.values, outs, k),
                              adj_inputs=[None] * len(launch.static_args)
                              + views(self.adjoints, launch.inputs, k),
                              adj_outputs=views(self.adjoints, outs, k))
        self.forward_graph, self.backward_graph = forward.graph, backward.graph

    def _launch(self, graph, like: torch.Tensor) -> None:
        import warp as wp

        stream = None
        if like.device.type == "cuda":  # order the replay with torch's work on its stream
            stream = wp.stream_from_torch(torch.cuda.current_stream(like.device))
        wp.capture_launch(graph, stream=stream)

    def forward(self, initial: list[torch.Tensor], per_step: list[torch.Tensor],
                shared: list[torch.Tensor]) -> list[torch.Tensor]:
        spec = self.spec
        for (name, _), value in zip(spec.carried, initial):
            self.values[name][0].copy_(value)
        for name, value in zip(spec.per_step, per_step):
            self.values[name].copy_(value)
        for name, value in zip(spec.shared, shared):
            self.values[name].copy_(value)
        self._launch(self.forward_graph, initial[0])
        return [self.values[name].clone() for name, _ in spec.carried]

    def backward(self, initial: list[torch.Tensor], per_step: list[torch.Tensor],
                 shared: list[torch.Tensor], grads: list[torch.Tensor | None]):
        spec = self.spec
        # Replay forward so that every slot holds this segment's values (another segment of
        # the same length may have used the buffers since), then replay the adjoints.
        self.forward(initial, per_step, shared)
        for adjoint in self.adjoints.values():
            adjoint.zero_()
        for (name, _), grad in zip(spec.carried, grads):
            if grad is not None:
                self.adjoints[name].copy_(grad)
        self._launch(self.backward_graph, initial[0])
        return ([self.adjoints[n][0].clone() for n, _ in spec.carried],
                [self.adjoints[n].clone() for n in spec.per_step],
                [self.adjoints[n].clone() for n in spec.shared])


class _SegmentFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: SegmentSpec, counts: tuple[int, int], *tensors: torch.Tensor):
        n_carried, n_per_step = counts
        tensors = tuple(t.detach().contiguous() for t in tensors)
        initial = list(tensors[:n_carried])
        per_step = list(tensors[n_carried:n_carried + n_per_step])
        shared = list(tensors[n_carried + n_per_step:])
        steps = per_step[0].shape[0]
        graphs = spec.cache.get(steps)
        if graphs is None:
            examples = {**{i: t for (i, _), t in zip(spec.carried, initial)},
                        **{n: t[0] for n, t in zip(spec.per_step, per_step)},
                        **dict(zip(spec.shared, shared))}
            graphs = spec.cache[steps] = _Graphs(spec, steps, examples)
        trajectories = graphs.forward(initial, per_step, shared)
        ctx.spec, ctx.counts, ctx.graphs = spec, counts, graphs
        # Only the inputs are saved: one more forward replay in backward restores the rest.
        ctx.save_for_backward(*initial, *per_step, *shared)
        return tuple(trajectories)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        n_carried, n_per_step = ctx.counts
        saved = ctx.saved_tensors
        initial = list(saved[:n_carried])
        per_step = list(saved[n_carried:n_carried + n_per_step])
        shared = list(saved[n_carried + n_per_step:])
        g_initial, g_per_step, g_shared = ctx.graphs.backward(
            initial, per_step, shared, [g.contiguous() if g is not None else None for g in grads])
        out = [*g_initial, *g_per_step, *g_shared]
        return (None, None, *(g if need else None for g, need in zip(out, ctx.needs_input_grad[2:])))


def apply_segment(spec: SegmentSpec, initial: list[torch.Tensor], per_step: list[torch.Tensor],
                  shared: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Run ``K = per_step[0].shape[0]`` steps as one differentiable torch operation.

    Args:
        spec: How the step chains.
        initial: The carried inputs at step 0, in ``spec.carried`` order.
        per_step: ``[K, ...]`` tensors, in ``spec.per_step`` order.
        shared: Tensors the same for every step, in ``spec.shared`` order.

    Returns:
        Each carried quantity's trajectory ``[K + 1, ...]`` (slot 0 is the initial value).
    """
    if not per_step or per_step[0].shape[0] < 1:
        raise ValueError("a segment needs at least one step of per-step inputs")
    expected = spec.step.launches[0].backend.torch_dtype
    for t in [*initial, *per_step, *shared]:
        if t.is_floating_point() and t.dtype != expected:
            raise TypeError(f"segment input of {t.dtype}, but the backend computes in {expected}")
    return _SegmentFunction.apply(spec, (len(initial), len(per_step)), *initial, *per_step, *shared)
