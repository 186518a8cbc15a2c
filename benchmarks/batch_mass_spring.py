"""Benchmark: batched mass-spring worlds, world-steps per second against B = 1 and against a
Python loop over B single-world rollouts.

Workload: the ``walker_small`` scene (20 masses, 49 springs, 680 steps), float32 on the CPU,
closed loop: the scene's 32-unit MLP controller reads ``sim.observe`` ``[B, observation_dim]``
every step (one batched matrix product for all worlds). Per backend (Warp, Taichi) and batch
size B: a forward rollout (no grad) and a forward + backward (``loss.backward()`` through the
whole rollout), each the median of a few repetitions; the same for a Python loop over B
single-world rollouts, measured in the same process right after (``loop_worlds`` of them,
at most 16: its world-steps/s does not depend on B). Every (backend, B) runs in its own
process, so that ``peak_rss_mb`` is its own.

Each row: ``backend``, ``batch``, ``mode`` (``forward`` or ``forward_backward``),
``world_steps_per_s``, ``speedup_vs_b1`` (against the same backend and mode at B = 1),
``loop_world_steps_per_s`` and ``speedup_vs_loop``, ``peak_rss_mb``,
``peak_rss_mb_per_world`` and ``rss_growth_mb`` (peak minus the resident memory once the
libraries are imported and the model built: kernels loaded, rollouts and their graphs).

Measured (``--repeats 3 --loop-max 2``, Dec 2026, on the shared 2-core host with a load average
of 11-17 from other jobs, so absolute rates are low and noisy; ratios are within one run),
world-steps/s, forward+backward / forward:

=======  ====  ====================  ==============  ==============  ================
backend    B   fwd+bwd (x B=1)       x loop          forward (x B=1)  peak RSS [MiB]
=======  ====  ====================  ==============  ==============  ================
warp       1   152                   1.0             284              429
warp      16   1,308 (8.6x)          12.6            3,348 (11.8x)    438
warp      64   7,551 (49.7x)         32.2            11,916 (42x)     468
taichi     1   50                    1.2             136              357
taichi    16   933 (18.6x)           3.8             2,629 (19.3x)    367
taichi    64   5,301 (105x)          64.6            13,174 (97x)     398
=======  ====  ====================  ==============  ==============  ================

Target (forward+backward with the MLP at B = 64 >= 25x B = 1): met on both backends. An
earlier full run (``--repeats 1``, B = 1..256, load 15-18) gave Warp 54x at B = 64 and 50x at
B = 256 (forward 72x), Taichi 6.7x at B = 64 and 15x at B = 256 forward+backward (its B = 1
row and its loop in the same process disagreed 3x: single repetitions under that load are
noise; rerun with ``--repeats 3`` on a quieter host). Peak RSS grows by ~0.6 MiB per world
(Warp 429 -> 468 MiB from B = 1 to 64, 588 MiB at 256).

Run: ``python benchmarks/batch_mass_spring.py [--quick] [--batches 1 4 16]``, or from Python
``mass_spring_batch(...)``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["mass_spring_batch", "measure"]

LOOP_MAX = 16


def _current_rss_mb() -> float:
    """Resident memory of this process now [MiB] (Linux ``/proc/self/statm``)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _median(times: list[float]) -> float:
    return sorted(times)[len(times) // 2]


def measure(backend_name: str, batch: int, *, steps: int, repeats: int, loop_worlds: int,
            device: str = "cpu") -> list[dict]:
    """Rows (forward, forward_backward) of one backend and batch size, in this process."""
    import torch

    from simdiff.backend import resolve_backend
    from simdiff.bench import peak_rss_mb
    from simdiff.rollout import rollout
    from simdiff.scene import load_controller, load_scene
    from simdiff.sims.mass_spring import MassSpring

    torch.set_num_threads(1)  # the MLP is tiny: torch's thread pool only adds waits
    scene = load_scene("walker_small", steps=steps)
    backend = resolve_backend(backend_name, device)

    def setup(b: int):
        sim = MassSpring(scene.model, backend, batch_size=b)
        torch.manual_seed(0)
        controller = load_controller("mlp", sim, scene).to(backend.torch_dtype)
        return sim, controller

    def iteration(sim, controller, backward: bool, horizon: int = steps) -> None:
        if backward:
            loss = scene.loss(rollout(sim, sim.initial_state(), controller, horizon))
            controller.zero_grad()
            loss.backward()
        else:
            with torch.no_grad():
                rollout(sim, sim.initial_state(), controller, horizon)

    def timed(fn) -> float:
        fn(5)  # compiles kernels (or loads them from the cache), warms the allocator
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn(steps)
            times.append(time.perf_counter() - started)
        return _median(times)

    sim, controller = setup(batch)
    before = _current_rss_mb()  # libraries imported, model built: what the rollouts add
    batched = {mode: timed(lambda h, m=mode: iteration(sim, controller, m == "forward_backward",
                                                        h))
               for mode in ("forward", "forward_backward")}
    peak = peak_rss_mb()
    one_sim, one_controller = setup(1)
    loops = {mode: timed(lambda h, m=mode: [iteration(one_sim, one_controller,
                                                      m == "forward_backward", h)
                                            for _ in range(loop_worlds)])
             for mode in ("forward", "forward_backward")}
    rows = []
    for mode in ("forward", "forward_backward"):
        rate = batch * steps / batched[mode]
        loop_rate = loop_worlds * steps / loops[mode]
        rows.append({
            "workload": "walker_small_mlp",
            "backend": backend_name,
            "batch": batch,
            "mode": mode,
            "steps": steps,
            "seconds": batched[mode],
            "world_steps_per_s": rate,
            "loop_worlds": loop_worlds,
            "loop_world_steps_per_s": loop_rate,
            "speedup_vs_loop": rate / loop_rate,
            "peak_rss_mb": peak,
            "peak_rss_mb_per_world": peak / batch,
            "rss_growth_mb": peak - before,
        })
    return rows


def mass_spring_batch(batches=(1, 4, 16, 64, 256), backends=("warp", "taichi"),
                      quick: bool = False, *, device: str = "cpu", repeats: int = 3,
                      loop_max: int = LOOP_MAX, progress=print) -> list[dict]:
    """Rows of every backend, batch size and mode (see the module docstring), each
    (backend, B) measured in its own process; ``speedup_vs_b1`` against B = 1 of the same run
    (B = 1 is measured first if ``batches`` lacks it)."""
    steps, repeats = (20, 1) if quick else (680, repeats)
    batches = sorted({1, *batches})
    rows: list[dict] = []
    for backend in backends:
        for batch in batches:
            loop_worlds = min(batch, 2 if quick else loop_max)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", backend,
                   str(batch), "--steps", str(steps), "--repeats", str(repeats),
                   "--loop-worlds", str(loop_worlds), "--device", device]
            if progress:
                progress(f"measuring mass-spring batch [{backend}, B={batch}] ...")
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
            rows += json.loads(done.stdout.strip().splitlines()[-1])
    for row in rows:
        base = next(r for r in rows if r["backend"] == row["backend"]
                    and r["mode"] == row["mode"] and r["batch"] == 1)
        row["speedup_vs_b1"] = row["world_steps_per_s"] / base["world_steps_per_s"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--measure", nargs=2, metavar=("BACKEND", "B"))
    parser.add_argument("--steps", type=int, default=680)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop-worlds", type=int, default=1)
    parser.add_argument("--loop-max", type=int, default=LOOP_MAX)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    parser.add_argument("--backends", nargs="+", default=["warp", "taichi"])
    parser.add_argument("--quick", action="store_true", help="toy size, for tests")
    args = parser.parse_args()
    if args.measure:
        backend, batch = args.measure[0], int(args.measure[1])
        rows = measure(backend, batch, steps=args.steps, repeats=args.repeats,
                       loop_worlds=args.loop_worlds, device=args.device)
    else:
        rows = mass_spring_batch(args.batches, args.backends, args.quick, device=args.device,
                                 repeats=args.repeats, loop_max=args.loop_max)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
