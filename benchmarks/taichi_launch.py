"""Benchmark: the Python-side cost of a Taichi kernel launch through the bridge.

Workload: the ``walker_small`` step on Taichi (float32, CPU): its spring-force kernel alone
(seven array arguments, two of them the model's resident spring indices and actuator map) and
the bridge's whole forward step (two launches, output buffers). Measured as the main thread's
CPU time per call (``time.thread_time``), which another job's load disturbs far less than wall
time, in 25 interleaved batches of 100 calls (median).

Rows: ``torch-static`` (the baseline) passes the model's static data as torch tensors on every
launch, as the bridge did before; ``resident`` passes the Taichi ndarrays the bridge now keeps
for them (:func:`simdiff.bridge._taichi_static_args`). Both are measured in the same process,
alternating. Run through ``simdiff bench taichi_launch``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

CONFIGS: list[str] = []
BASELINE = "torch-static"
KEYS: tuple[str, ...] = ("call",)
METRIC, HIGHER_IS_BETTER = "cpu_us_per_call", False


def measure(*, batches: int, calls: int) -> list[dict]:
    from simdiff import bridge
    from simdiff.backend import resolve_backend
    from simdiff.scene import load_scene, make_simulator

    torch.set_num_threads(1)
    scene = load_scene("walker_small")
    sim = make_simulator(scene, resolve_backend("taichi"))
    state = sim.step(sim.initial_state(), torch.zeros(sim.action_dim))
    step = next(v for v in vars(sim).values() if isinstance(v, bridge.KernelStep))
    forces = step.launches[0]
    kernel = forces.forward_kernel or forces.kernel
    x, v = state.particle_x.contiguous(), state.particle_v.contiguous()
    action, params = torch.zeros(sim.action_dim), sim.spring_params()
    force = torch.zeros_like(x)
    resident = bridge._taichi_static_args(forces, kernel)
    as_torch = forces.static_args
    resident_static = bridge._taichi_static_args

    def forward_step(static) -> None:
        bridge._taichi_static_args = static
        try:
            bridge._run_forward(step, [x, v, action, params])
        finally:
            bridge._taichi_static_args = resident_static

    variants = {
        ("resident", "spring_forces"): lambda: kernel(*resident, x, v, action, params, force),
        ("torch-static", "spring_forces"): lambda: kernel(*as_torch, x, v, action, params, force),
        ("resident", "forward step"): lambda: forward_step(resident_static),
        ("torch-static", "forward step"): lambda: forward_step(lambda launch, k: launch.static_args),
    }
    for call in variants.values():  # compile and warm up
        call()
    times: dict[tuple[str, str], list[float]] = {key: [] for key in variants}
    for _ in range(batches):
        for key, call in variants.items():
            started = time.thread_time()
            for _ in range(calls):
                call()
            times[key].append((time.thread_time() - started) / calls * 1e6)
    return [{"config": config, "call": name, "cpu_us_per_call": statistics.median(values),
             "batches": batches, "calls_per_batch": calls}
            for (config, name), values in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, choices=[BASELINE])
    parser.add_argument("--iters", type=int, default=25, help="interleaved batches")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="toy size, for tests")
    args = parser.parse_args()
    batches, calls = (2, 5) if args.quick else (args.iters, 100)
    print(json.dumps(measure(batches=batches, calls=calls)))


if __name__ == "__main__":
    main()
