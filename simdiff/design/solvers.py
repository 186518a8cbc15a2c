"""Linear solvers for ``K(E) u = f`` on a :class:`~simdiff.design.fem.Grid`.

Two families, chosen by size (``make_solver("auto", ...)``) or by name:

* ``direct``: a sparse factorization of the assembled free-free matrix. CHOLMOD (through
  scikit-sparse) when it is installed, else SuperLU (``scipy.sparse.linalg.splu``) in
  symmetric mode with diagonal pivots, on the matrix already permuted into the grid's
  geometric nested-dissection order (:attr:`Grid.order`); SuperLU's own orderings (COLAMD,
  minimum degree) fill in 1.4-2x more on these grids.
* ``mgcg``: matrix-free conjugate gradients preconditioned by one geometric multigrid V-cycle
  (Amir, Aage and Lazarov 2014). The fine-level operator is applied element by element
  (gather, one 8x8 product, scatter-add) and never assembled. Coarse levels are the exact
  Galerkin operators ``P^T K P`` of bilinear prolongation, which on a structured grid are again
  element-by-element: each coarse element's 8x8 matrix is the sum over its four children of
  ``T_c^T K_c T_c`` (``T_c`` the bilinear interpolation from the coarse element's nodes to the
  child's). Galerkin coarse operators keep the 1e9 stiffness contrast of SIMP void regions
  that a rediscretized coarse grid would blur. Supports are imposed by zeroing the prolongation
  onto fixed fine dofs, so coarse grids need no supports of their own and stay positive
  definite. Damped Jacobi smoothing; the coarsest grid is factorized directly. The previous
  solution is the initial guess of the next solve (successive design iterations change little).
* ``jacobi``: the same matrix-free CG with a diagonal preconditioner (for comparison).

Every solver returns the full displacement vector (zeros on fixed dofs).
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from simdiff.design.fem import Grid, element_dofs
from simdiff.sims.base import SimulationError

try:  # pragma: no cover - optional
    from sksparse.cholmod import cholesky as _cholmod_cholesky

    HAS_CHOLMOD = True
except ImportError:
    _cholmod_cholesky = None
    HAS_CHOLMOD = False

__all__ = ["AUTO_ITERATIVE_DOFS", "DirectSolver", "MultigridCG", "SolveError", "make_solver"]

#: ``auto`` picks ``mgcg`` from this many free degrees of freedom on. ``simdiff bench design``
#: (2 shared CPU cores, three runs): the direct solver is as fast or faster up to 384x128
#: (99k dofs), multigrid CG 1.6-2x faster at 768x256 (395k dofs); the crossover lies between.
AUTO_ITERATIVE_DOFS = 200_000

SOLVERS = ("auto", "direct", "mgcg", "jacobi")


class SolveError(SimulationError):
    """A linear solve that failed (singular matrix, no convergence, non-finite result)."""


class DirectSolver:
    """Sparse direct factorization of the free-free stiffness matrix."""

    name = "direct"

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.backend = "cholmod" if HAS_CHOLMOD else "superlu"
        self.iterations = 0
        self.seconds = 0.0

    def solve(self, young: np.ndarray, force: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        grid = self.grid
        k = grid.stiffness(young)  # already in nested-dissection order
        b = force[grid.order]
        try:
            if HAS_CHOLMOD:  # pragma: no cover - optional
                x = _cholmod_cholesky(k.tocsc()).solve_A(b)
            else:
                lu = spla.splu(k.tocsc(), permc_spec="NATURAL", diag_pivot_thresh=0.0,
                               options={"SymmetricMode": True})
                x = lu.solve(b)
        except RuntimeError as err:  # SuperLU: "Factor is exactly singular"
            raise SolveError(f"sparse factorization failed: {err}") from err
        u = np.zeros(grid.ndof)
        u[grid.order] = x
        self.seconds = time.perf_counter() - start
        return u


def _prolongation_1d(n_fine_el: int) -> sp.csr_matrix:
    """Linear interpolation from ``n_fine_el / 2 + 1`` coarse nodes to ``n_fine_el + 1``."""
    nc = n_fine_el // 2
    rows, cols, vals = [], [], []
    for i in range(n_fine_el + 1):
        if i % 2 == 0:
            rows.append(i), cols.append(i // 2), vals.append(1.0)
        else:
            rows += [i, i]
            cols += [i // 2, i // 2 + 1]
            vals += [0.5, 0.5]
    return sp.csr_matrix((vals, (rows, cols)), shape=(n_fine_el + 1, nc + 1))


def _child_interpolation() -> np.ndarray:
    """``[4, 8, 8]``: bilinear interpolation from a coarse element's 8 dofs to each child's.

    Children are in the order (i, j) = (0, 0), (0, 1), (1, 0), (1, 1): ``i`` across, ``j`` down,
    matching the column-major element numbering (child element ``nely_f * (2cx + i) + 2cy + j``).
    """
    corners = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # y up
    t = np.zeros((4, 8, 8))
    for c, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        origin = np.array([0.5 * i, 0.5 * (1 - j)])
        for a, corner in enumerate(corners):
            x, y = origin + 0.5 * corner
            for k, (xk, yk) in enumerate(corners):
                w = (1 - abs(x - xk)) * (1 - abs(y - yk))
                t[c, 2 * a, 2 * k] = w
                t[c, 2 * a + 1, 2 * k + 1] = w
    return t


_CHILDREN = _child_interpolation()


class _Level:
    """One grid level: its element matrices (a scalar field times the one KE on the finest
    level, one Galerkin 8x8 matrix per element on coarse levels), diagonal, and the masked
    prolongation from the next coarser level."""

    def __init__(self, nelx: int, nely: int, free_mask: np.ndarray) -> None:
        self.nelx, self.nely = nelx, nely
        self.edof = element_dofs(nelx, nely)
        self.ndof = 2 * (nelx + 1) * (nely + 1)
        self.free_mask = free_mask  # float 0/1 per dof
        self.scale = np.ones(nelx * nely)
        self.mats: np.ndarray = np.zeros(64)  # [64] shared (finest) or [nel, 64]
        self.diag = np.ones(self.ndof)
        self.prolong: sp.csr_matrix | None = None  # next coarser level -> this level
        self.restrict: sp.csr_matrix | None = None
        self.children: np.ndarray | None = None  # [nel, 4]: the finer level's elements

    def apply(self, u: np.ndarray) -> np.ndarray:
        from simdiff.design.kernels import apply_operator  # Taichi is imported on first use

        return apply_operator(u, self.scale, self.mats, self.free_mask, self.nelx, self.nely)

    def element_matrices(self) -> np.ndarray:
        """``[nel, 64]``."""
        if self.mats.ndim == 2:
            return self.mats
        return self.scale[:, None] * self.mats[None, :]

    def assemble(self) -> sp.csr_matrix:
        rows = np.repeat(self.edof, 8, axis=1).ravel()
        cols = np.tile(self.edof, (1, 8)).ravel()
        a = sp.coo_matrix((self.element_matrices().ravel(), (rows, cols)),
                          shape=(self.ndof,) * 2).tocsr()
        keep = sp.diags(self.free_mask)
        return (keep @ a @ keep + sp.diags(1.0 - self.free_mask)).tocsc()


class MultigridCG:
    """Matrix-free PCG with a geometric multigrid V-cycle (or Jacobi) preconditioner.

    Args:
        grid: The fine grid and its supports.
        preconditioner: ``"multigrid"`` or ``"jacobi"``.
        rtol: Stop when ``||r|| <= rtol * ||f||``.
        max_iter: CG iterations before :class:`SolveError`.
        smoothing: Damped-Jacobi sweeps before and after each coarse correction.
        omega: Jacobi damping.
        coarsest_dofs: Coarsen while a level has more degrees of freedom than this and both its
            element counts are even.
    """

    def __init__(self, grid: Grid, *, preconditioner: str = "multigrid", rtol: float = 1e-8,
                 max_iter: int = 5000, smoothing: int = 2, omega: float = 0.6,
                 coarsest_dofs: int = 600) -> None:
        if preconditioner not in ("multigrid", "jacobi"):
            raise ValueError(
                f"preconditioner must be 'multigrid' or 'jacobi', got {preconditioner!r}")
        self.grid = grid
        self.name = "mgcg" if preconditioner == "multigrid" else "jacobi"
        self.preconditioner = preconditioner
        self.rtol, self.max_iter = rtol, max_iter
        self.smoothing, self.omega = smoothing, omega
        self.iterations = 0
        self.seconds = 0.0
        self._guess: np.ndarray | None = None
        self._coarse_solve = None
        fine = _Level(grid.nelx, grid.nely, (~grid.fixed).astype(float))
        fine.mats = np.ascontiguousarray(grid.ke.ravel())
        self.levels = [fine]
        if preconditioner != "multigrid":
            return
        nelx, nely = grid.nelx, grid.nely
        while nelx % 2 == 0 and nely % 2 == 0 and 2 * (nelx + 1) * (nely + 1) > coarsest_dofs:
            prev = self.levels[-1]
            nelx, nely = nelx // 2, nely // 2
            coarse = _Level(nelx, nely, np.ones(2 * (nelx + 1) * (nely + 1)))
            p_nodes = sp.kron(_prolongation_1d(2 * nelx), _prolongation_1d(2 * nely))
            p = sp.kron(p_nodes, sp.identity(2))
            prev.prolong = (sp.diags(prev.free_mask) @ p).tocsr()
            prev.restrict = prev.prolong.T.tocsr()
            cx, cy = np.meshgrid(np.arange(nelx), np.arange(nely), indexing="ij")
            coarse.children = np.stack(
                [2 * nely * (2 * cx + i) + 2 * cy + j for i, j in ((0, 0), (0, 1), (1, 0), (1, 1))],
                axis=-1).reshape(-1, 4)
            self.levels.append(coarse)
        if len(self.levels) > 1:
            # Galerkin product T^T M T of a flattened 8x8 M is the linear map kron(T, T).
            self._galerkin = [np.kron(t, t) for t in _CHILDREN]
            ke_flat = grid.ke.ravel()
            self._first = [ke_flat @ w for w in self._galerkin]  # [4][64]
            # Fine elements touching a support: the change that masking their fixed dofs makes
            # to their coarse contribution, per unit Young's modulus.
            mask = fine.free_mask[fine.edof]
            touched = np.flatnonzero(mask.min(axis=1) < 1)
            where = np.zeros(grid.nel, dtype=np.int64)
            where[self.levels[1].children.ravel()] = np.repeat(np.arange(self.levels[1].children.shape[0]), 4)
            child_slot = np.zeros(grid.nel, dtype=np.int64)
            child_slot[self.levels[1].children.ravel()] = np.tile(np.arange(4), self.levels[1].children.shape[0])
            deltas = []
            for e in touched:
                m = mask[e]
                masked = (grid.ke * m[:, None] * m[None, :] - grid.ke).ravel()
                deltas.append(masked @ self._galerkin[child_slot[e]])
            self._touched = touched
            self._touched_parent = where[touched]
            self._touched_delta = np.array(deltas).reshape(-1, 64)

    # ---------------------------------------------------------------- set-up per design
    def _setup(self, young: np.ndarray) -> None:
        fine = self.levels[0]
        fine.scale = np.ascontiguousarray(young, dtype=np.float64)
        diag = np.bincount(fine.edof.ravel(), minlength=fine.ndof,
                           weights=(young[:, None] * np.diag(self.grid.ke)[None]).ravel())
        fine.diag = np.where(fine.free_mask > 0, diag, 1.0)
        for k, level in enumerate(self.levels[1:], start=1):
            prev = self.levels[k - 1]
            if k == 1:
                mats = sum(young[level.children[:, c]][:, None] * self._first[c][None, :]
                           for c in range(4))
                np.add.at(mats, self._touched_parent, young[self._touched][:, None] * self._touched_delta)
            else:
                mats = sum(prev.mats[level.children[:, c]] @ self._galerkin[c] for c in range(4))
            level.mats = np.ascontiguousarray(mats)
            level.diag = np.bincount(level.edof.ravel(), minlength=level.ndof,
                                     weights=mats[:, ::9].ravel())
        if len(self.levels) > 1:
            try:
                lu = spla.splu(self.levels[-1].assemble(), permc_spec="MMD_AT_PLUS_A",
                               diag_pivot_thresh=0.0, options={"SymmetricMode": True})
            except RuntimeError as err:
                raise SolveError(f"coarse-grid factorization failed: {err}") from err
            self._coarse_solve = lu.solve

    def _vcycle(self, level: int, b: np.ndarray) -> np.ndarray:
        lv = self.levels[level]
        if level == len(self.levels) - 1:
            return self._coarse_solve(b)
        inv_diag = self.omega / lv.diag
        x = inv_diag * b
        for _ in range(self.smoothing - 1):
            x += inv_diag * (b - lv.apply(x))
        r = b - lv.apply(x)
        x += lv.prolong @ self._vcycle(level + 1, lv.restrict @ r)
        for _ in range(self.smoothing):
            x += inv_diag * (b - lv.apply(x))
        return x

    def _precondition(self, r: np.ndarray) -> np.ndarray:
        if len(self.levels) == 1:
            return r / self.levels[0].diag
        return self._vcycle(0, r)

    def solve(self, young: np.ndarray, force: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        self._setup(young)
        fine = self.levels[0]
        b = force * fine.free_mask
        bnorm = np.linalg.norm(b)
        if bnorm == 0:
            self.iterations = 0
            return np.zeros_like(b)
        x = np.zeros_like(b) if self._guess is None else self._guess.copy()
        r = b - fine.apply(x)
        z = self._precondition(r)
        p = z.copy()
        rz = r @ z
        it = 0
        while np.linalg.norm(r) > self.rtol * bnorm:
            it += 1
            if it > self.max_iter:
                raise SolveError(f"CG did not reach rtol={self.rtol:g} in {self.max_iter} "
                                 f"iterations (residual {np.linalg.norm(r) / bnorm:.2e})")
            q = fine.apply(p)
            pq = p @ q
            if not pq > 0:
                raise SolveError(f"CG broke down at iteration {it} (p^T K p = {pq:.3g}): the "
                                 "stiffness matrix is singular or indefinite")
            alpha = rz / pq
            x += alpha * p
            r -= alpha * q
            z = self._precondition(r)
            rz_new = r @ z
            p = z + (rz_new / rz) * p
            rz = rz_new
        if not np.all(np.isfinite(x)):
            raise SolveError("CG produced non-finite displacements")
        self.iterations = it
        self._guess = x
        self.seconds = time.perf_counter() - start
        return x


def make_solver(name: str, grid: Grid, **options):
    """A solver by name: ``auto`` (direct below :data:`AUTO_ITERATIVE_DOFS` free dofs, else
    ``mgcg``), ``direct``, ``mgcg`` or ``jacobi``."""
    if name not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {name!r}")
    if name == "auto":
        name = "mgcg" if grid.free.size >= AUTO_ITERATIVE_DOFS else "direct"
    if name == "direct":
        return DirectSolver(grid)
    return MultigridCG(grid, preconditioner="multigrid" if name == "mgcg" else "jacobi",
                       **options)
