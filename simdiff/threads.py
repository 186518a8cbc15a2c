"""Torch's intra-op threads chosen for the size of the work.

A rollout of a small system runs thousands of tiny torch operations per iteration (the
controller's matmuls on a 21-vector, observations, clones of 20 particles) between kernel
launches. Torch hands some of them to its intra-op thread pool, whose threads must all be
scheduled before the operation ends: on a host whose cores other jobs share, a 21x20 by 20x4
matmul then waits a scheduler time slice, 10 ms instead of 2-6 us, and closed-loop training of
the small walker ran 30x slower (issue 18). Work that small gains nothing from threads, so
:func:`threads_for` picks one thread for it; the kernels keep their own threads (Taichi's pool,
Warp's CPU launches do not use torch's).

The cut is measured, not torch's ``GRAIN_SIZE`` (32,768 elements, above which it splits an
elementwise operation across threads): the smoke plume, forward and backward on torch,
interleaved on this 2-core host under load (load average about 20), ran 4.0x faster on one
thread than on two at 128^2 (velocity 33,282 elements: 17.8 s against 71.8 s per 100 steps)
and 4.5x faster at 256^2 (132,098 elements: 17.3 s against 78.0 s per 10 steps). So
everything up to :data:`SMALL_WORK_ELEMENTS` runs on one thread; larger states keep torch's
setting (not measured there).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch

__all__ = ["SMALL_WORK_ELEMENTS", "intra_op_threads", "threads_for"]

SMALL_WORK_ELEMENTS = 262144
"""Largest state tensor (elements, all worlds) run single-threaded (measured up to 132,098, a
256^2 fluid's velocity; see the module docstring)."""


def threads_for(state) -> int:
    """Torch intra-op threads for rolling out ``state``'s system: 1 when its largest tensor
    has fewer than :data:`SMALL_WORK_ELEMENTS` elements, else torch's current setting."""
    tensors = [getattr(state, f.name) for f in dataclasses.fields(state)]
    largest = max((t.numel() for t in tensors if isinstance(t, torch.Tensor)), default=0)
    return 1 if largest < SMALL_WORK_ELEMENTS else torch.get_num_threads()


@contextlib.contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads, restoring the setting after.

    Raises:
        ValueError: ``count`` is not a positive integer.
    """
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count={count!r} must be a positive integer (torch intra-op threads)")
    previous = torch.get_num_threads()
    if count != previous:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
