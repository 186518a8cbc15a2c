"""Benchmark: seconds per structural design iteration, per solver, and the crossover size.

One design iteration is what ``simdiff design mbb_beam_* --param pixel --optimizer oc`` does
per step: density filter, SIMP stiffness, one linear solve, compliance and its adjoint
sensitivities, filter transpose, an optimality-criteria update. Measured on the paper's MBB
beams at 96x32 (volfrac 0.5), 192x64 (0.4) and 384x128 (0.3), the mean over the first
``--iters`` iterations from the uniform start (the same iterations for every configuration).

A fourth size, 768x256 (0.3), is measured to locate the crossover beyond the paper's sizes.

Configurations: ``direct`` (SuperLU, or CHOLMOD when scikit-sparse is installed), ``mgcg``
(matrix-free CG with a geometric multigrid V-cycle, warm-started from the previous
iteration), ``jacobi`` (the same CG with a diagonal preconditioner). Baseline: ``scipy``, a
plain implementation of the same iteration as the 88-line code writes it (COO assembly,
``scipy.sparse.linalg.spsolve`` with its default ordering, a sparse filter matrix), run in the
same ``simdiff bench design``.

Run through ``simdiff bench design [--iters N] [--quick]``.

Figures (``--iters 5``, 2 CPU cores shared with other jobs, so +-50 % between runs; seconds
per design iteration, two runs):

    size      dofs     direct        mgcg          jacobi        plain scipy
    96x32     6.4k     0.11 / 0.16   0.07 / 0.10   0.80 / 0.36   0.23 / 0.06
    192x64    25k      1.24 / 0.51   0.95 / 0.88   18.0 / 20.9   0.53 / 0.46
    384x128   99k      1.77 / 1.42   1.69 / 3.35   (103, once)   2.96 / 2.81
    768x256   395k     8.12 / 8.76   3.96 / 5.51   -             13.6 / 16.8

Multigrid CG needs 13-20 iterations per solve (warm-started), Jacobi-CG 750-3500. The direct
solver (nested-dissection SuperLU) is 1.7-2x faster than the plain scipy iteration from 384x128
on; multigrid CG overtakes the direct solver between 384x128 and 768x256 (where it is 1.6-2x
faster): ``auto`` switches at 200k dofs.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

CONFIGS = ["direct", "mgcg", "jacobi"]
BASELINE = "scipy"
KEYS = ("size",)
METRIC, HIGHER_IS_BETTER = "seconds_per_iteration", False

SIZES = [(96, 32, 0.5), (192, 64, 0.4), (384, 128, 0.3), (768, 256, 0.3)]
#: Jacobi-preconditioned CG needs thousands of iterations per solve on large grids (about 100 s
#: per design iteration at 384x128 on 2 cores): it is measured up to this many dofs.
JACOBI_MAX_DOFS = 30_000
QUICK_SIZES = [(24, 8, 0.5), (48, 16, 0.5)]


def plain_scipy(nelx: int, nely: int, volfrac: float, iters: int, rmin: float = 2.0,
                penal: float = 3.0) -> float:
    """Seconds per iteration of the plain scipy design loop (density filter, OC)."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    from simdiff.design.fem import element_dofs, element_stiffness

    start = time.perf_counter()
    e0, emin = 1.0, 1e-9
    ke = element_stiffness(0.3)
    edof = element_dofs(nelx, nely)
    ik = np.repeat(edof, 8, axis=1).ravel()
    jk = np.tile(edof, (1, 8)).ravel()
    ndof = 2 * (nelx + 1) * (nely + 1)
    f = np.zeros(ndof)
    f[1] = -1.0
    fixed = np.union1d(np.arange(0, 2 * (nely + 1), 2), [ndof - 1])
    free = np.setdiff1d(np.arange(ndof), fixed)
    r = int(np.ceil(rmin)) - 1
    ex, ey = np.meshgrid(np.arange(nelx), np.arange(nely), indexing="ij")
    rows, cols, vals = [], [], []
    for dx in range(-r, r + 1):
        for dy in range(-r, r + 1):
            ok = (ex + dx >= 0) & (ex + dx < nelx) & (ey + dy >= 0) & (ey + dy < nely)
            rows.append((ex * nely + ey)[ok])
            cols.append(((ex + dx) * nely + ey + dy)[ok])
            vals.append(np.full(int(ok.sum()), max(0.0, rmin - np.hypot(dx, dy))))
    h = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(nelx * nely,) * 2)
    hs = np.asarray(h.sum(axis=1)).ravel()
    x = np.full(nelx * nely, volfrac)
    u = np.zeros(ndof)
    for _ in range(iters):
        xphys = (h @ x) / hs
        sk = (ke.ravel()[None, :] * (emin + xphys**penal * (e0 - emin))[:, None]).ravel()
        k = sp.coo_matrix((sk, (ik, jk)), shape=(ndof, ndof)).tocsc()
        u[free] = spla.spsolve(k[free][:, free], f[free])
        ue = u[edof]
        ce = np.sum((ue @ ke) * ue, axis=1)
        dc = h @ ((-penal * (e0 - emin) * xphys ** (penal - 1) * ce) / hs)
        dv = h @ (np.ones(nelx * nely) / hs)
        l1, l2 = 0.0, 1e9
        while (l2 - l1) / (l1 + l2) > 1e-12:
            lmid = 0.5 * (l1 + l2)
            xnew = np.clip(x * np.sqrt(np.maximum(-dc, 0) / dv / lmid), np.maximum(0, x - 0.2),
                           np.minimum(1, x + 0.2))
            if (h @ xnew / hs).sum() > volfrac * nelx * nely:
                l1 = lmid
            else:
                l2 = lmid
        x = xnew
    return (time.perf_counter() - start) / iters


def simdiff_loop(config: str, nelx: int, nely: int, volfrac: float, iters: int) -> dict:
    from simdiff.design.optimizers import optimize
    from simdiff.design.problems import mbb_beam
    from simdiff.design.structure import Structure

    structure = Structure(mbb_beam(nelx, nely, volfrac), config)
    cg = []
    result = optimize(structure, "pixel", "oc", iters,
                      callback=lambda i, c: cg.append(getattr(structure.solver, "iterations", 0)))
    row = {"seconds_per_iteration": result.seconds / iters,
           "solve_fraction": result.solve_seconds / result.seconds,
           "final_compliance": result.compliance[-1]}
    if config != "direct":
        row["cg_iterations"] = float(np.mean(cg))
    else:
        row["factorization"] = structure.solver.backend
    return row


def summarize(rows: list[dict]) -> str:
    """Where the multigrid-CG solver overtakes the direct one: the smallest size from which it
    is faster at every larger size measured."""
    by = {(r["config"], r["size"]): r["seconds_per_iteration"] for r in rows}
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    lines, faster = [], []
    for size in sizes:
        d, m = by.get(("direct", size)), by.get(("mgcg", size))
        if d and m:
            faster.append(m < d)
            lines.append(f"  {size}: direct {d:.3g} s, mgcg {m:.3g} s -> "
                         f"{'mgcg' if m < d else 'direct'} ({max(d, m) / min(d, m):.2f}x)")
    cross = None
    for i in range(len(faster)):
        if all(faster[i:]):
            cross = sizes[i]
            break
    verdict = (f"crossover: mgcg is faster from {cross} on" if cross
               else "crossover: not reached; direct is faster at the largest size measured")
    return "\n".join(["per-iteration time, direct vs multigrid CG:", *lines, verdict])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, choices=[*CONFIGS, BASELINE])
    parser.add_argument("--iters", type=int, default=10, help="design iterations per size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="toy sizes, for tests")
    args = parser.parse_args()
    sizes = QUICK_SIZES if args.quick else SIZES
    if args.config in ("mgcg", "jacobi"):  # compile the Taichi operator outside the timing
        simdiff_loop(args.config, 16, 8, 0.5, 1)
    rows = []
    for nelx, nely, volfrac in sizes:
        if args.config == "jacobi" and 2 * (nelx + 1) * (nely + 1) > JACOBI_MAX_DOFS:
            continue
        row = {"config": args.config, "size": f"{nelx}x{nely}",
               "dofs": 2 * (nelx + 1) * (nely + 1)}
        if args.config == BASELINE:
            row["seconds_per_iteration"] = plain_scipy(nelx, nely, volfrac, args.iters)
        else:
            row.update(simdiff_loop(args.config, nelx, nely, volfrac, args.iters))
        rows.append(row)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
