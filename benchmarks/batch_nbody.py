"""Benchmark: batched N-body worlds, world-steps per second against B = 1 and a Python loop.

Workload: random three-body systems (:func:`~simdiff.sims.nbody.initial.random_three_body`,
one seed a world), Hermite at a fixed step dt = 1e-3, ``steps`` steps per rollout, float64.
For each backend and B: forward (no grad) and forward+backward (loss on the final positions,
gradients to the initial positions and masses) as world-steps per second, the speed-up over
B = 1, and, as the baseline measured in the same run, a Python loop over B single-world
simulators. ``peak_rss_mb`` is the process's peak resident memory after the row (monotone: it
bounds every row before it).
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import time

import torch


def _worlds(b: int):
    from simdiff.sims.nbody.initial import random_three_body

    ics = [random_three_body(seed) for seed in range(b)]
    return tuple(torch.stack([ic[k] for ic in ics]) for k in range(3))


def _rate(fn, world_steps: int, repeats: int) -> float:
    fn()  # compile / warm up
    best = min(_timed(fn) for _ in range(repeats))
    return world_steps / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _rollout(sim, mass, x, steps: int, backward: bool) -> None:
    import dataclasses

    with torch.enable_grad() if backward else torch.no_grad():
        m = mass.clone().requires_grad_(backward)
        xl = x.clone().requires_grad_(backward)
        params = dataclasses.replace(sim.params(), body_mass=m)
        state = sim.initial_state(xl, params=params)
        for _ in range(steps):
            state = sim.step(state, None, params)
        if backward:
            (state.body_x**2).sum().backward()


def _loop(singles, mass, x, steps: int, backward: bool) -> None:
    """The baseline: one single-world simulator after another."""
    for w, sim in enumerate(singles):
        _rollout(sim, mass[w], x[w:w + 1], steps, backward)


def nbody_batch(batches=(1, 4, 16, 64, 256), backends=("warp", "taichi"), quick=False,
                steps: int | None = None, repeats: int = 2) -> list[dict]:
    """Rows ``{backend, batch, mode, world_steps_per_s, speedup_vs_b1, loop_world_steps_per_s,
    speedup_vs_loop, peak_rss_mb}``; ``quick`` runs toy sizes."""
    from simdiff.backend import resolve_backend
    from simdiff.sims.nbody import Model, NBody

    steps = steps or (5 if quick else 50)
    batches = tuple(b for b in batches if b <= 4) if quick else batches
    rows = []
    for name in backends:
        backend = resolve_backend(name, precision="float64")
        base: dict[str, float] = {}
        for b in batches:
            mass, x, v = _worlds(b)
            sim = NBody(Model(mass, x, v, dt=1e-3, integrator="hermite"), backend)
            singles = [NBody(Model(mass[w], x[w], v[w], dt=1e-3, integrator="hermite"), backend)
                       for w in range(b)]
            for mode, backward in (("forward", False), ("forward+backward", True)):
                rate = _rate(functools.partial(_rollout, sim, mass, x, steps, backward),
                             b * steps, repeats)
                loop = _rate(functools.partial(_loop, singles, mass, x, steps, backward),
                             b * steps, 1)
                base.setdefault(mode, rate)
                rows.append({
                    "workload": "nbody_three_body", "backend": name, "batch": b, "mode": mode,
                    "world_steps_per_s": rate, "speedup_vs_b1": rate / base[mode],
                    "loop_world_steps_per_s": loop, "speedup_vs_loop": rate / loop,
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backend", action="append")
    parser.add_argument("--batch", type=int, action="append")
    args = parser.parse_args()
    rows = nbody_batch(tuple(args.batch or (1, 4, 16, 64, 256)),
                       tuple(args.backend or ("warp", "taichi")), args.quick)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
