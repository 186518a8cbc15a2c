"""Whole rollout segments as one captured Warp graph and one torch autograd node.

An open-loop segment of ``K`` steps (actions known up front, e.g. a sinusoid controller's) needs
no Python between steps: its ``K`` steps' forward launches are captured once into a graph (a CUDA
graph on CUDA, Warp's CPU graph on the CPU) and replayed, and so are its adjoint launches in
reverse. Every step reads and writes its own slot of buffers preallocated per segment length:
carried state ``[K + 1, ...]``, per-step inputs and intermediates ``[K, ...]``. The carried
output of step ``k`` *is* the input slot of step ``k + 1``, so in backward Warp's accumulating
adjoints chain the steps exactly as a tape would, and a shared input (spring parameters) sums
its adjoint over all steps.

Measured (``benchmarks/mass_spring.py``, idle 2-core host): an open-loop 680-step training
iteration of the small walker takes 0.0059 s captured against 0.171 s step by step (29x).

Only Warp captures; :func:`capturable` says whether a simulator offers a :class:`SegmentSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from simdiff.autodiff import KernelStep
from simdiff.backend import BackendName

__all__ = ["SegmentSpec", "apply_segment", "capturable"]


@dataclass(frozen=True)
class SegmentSpec:
    """How one :class:`~simdiff.autodiff.KernelStep` chains into a segment.

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
