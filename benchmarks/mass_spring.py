"""Benchmark: one mass-spring training iteration (rollout, backward, Adam update).

Workload: the ``walker_small`` scene (20 masses, 49 springs), 680 steps, float32 on the CPU,
with the closed-loop 32-unit MLP controller and with the open-loop sinusoid controller.
Configurations: simdiff on Warp (open-loop rollouts captured as one graph, ``simdiff.bridge``),
simdiff on Warp without capture (``warp-uncaptured``, open loop only), simdiff on Taichi, and
the baseline, a plain vectorized PyTorch implementation of the same physics
(``simdiff.sims.mass_spring.torch_reference``) differentiated by torch autograd.

Measured in one run on an idle 2-core host (5 iterations each, median): open-loop sinusoid,
680 steps, one iteration (rollout, backward, Adam): Warp captured 0.0059 s, Warp step by step
0.171 s (capture 29x), Taichi 1.12 s, torch 0.61 s (captured Warp 103x torch); the first captured
iteration, which captures both graphs, 0.53 s. Closed-loop MLP: Warp 0.32 s, Taichi 0.92 s,
torch 0.73 s.

Each configuration runs in its own process (``--config``), so that peak memory is its own.
Run through ``simdiff bench mass_spring``.
"""

from __future__ import annotations

import argparse
import json

import torch

from simdiff.bench import peak_rss_mb, time_iterations

CONFIGS = ["warp", "warp-uncaptured", "taichi"]
BASELINE = "torch"
KEYS: tuple[str, ...] = ("controller",)
METRIC, HIGHER_IS_BETTER = "seconds_per_iter", False


def measure(config: str, controller_name: str, *, iters: int, steps: int,
            device: str = "cpu") -> dict:
    from simdiff.backend import resolve_backend
    from simdiff.rollout import rollout
    from simdiff.scene import load_controller, load_scene, make_simulator
    from simdiff.sims.mass_spring.simulator import State
    from simdiff.sims.mass_spring.torch_reference import torch_step
    from simdiff.threads import intra_op_threads, threads_for

    scene = load_scene("walker_small", steps=steps)
    backend = resolve_backend("taichi" if config == "taichi" else "warp", device)
    sim = make_simulator(scene, backend)
    torch.manual_seed(0)
    controller = load_controller(controller_name, sim, scene).to(backend.torch_dtype)
    capture = None if config != "warp-uncaptured" else False
    optimizer = torch.optim.Adam(controller.parameters(), lr=1e-3)

    if config == "torch":
        model = scene.model

        def run_rollout():
            params = sim.params()
            state = sim.initial_state()
            x0 = state.particle_x
            x, v = state.particle_x, state.particle_v
            for t in range(steps):
                action = controller(t, State(x, v))
                x, v = torch_step(model, x, v, action, params)
            return -(x[..., 0].mean(1) - x0[..., 0].mean(1)).mean()
    else:

        def run_rollout():
            return scene.loss(rollout(sim, sim.initial_state(), controller, steps,
                                      capture=capture))

    def iteration() -> float:
        loss = run_rollout()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss)

    base_rss = peak_rss_mb()  # libraries imported, model built: what training adds comes after
    # Torch's threads as `simdiff train` chooses them (one for a system this small, for every
    # configuration, the torch baseline included): with torch's default a second thread that
    # waits for a shared core turns each tiny matmul into milliseconds (simdiff.threads).
    with intra_op_threads(threads_for(sim.initial_state())):
        first, times = time_iterations(iteration, iters)
    return {
        "config": config,
        "controller": controller_name,
        "seconds_per_iter": times[len(times) // 2],
        "first_iter_seconds": first,
        "peak_rss_mb": peak_rss_mb(),
        "rss_growth_mb": peak_rss_mb() - base_rss,
        "particles": scene.model.particle_count,
        "springs": scene.model.spring_count,
        "steps": steps,
        "iters": iters,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, choices=[*CONFIGS, BASELINE])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--steps", type=int, default=680)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="toy size, for tests")
    args = parser.parse_args()
    steps, iters = (20, 1) if args.quick else (args.steps, args.iters)
    controllers = ["sinusoid"] if args.config == "warp-uncaptured" else ["mlp", "sinusoid"]
    rows = [measure(args.config, name, iters=iters, steps=steps, device=args.device)
            for name in controllers]
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
