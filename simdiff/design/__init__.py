"""Structural design: topology optimization of 2D elastic structures in pixels and through a
neural network (Hoyer, Sohl-Dickstein and Greydanus 2019; the 88-line code of Andreassen et al.
2011).

    from simdiff.design import get_problem, optimize
    result = optimize(get_problem("mbb_beam"), param="cnn", optimizer="lbfgs", iters=100)

Modules: ``fem`` (Q4 elements, assembly), ``solvers`` (direct and multigrid-preconditioned CG),
``kernels`` (the Taichi matrix-free operator), ``structure`` (filter, SIMP, compliance as a
torch autograd op), ``params`` (pixels, CNN, volume-constrained sigmoid), ``optimizers`` (OC,
MMA, L-BFGS, Adam), ``problems`` (the suite), ``classic`` (the exact 88-line algorithm),
``render``, ``suite`` and ``cli``. Importing this package loads none of them (``simdiff``'s
command line registers ``simdiff design`` without SciPy); a name is imported on first use.
"""

__all__ = ["DesignResult", "Problem", "Structure", "get_problem", "list_problems", "optimize"]

_HOMES = {
    "DesignResult": "optimizers",
    "optimize": "optimizers",
    "Problem": "problems",
    "get_problem": "problems",
    "list_problems": "problems",
    "Structure": "structure",
}


def __getattr__(name: str):
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"simdiff.design.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'simdiff.design' has no attribute {name!r}")
