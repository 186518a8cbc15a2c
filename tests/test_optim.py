"""simdiff.optim.Adam: torch.optim.Adam's update bit for bit, its checkpoint layout both ways,
and no torch._dynamo import (the reason it exists)."""

import subprocess
import sys

import pytest
import torch

from simdiff.optim import Adam


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))


def _train(model, optimizer, steps: int, seed: int = 1) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = torch.randn(9, 5, generator=gen)

        def closure(x=x):
            optimizer.zero_grad()
            loss = (model(x) ** 2).sum()
            loss.backward()
            return loss

        losses.append(float(optimizer.step(closure).detach()))
    return losses


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_equals_torch_adam_bit_for_bit(weight_decay):
    ours, theirs = _model(0), _model(0)
    lo = _train(ours, Adam(ours.parameters(), lr=0.05, weight_decay=weight_decay), 12)
    lt = _train(theirs, torch.optim.Adam(theirs.parameters(), lr=0.05,
                                         weight_decay=weight_decay), 12)
    assert lo == lt
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)


def test_adam_state_dict_moves_between_torch_and_simdiff():
    ref = _model(0)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.02)
    _train(ref, ref_opt, 4)
    # torch's state into ours, continue both: the same parameters.
    mine = _model(0)
    mine.load_state_dict(ref.state_dict())
    mine_opt = Adam(mine.parameters(), lr=0.02)
    mine_opt.load_state_dict(ref_opt.state_dict())
    _train(ref, ref_opt, 3, seed=2)
    _train(mine, mine_opt, 3, seed=2)
    for a, b in zip(mine.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    # ours into torch's.
    back = _model(0)
    back.load_state_dict(mine.state_dict())
    back_opt = torch.optim.Adam(back.parameters(), lr=0.02)
    back_opt.load_state_dict(mine_opt.state_dict())
    _train(mine, mine_opt, 2, seed=3)
    _train(back, back_opt, 2, seed=3)
    for a, b in zip(mine.parameters(), back.parameters()):
        assert torch.equal(a, b)


def test_adam_refuses_states_it_cannot_continue():
    model = _model(0)
    opt = torch.optim.Adam(model.parameters(), amsgrad=True)
    _train(model, opt, 1)
    with pytest.raises(ValueError, match="amsgrad=True"):
        Adam(model.parameters()).load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="lr=0"):
        Adam(model.parameters(), lr=0.0)


def test_adam_steps_without_importing_torch_dynamo():
    code = (
        "import sys, torch\n"
        "from simdiff.optim import Adam\n"
        "m = torch.nn.Linear(3, 1)\n"
        "opt = Adam(m.parameters())\n"
        "m(torch.ones(2, 3)).sum().backward()\n"
        "opt.step(); opt.zero_grad(); opt.load_state_dict(opt.state_dict())\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
