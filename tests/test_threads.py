"""simdiff.threads: one torch intra-op thread for small systems, torch's setting restored."""

import pytest
import torch

from simdiff.sims.mass_spring.simulator import State
from simdiff.threads import SMALL_WORK_ELEMENTS, intra_op_threads, threads_for


def test_small_states_get_one_thread_and_large_ones_keep_torchs():
    small = State(torch.zeros(1, 20, 2), torch.zeros(1, 20, 2))
    n = SMALL_WORK_ELEMENTS // 2
    large = State(torch.zeros(1, n, 2), torch.zeros(1, n, 2))
    assert threads_for(small) == 1
    assert threads_for(large) == torch.get_num_threads()


def test_intra_op_threads_sets_and_restores_even_on_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"), intra_op_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="count=0"), intra_op_threads(0):
        pass
