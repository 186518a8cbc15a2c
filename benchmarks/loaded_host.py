"""Benchmark: closed-loop training of the small walker on a quiet host and on a loaded one.

Workload: ``walker_small`` (20 masses, 49 springs), 680 steps, the 32-unit MLP controller, one
training iteration (rollout, backward, Adam) on Warp, float32 on the CPU. The competing load is
``--load N`` busy processes (default: one per core), each in a session of its own, so that the
scheduler treats them as other users' jobs rather than as part of this one. Quiet and loaded
phases alternate (``--rounds`` times, ``--iters`` iterations each), so the ratio
``loaded / quiet`` compares times measured minutes apart at most.

Configurations: ``simdiff``, the training loop's thread choice (:mod:`simdiff.threads`: one torch
intra-op thread for a system this small), and the baseline ``torch-threads``, torch's default
(one thread per core), which collapsed under load (issue 18: 19.4 s against 0.23 s quiet).

Run through ``simdiff bench loaded_host``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from simdiff.bench import peak_rss_mb

CONFIGS = ["simdiff"]
BASELINE = "torch-threads"
KEYS: tuple[str, ...] = ("load",)
METRIC, HIGHER_IS_BETTER = "seconds_per_iter", False


def start_load(count: int) -> list[subprocess.Popen]:
    """``count`` busy processes, each in its own session (another job, to the scheduler); each
    ends by itself when this process does, even if it is killed."""
    spin = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", spin], start_new_session=True)
            for _ in range(count)]


def stop_load(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait()


def measure(config: str, *, steps: int, rounds: int, iters: int, load: int,
            device: str = "cpu") -> list[dict]:
    from torch.optim import Adam

    from simdiff.backend import resolve_backend
    from simdiff.rollout import rollout
    from simdiff.scene import load_controller, load_scene, make_simulator
    from simdiff.threads import intra_op_threads, threads_for

    scene = load_scene("walker_small", steps=steps)
    sim = make_simulator(scene, resolve_backend("warp", device))
    torch.manual_seed(0)
    controller = load_controller("mlp", sim, scene)
    optimizer = Adam(controller.parameters(), lr=1e-3)
    threads = threads_for(sim.initial_state()) if config == "simdiff" else torch.get_num_threads()

    def iteration() -> float:
        started = time.perf_counter()
        with intra_op_threads(threads):
            loss = scene.loss(rollout(sim, sim.initial_state(), controller, steps))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return time.perf_counter() - started

    iteration()  # compile or load the kernels
    times: dict[str, list[float]] = {"quiet": [], "loaded": []}
    for _ in range(rounds):
        times["quiet"] += [iteration() for _ in range(iters)]
        procs = start_load(load)
        try:
            time.sleep(0.2)  # let the busy processes start spinning
            times["loaded"] += [iteration() for _ in range(iters)]
        finally:
            stop_load(procs)
    quiet = statistics.median(times["quiet"])
    rows = []
    for phase, values in times.items():
        median = statistics.median(values)
        rows.append({
            "config": config,
            "load": phase,
            "seconds_per_iter": median,
            "loaded_vs_quiet": median / quiet,
            "torch_threads": threads,
            "busy_processes": load if phase == "loaded" else 0,
            "steps": steps,
            "iters": len(values),
            "peak_rss_mb": peak_rss_mb(),
        })
    return rows


def summarize(rows: list[dict]) -> str:
    lines = ["loaded / quiet time per configuration (target: at most 1.5):"]
    for row in rows:
        if row["load"] == "loaded":
            lines.append(f"  {row['config']:<14} {row['loaded_vs_quiet']:.2f} "
                         f"({row['torch_threads']} torch thread(s), "
                         f"{row['busy_processes']} busy processes)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, choices=[*CONFIGS, BASELINE])
    parser.add_argument("--iters", type=int, default=2, help="iterations per phase and round")
    parser.add_argument("--rounds", type=int, default=3, help="quiet/loaded alternations")
    parser.add_argument("--steps", type=int, default=680)
    parser.add_argument("--load", type=int, default=os.cpu_count() or 2,
                        help="busy processes of the loaded phase (default: one per core)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="toy size, for tests")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds, args.iters, args.load = 20, 1, 1, 1
    print(json.dumps(measure(args.config, steps=args.steps, rounds=args.rounds,
                             iters=args.iters, load=args.load, device=args.device)))


if __name__ == "__main__":
    main()
