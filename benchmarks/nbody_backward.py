"""Benchmark: gradients through ``NBody.evolve``, the compiled backward against the torch replay
(its reference), interleaved in one run.

Workloads (float64, Warp, one world): the Pythagorean three-body problem with IAS15 (tolerance
1e-9, the scene's default integrator) to t = 70, and two short three-body runs, IAS15 to t = 2
and adaptive Hermite (eta = 0.02) to t = 2. The loss reads the end state's positions and
velocities; its gradient is taken with respect to the masses, the initial positions and
velocities, G and the softening. Reported per workload and path: the forward without
gradients (the compiled loop alone), the forward with gradients (the loop recording its
steps; the replay's differentiable torch steps), the backward (``torch.autograd.grad``), the
ratio backward / forward (to the forward without gradients), and the compiled path's speed-up
over the replay for forward plus backward. Rounds alternate the compiled path and the replay
(the host is shared); the best round of each is kept. The load average is printed beside.

Measured (2-core host at load ~4, ``benchmarks/results/nbody_backward.json``; the replay one
round): Pythagorean IAS15 to t = 70, 5,380 steps: forward 21 ms, with gradients 23 ms,
compiled backward 74 ms (3.5x the forward), against the replay's 82 s forward and 130 s
backward (2,200x slower together). IAS15 to t = 2, 153 steps: forward 2.2 ms, backward 3.9 ms
(1.8x; the replay 980x slower). Hermite to t = 2, 1,871 steps: forward 2.1 ms, backward 2.6 ms
(1.25x; the replay 410x slower). The backward takes the steps again (a forward), re-runs each
IAS15 step's iterations for the tape (a second) and then the adjoints, and touches the
checkpoints' memory (~0.5 KB per body and IAS15 step) for the first time.

Run: ``python benchmarks/nbody_backward.py [--rounds 2] [--quick] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import torch

WORKLOADS = {
    "pythagorean_ias15_t70": ({"integrator": "ias15", "dt": 1e-3}, 70.0),
    "pythagorean_ias15_t2": ({"integrator": "ias15", "dt": 1e-3}, 2.0),
    "pythagorean_hermite_t2": ({"integrator": "hermite", "dt": 0.01, "eta": 0.02}, 2.0),
}


def _problem(options: dict):
    from simdiff.backend import resolve_backend
    from simdiff.sims.nbody import Model, NBody
    from simdiff.sims.nbody.initial import pythagorean

    mass, x, v = pythagorean()
    return NBody(Model(mass, x, v, **options), resolve_backend("warp", precision="float64"))


def _once(sim, t_end: float, backward: str) -> tuple[float, float, int]:
    """Seconds of the forward with gradients and of the backward; the step count."""
    f64 = torch.float64
    mass, x, v = sim.model.body_mass, sim.model.body_x, sim.model.body_v
    leaves = [t.clone().requires_grad_() for t in (mass, x, v, torch.tensor(1.0, dtype=f64),
                                                   torch.tensor(0.0, dtype=f64))]
    m, xl, vl, g, eps = leaves
    params = dataclasses.replace(sim.params(), body_mass=m, gravitational_constant=g,
                                 softening=eps)
    started = time.perf_counter()
    final = sim.evolve(sim.initial_state(xl, vl, params=params), t_end, params,
                       backward=backward)
    loss = final.body_x.sum() + final.body_v.square().sum()
    forward = time.perf_counter() - started
    started = time.perf_counter()
    torch.autograd.grad(loss, leaves)
    return forward, time.perf_counter() - started, int(sim.last_steps[0])


def _plain(sim, t_end: float) -> float:
    started = time.perf_counter()
    with torch.no_grad():
        sim.evolve(sim.initial_state(), t_end)
    return time.perf_counter() - started


def measure(names: list[str], rounds: int, replay_rounds: int) -> list[dict]:
    rows = []
    for name in names:
        options, t_end = WORKLOADS[name]
        sim = _problem(options)
        _once(sim, min(t_end, 0.1), "compiled")  # compile (or load) the kernels
        plain, compiled, replay = [], [], []
        for r in range(rounds):
            plain.append(min(_plain(sim, t_end) for _ in range(3)))
            compiled.append(min((_once(sim, t_end, "compiled") for _ in range(3)),
                                key=lambda m: m[0] + m[1]))
            if r < replay_rounds:
                replay.append(_once(sim, t_end, "replay"))
        best_plain = min(plain)
        fwd_c, bwd_c, steps = min(compiled, key=lambda m: m[0] + m[1])
        row = {"workload": name, "t_end": t_end, "integrator": options["integrator"],
               "steps": steps, "forward_no_grad_s": best_plain,
               "compiled_forward_s": fwd_c, "compiled_backward_s": bwd_c,
               "compiled_backward_over_forward": bwd_c / best_plain,
               "load_average": os.getloadavg()[0]}
        if replay:
            fwd_r, bwd_r, _ = min(replay, key=lambda m: m[0] + m[1])
            row.update({"replay_forward_s": fwd_r, "replay_backward_s": bwd_r,
                        "replay_backward_over_forward": bwd_r / best_plain,
                        "speedup_forward_backward": (fwd_r + bwd_r) / (fwd_c + bwd_c)})
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--replay-rounds", type=int, default=1,
                   help="rounds of the (slow) torch replay, interleaved with the first rounds")
    p.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    p.add_argument("--quick", action="store_true", help="the short workloads, one round")
    p.add_argument("--backend", default="warp", help="the compiled loop runs on Warp")
    p.add_argument("--json", help="also write the rows as JSON to this path")
    args = p.parse_args(argv)
    if args.backend not in ("warp", "all"):
        p.error("the compiled few-body loop runs on warp (--backend warp or all)")
    if args.quick:
        args.workloads = [w for w in args.workloads if not w.endswith("t70")]
        args.rounds = args.replay_rounds = 1
    rows = measure(args.workloads, args.rounds, args.replay_rounds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
