"""Design optimizers and the loop that runs them: OC and MMA on pixel densities, L-BFGS and Adam
on the logits of a pixel or CNN parameterization.

* ``oc``: optimality criteria, the update of the 88-line code (move limit 0.2, damping 1/2),
  with the Lagrange multiplier bisected until the volume constraint holds to 1e-12 relative.
  The volume after filtering is an affine function of the densities, so each bisection step is
  one dot product.
* ``mma``: Svanberg's method of moving asymptotes (1987, with the 2007 asymptote and
  ``raa0`` choices of his ``mmasub``), for one linear volume constraint. With a single
  constraint the convex subproblem's dual is a one-dimensional concave maximization whose
  derivative is the approximated constraint, so it is solved by bisection on the multiplier,
  with each primal variable in closed form. The objective is scaled by its first value. (The
  paper used NLopt's CCSA variant of MMA, which adds inner conservativeness iterations; this
  is the classic, non-globalized MMA.)
* ``lbfgs``: ``torch.optim.LBFGS`` with a strong-Wolfe line search and 10 correction pairs
  (scipy's L-BFGS-B default, which the paper used), stopped after ``iters`` compliance
  evaluations.
* ``adam``: ``torch.optim.Adam``; learning rate 0.01 for the CNN as in the paper.

Every method counts compliance evaluations (one finite-element solve each) as iterations, and
the result's design is the best one evaluated (a line search may end on a worse point).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from simdiff.design.params import constrained_sigmoid, make_param
from simdiff.design.problems import Problem
from simdiff.design.structure import Structure
from simdiff.sims.base import ValidationError

__all__ = ["OPTIMIZERS", "DesignResult", "oc_update", "optimize"]

OPTIMIZERS = ("oc", "mma", "lbfgs", "adam")


@dataclasses.dataclass
class DesignResult:
    """What a design run produced.

    Attributes:
        compliance: Compliance at each evaluation (iteration), in order.
        volume: Mean designable density at each evaluation.
        frames: Physical densities ``(nely, nelx)`` every ``record_every`` evaluations (float32).
        frame_iterations: The evaluation index of each frame.
        design: Physical densities of the best evaluation (float64).
        best_compliance, best_iteration: Its compliance and index.
        seconds: Wall time of the run; solve_seconds: of which in linear solves.
    """

    problem: Problem
    param: str
    optimizer: str
    solver: str
    compliance: list[float] = dataclasses.field(default_factory=list)
    volume: list[float] = dataclasses.field(default_factory=list)
    frames: list[np.ndarray] = dataclasses.field(default_factory=list)
    frame_iterations: list[int] = dataclasses.field(default_factory=list)
    design: np.ndarray | None = None
    best_compliance: float = math.inf
    best_iteration: int = -1
    seconds: float = 0.0
    solve_seconds: float = 0.0

    @property
    def iterations(self) -> int:
        return len(self.compliance)

    def metrics(self) -> list[dict]:
        return [{"iteration": i, "compliance": c, "volume": v}
                for i, (c, v) in enumerate(zip(self.compliance, self.volume))]


class _Recorder:
    def __init__(self, structure: Structure, result: DesignResult, iters: int, record_every: int,
                 callback: Callable[[int, float], None] | None) -> None:
        self.structure, self.result, self.iters = structure, result, iters
        self.record_every, self.callback = record_every, callback
        self.count = 0
        self.last: np.ndarray | None = None

    def evaluate(self, x_phys: torch.Tensor) -> torch.Tensor:
        """Compliance of ``x_phys`` as evaluation number ``count`` (raises on non-finite)."""
        start = time.perf_counter()
        c = self.structure.evaluate(x_phys, iteration=self.count)
        self.result.solve_seconds += time.perf_counter() - start
        value = float(c.detach())
        res = self.result
        res.compliance.append(value)
        xp = x_phys.detach()
        res.volume.append(float(self.structure.volume(xp)))
        self.last = xp.numpy().astype(np.float32)
        if self.count % self.record_every == 0:
            res.frames.append(xp.numpy().astype(np.float32))
            res.frame_iterations.append(self.count)
        if value < res.best_compliance:
            res.best_compliance, res.best_iteration = value, self.count
            res.design = xp.numpy().copy()
        if self.callback is not None:
            self.callback(self.count, value)
        self.count += 1
        return c

    @property
    def exhausted(self) -> bool:
        return self.count >= self.iters


class _Budget(Exception):
    pass


def oc_update(x: np.ndarray, dc: np.ndarray, dv: np.ndarray, v0: float, volfrac: float, *,
              move: float = 0.2, eta: float = 0.5, rtol: float = 1e-12,
              l1: float = 0.0, l2: float = 1e9, max_bisections: int = 200) -> np.ndarray:
    """One optimality-criteria update of design densities ``x`` (1-D).

    ``v0 + dv @ x`` is the volume as a function of ``x``; the multiplier is bisected on
    ``[l1, l2]`` (widened when needed) until ``(l2 - l1) / (l1 + l2) <= rtol``, the 88-line
    code's criterion (it uses 1e-3).
    """
    ratio = np.maximum(-dc, 0.0) / np.where(dv > 0, dv, 1.0)
    lower, upper = np.maximum(0.0, x - move), np.minimum(1.0, x + move)

    def update(lam):
        return np.clip(x * (ratio / lam) ** eta, lower, upper)

    while v0 + dv @ update(l2) > volfrac and l2 < 1e300:
        l2 *= 1e3
    for _ in range(max_bisections):
        if (l2 - l1) / (l1 + l2) <= rtol:
            break
        mid = 0.5 * (l1 + l2)
        if v0 + dv @ update(mid) > volfrac:
            l1 = mid
        else:
            l2 = mid
    return update(0.5 * (l1 + l2))


class MMA:
    """Method of moving asymptotes for ``min f(x)`` s.t. ``g(x) <= 0`` (one constraint),
    ``xmin <= x <= xmax``."""

    def __init__(self, n: int, xmin: float = 0.0, xmax: float = 1.0, *, move: float = 0.5,
                 asyinit: float = 0.5, asyincr: float = 1.2, asydecr: float = 0.7,
                 raa0: float = 1e-5) -> None:
        self.xmin, self.xmax = xmin, xmax
        self.move, self.asyinit, self.asyincr, self.asydecr, self.raa0 = (
            move, asyinit, asyincr, asydecr, raa0)
        self.k = 0
        self.xold1 = self.xold2 = None
        self.low = self.upp = None
        self.n = n

    def step(self, x: np.ndarray, f0: float, df0: np.ndarray, g: float, dg: np.ndarray) -> np.ndarray:
        span = self.xmax - self.xmin
        self.k += 1
        if self.k <= 2:
            low, upp = x - self.asyinit * span, x + self.asyinit * span
        else:
            sign = (x - self.xold1) * (self.xold1 - self.xold2)
            gamma = np.where(sign > 0, self.asyincr, np.where(sign < 0, self.asydecr, 1.0))
            low = x - gamma * (self.xold1 - self.low)
            upp = x + gamma * (self.upp - self.xold1)
            low = np.clip(low, x - 10 * span, x - 0.01 * span)
            upp = np.clip(upp, x + 0.01 * span, x + 10 * span)
        alpha = np.maximum.reduce([np.full_like(x, self.xmin), low + 0.1 * (x - low),
                                   x - self.move * span])
        beta = np.minimum.reduce([np.full_like(x, self.xmax), upp - 0.1 * (upp - x),
                                  x + self.move * span])
        ux, xl = upp - x, x - low

        def pq(df):
            pos, neg = np.maximum(df, 0.0), np.maximum(-df, 0.0)
            extra = self.raa0 / span
            return ux**2 * (1.001 * pos + 0.001 * neg + extra), xl**2 * (0.001 * pos + 1.001 * neg + extra)

        p0, q0 = pq(df0)
        p1, q1 = pq(dg)
        g_at_x = np.sum(p1 / ux + q1 / xl)

        def primal(lam):
            p, q = np.sqrt(p0 + lam * p1), np.sqrt(q0 + lam * q1)
            return np.clip((p * low + q * upp) / (p + q), alpha, beta)

        def approx_g(xn):
            return g + np.sum(p1 / (upp - xn) + q1 / (xn - low)) - g_at_x

        lam_lo, lam_hi = 0.0, 1.0
        if approx_g(primal(0.0)) > 0:
            while approx_g(primal(lam_hi)) > 0 and lam_hi < 1e300:
                lam_lo, lam_hi = lam_hi, lam_hi * 10
            for _ in range(200):
                mid = 0.5 * (lam_lo + lam_hi)
                if approx_g(primal(mid)) > 0:
                    lam_lo = mid
                else:
                    lam_hi = mid
                if lam_hi - lam_lo <= 1e-14 * lam_hi:
                    break
            xnew = primal(lam_hi)
        else:
            xnew = primal(0.0)
        self.xold2, self.xold1 = self.xold1, x.copy()
        self.low, self.upp = low, upp
        return xnew


def _volume_affine(structure: Structure) -> tuple[float, np.ndarray]:
    """``(v0, dv)`` with volume(physical(x)) = v0 + dv @ x[design] exactly (the filter and the
    forced regions are affine)."""
    x = torch.zeros(structure.shape, dtype=torch.float64, requires_grad=True)
    v = structure.volume(structure.physical(x))
    v.backward()
    return float(v.detach()), x.grad[structure.design_mask].numpy().copy()


def _run_density(structure: Structure, rec: _Recorder, method: str, move: float | None) -> None:
    problem, mask = structure.problem, structure.design_mask
    v0, dv = _volume_affine(structure)
    full = structure.initial_density()
    x = full[mask].numpy().copy()
    mma = MMA(x.size, move=move or 0.5) if method == "mma" else None
    scale = None
    while not rec.exhausted:
        xt = full.clone()
        xt[mask] = torch.from_numpy(x)
        xt.requires_grad_(True)
        c = rec.evaluate(structure.physical(xt))
        c.backward()
        dc = xt.grad[mask].numpy()
        if rec.exhausted:
            break
        if mma is None:
            x = oc_update(x, dc, dv, v0, problem.volfrac, move=move or 0.2)
        else:
            scale = scale or abs(float(c.detach())) or 1.0
            g = (v0 + dv @ x) / problem.volfrac - 1.0
            x = mma.step(x, float(c.detach()) / scale, dc / scale, g, dv / problem.volfrac)


def _run_torch(structure: Structure, rec: _Recorder, param: str, method: str, lr: float | None,
               seed: int) -> None:
    problem = structure.problem
    torch.manual_seed(seed)
    model = make_param(param, structure.shape, seed=seed)
    mask = structure.design_mask

    def loss():
        x = constrained_sigmoid(model(), problem.volfrac, mask)
        return rec.evaluate(structure.physical(x))

    params = list(model.parameters())
    if method == "adam":
        opt = torch.optim.Adam(params, lr=lr or (1e-2 if param == "cnn" else 5e-2))
        while not rec.exhausted:
            opt.zero_grad()
            c = loss()
            c.backward()
            opt.step()
        return
    opt = torch.optim.LBFGS(params, lr=lr or 1.0, max_iter=rec.iters, max_eval=rec.iters,
                            history_size=10, tolerance_grad=0.0, tolerance_change=0.0,
                            line_search_fn="strong_wolfe")

    def closure():
        if rec.exhausted:
            raise _Budget
        opt.zero_grad()
        c = loss()
        c.backward()
        return c

    while not rec.exhausted:
        try:
            opt.step(closure)
        except _Budget:
            break
        if not rec.exhausted:  # converged (e.g. a zero step): restart the history
            opt = torch.optim.LBFGS(params, lr=lr or 1.0, max_iter=rec.iters - rec.count,
                                    max_eval=rec.iters - rec.count, history_size=10,
                                    tolerance_grad=0.0, tolerance_change=0.0,
                                    line_search_fn="strong_wolfe")
            if rec.result.compliance and len(rec.result.compliance) >= 3 and \
                    len(set(rec.result.compliance[-3:])) == 1:
                break  # stuck at one point: nothing more to gain


def optimize(problem: Problem | Structure, param: str = "pixel", optimizer: str = "oc",
             iters: int = 100, *, seed: int = 0, lr: float | None = None, move: float | None = None,
             solver: str = "auto", record_every: int = 1,
             callback: Callable[[int, float], None] | None = None) -> DesignResult:
    """Design ``problem`` for minimum compliance with ``iters`` compliance evaluations.

    Raises:
        ValidationError: for an invalid problem or method (before any solve).
        SimulationError: when a solve fails or the compliance becomes non-finite; the message
            names the iteration.
    """
    if optimizer not in OPTIMIZERS:
        raise ValidationError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if param not in ("pixel", "cnn"):
        raise ValidationError(f"param must be 'pixel' or 'cnn', got {param!r}")
    if optimizer in ("oc", "mma") and param != "pixel":
        raise ValidationError(f"{optimizer} updates densities directly, so it needs "
                              "--param pixel; use lbfgs or adam for the CNN")
    if not (isinstance(iters, int) and iters >= 1):
        raise ValidationError(f"iters must be a positive integer, got {iters!r}")
    if record_every < 1:
        raise ValidationError(f"record_every must be >= 1, got {record_every!r}")
    structure = problem if isinstance(problem, Structure) else Structure(problem, solver)
    if param == "cnn":  # validates the grid size before any solve
        make_param("cnn", structure.shape, seed=seed)
    result = DesignResult(structure.problem, param, optimizer, structure.solver.name)
    rec = _Recorder(structure, result, iters, record_every, callback)
    start = time.perf_counter()
    if optimizer in ("oc", "mma"):
        _run_density(structure, rec, optimizer, move)
    else:
        _run_torch(structure, rec, param, optimizer, lr, seed)
    if rec.last is not None and result.frame_iterations[-1] != rec.count - 1:
        result.frames.append(rec.last)  # always keep the last evaluation
        result.frame_iterations.append(rec.count - 1)
    result.seconds = time.perf_counter() - start
    return result
