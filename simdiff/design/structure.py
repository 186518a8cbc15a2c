"""A problem made differentiable: density filter, SIMP stiffness, compliance and its adjoint.

``Structure(problem)`` builds the grid and a solver once; then

    x_phys = structure.physical(x)        # forced regions, cone filter, forced regions again
    c = structure.compliance(x_phys)      # one torch autograd op: solve forward, adjoint back
    v = structure.volume(x_phys)          # mean density of the designable elements

all in float64 torch tensors of shape ``(nely, nelx)``. Compliance is self-adjoint
(``c = f^T u`` with ``K u = f``), so its gradient needs no second solve:
``dc/dx_e = -p x_e^(p-1) (E0 - Emin) u_e^T KE u_e``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from simdiff.design.fem import Grid
from simdiff.design.problems import Problem
from simdiff.design.solvers import SolveError, make_solver
from simdiff.sims.base import SimulationError

__all__ = ["ComplianceFunction", "Structure", "cone_filter", "cone_kernel"]


@functools.lru_cache(maxsize=16)
def cone_kernel(rmin: float) -> torch.Tensor:
    """Weights ``max(0, rmin - distance)`` on the ``(2k - 1)^2`` stencil, ``k = ceil(rmin)``."""
    k = math.ceil(rmin) - 1
    d = torch.arange(-k, k + 1, dtype=torch.float64)
    dist = torch.sqrt(d[:, None] ** 2 + d[None, :] ** 2)
    return torch.clamp(rmin - dist, min=0.0)


@functools.lru_cache(maxsize=16)
def _filter_weights(rmin: float, shape: tuple[int, int]) -> torch.Tensor:
    """``Hs``: the sum of the in-domain weights of each element (zero padding)."""
    w = cone_kernel(rmin)
    return F.conv2d(torch.ones(shape, dtype=torch.float64)[None, None], w[None, None],
                    padding=w.shape[0] // 2)[0, 0]


def cone_filter(x: torch.Tensor, rmin: float) -> torch.Tensor:
    """The 88-line density filter ``(H x) / Hs``: a cone-weighted mean over the elements within
    ``rmin`` (zero padding, so the weights are renormalized at the boundary)."""
    w = cone_kernel(rmin).to(x)
    pad = w.shape[0] // 2
    if pad == 0:
        return x
    num = F.conv2d(x[None, None], w[None, None], padding=pad)[0, 0]
    return num / _filter_weights(float(rmin), tuple(x.shape)).to(x)


class ComplianceFunction(torch.autograd.Function):
    """``c(x_phys)``: one finite-element solve forward, the adjoint (self-adjoint) sensitivity
    backward."""

    @staticmethod
    def forward(ctx, x_phys: torch.Tensor, structure: Structure) -> torch.Tensor:
        p = structure.problem
        x = x_phys.detach().to("cpu", torch.float64).numpy().T.ravel()  # column-major elements
        if not np.all(np.isfinite(x)):  # nothing to solve: the caller reports the iteration
            ctx.save_for_backward(torch.full_like(x_phys, float("nan")))
            return x_phys.new_tensor(float("nan"))
        young = p.emin + x**p.penal * (p.e0 - p.emin)
        u = structure.solver.solve(young, structure.force)
        c = float(structure.force @ u)
        structure.last_displacement = u
        energies = structure.grid.element_energies(u)
        dc = -p.penal * np.maximum(x, 0.0) ** (p.penal - 1) * (p.e0 - p.emin) * energies
        ctx.save_for_backward(torch.from_numpy(dc.reshape(p.nelx, p.nely).T.copy()).to(x_phys))
        return x_phys.new_tensor(c)

    @staticmethod
    def backward(ctx, grad_output):
        (dc,) = ctx.saved_tensors
        return grad_output * dc, None


class Structure:
    """A validated problem with its grid, solver and filter.

    Args:
        problem: The design problem (validated here).
        solver: ``auto``, ``direct``, ``mgcg`` or ``jacobi`` (see :mod:`simdiff.design.solvers`).
        solver_options: Passed to the iterative solver (``rtol``, ``smoothing`` ...).
    """

    def __init__(self, problem: Problem, solver: str = "auto", **solver_options) -> None:
        problem.validate()
        self.problem = problem
        self.grid = Grid(problem.nelx, problem.nely, problem.fixed.reshape(-1).copy(), problem.nu)
        self.force = np.where(self.grid.fixed, 0.0, problem.forces.reshape(-1))
        self.solver = make_solver(solver, self.grid, **solver_options)
        self.last_displacement: np.ndarray | None = None
        shape = (problem.nely, problem.nelx)
        self.forced = problem.void is not None or problem.solid is not None
        self.void = torch.from_numpy(np.zeros(shape, bool) if problem.void is None else problem.void)
        self.solid = torch.from_numpy(np.zeros(shape, bool) if problem.solid is None else problem.solid)
        self.design_mask = torch.from_numpy(problem.design_mask)
        self.n_design = int(self.design_mask.sum())
        self._volume_weights = self.design_mask.to(torch.float64) / self.n_design

    @property
    def shape(self) -> tuple[int, int]:
        return self.problem.nely, self.problem.nelx

    def force_regions(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with forced-void elements at 0 and forced-solid elements at 1."""
        x = torch.where(self.void, torch.zeros_like(x), x)
        return torch.where(self.solid, torch.ones_like(x), x)

    def physical(self, x: torch.Tensor, *, filtered: bool = True) -> torch.Tensor:
        """Physical densities: forced regions, the cone filter, forced regions again."""
        x = x.to(torch.float64)
        if self.forced:
            x = self.force_regions(x)
        if filtered:
            x = cone_filter(x, self.problem.rmin)
            if self.forced:
                x = self.force_regions(x)
        return x

    def compliance(self, x_phys: torch.Tensor) -> torch.Tensor:
        """Compliance ``f^T u`` of physical densities (differentiable)."""
        if x_phys.shape != self.shape:
            raise ValueError(f"densities must have shape {self.shape}, got {tuple(x_phys.shape)}")
        return ComplianceFunction.apply(x_phys, self)

    def volume(self, x_phys: torch.Tensor) -> torch.Tensor:
        """Mean density over the designable elements."""
        return (x_phys * self._volume_weights).sum()

    def initial_density(self) -> torch.Tensor:
        """Uniform ``volfrac`` on the designable elements, forced regions applied."""
        x = torch.full(self.shape, float(self.problem.volfrac), dtype=torch.float64)
        return self.force_regions(x)

    def evaluate(self, x_phys: torch.Tensor, iteration: int | None = None) -> torch.Tensor:
        """:meth:`compliance`, raising :class:`SimulationError` naming ``iteration`` when the
        solve fails or the compliance is not finite."""
        where = "" if iteration is None else f" at iteration {iteration}"
        try:
            c = self.compliance(x_phys)
        except SolveError as err:
            raise SimulationError(f"{self.problem.name}: the solve failed{where}: {err}") from err
        if not torch.isfinite(c):
            raise SimulationError(f"{self.problem.name}: compliance became non-finite "
                                  f"({float(c.detach())}){where}; the run stops here")
        return c
