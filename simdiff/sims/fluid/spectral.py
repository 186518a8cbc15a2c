"""The exact pressure solve of a box with no solids inside, by fast cosine and sine transforms,
and (:class:`CapacitanceSolve`) of a box with static solids or inflows, by that solve corrected
on the cells beside them.

Where every face of the box is fluid (no obstacle, paddle or inflow face, so every interior
face weight is 1), the pressure operator of :mod:`~simdiff.sims.fluid.solver` is the plain
5-point (7-point in 3D) Laplacian, a sum of one tridiagonal operator per axis, and each of those
is diagonalized by a discrete trigonometric transform chosen by the axis's two ends:

* two walls (free slip, zero face weight: ``p_{-1} = p_0``): the DCT-II, eigenvalues
  ``2 - 2 cos(pi k / n)``, ``k = 0..n-1`` (``k = 0`` is the constant);
* two open sides (zero pressure one cell beyond: ``p_{-1} = p_n = 0``): the DST-I, eigenvalues
  ``2 - 2 cos(pi k / (n + 1))``, ``k = 1..n``;
* a wall and an open side (``p_{-1} = p_0``, ``p_n = 0``): the DCT-VIII, basis
  ``cos(pi (2k+1)(2i+1) / (2(2n+1)))``, eigenvalues ``2 - 2 cos(pi (2k+1) / (2n+1))``; scipy
  has no DCT-VIII, and its fast forms go through transforms of ``2n + 1`` points (257 at
  n = 128, a prime), so this axis applies its orthonormal basis as a dense ``n x n`` matrix
  (``O(n)`` per cell instead of ``O(log n)``; no iteration either).

So ``A^-1 b`` is a forward transform per axis, a division by the sum of the axes' eigenvalues
and the inverse transforms: ``O(N log N)`` with no iteration (walls and open sides), and its
residual is at round-off (about 1e-15 of ``|b|``, computed in float64 whatever the
simulation's precision and reported as the solve's residual), far below any tolerance. In a closed box (walls only) the operator is
singular; the zero eigenvalue of the constant is dropped (the pseudo-inverse), which returns the
zero-mean solution, as the conjugate-gradient solve does. The operator is symmetric and so is
this inverse: the adjoint solve is the same transform (:class:`~simdiff.sims.fluid.solver.
SymmetricSolve` calls it for both).

Precision: the transforms run in float64 whatever the simulation's precision, and the
pressure is rounded to it. In a float32 run the projected velocity keeps the round-off of
``u - grad p`` in float32: on the 128^2 smoke-to-image its divergence after projection is
2.1e-6 of the divergence before, what the multigrid CG at a tolerance of 1e-6 leaves too
(2.2e-6); in float64, 4e-15 (CG at 1e-6: 1.1e-7).

``Fluid`` uses it wherever it applies (``Fluid(..., spectral=None)``, the default), checked per
step on the face weights, so a scene with solids keeps the multigrid-preconditioned CG. It runs
on the CPU through ``scipy.fft`` with one worker: at 128^2 a DCT-II and its inverse take about
240 us in float64 with one worker and 320 us with two (thread start-up outweighs the work).
One solve, with the float64 residual check, is about 0.6 ms at 128^2.

With solids (``Fluid(..., capacitance=True)``, opt-in): where the operator differs from the
box's on ``k`` cells (beside faces whose weight is not the box's, and fully solid cells), the
Sherman-Morrison-Woodbury identity turns the box's solve into the exact solve of the real
operator at the cost of two spectral solves and two ``k x k`` products per solve, after a
set-up of ``k`` spectral solves and a ``k x k`` inverse (:class:`CapacitanceSolve`). On the
128^2 plume (an inflow box of 32 x 2 cells, open top: ``k`` = 132, float64, step 20) the
set-up took 0.17 s and each solve 2.8 ms, residual 3.5e-12 (the capacitance matrix's
conditioning shows; still far below any tolerance), against 17 ms and 12 iterations for the
one-launch multigrid CG to 1e-6 from a cold start; a rollout of 100 steps forward and
backward in float32 went from 2.7 s to 0.8 s per iteration (``simdiff bench fluid
--difftaichi DIR``), and the 32^3 plume's 20 steps from 0.93 s to 0.51 s. A moving paddle
changes the operator every step (a set-up every step: CG stays).

Measured and not used: this solve of the solid-free box as the preconditioner of CG where
there are solids. On the 128^2 plume's operator (an inflow box at the bottom, open top,
float64, cold start) it needed 18 iterations and 44 ms to 1e-6 against the one-launch
multigrid CG's 12 iterations and 26 ms (22 and 16 iterations to 1e-10): the inflow box changes
the operator enough that a V-cycle fitted to the real weights is the better preconditioner.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft
import torch

from simdiff.threads import intra_op_threads

__all__ = ["CapacitanceSolve", "SpectralSolve", "box_weights"]


def box_weights(
    resolution: tuple[int, ...], open_sides, dtype: torch.dtype, device: torch.device
) -> list[torch.Tensor]:
    """The face weights of the box with no solids inside, ``[1, *(n + e_a)]`` per axis: 1 on
    every interior face and on the faces of open sides, 0 on walls."""
    out = []
    for a, k in enumerate(resolution):
        w = torch.ones(1, *(m + (b == a) for b, m in enumerate(resolution)), dtype=dtype,
                       device=device)
        index = [slice(None)] * (len(resolution) + 1)
        for end, face in ((0, 0), (1, k)):
            if (a, end) not in open_sides:
                index[a + 1] = face
                w[tuple(index)] = 0.0
        out.append(w)
    return out


def _axis_slice(t: int, start: int, stop: int) -> tuple:
    return (*([slice(None)] * t), slice(start, stop))


class SpectralSolve:
    """``A^-1 b`` of the plain box Laplacian (cell units) for ``[B, *n]`` right-hand sides.

    Args:
        resolution: Cells per axis.
        open_sides: The open ends ``(axis, end)``; every other side is a wall.
    """

    def __init__(self, resolution: tuple[int, ...], open_sides) -> None:
        self.n = tuple(resolution)
        self.dim = len(self.n)
        self.open_sides = frozenset(open_sides)
        self.singular = not self.open_sides
        self._kinds = []
        self._bases: dict[int, np.ndarray] = {}
        eigen = []
        for a, k in enumerate(self.n):
            lo, hi = (a, 0) in self.open_sides, (a, 1) in self.open_sides
            if not lo and not hi:
                kind, lam = "walls", 2 - 2 * np.cos(np.pi * np.arange(k) / k)
            elif lo and hi:
                kind, lam = "open", 2 - 2 * np.cos(np.pi * np.arange(1, k + 1) / (k + 1))
            else:  # a wall and an open side: the DCT-VIII basis as a dense matrix
                kind = "mixed"
                theta = np.pi * (2 * np.arange(k) + 1) / (2 * (2 * k + 1))
                lam = 2 - 2 * np.cos(2 * theta)
                basis = np.cos(np.outer(2 * np.arange(k) + 1, theta))  # [cell, mode]
                basis /= np.linalg.norm(basis, axis=0)
                self._bases[a] = basis[::-1].copy() if lo else basis  # lo open: the wall is high
            self._kinds.append(kind)
            shape = [1] * (self.dim + 1)
            shape[a + 1] = -1
            eigen.append(lam.reshape(shape))
        total = sum(eigen)
        with np.errstate(divide="ignore"):
            inverse = 1.0 / total
        # A closed box: the pseudo-inverse drops the constant; the regularized inverse is that
        # of A + 1 1^T / N (the constant's eigenvalue 1), which the capacitance solve needs.
        self._regular = inverse.copy()
        if self.singular:
            inverse[(0,) * (self.dim + 1)] = 0.0
            self._regular[(0,) * (self.dim + 1)] = 1.0
        self._inverse = inverse
        self._all_walls = all(kind == "walls" for kind in self._kinds)
        self._axes = tuple(range(1, self.dim + 1))

    def _forward(self, x: np.ndarray) -> np.ndarray:
        if self._all_walls:
            return sfft.dctn(x, type=2, axes=self._axes, norm="ortho", overwrite_x=True)
        for a, kind in enumerate(self._kinds):
            t = a + 1
            if kind == "walls":
                x = sfft.dct(x, type=2, axis=t, norm="ortho")
            elif kind == "open":
                x = sfft.dst(x, type=1, axis=t, norm="ortho")
            else:
                x = self._dense(x, a, self._bases[a])
        return x

    def _dense(self, x: np.ndarray, a: int, basis: np.ndarray) -> np.ndarray:
        """``sum_i x[..., i, ...] basis[i, k]`` along grid axis ``a``, as contiguous matrix
        products on one torch thread (numpy's multi-threaded BLAS took 23 ms for a 128 x 128
        product on the shared 2-core host, torch on one thread 0.3 ms)."""
        k = self.n[a]
        q = torch.from_numpy(basis)
        with intra_op_threads(1):
            if a == self.dim - 1:
                out = torch.from_numpy(x.reshape(-1, k)) @ q
            else:
                post = int(np.prod(self.n[a + 1 :]))
                out = q.T @ torch.from_numpy(np.ascontiguousarray(x).reshape(-1, k, post))
        return out.numpy().reshape(x.shape)

    def _backward(self, x: np.ndarray) -> np.ndarray:
        if self._all_walls:
            return sfft.idctn(x, type=2, axes=self._axes, norm="ortho", overwrite_x=True)
        for a, kind in enumerate(self._kinds):
            t = a + 1
            if kind == "walls":
                x = sfft.idct(x, type=2, axis=t, norm="ortho")
            elif kind == "open":
                x = sfft.dst(x, type=1, axis=t, norm="ortho")  # orthonormal DST-I: its inverse
            else:
                x = self._dense(x, a, self._bases[a].T)
        return x

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``A x`` (float64, ``[B, *n]``): the operator the transforms invert."""
        out = 2.0 * self.dim * x
        for a in range(self.dim):
            t = a + 1
            k = self.n[a]
            out[_axis_slice(t, 1, k)] -= x[_axis_slice(t, 0, k - 1)]
            out[_axis_slice(t, 0, k - 1)] -= x[_axis_slice(t, 1, k)]
            # A wall mirrors the edge cell (no flux: it cancels one of the 2 dim); beyond an
            # open side the pressure is zero (nothing to subtract).
            if (a, 0) not in self.open_sides:
                out[_axis_slice(t, 0, 1)] -= x[_axis_slice(t, 0, 1)]
            if (a, 1) not in self.open_sides:
                out[_axis_slice(t, k - 1, k)] -= x[_axis_slice(t, k - 1, k)]
        return out

    def inverse(self, b: np.ndarray, *, regularized: bool = False) -> np.ndarray:
        """``A^-1 b`` of float64 ``b`` ``[B, *n]``; in a closed box the pseudo-inverse, or with
        ``regularized`` the inverse of ``A + 1 1^T / N``."""
        x = self._forward(np.array(b, copy=True))
        x *= self._regular if regularized else self._inverse
        return self._backward(x)

    def solve(self, b: torch.Tensor, tolerance: float, max_iterations: int,
              guess: torch.Tensor | None = None):
        """As :meth:`simdiff.sims.fluid.warp.FusedSolve.solve`: the solutions ``[B, *n]``
        (in ``b``'s dtype), per world 0 iterations and the relative residual of the float64
        solution (NaN for a world whose ``b`` is not finite). ``tolerance``,
        ``max_iterations`` and ``guess`` are not needed by a direct solve."""
        del tolerance, max_iterations, guess
        rhs = b.detach().to(device="cpu", dtype=torch.float64).numpy()
        x = self.inverse(rhs)
        return _result(b, rhs, x, self.apply(x))


def _result(b: torch.Tensor, rhs: np.ndarray, x: np.ndarray, ax: np.ndarray):
    """A direct solve's answer as the CG solves give theirs: the solutions in ``b``'s dtype, 0
    iterations, and per world the relative residual ``|rhs - A x| / |rhs|`` in float64 (NaN
    where ``rhs`` is not finite)."""
    flat = rhs.reshape(rhs.shape[0], -1)
    norm_b = np.sqrt(np.einsum("ij,ij->i", flat, flat))
    ax -= rhs
    left = ax.reshape(flat.shape)
    residual = np.sqrt(np.einsum("ij,ij->i", left, left))
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.where(norm_b > 0, residual / np.where(norm_b > 0, norm_b, 1.0), 0.0)
    relative = np.where(np.isfinite(norm_b), relative, np.nan)
    return (
        torch.from_numpy(x).to(dtype=b.dtype, device=b.device).view(b.shape),
        torch.zeros(b.shape[0], dtype=torch.long),
        torch.from_numpy(relative).to(b.dtype),
    )


class CapacitanceSolve:
    """``A^-1 b`` of a box whose operator differs from the plain box's on a few cells (static
    solids, inflow boxes): the box's spectral solve corrected by a capacitance matrix.

    With ``A = A_box + E Delta E^T`` (``E`` the unit vectors of the ``k`` touched cells: those
    beside a face whose weight is not the box's, and fixed cells), ``x = A_box^-1 (b - E c)``
    with ``(I + Delta G) c = Delta (A_box^-1 b)_T`` and ``G = E^T A_box^-1 E``, exactly (the
    Sherman-Morrison-Woodbury identity). Set up once per operator (``k`` spectral solves and a
    ``k x k`` inverse); each solve is two spectral solves and two ``k x k`` products, no
    iteration. In a closed box ``A_box + 1 1^T / N`` replaces ``A_box`` (nonsingular, and for a
    right-hand side in the range of ``A`` its solution is the zero-mean one).

    Args:
        spectral: The box's solve.
        system: The operators (:class:`~simdiff.sims.fluid.solver.PressureSystem`), every world.
        box: The box's face weights (:func:`box_weights`).
    """

    def __init__(self, spectral: SpectralSolve, system, box: list[torch.Tensor],
                 touched: list[np.ndarray]) -> None:
        self.spectral = spectral
        self.regularized = spectral.singular
        self.batch = system.batch
        n = spectral.n
        cells = int(np.prod(n))
        # Float64 operators for the residual check (the weights as given, exactly).
        from simdiff.sims.fluid.solver import PressureSystem

        self.system = PressureSystem([w.detach().double().cpu() for w in system.weights],
                                     system.fixed.detach().double().cpu(), system.open_sides)
        self.worlds = []
        for b, index in enumerate(touched):
            k = len(index)
            delta = np.zeros((k, k))
            where = {int(c): i for i, c in enumerate(index)}
            for a, w in enumerate(system.weights):
                change = (w[b].detach().double() - box[a][0].double()).cpu().numpy()
                for face in zip(*np.nonzero(change)):
                    d = change[face]
                    lower = list(face)
                    lower[a] -= 1
                    ends = []
                    for cell in (lower, list(face)):
                        if 0 <= cell[a] < n[a]:
                            ends.append(where[int(np.ravel_multi_index(cell, n))])
                    for i in ends:
                        delta[i, i] += d
                    if len(ends) == 2:
                        delta[ends[0], ends[1]] -= d
                        delta[ends[1], ends[0]] -= d
            fixed = system.fixed[b].detach().double().cpu().numpy().reshape(-1)
            for i, c in enumerate(index):
                delta[i, i] += fixed[c]
            green = np.empty((k, k))
            for start in range(0, k, 256):  # columns of A_box^-1 E, in chunks
                rows = index[start : start + 256]
                unit = np.zeros((len(rows), cells))
                unit[np.arange(len(rows)), rows] = 1.0
                response = spectral.inverse(unit.reshape(len(rows), *n),
                                            regularized=self.regularized)
                green[:, start : start + len(rows)] = response.reshape(len(rows), -1)[:, index].T
            inverse = np.linalg.inv(np.eye(k) + delta @ green)
            self.worlds.append((index, delta, inverse))

    @classmethod
    def build(cls, spectral: SpectralSolve, system, box: list[torch.Tensor],
              max_cells: int):
        """The solve of ``system``, or None where a world touches more than ``max_cells``
        cells (the set-up would cost more than it saves)."""
        n = spectral.n
        touched = []
        for b in range(system.batch):
            mask = system.fixed[b].detach() > 0
            for a, w in enumerate(system.weights):
                changed = w[b].detach() != box[a][0]
                mask = mask | changed.narrow(a, 0, n[a]) | changed.narrow(a, 1, n[a])
            index = mask.reshape(-1).nonzero().flatten().cpu().numpy()
            if len(index) > max_cells:
                return None
            touched.append(index)
        return cls(spectral, system, box, touched)

    def solve(self, b: torch.Tensor, tolerance: float, max_iterations: int,
              guess: torch.Tensor | None = None):
        """As :meth:`SpectralSolve.solve`."""
        del tolerance, max_iterations, guess
        rhs = b.detach().to(device="cpu", dtype=torch.float64).numpy()
        spectral = self.spectral
        y = spectral.inverse(rhs, regularized=self.regularized)
        corrected = rhs.copy()
        flat_y, flat_r = y.reshape(self.batch, -1), corrected.reshape(self.batch, -1)
        for world, (index, delta, inverse) in enumerate(self.worlds):
            if len(index):
                flat_r[world, index] -= inverse @ (delta @ flat_y[world, index])
        x = spectral.inverse(corrected, regularized=self.regularized)
        ax = self.system.apply(torch.from_numpy(x)).numpy()
        return _result(b, rhs, x, ax)
