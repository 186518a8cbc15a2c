"""The pressure equation, its multigrid-preconditioned conjugate-gradient solve, and the
adjoint that differentiates the solve, for ``B`` independent worlds at once.

Batch: every tensor has a leading world axis (pressure ``[B, *n]``, face weights
``[B, *(n + e_a)]``); each world has its own operator (its own obstacle, paddle, inflows), and
every reduction (dot products, norms, the closed box's mean) is per world, so one vectorized
operation per stage serves all worlds. Conjugate gradients take per-world step lengths
``alpha, beta`` ``[B]``; a world that reaches the tolerance is frozen (its step lengths are
zero from then on), so its solution is what a single-world solve of it returns, and the solve
ends when every world has converged. A world whose right-hand side is not finite (NaN from a
failed world) is left out and returned as NaN, for the rollout's health check to name; a
finite world that misses the tolerance fails the solve, naming each such world, its step and
residual.

Operator (cell units): ``A p = D^T W D p + S p`` where ``D`` takes differences across faces
(zero pressure outside the box), ``W`` holds each face's fluid fraction (0 at walls and solid
faces) and ``S`` is 1 on cells with no open face at all (fully solid: ``p = 0`` there), so
``A`` is symmetric positive semi-definite, and singular only in a closed box, where its null
space is the constant over the fluid and right-hand sides are projected onto its range.

Preconditioner: one symmetric V-cycle of geometric multigrid: one damped-Jacobi sweep before
and after the coarse correction, cell-centered linear prolongation ``P`` (zero beyond open
sides, mirrored at walls) and restriction ``R = P^T / 2^dim``, the operator rediscretized on
each coarser grid (a quarter of the mean fine face weight, with the open-side weights adjusted
so that ``p = 0`` stays where the fine grid puts it), and a dense pseudo-inverse on the coarsest
grid (at most 64 cells). Equal pre- and post-smoothing and ``R`` proportional to ``P^T`` make
the cycle symmetric, as conjugate gradients require. Transfers skip fixed cells. Iterations to
a relative residual of 1e-6: 8 for a Poisson problem in a closed or open box at every size
from 32^2 to 256^2; 9 to 22 with inflows and obstacles (benchmarks/fluid.py), where
Jacobi-preconditioned CG needs hundreds.

One launch per solve: on the CPU the solve runs by default as one Warp kernel thread per
world (:class:`simdiff.sims.fluid.warp.FusedSolve`): the same operator, transfers, coarsest
pseudo-inverse and per-world convergence test, with a lexicographic Gauss-Seidel sweep as the
smoother (forward before the coarse correction, backward after it: still symmetric), which
takes fewer iterations than damped Jacobi and cannot be vectorized in torch. The functions
here stay the reference (``Fluid(..., fused_solve=False)``) and the path for autograd
through the iterations. Warm starts (``guess``) begin a solve from the previous step's
pressure; the tolerance stays relative to the right-hand side.

Exact solve: where every world's box has nothing inside (no solid, paddle or inflow face:
every interior weight is 1, walls 0, open sides 1), ``A`` is the plain Laplacian and
``Fluid`` solves it by fast cosine/sine transforms instead
(:class:`simdiff.sims.fluid.spectral.SpectralSolve`, plugged in where the one-launch CG
would be, for the forward and the adjoint solve alike): no iterations, residual at round-off.
With ``Fluid(..., capacitance=True)`` a box with static solids or inflows is solved exactly too,
by that solve corrected by a capacitance matrix on the cells beside them
(:class:`simdiff.sims.fluid.spectral.CapacitanceSolve`).

Gradient: :class:`SymmetricSolve` is a ``torch.autograd.Function``. This hand-written
derivative replaces autograd through the CG iterations because those would store every
iterate (memory grows with the iteration count) and differentiate round-off of an
approximate solve; the implicit-function adjoint is exact for the solution and costs one more
solve with the same (symmetric) operator: ``lam = A^-1 g``, ``grad b = lam``,
``grad w_f = -(D lam)_f (D p)_f``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from simdiff.sims.base import SimulationError

__all__ = ["PressureSystem", "SolveStats", "SymmetricSolve", "pcg", "unconverged"]

_COARSEST = 64
_JACOBI_WEIGHT = 0.8


@dataclass
class SolveStats:
    """Counts of conjugate-gradient iterations, forward and adjoint (a batched solve counts
    once, with the iterations of its slowest world)."""

    solves: int = 0
    iterations: int = 0
    adjoint_solves: int = 0
    adjoint_iterations: int = 0
    last_iterations: int = 0
    last_residual: float = 0.0
    """The largest final relative residual over the worlds of the last solve."""

    def mean_iterations(self) -> float:
        return self.iterations / self.solves if self.solves else 0.0

    def record(self, iterations: torch.Tensor, residual: torch.Tensor) -> None:
        """Count one forward solve of per-world ``iterations`` and ``residual`` ``[B]``."""
        self.solves += 1
        self.last_iterations = int(iterations.max())
        self.iterations += self.last_iterations
        finite = residual[torch.isfinite(residual)]
        self.last_residual = float(finite.max()) if finite.numel() else 0.0


def _pad_axis(x: torch.Tensor, axis: int, lo: int, hi: int) -> torch.Tensor:
    pad = [0, 0] * (x.dim() - axis)
    pad[-2:] = [lo, hi]
    return F.pad(x, pad)


def _prolong(x: torch.Tensor, open_sides: frozenset) -> torch.Tensor:
    """Cell-centered linear interpolation of ``x`` ``[B, *m]`` to the grid twice as fine:
    ``P``. Per axis, fine cells ``2i`` and ``2i+1`` take 3/4 of coarse cell ``i`` and 1/4 of
    its neighbor on their side; beyond a wall the neighbor repeats the last cell (no flux),
    beyond an open side it is zero (the pressure there)."""
    for a in range(x.dim() - 1):
        t = a + 1  # the tensor axis of spatial axis a (after the world axis)
        m = x.shape[t]
        lo, hi = x.narrow(t, 0, 1), x.narrow(t, m - 1, 1)
        lo = torch.zeros_like(lo) if (a, 0) in open_sides else lo
        hi = torch.zeros_like(hi) if (a, 1) in open_sides else hi
        ends = torch.cat([lo, x, hi], t)
        even = 0.75 * x + 0.25 * ends.narrow(t, 0, m)
        odd = 0.75 * x + 0.25 * ends.narrow(t, 2, m)
        shape = list(x.shape)
        shape[t] = 2 * m
        x = torch.stack([even, odd], t + 1).reshape(shape)
    return x


def _restrict(x: torch.Tensor, open_sides: frozenset) -> torch.Tensor:
    """The exact transpose of :func:`_prolong`, scaled by 2^-dim (a weighted average)."""
    for a in range(x.dim() - 1):
        t = a + 1
        m = x.shape[t] // 2
        shape = list(x.shape)
        shape[t : t + 1] = [m, 2]
        pairs = x.reshape(shape)
        even, odd = pairs.select(t + 1, 0), pairs.select(t + 1, 1)
        ends = (
            0.75 * _pad_axis(even + odd, t, 1, 1)
            + 0.25 * _pad_axis(even, t, 0, 2)
            + 0.25 * _pad_axis(odd, t, 2, 0)
        )
        coarse = ends.narrow(t, 1, m)
        if (a, 0) not in open_sides:
            coarse = coarse + _pad_axis(ends.narrow(t, 0, 1), t, 0, m - 1)
        if (a, 1) not in open_sides:
            coarse = coarse + _pad_axis(ends.narrow(t, m + 1, 1), t, m - 1, 0)
        x = 0.5 * coarse
    return x


def _mean_pool(x: torch.Tensor, axes: list[int]) -> torch.Tensor:
    """Average adjacent pairs along each of the tensor ``axes`` (all even-sized)."""
    for b in axes:
        shape = list(x.shape)
        shape[b : b + 1] = [shape[b] // 2, 2]
        x = x.reshape(shape).mean(b + 1)
    return x


class PressureSystem:
    """The pressure operators of one step on one level, one per world.

    Args:
        weights: Fluid fraction of the faces of each axis, shapes ``[B, *(n + e_a)]``
            (detached or not: the operator is applied to whatever it is given).
        fixed: 1 on fully solid cells, else 0, shape ``[B, *n]``.
        open_sides: The open ends ``(axis, end)`` (zero pressure beyond); with none the box is
            closed and constants are in the null space of every world's operator.
        operator: Kernels computing ``A x`` and ``r - A x`` (``apply(system, x)``,
            ``residual(system, r, x)``, e.g. :class:`simdiff.sims.fluid.warp.Laplacian`), used
            on every level for tensors that need no autograd; None: torch.
    """

    def __init__(
        self,
        weights: list[torch.Tensor],
        fixed: torch.Tensor,
        open_sides: frozenset = frozenset(),
        *,
        level: int = 0,
        operator=None,
    ) -> None:
        self.level = level
        self.operator = operator
        self.operator_cache = None
        """What ``operator`` keeps for this level (e.g. its weights in the kernels' layout)."""
        self.weights = weights
        self.batch = int(fixed.shape[0])
        self.n = tuple(fixed.shape[1:])
        self.dim = len(self.n)
        self.space = tuple(range(1, self.dim + 1))
        """The spatial axes of a ``[B, *n]`` tensor (what a per-world reduction sums)."""
        self.open_sides = frozenset(open_sides)
        self.singular = not self.open_sides
        # Cells with no open face are fixed (p = 0) whatever the caller said: on coarse
        # levels a cell of fluid children can lose all its faces to solids.
        isolated = (
            sum(
                w.detach().narrow(a + 1, 0, self.n[a]) + w.detach().narrow(a + 1, 1, self.n[a])
                for a, w in enumerate(weights)
            )
            <= 1e-12
        )
        self.fixed = fixed = torch.maximum(fixed, isolated.to(fixed.dtype))
        self.fluid = (fixed == 0).to(fixed.dtype)
        # Weights of each cell's lower and upper neighbor per axis, and the slices of the
        # once-padded pressure holding those neighbors: A p = diag p - sum w_nb p_nb.
        self.lower = [w.narrow(a + 1, 0, self.n[a]) for a, w in enumerate(weights)]
        self.upper = [w.narrow(a + 1, 1, self.n[a]) for a, w in enumerate(weights)]
        self.diag = fixed + sum(self.lower) + sum(self.upper)
        self._inv_diag: torch.Tensor | None = None
        inner = [slice(1, k + 1) for k in self.n]
        self._below = [
            (..., *inner[:a], slice(0, k), *inner[a + 1 :]) for a, k in enumerate(self.n)
        ]
        self._above = [
            (..., *inner[:a], slice(2, k + 2), *inner[a + 1 :]) for a, k in enumerate(self.n)
        ]
        self._coarse: PressureSystem | None | bool = False
        self._dense: torch.Tensor | None = None

    @property
    def fluid(self) -> torch.Tensor:
        """1 on the cells whose pressure is solved for, else 0, ``[B, *n]``."""
        return self._fluid

    @fluid.setter
    def fluid(self, value: torch.Tensor) -> None:
        self._fluid = value
        # Fluid cells per world, shaped to broadcast against [B, *n].
        self.fluid_count = value.sum(self.space, keepdim=True).clamp_min(1.0)

    @property
    def inv_diag(self) -> torch.Tensor:
        if self._inv_diag is None:
            self._inv_diag = _JACOBI_WEIGHT / self.diag.detach()
        return self._inv_diag

    def _kernels(self, x: torch.Tensor) -> bool:
        return (
            self.operator is not None
            and x.dim() == self.dim + 1
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weights[0].requires_grad))
        )

    def residual(self, r: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``r - A x``."""
        if self._kernels(x):
            return self.operator.residual(self, r, x)
        return r - self.apply(x)

    def apply(self, p: torch.Tensor) -> torch.Tensor:
        """``A p`` for ``p`` ``[B, *n]`` (or ``[..., B, *n]``: more leading axes)."""
        if self._kernels(p):
            return self.operator.apply(self, p)
        padded = F.pad(p, [1, 1] * self.dim)
        out = self.diag * p
        for a in range(self.dim):
            out = (
                out
                - self.lower[a] * padded[self._below[a]]
                - self.upper[a] * padded[self._above[a]]
            )
        return out

    def project(self, r: torch.Tensor) -> torch.Tensor:
        """Onto the range of each world's ``A``: zero mean over the fluid in a closed box;
        zero on fixed cells."""
        r = r * self.fluid
        if self.singular:
            r = r - self.fluid * (r.sum(self.space, keepdim=True) / self.fluid_count)
        return r

    # Multigrid -----------------------------------------------------------------------------
    def coarse(self) -> PressureSystem | None:
        """The operators rediscretized on the grid twice as coarse, for the averaging
        restriction: a coarse face's weight is a quarter of the mean of the fine faces it
        covers."""
        if self._coarse is False:
            self._coarse = None
            if all(k % 2 == 0 and k >= 4 for k in self.n) and _prod(self.n) > _COARSEST:
                weights = []
                for a, w in enumerate(self.weights):
                    picked = w.detach()[
                        (
                            slice(None),
                            *(
                                slice(None, None, 2) if b == a else slice(None)
                                for b in range(self.dim)
                            ),
                        )
                    ]
                    # / 4: the stencil is -h^2 laplacian in cell units, and h doubles.
                    coarse_w = _mean_pool(picked, [b + 1 for b in range(self.dim) if b != a]) / 4
                    # The fine grid puts p = 0 half a fine cell beyond an open side; keep it
                    # there: the boundary face of level L is 1/2 + 2^-(L+1) cells from it.
                    ratio = (0.5 + 2.0 ** -(self.level + 1)) / (0.5 + 2.0 ** -(self.level + 2))
                    scale = torch.ones(picked.shape[a + 1], dtype=w.dtype, device=w.device)
                    scale[0] = ratio if (a, 0) in self.open_sides else 1.0
                    scale[-1] = ratio if (a, 1) in self.open_sides else 1.0
                    shape = [1] * (self.dim + 1)
                    shape[a + 1] = -1
                    weights.append(coarse_w * scale.view(shape))
                every = list(self.space)
                # A coarse cell is fixed only if all its cells are: fixed cells are decoupled
                # (no open face), and a partly fixed coarse cell must not pull p to zero.
                fixed = (_mean_pool(self.fixed.detach(), every) > 1 - 1e-9).to(w.dtype)
                coarse = PressureSystem(
                    weights, fixed, self.open_sides, level=self.level + 1, operator=self.operator
                )
                coarse.fluid = (_mean_pool(self.fluid, every) > 0).to(self.fixed.dtype)
                self._coarse = coarse
        return self._coarse

    def _dense_inverse(self) -> torch.Tensor:
        """Each world's pseudo-inverse of its operator, ``[B, m, m]`` (``m`` cells)."""
        if self._dense is None:
            m = _prod(self.n)
            eye = torch.eye(m, dtype=self.diag.dtype, device=self.diag.device)
            with torch.no_grad():
                # Column j of every world's matrix at once: A_b e_j for e_j [m, B, *n].
                columns = self.apply(eye.view(m, 1, *self.n).expand(m, self.batch, *self.n))
            matrix = columns.reshape(m, self.batch, m).permute(1, 2, 0)
            self._dense = torch.linalg.pinv(matrix, hermitian=True)
        return self._dense

    def vcycle(self, r: torch.Tensor) -> torch.Tensor:
        """One symmetric V-cycle from zero per world: an SPD approximation of ``A^-1 r``."""
        coarse = self.coarse()
        if coarse is None:
            if _prod(self.n) <= _COARSEST:
                flat = r.reshape(self.batch, -1, 1)
                return (self._dense_inverse() @ flat).view(self.batch, *self.n)
            x = torch.zeros_like(r)
            for _ in range(20):  # odd sizes that cannot coarsen: a fixed Jacobi polynomial
                x = x + self.residual(r, x) * self.inv_diag
            return x
        x = r * self.inv_diag
        # Transfers skip fixed cells (P = fluid * P_linear, R = P^T), keeping the cycle
        # symmetric.
        correction = coarse.vcycle(_restrict(self.residual(r, x) * self.fluid, self.open_sides))
        x = x + _prolong(correction, self.open_sides) * self.fluid
        return x + self.residual(r, x) * self.inv_diag


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for k in shape:
        out *= k
    return out


def _difference(p: torch.Tensor, a: int) -> torch.Tensor:
    """``p[i] - p[i-1]`` across the faces of spatial axis ``a`` of ``p`` ``[B, *n]``, with
    zero outside."""
    dim = p.dim() - 1
    pad = [0, 0] * dim
    pad[2 * (dim - 1 - a)] = 1
    pad[2 * (dim - 1 - a) + 1] = 1
    padded = F.pad(p, pad)
    return padded.narrow(a + 1, 1, p.shape[a + 1] + 1) - padded.narrow(a + 1, 0, p.shape[a + 1] + 1)


def _per_world(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``[B]`` tensor shaped to broadcast against ``like`` ``[B, *n]``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def pcg(
    system: PressureSystem,
    b: torch.Tensor,
    *,
    tolerance: float,
    max_iterations: int,
    preconditioner: str = "multigrid",
    guess: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve every world's ``A x = b`` (``b`` ``[B, *n]`` in the range of ``A``) by
    preconditioned conjugate gradients to ``|b - A x| <= tolerance |b|`` per world.
    Differentiable by autograd when its inputs are (the unrolled reference the adjoint is
    tested against).

    Each world has its own step lengths; a converged world is frozen (zero step lengths), so
    its iterates are those of a solve of that world alone. A world with a non-finite ``b`` is
    left out and its solution is NaN. ``guess`` (``[B, *n]``, in the range of ``A``; default
    zero) is the initial iterate (a warm start): the tolerance stays relative to ``|b|``.

    Returns:
        The solutions ``[B, *n]``, and per world ``[B]`` the iterations taken and the final
        relative residual (left for the caller to judge against the tolerance; NaN for a
        world left out).
    """
    space = system.space
    norm_b = torch.linalg.vector_norm(b.detach(), dim=space)
    finite = torch.isfinite(norm_b)
    active = finite & (norm_b > 0)
    x = torch.zeros_like(b)
    iterations = torch.zeros(system.batch, dtype=torch.long, device=b.device)
    relative = torch.where(finite, torch.zeros_like(norm_b), torch.full_like(norm_b, torch.nan))
    safe_norm = torch.where(active, norm_b, torch.ones_like(norm_b))

    def precondition(r: torch.Tensor) -> torch.Tensor:
        z = system.vcycle(r) if preconditioner == "multigrid" else r / system.diag
        return system.project(z)

    if bool(active.any()):
        r = b
        if guess is not None:
            x = torch.where(_per_world(active, b), guess.detach().to(b.dtype), x)
            r = system.project(b - system.apply(x))  # no round-off outside A's range
            now = torch.linalg.vector_norm(r.detach(), dim=space) / safe_norm
            relative = torch.where(active, now, relative)
            active = active & (now > tolerance)
    if bool(active.any()):
        z = precondition(r)
        d = z
        rz = (r * z).sum(space)
        for k in range(1, max_iterations + 1):
            ad = system.apply(d)
            dad = (d * ad).sum(space)
            # Safe denominators: a frozen world's step is zero, and no 0/0 reaches autograd.
            alpha = torch.where(active, rz / torch.where(active, dad, torch.ones_like(dad)), 0.0)
            x = x + _per_world(alpha, d) * d
            r = r - _per_world(alpha, ad) * ad
            now = torch.linalg.vector_norm(r.detach(), dim=space) / safe_norm
            relative = torch.where(active, now, relative)
            iterations = torch.where(active, k, iterations)
            active = active & (now > tolerance)
            if not bool(active.any()):
                break
            z = precondition(r)
            rz_new = (r * z).sum(space)
            beta = torch.where(active, rz_new / torch.where(active, rz, torch.ones_like(rz)), 0.0)
            d = z + _per_world(beta, d) * d
            rz = rz_new
    if not bool(finite.all()):
        x = torch.where(_per_world(finite, x), x, torch.nan)
    return x, iterations, relative


def unconverged(
    what: str,
    relative: torch.Tensor,
    iterations: torch.Tensor,
    tolerance: float,
    where: Sequence[tuple[int, str]],
) -> SimulationError | None:
    """The error of a solve in which some finite world missed ``tolerance`` (None if none
    did), naming each such world, its step (``where[b]``: step number and description) and
    relative residual."""
    missed = torch.isfinite(relative) & (relative > tolerance)
    if not bool(missed.any()):
        return None
    failures, parts = {}, []
    for b in missed.nonzero().flatten().tolist():
        step, text = where[b]
        detail = (
            f"relative residual {float(relative[b]):.3g} > tolerance {tolerance:.3g} after "
            f"{int(iterations[b])} conjugate-gradient iterations"
        )
        failures[b] = (step, f"{what} did not converge: {detail}")
        parts.append(f"world {b} at {text}: {detail}")
    return SimulationError(
        f"{what} did not converge in {len(parts)} of {len(where)} worlds (raise max_iterations "
        f"or the tolerance): " + "; ".join(parts),
        failures,
    )


def _solve(options: dict, b: torch.Tensor, guess: torch.Tensor | None):
    """One solve of ``options["system"]`` to the tolerance: by ``options["fused"]`` (the
    one-launch kernel, :class:`simdiff.sims.fluid.warp.FusedSolve`) where given, else by
    :func:`pcg`; from ``guess`` (projected onto the operator's range) or zero."""
    system: PressureSystem = options["system"]
    if guess is not None:
        guess = system.project(guess.to(b.dtype)) if guess.shape == b.shape else None
    fused = options.get("fused")
    if fused is not None:
        return fused.solve(b, options["tolerance"], options["max_iterations"], guess)
    return pcg(system, b, tolerance=options["tolerance"],
               max_iterations=options["max_iterations"], guess=guess)


class SymmetricSolve(torch.autograd.Function):
    """``p = A(w)^-1 b`` per world with the adjoint derivative (see the module docstring for
    why).

    Warm starts: ``options["guess"]`` (the previous step's pressure) starts the forward solve,
    and the adjoint of the solve that follows it in the rollout starts this one's adjoint: it
    leaves it in ``options["previous"]``, the ``options["link"]`` dict of the solve that
    warm-started it (small dicts, so that a state's warm start does not keep the solves of
    every earlier step alive). Both solves still reach the tolerance relative to their
    right-hand side, so the solution and gradient differ from a cold start's only within the
    tolerance (tests/test_fluid.py checks the gradient against central differences).
    """

    @staticmethod
    def forward(ctx, options: dict, b: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        stats: SolveStats = options["stats"]
        tolerance = options["tolerance"]
        p, iterations, residual = _solve(options, b.detach(), options.pop("guess", None))
        stats.record(iterations, residual)
        error = unconverged("pressure projection", residual, iterations, tolerance,
                            options["where"])
        if error is not None:
            raise error
        ctx.options = options
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, grad_p: torch.Tensor):
        options = ctx.options
        system: PressureSystem = options["system"]
        stats: SolveStats = options["stats"]
        tolerance = options["tolerance"]
        (p,) = ctx.saved_tensors
        g = system.project(grad_p.contiguous())
        link = options.get("link", {})
        lam, iterations, residual = _solve(options, g, link.pop("adjoint_guess", None))
        previous = options.get("previous")
        if previous is not None:
            # The solve that warm-started this one runs its adjoint next in backward (this
            # step's right-hand side depends on its pressure): start it from this adjoint.
            previous["adjoint_guess"] = lam.detach()
        stats.adjoint_solves += 1
        stats.adjoint_iterations += int(iterations.max())
        error = unconverged("adjoint pressure solve", residual, iterations, tolerance,
                            options["where"])
        if error is not None:
            raise error
        lam = system.project(lam)
        grads_w = [
            -(_difference(lam, a) * _difference(p, a)) if ctx.needs_input_grad[2 + a] else None
            for a in range(system.dim)
        ]
        return (None, lam if ctx.needs_input_grad[1] else None, *grads_w)
