"""Benchmark: random three-body systems integrated per second, simdiff's batched IAS15 against
REBOUND's IAS15 one system at a time (one core), at the same tolerance, measured in one run.

Workload: B random three-body systems (``simdiff.sims.nbody.initial.random_three_body``, seeds
0 .. B-1), G = 1, integrated to ``t_end`` with IAS15 at tolerance 1e-9 (REBOUND's default
epsilon). simdiff advances all B worlds in one compiled loop (``NBody.evolve``, Warp, one thread
per world on the CPU, single-threaded); REBOUND integrates the same systems one after the
other. Both start from a trial step of 1e-3 (REBOUND's default). Reported: systems per second of
each by wall time and by the process's CPU time (the single-core figure, robust when the shared
host is loaded; the target, 2x, is on it), their ratios, and the median relative energy error of
each (the accuracy the comparison is made at). Rounds alternate simdiff and REBOUND
(interleaved, as the host is shared); the best round of each is kept.

Measured (64 systems, t = 2, 2-core host at load ~20): simdiff 136 systems/s of CPU time
against REBOUND's 65 (2.1x; 4.1 us against 8.5 us a step), median energy error 1.0e-13 against
8.7e-11 (simdiff evaluates forces at the compensated positions).

Run: ``python benchmarks/nbody_systems.py [--systems 256] [--t-end 10] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _systems(count: int):
    from simdiff.sims.nbody.initial import random_three_body

    bodies = [random_three_body(seed) for seed in range(count)]
    return (torch.stack([b[0] for b in bodies]), torch.stack([b[1] for b in bodies]),
            torch.stack([b[2] for b in bodies]))


def simdiff_round(mass, x, v, t_end: float, tolerance: float
                  ) -> tuple[float, float, list[float]]:
    from simdiff.backend import resolve_backend
    from simdiff.sims.nbody import Model, NBody

    count = mass.shape[0]
    model = Model(mass[0], x[0], v[0], dt=1e-3, integrator="ias15", tolerance=tolerance)
    sim = NBody(model, resolve_backend("warp", precision="float64"), batch_size=count)
    state = sim.state_from(body_x=x.double(), body_v=v.double())
    params = sim.params()
    params = type(params)(**{**dict(zip(params.field_names(), params.tensors())),
                             "body_mass": mass.double()})
    e0 = sim.energy(state, params)
    started, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        final = sim.evolve(state, t_end, params)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    errors = ((sim.energy(final, params) - e0) / e0).abs().tolist()
    return seconds, cpu, errors


def rebound_round(mass, x, v, t_end: float, tolerance: float
                  ) -> tuple[float, float, list[float]]:
    import rebound

    errors, seconds, cpu = [], 0.0, 0.0
    for m, xs, vs in zip(mass.tolist(), x.tolist(), v.tolist()):
        sim = rebound.Simulation()
        sim.integrator = "ias15"
        sim.integrator.epsilon = tolerance
        for mk, xk, vk in zip(m, xs, vs):
            sim.add(m=mk, x=xk[0], y=xk[1], z=xk[2], vx=vk[0], vy=vk[1], vz=vk[2])
        e0 = sim.energy()
        started, cpu_started = time.perf_counter(), time.process_time()
        sim.integrate(t_end, exact_finish_time=1)
        seconds += time.perf_counter() - started
        cpu += time.process_time() - cpu_started
        errors.append(abs((sim.energy() - e0) / e0))
    return seconds, cpu, errors


def measure(systems: int = 256, t_end: float = 10.0, rounds: int = 3,
            tolerance: float = 1e-9) -> dict:
    mass, x, v = _systems(systems)
    simdiff_round(mass[:2], x[:2], v[:2], t_end, tolerance)  # compile (or load) the loop
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(simdiff_round(mass, x, v, t_end, tolerance))
        theirs.append(rebound_round(mass, x, v, t_end, tolerance))
    wall_ours, wall_theirs = min(r[0] for r in ours), min(r[0] for r in theirs)
    cpu_ours, cpu_theirs = min(r[1] for r in ours), min(r[1] for r in theirs)
    return {
        "systems": systems, "t_end": t_end, "tolerance": tolerance,
        "simdiff_systems_per_s": systems / wall_ours,
        "rebound_systems_per_s": systems / wall_theirs,
        "ratio": wall_theirs / wall_ours,
        "simdiff_systems_per_cpu_s": systems / cpu_ours,
        "rebound_systems_per_cpu_s": systems / cpu_theirs,
        "cpu_ratio": cpu_theirs / cpu_ours,
        "simdiff_median_energy_error": statistics.median(ours[0][2]),
        "rebound_median_energy_error": statistics.median(theirs[0][2]),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--systems", type=int, default=None, help="default 256 (--quick: 16)")
    p.add_argument("--t-end", type=float, default=None, help="default 10 (--quick: 1)")
    p.add_argument("--rounds", type=int, default=None, help="default 3 (--quick: 1)")
    p.add_argument("--quick", action="store_true",
                   help="16 systems to t = 1, one round (unless given)")
    p.add_argument("--backend", default="warp", help="simdiff's compiled loop runs on Warp")
    p.add_argument("--json", help="also write the result as JSON to this path")
    args = p.parse_args(argv)
    if args.backend not in ("warp", "all"):
        p.error("the compiled few-body loop runs on warp (--backend warp or all)")
    # --quick sets the sizes not given (`simdiff bench nbody_systems --quick --systems 64`).
    quick = {"systems": 16, "t_end": 1.0, "rounds": 1}
    full = {"systems": 256, "t_end": 10.0, "rounds": 3}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.systems < 1 or not args.t_end > 0 or args.rounds < 1:
        p.error(f"--systems={args.systems}, --t-end={args.t_end}, --rounds={args.rounds}: "
                "each must be positive")
    result = measure(args.systems, args.t_end, args.rounds)
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([result], f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
