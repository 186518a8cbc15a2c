"""``torch.optim.Adam`` without importing ``torch._dynamo`` on its common path.

Every ``torch.optim`` optimizer imports ``torch._dynamo`` (and with it sympy and ~800 modules)
on its first ``add_param_group``, ``step``, ``zero_grad`` or ``state_dict``: torch marks those
methods "not to be traced by the compiler" with decorators that import the compiler lazily.
Measured in this process (torch 2.13 CPU): 71 MB of peak memory, a fifth of a training run's
(``simdiff train walker_small``; ``tests/test_footprint.py`` keeps it out).

:class:`Adam` *is* ``torch.optim.Adam`` (a subclass: the same arguments, checks, parameter
groups, state, ``state_dict`` format, hooks and schedulers), with two differences only in how
it runs: the four methods above call torch's undecorated functions, and ``step`` runs torch's
own single-tensor update, written out below with the same operations in the same order, so
the parameters it produces are bit for bit torch's (``tests/test_optim.py``). That path is
the one torch itself takes for CPU parameters with the default options; any other case
(CUDA parameters, where torch groups tensors into ``foreach`` kernels; ``amsgrad``,
``capturable``, ``differentiable``, ``fused``, ``foreach=True``, ``maximize``, weight decay,
tensor learning rates or betas, complex parameters, gradient scaling) is handed to
``torch.optim.Adam.step``, which imports the compiler as before.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["Adam"]


def _undecorated(method: Any) -> Any:
    """The function a ``torch._disable_dynamo`` decorator wraps (``functools.wraps`` keeps
    it as ``__wrapped__``), or the method itself where torch wraps it otherwise."""
    return getattr(method, "__wrapped__", method)


_Optimizer = torch.optim.Optimizer
_ADD_PARAM_GROUP = _undecorated(_Optimizer.add_param_group)
_ZERO_GRAD = _undecorated(_Optimizer.zero_grad)
_STATE_DICT = _undecorated(_Optimizer.state_dict)
_LOAD_STATE_DICT = _undecorated(_Optimizer.load_state_dict)
_STEP_DTYPE = {torch.float64: torch.float64}
"""The step counter's dtype by default dtype (torch's ``_get_scalar_dtype``: else float32)."""


class Adam(torch.optim.Adam):
    """``torch.optim.Adam`` (same arguments and results) that leaves the compiler unimported
    on CPU parameters with the default options (see the module docstring)."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _ADD_PARAM_GROUP(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        _ZERO_GRAD(self, set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return _STATE_DICT(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _LOAD_STATE_DICT(self, state_dict)

    def _plain(self) -> bool:
        """Whether every group and parameter takes torch's single-tensor default path."""
        if getattr(self, "grad_scale", None) is not None or \
                getattr(self, "found_inf", None) is not None:
            return False
        for group in self.param_groups:
            if (group["amsgrad"] or group["capturable"] or group["differentiable"]
                    or group["fused"] or group["foreach"] or group["maximize"]
                    or group["weight_decay"] != 0 or isinstance(group["lr"], torch.Tensor)
                    or any(isinstance(b, torch.Tensor) for b in group["betas"])):
                return False
            for p in group["params"]:
                if p.grad is not None and (p.device.type != "cpu" or torch.is_complex(p)
                                           or p.grad.is_sparse or type(p) not in
                                           (torch.Tensor, torch.nn.Parameter)):
                    return False
        return True

    def step(self, closure=None):
        """One Adam step (``closure`` re-evaluates the loss, as torch's)."""
        if not self._plain():
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                beta1, beta2 = group["betas"]
                lr, eps = group["lr"], group["eps"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state[p]
                    if len(state) == 0:  # torch's lazy initialization, same dtypes
                        state["step"] = torch.tensor(0.0, dtype=_STEP_DTYPE.get(
                            torch.get_default_dtype(), torch.float32))
                        state["exp_avg"] = torch.zeros_like(p,
                                                            memory_format=torch.preserve_format)
                        state["exp_avg_sq"] = torch.zeros_like(
                            p, memory_format=torch.preserve_format)
                    grad, exp_avg, exp_avg_sq = p.grad, state["exp_avg"], state["exp_avg_sq"]
                    state["step"] += 1
                    exp_avg.lerp_(grad, 1 - beta1)
                    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    step = state["step"].item()
                    bias_correction1 = 1 - beta1**step
                    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
                    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
                    p.addcdiv_(exp_avg, denom, value=-(lr / bias_correction1))
        return loss
