"""The exact pressure solve of a box with no solids inside, by fast cosine and sine transforms.

Where every face of the box is fluid (no obstacle, paddle or inflow face, so every interior
face weight is 1), the pressure operator of :mod:`~simdiff.sims.fluid.solver` is the plain
5-point (7-point in 3D) Laplacian, a sum of one tridiagonal operator per axis, and each of those
is diagonalized by a discrete trigonometric transform chosen by the axis's two ends:

* two walls (free slip, zero face weight: ``p_{-1} = p_0``): the DCT-II, eigenvalues
  ``2 - 2 cos(pi k / n)``, ``k = 0..n-1`` (``k = 0`` is the constant);
* two open sides (zero pressure one cell beyond: ``p_{-1} = p_n = 0``): the DST-I, eigenvalues
  ``2 - 2 cos(pi k / (n + 1))``, ``k = 1..n``;
* a wall and an open side: the axis mirrored across the wall into ``2n`` cells with open
  sides at both ends (the mirrored problem's solution is symmetric, so its half is the
  solution), solved by the DST-I of ``2n`` cells (scipy has no DCT of the mixed kinds).

So ``A^-1 b`` is a forward transform per axis, a division by the sum of the axes' eigenvalues
and the inverse transforms: ``O(N log N)`` with no iteration, and its residual is at round-off
(about 1e-15 of ``|b|``, computed in float64 whatever the simulation's precision and reported
as the solve's residual), far below any tolerance. In a closed box (walls only) the operator is
singular; the zero eigenvalue of the constant is dropped (the pseudo-inverse), which returns the
zero-mean solution, as the conjugate-gradient solve does. The operator is symmetric and so is
this inverse: the adjoint solve is the same transform (:class:`~simdiff.sims.fluid.solver.
SymmetricSolve` calls it for both).

``Fluid`` uses it wherever it applies (``Fluid(..., spectral=None)``, the default), checked per
step on the face weights, so a scene with solids keeps the multigrid-preconditioned CG. It runs
on the CPU through ``scipy.fft`` with one worker (at 128^2 a second worker measured slower).
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft
import torch

__all__ = ["SpectralSolve", "box_weights"]


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
        eigen = []
        for a, k in enumerate(self.n):
            lo, hi = (a, 0) in self.open_sides, (a, 1) in self.open_sides
            if not lo and not hi:
                kind, lam = "walls", 2 - 2 * np.cos(np.pi * np.arange(k) / k)
            elif lo and hi:
                kind, lam = "open", 2 - 2 * np.cos(np.pi * np.arange(1, k + 1) / (k + 1))
            else:  # mirrored across the wall into 2k cells open at both ends
                kind = "wall_lo" if hi else "wall_hi"
                lam = 2 - 2 * np.cos(np.pi * np.arange(1, 2 * k + 1) / (2 * k + 1))
            self._kinds.append(kind)
            shape = [1] * (self.dim + 1)
            shape[a + 1] = -1
            eigen.append(lam.reshape(shape))
        total = sum(eigen)
        with np.errstate(divide="ignore"):
            inverse = 1.0 / total
        if self.singular:
            inverse[(0,) * (self.dim + 1)] = 0.0  # the constant: the pseudo-inverse
        self._inverse = inverse

    def _forward(self, x: np.ndarray, a: int) -> np.ndarray:
        t = a + 1
        kind = self._kinds[a]
        if kind == "walls":
            return sfft.dct(x, type=2, axis=t, norm="ortho")
        if kind == "wall_lo":
            x = np.concatenate([np.flip(x, t), x], t)
        elif kind == "wall_hi":
            x = np.concatenate([x, np.flip(x, t)], t)
        return sfft.dst(x, type=1, axis=t, norm="ortho")

    def _inverse_transform(self, x: np.ndarray, a: int) -> np.ndarray:
        t = a + 1
        kind = self._kinds[a]
        if kind == "walls":
            return sfft.idct(x, type=2, axis=t, norm="ortho")
        x = sfft.dst(x, type=1, axis=t, norm="ortho")  # orthonormal DST-I: its own inverse
        k = self.n[a]
        if kind == "wall_lo":
            return x.take(np.arange(k, 2 * k), axis=t)
        if kind == "wall_hi":
            return x.take(np.arange(k), axis=t)
        return x

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``A x`` (float64, ``[B, *n]``): the operator the transforms invert."""
        out = 2.0 * self.dim * x
        for a in range(self.dim):
            t = a + 1
            k = self.n[a]
            lo = np.take(x, [0], axis=t) * float((a, 0) not in self.open_sides)
            hi = np.take(x, [k - 1], axis=t) * float((a, 1) not in self.open_sides)
            below = np.concatenate([lo, np.take(x, np.arange(k - 1), axis=t)], t)
            above = np.concatenate([np.take(x, np.arange(1, k), axis=t), hi], t)
            out -= below + above
        return out

    def inverse(self, b: np.ndarray) -> np.ndarray:
        """``A^-1 b`` (the pseudo-inverse in a closed box) of float64 ``b`` ``[B, *n]``."""
        x = b
        for a in range(self.dim):
            x = self._forward(x, a)
        x = x * self._inverse
        for a in range(self.dim):
            x = self._inverse_transform(x, a)
        return x

    def solve(self, b: torch.Tensor, tolerance: float, max_iterations: int,
              guess: torch.Tensor | None = None):
        """As :meth:`simdiff.sims.fluid.warp.FusedSolve.solve`: the solutions ``[B, *n]``
        (in ``b``'s dtype), per world 0 iterations and the relative residual of the float64
        solution (NaN for a world whose ``b`` is not finite). ``tolerance``,
        ``max_iterations`` and ``guess`` are not needed by a direct solve."""
        del tolerance, max_iterations, guess
        rhs = b.detach().to(device="cpu", dtype=torch.float64).numpy()
        x = self.inverse(rhs)
        flat = rhs.reshape(rhs.shape[0], -1)
        norm_b = np.linalg.norm(flat, axis=1)
        residual = np.linalg.norm((rhs - self.apply(x)).reshape(flat.shape), axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            relative = np.where(norm_b > 0, residual / np.where(norm_b > 0, norm_b, 1.0), 0.0)
        relative = np.where(np.isfinite(norm_b), relative, np.nan)
        batch = b.shape[0]
        return (
            torch.from_numpy(x).to(dtype=b.dtype, device=b.device).view(b.shape),
            torch.zeros(batch, dtype=torch.long),
            torch.from_numpy(relative).to(b.dtype),
        )
