"""Benchmark: one MPM crawler training iteration (rollout, backward, Adam update).

Workload: the ``mpm_crawler`` scene at ``scale=1.5`` on a 128^2 grid (about 3,200 particles),
50 control steps of 20 substeps (1,000 substeps), the open-loop sinusoid controller, float32
on the CPU. Configurations: simdiff on Taichi and on Warp (grids recomputed in backward;
``--checkpoint K`` also keeps only every K-th control step's particles) and the baseline, a plain vectorized PyTorch
implementation of the same substep (``simdiff.sims.mpm.torch_reference``) differentiated by
torch autograd, which keeps every substep's intermediates.

Also reported: forward-only particle-substeps per second, and the peak memory of a training
iteration. ``--substeps`` sets the horizon (e.g. 4000 or 10000 to see memory stay bounded).
Each configuration runs in its own process, so peak memory is its own.
Run through ``simdiff bench mpm``. Measured on 2 shared cores (one run): a training iteration
takes 4.3 s on Warp and 9.8 s on Taichi; forward 0.83 s and 1.0 s.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from simdiff.bench import peak_rss_mb

CONFIGS = ["taichi", "warp"]
BASELINE = "torch"
KEYS: tuple[str, ...] = ("substeps",)
METRIC, HIGHER_IS_BETTER = "seconds_per_iter", False


def measure(config: str, *, iters: int, substeps: int, quick: bool, device: str = "cpu",
            checkpoint: int | None = None) -> dict:
    from simdiff.autodiff import rollout
    from simdiff.backend import resolve_backend
    from simdiff.scene import load_controller, load_scene, make_simulator
    from simdiff.sims.mpm.torch_reference import torch_substep

    per_step = 20
    options = ({"grid_size": 64, "dt": 1e-3, "substeps": 10, "scale": 1.0} if quick else
               {"grid_size": 128, "dt": 5e-4, "substeps": per_step, "scale": 1.5})
    steps = max(1, substeps // options["substeps"])
    scene = load_scene("mpm_crawler", steps=steps, **options)
    # The torch baseline uses a Taichi simulator only for its model, parameters and state.
    backend = resolve_backend("taichi" if config == BASELINE else config, device)
    sim = make_simulator(scene, backend)
    model = scene.model
    torch.manual_seed(0)
    controller = load_controller("sinusoid", sim, scene).to(backend.torch_dtype)
    optimizer = torch.optim.Adam(controller.parameters(), lr=0.05)

    if config == "torch":

        def run_rollout():
            params = sim.particle_params()
            state = sim.initial_state()
            p, tool = sim.pack(state), torch.zeros(2 * model.dim, dtype=backend.torch_dtype)
            x0 = state.particle_x
            for t in range(steps):
                action = controller(t, None)
                for _ in range(model.substeps):
                    p = torch_substep(model, p, params, action, tool)
            return -(p[:, 0].mean() - x0[:, 0].mean())
    else:

        def run_rollout():
            # No rollout checkpoints: each step already saves only its packed particle input
            # (its grids are recomputed), 150 kB here; checkpoints would add a forward pass.
            return scene.loss(rollout(sim, sim.initial_state(), controller, steps,
                                      checkpoint_every=checkpoint, check_every=10))

    def iteration() -> float:
        loss = run_rollout()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss)

    base_rss = peak_rss_mb()
    started = time.perf_counter()
    iteration()  # compiles kernels (or loads them from the cache)
    first = time.perf_counter() - started
    times = []
    for _ in range(iters):
        started = time.perf_counter()
        iteration()
        times.append(time.perf_counter() - started)
    times.sort()
    with torch.no_grad():
        started = time.perf_counter()
        run_rollout()
        forward = time.perf_counter() - started
    total = steps * model.substeps
    return {
        "config": config,
        "seconds_per_iter": times[len(times) // 2],
        "first_iter_seconds": first,
        "forward_seconds": forward,
        "particle_substeps_per_s": model.particle_count * total / forward,
        "peak_rss_mb": peak_rss_mb(),
        "rss_growth_mb": peak_rss_mb() - base_rss,
        "particles": model.particle_count,
        "grid": model.grid_size,
        "substeps": total,
        "iters": iters,
        "checkpoint": checkpoint,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, choices=[*CONFIGS, BASELINE])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--substeps", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="toy size, for tests")
    parser.add_argument("--checkpoint", type=int, default=None,
                        help="simdiff: keep one state every this many control steps")
    args = parser.parse_args()
    substeps, iters = (20, 1) if args.quick else (args.substeps, args.iters)
    row = measure(args.config, iters=iters, substeps=substeps, quick=args.quick,
                  device=args.device, checkpoint=args.checkpoint)
    print(json.dumps([row]))


if __name__ == "__main__":
    main()
