"""Adam without ``torch.optim``'s import cost: the training loop's default optimizer.

Every ``torch.optim.Optimizer`` imports ``torch._dynamo`` (and with it SymPy) on its first
call, for graph breaks that only matter under ``torch.compile``: 70 MB of resident memory and
about a second, a quarter of what ``simdiff train walker_small`` needs above torch and the
kernel backend (measured: peak RSS +70 MB at the optimizer's construction). :class:`Adam`
performs the operations of ``torch.optim.Adam``'s single-tensor CPU path (the one torch takes
for CPU tensors) in the same order, so its parameters equal torch's bit for bit, and its
``state_dict`` has torch's layout: checkpoints move between the two.

Only the default configuration is offered (no AMSGrad, ``maximize``, fused or capturable
kernels); ask ``make_optimizer`` for any other ``torch.optim`` optimizer by name.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["Adam"]

_TORCH_GROUP_DEFAULTS = {
    "amsgrad": False,
    "maximize": False,
    "foreach": None,
    "capturable": False,
    "differentiable": False,
    "fused": None,
    "decoupled_weight_decay": False,
}
"""Options torch's Adam stores in each param group, at the values this class implements."""


class Adam:
    """Adam (Kingma and Ba 2015) with L2 weight decay added to the gradient, as torch's.

    Args:
        params: The tensors to optimize (an iterable of tensors; one parameter group).
        lr: Learning rate (> 0).
        betas: Decay rates of the first and second moment averages, each in [0, 1).
        eps: Added to the denominator (>= 0).
        weight_decay: L2 penalty coefficient (>= 0).
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        if not lr > 0:
            raise ValueError(f"lr={lr} must be > 0")
        if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
            raise ValueError(f"betas={betas} must be two values in [0, 1)")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"eps={eps} and weight_decay={weight_decay} must be >= 0")
        tensors = list(params)
        if not tensors or not all(isinstance(p, torch.Tensor) for p in tensors):
            raise TypeError("params must be a non-empty iterable of tensors")
        self.param_groups: list[dict[str, Any]] = [{
            "params": tensors, "lr": lr, "betas": tuple(betas), "eps": eps,
            "weight_decay": weight_decay, **_TORCH_GROUP_DEFAULTS,
        }]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the parameters' gradients (set them to None, as torch does by default)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One update from the parameters' gradients; ``closure`` (re)computes the loss first."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state.get(p)
                if state is None:
                    state = self.state[p] = {
                        "step": torch.tensor(0.0),
                        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                    }
                state["step"] += 1
                if group["weight_decay"] != 0:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                # The bias corrections in Python floats, as torch computes them off-device.
                step = state["step"].item()
                step_size = lr / (1 - beta1**step)
                bias_correction2_sqrt = (1 - beta2**step) ** 0.5
                denom = (state["exp_avg_sq"].sqrt() / bias_correction2_sqrt).add_(eps)
                p.addcdiv_(state["exp_avg"], denom, value=-step_size)
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The state in ``torch.optim.Adam``'s layout (parameters numbered in group order)."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        state = {index[id(p)]: {k: v.clone() for k, v in s.items()} for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state made by :meth:`state_dict` or by ``torch.optim.Adam``.

        Raises:
            ValueError: the state has another number of groups or parameters, another shape, or
                options this class does not implement (AMSGrad, ``maximize``...).
        """
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} parameter groups, expected "
                             f"{len(self.param_groups)}")
        params = [p for g in self.param_groups for p in g["params"]]
        ids = [i for g in groups for i in g["params"]]
        if len(ids) != len(params):
            raise ValueError(f"state_dict has {len(ids)} parameters, expected {len(params)}")
        for group, saved in zip(self.param_groups, groups):
            for key, value in _TORCH_GROUP_DEFAULTS.items():
                if saved.get(key, value) != value and key not in ("foreach", "fused"):
                    raise ValueError(f"state_dict has {key}={saved[key]!r}; this Adam "
                                     f"implements only {key}={value!r} (use torch.optim.Adam)")
            group.update({k: copy.deepcopy(v) for k, v in saved.items() if k != "params"})
        self.state = {}
        for i, p in zip(ids, params):
            saved = state_dict["state"].get(i)
            if saved is None:
                continue
            if saved["exp_avg"].shape != p.shape:
                raise ValueError(f"state_dict parameter {i} has shape "
                                 f"{tuple(saved['exp_avg'].shape)}, expected {tuple(p.shape)}")
            self.state[p] = {
                "step": saved["step"].detach().clone().float().cpu(),
                "exp_avg": saved["exp_avg"].detach().to(p).clone(),
                "exp_avg_sq": saved["exp_avg_sq"].detach().to(p).clone(),
            }
