"""The 88-line topology optimization algorithm (Andreassen, Clausen, Schevenels, Lazarov and
Sigmund 2011), step for step, on simdiff's finite elements and solvers.

``top88(nelx, nely, volfrac, penal, rmin, ft)`` designs the half MBB beam with the sensitivity
filter (``ft=1``) or the density filter (``ft=2``): optimality criteria with move 0.2, the
multiplier bisected on [0, 1e9] until ``(l2 - l1) / (l1 + l2) <= 1e-3``, and a stop when no
density changes by more than 0.01. The compliance it reports for an iteration is that of the
design going into the iteration, as the MATLAB code prints it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp
import torch

from simdiff.design.problems import mbb_beam
from simdiff.design.structure import Structure, cone_kernel
from simdiff.sims.base import ValidationError

__all__ = ["Top88Result", "top88"]


@dataclasses.dataclass
class Top88Result:
    compliance: list[float]
    change: list[float]
    x_phys: np.ndarray
    iterations: int


def _filter_matrix(nelx: int, nely: int, rmin: float) -> sp.csr_matrix:
    """The 88-line ``H``: cone weights ``max(0, rmin - distance)`` between elements (on
    row-major flattened ``(nely, nelx)`` arrays)."""
    kernel = cone_kernel(rmin).numpy()
    k = kernel.shape[0] // 2
    iy, ix = np.meshgrid(np.arange(nely), np.arange(nelx), indexing="ij")
    rows, cols, vals = [], [], []
    for dy in range(-k, k + 1):
        for dx in range(-k, k + 1):
            w = kernel[dy + k, dx + k]
            ok = (iy + dy >= 0) & (iy + dy < nely) & (ix + dx >= 0) & (ix + dx < nelx)
            if w <= 0 or not ok.any():
                continue
            rows.append((iy * nelx + ix)[ok])
            cols.append(((iy + dy) * nelx + ix + dx)[ok])
            vals.append(np.full(int(ok.sum()), w))
    n = nelx * nely
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(n, n))


def top88(nelx: int = 60, nely: int = 20, volfrac: float = 0.5, penal: float = 3.0,
          rmin: float = 1.5, ft: int = 1, *, max_iter: int = 2000, solver: str = "direct",
          callback=None) -> Top88Result:
    """Run the 88-line algorithm on the half MBB beam; see the module docstring."""
    if ft not in (1, 2):
        raise ValidationError(f"ft must be 1 (sensitivity filter) or 2 (density filter), got {ft!r}")
    problem = mbb_beam(nelx, nely, volfrac).replace(penal=float(penal), rmin=float(rmin))
    structure = Structure(problem, solver)  # validates
    h = _filter_matrix(nelx, nely, rmin)
    shape = (nely, nelx)

    def hmul(v: np.ndarray) -> np.ndarray:
        return (h @ v.ravel()).reshape(shape)

    hs = hmul(np.ones(shape))
    x = np.full((nely, nelx), float(volfrac))
    x_phys = x.copy()
    history, changes = [], []
    change, loop = 1.0, 0
    while change > 0.01 and loop < max_iter:
        loop += 1
        xt = torch.from_numpy(x_phys).requires_grad_(True)
        c = structure.evaluate(xt, iteration=loop)
        c.backward()
        dc = xt.grad.numpy().copy()
        dv = np.ones((nely, nelx))
        if ft == 1:
            dc = hmul(x * dc) / hs / np.maximum(1e-3, x)
        else:
            dc = hmul(dc / hs)
            dv = hmul(dv / hs)
        l1, l2, move = 0.0, 1e9, 0.2
        while (l2 - l1) / (l1 + l2) > 1e-3:
            lmid = 0.5 * (l2 + l1)
            xnew = np.maximum(0.0, np.maximum(x - move, np.minimum(
                1.0, np.minimum(x + move, x * np.sqrt(np.maximum(-dc / dv / lmid, 0.0))))))
            x_phys = xnew if ft == 1 else hmul(xnew) / hs
            if x_phys.sum() > volfrac * nelx * nely:
                l1 = lmid
            else:
                l2 = lmid
        change = float(np.abs(xnew - x).max())
        x = xnew
        history.append(float(c.detach()))
        changes.append(change)
        if callback is not None:
            callback(loop, history[-1], change)
    return Top88Result(history, changes, x_phys, loop)
