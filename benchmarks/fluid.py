"""Benchmark: smoke-plume steps per second, forward and forward+backward, 2D and 3D.

Workload: a buoyant smoke plume rising from an inflow at the bottom of a box open at the top,
``--steps`` steps (100; 10 with ``--quick``) at 64^2, 128^2, 256^2 and 64^3 (3D: 20 steps),
float32, the projection solved to a relative residual of 1e-6. Forward+backward
differentiates the final smoke with respect to the initial velocity.

Configurations: ``torch`` (``--backend torch``: the step in vectorized torch;
multigrid-preconditioned CG, adjoint gradient of the solve), ``warp`` (the same step with Warp
kernels for advection, sources, solids, divergence and gradient, differentiated by Warp's
adjoints; ``--backend warp``) and the baseline ``plain_torch``: the same discretization as a
user would write it in plain PyTorch,
Jacobi-preconditioned CG to the same tolerance, differentiated by autograd through every
iteration. The baseline needs hundreds of iterations per solve from 128^2 on, so there it runs
a tenth of the steps (``steps`` column; rates are per step either way), and its
forward+backward, which keeps every CG iterate (gigabytes per step), is not run beyond 128^2.

Peak memory is the process's peak resident set after each row (sizes run smallest first, so
each row's figure is that size's peak). Run through ``simdiff bench fluid``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from simdiff.bench import peak_rss_mb

CONFIGS = ["torch", "warp"]
BASELINE = "plain_torch"
KEYS = ("resolution", "mode")
METRIC, HIGHER_IS_BETTER = "steps_per_second", True


def plume(resolution: tuple[int, ...]):
    from simdiff.sims.fluid import Inflow, Model

    n = resolution
    dim = len(n)
    lo = tuple([3 * n[0] // 8, 1] + [3 * k // 8 for k in n[2:]])
    hi = tuple([5 * n[0] // 8, 3] + [5 * k // 8 for k in n[2:]])
    source = Inflow(lo, hi, velocity=(0.0, 0.5) + (0.0,) * (dim - 2), concentration=(1.0,))
    return Model(
        n,
        dx=1.0 / n[0],
        dt=1.0 / n[0],
        buoyancy=(1.0,),
        inflows=[source],
        open_sides=("y+",),
        tolerance=1e-6,
        max_iterations=20_000,
    )


def measure(config: str, resolution: tuple[int, ...], steps: int, mode: str) -> dict:
    from simdiff.backend import resolve_backend
    from simdiff.rollout import rollout
    from simdiff.sims.fluid import Fluid

    model = plume(resolution)
    backend = resolve_backend("warp" if config == "warp" else "torch", precision="float32")
    if config in CONFIGS:
        sim = Fluid(model, backend)
    else:
        sim = Fluid(model, backend, adjoint=False, preconditioner="jacobi")
    gen = torch.Generator().manual_seed(0)
    v0 = 0.05 * torch.randn(1, len(resolution), *(k + 1 for k in resolution), generator=gen)

    def run() -> None:
        if mode == "forward":
            with torch.no_grad():
                rollout(sim, sim.initial_state(velocity=v0), None, steps)
        else:
            v = v0.clone().requires_grad_()
            final = rollout(sim, sim.initial_state(velocity=v), None, steps).final
            final.dye.square().sum().backward()

    sim.stats.solves = sim.stats.iterations = 0
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    return {
        "config": config,
        "resolution": "x".join(map(str, resolution)),
        "mode": mode,
        "steps": steps,
        "steps_per_second": steps / seconds,
        "seconds": seconds,
        "iterations_per_solve": sim.stats.mean_iterations(),
        "adjoint_iterations": (
            sim.stats.adjoint_iterations / sim.stats.adjoint_solves
            if sim.stats.adjoint_solves
            else None
        ),
        "peak_mb": peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, choices=[*CONFIGS, BASELINE])
    parser.add_argument("--iters", type=int, default=100, help="steps per 2D rollout")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="toy sizes, for tests")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: torch's default); 1 avoids contention on busy hosts",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = 10 if args.quick else args.iters
    sizes = [(32, 32)] if args.quick else [(64, 64), (128, 128), (256, 256), (64, 64, 64)]
    if args.config == "warp":  # compile (or load) the kernels before timing
        for n in [(16, 16)] + ([] if args.quick else [(16, 16, 16)]):
            measure(args.config, n, 1, "forward+backward")
    rows = []
    for n in sizes:
        cells = n[0] ** len(n)
        for mode in ("forward", "forward+backward"):
            k = steps if len(n) == 2 else max(steps // 5, 2)
            if args.config == BASELINE and cells >= 128**2:
                # Jacobi CG needs hundreds of iterations here, and autograd keeps every
                # iterate: about 2.5 MB each at 256^2, gigabytes per step.
                if mode != "forward" and cells > 128**2:
                    continue
                k = max(k // 10, 2) if mode == "forward" or cells > 64**2 else k
            rows.append(measure(args.config, n, k, mode))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
