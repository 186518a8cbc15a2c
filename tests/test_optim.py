"""simdiff.optim.Adam is torch.optim.Adam, bit for bit, without importing torch's compiler."""

import copy

import pytest
import torch

from simdiff.optim import Adam


def _params(seed: int) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=gen)) for shape in ((4, 3), (3,))]


def _run(cls, params, steps: int, seed: int, dtype=torch.float32, **options):
    gen = torch.Generator().manual_seed(seed + 1)
    opt = cls(params, lr=0.05, **options)
    for k in range(steps):
        for p in params:
            # Some iterations leave a parameter without a gradient (torch skips it).
            p.grad = None if (k == 2 and p.dim() == 1) else torch.randn(
                p.shape, generator=gen, dtype=dtype)
        opt.step()
    return opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", [{}, {"betas": (0.8, 0.99), "eps": 1e-6},
                                     {"amsgrad": True}, {"weight_decay": 0.1},
                                     {"maximize": True}])
def test_adam_equals_torch_bit_for_bit(dtype, options):
    ours = [p.detach().to(dtype).requires_grad_() for p in _params(0)]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    a = _run(Adam, ours, 6, 0, dtype, **options)
    b = _run(torch.optim.Adam, theirs, 6, 0, dtype, **options)
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)
    for p, q in zip(ours, theirs):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(a.state[p][key], b.state[q][key])
            assert a.state[p][key].dtype == b.state[q][key].dtype


def test_state_dicts_interchange_with_torch():
    """A checkpoint of torch's Adam continues in simdiff's and the reverse, identically."""
    first = _params(1)
    torch_opt = _run(torch.optim.Adam, first, 3, 1)
    saved = copy.deepcopy(torch_opt.state_dict())  # its tensors are the live state's
    continued = [p.detach().clone().requires_grad_() for p in first]
    ours = Adam(continued, lr=0.05)
    ours.load_state_dict(saved)
    assert ours.state_dict()["param_groups"] == saved["param_groups"]
    gen = torch.Generator().manual_seed(7)
    grads = [[torch.randn(p.shape, generator=gen) for p in first] for _ in range(3)]
    for step in grads:
        for p, q, g in zip(first, continued, step):
            p.grad, q.grad = g.clone(), g.clone()
        torch_opt.step()
        ours.step()
    for p, q in zip(first, continued):
        assert torch.equal(p, q)
    back = torch.optim.Adam([p.detach().clone().requires_grad_() for p in continued], lr=0.05)
    back.load_state_dict(copy.deepcopy(ours.state_dict()))
    assert torch.equal(back.state_dict()["state"][0]["exp_avg"], ours.state[continued[0]]["exp_avg"])


def test_closure_and_zero_grad():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = Adam([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    assert float(opt.step(closure).detach()) == pytest.approx(5.0)
    assert p.grad is not None
    opt.zero_grad()
    assert p.grad is None
    assert torch.allclose(p.detach(), torch.tensor([0.9, -1.9]))  # first step: lr * sign(g)


def test_make_optimizer_gives_it_for_adam():
    from simdiff.train import make_optimizer

    opt = make_optimizer("Adam", _params(2), 0.01)
    assert type(opt) is Adam and isinstance(opt, torch.optim.Adam)
