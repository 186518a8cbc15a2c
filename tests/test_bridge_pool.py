"""The bridge's buffer pool takes back only buffers no one else can reach, and hands out
zeros where zeros are asked for."""

import torch

from simdiff.bridge import POOL_BUFFER_BYTES, _empty, _Pool


def test_pool_reuses_only_unreachable_buffers():
    pool = _Pool()
    like = torch.zeros(1)
    a = _empty((4, 3), like)
    a.fill_(7.0)
    pool.give(a)
    again = pool.take((4, 3), like, zero=False)
    assert again.data_ptr() == a.data_ptr()  # the same block, not a new one
    del a
    zeros = (pool.give(again), pool.take((4, 3), like, zero=True))[1]
    assert torch.equal(zeros, torch.zeros(4, 3))  # zeroed on reuse
    view = zeros[1:]  # someone holds a view: its memory is not the pool's to reuse
    pool.give(zeros)
    assert pool.free[((4, 3), torch.float32)] == []
    del view, zeros
    held = _empty((2, 2), like)
    as_numpy = held.numpy()  # a numpy view of it is alive
    pool.give(held)
    assert pool.free.get(((2, 2), torch.float32)) in (None, [])
    del as_numpy
    big = torch.empty(POOL_BUFFER_BYTES // 4 + 1)
    pool.give(big)  # larger blocks are left to the allocator
    assert pool.free.get((tuple(big.shape), big.dtype)) in (None, [])
    grad = torch.zeros(3, requires_grad=True)
    pool.give(grad)
    assert pool.free.get(((3,), torch.float32)) in (None, [])
