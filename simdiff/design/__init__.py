"""Structural design: topology optimization of 2D elastic structures in pixels and through a
neural network (Hoyer, Sohl-Dickstein and Greydanus 2019; the 88-line code of Andreassen et al.
2011).

    from simdiff.design import get_problem, optimize
    result = optimize(get_problem("mbb_beam"), param="cnn", optimizer="lbfgs", iters=100)

Modules: ``fem`` (Q4 elements, assembly), ``solvers`` (direct and multigrid-preconditioned CG),
``kernels`` (the Taichi matrix-free operator), ``structure`` (filter, SIMP, compliance as a
torch autograd op), ``params`` (pixels, CNN, volume-constrained sigmoid), ``optimizers`` (OC,
MMA, L-BFGS, Adam), ``problems`` (the suite), ``classic`` (the exact 88-line algorithm),
``render``, ``suite`` and ``cli``.
"""

from simdiff.design.optimizers import DesignResult, optimize
from simdiff.design.problems import Problem, get_problem, list_problems
from simdiff.design.structure import Structure

__all__ = ["DesignResult", "Problem", "Structure", "get_problem", "list_problems", "optimize"]
