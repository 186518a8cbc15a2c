"""Benchmark: RL time-stepping environment throughput, and the policy against fixed etas.

Throughput: environment steps (decisions, each ``interval = 0.2`` of physical time) per second
at a fixed eta, with the compiled few-body loop of ``NBody.evolve`` (``fewbody``, what the environment uses)
against the same Hermite steps driven from Python (``NBody.evolve(compiled=False)``, ``python``, the
baseline), on the same initial conditions.

Evaluation (config ``evaluation``): the shipped policy and every fixed eta on 50 held-out
initial conditions (10 with ``--quick``): median final energy error, median force evaluations,
median trajectory error against a converged reference, systems finished.

Run through ``simdiff bench rl``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

CONFIGS = ["fewbody", "evaluation"]
BASELINE = "python"
KEYS = ("eta",)
METRIC, HIGHER_IS_BETTER = "env_steps_per_second", True


def _fewbody(eta: float, actions: int, seeds) -> float:
    from simdiff.rl.env import ETAS, ThreeBodyTimestepEnv

    env = ThreeBodyTimestepEnv(max_actions=actions)
    action = int(np.argmin(np.abs(np.log(ETAS / eta))))
    steps, start = 0, time.perf_counter()
    for seed in seeds:
        env.reset(seed=seed)
        for _ in range(actions):
            *_, terminated, truncated, _ = env.step(action)
            steps += 1
            if terminated or truncated:
                break
    return steps / (time.perf_counter() - start)


def _python(eta: float, actions: int, seeds) -> float:
    import torch

    from simdiff.backend import resolve_backend
    from simdiff.rl.env import ThreeBodyTimestepEnv
    from simdiff.sims.nbody import Model, NBody

    env = ThreeBodyTimestepEnv(max_actions=actions)
    backend = resolve_backend("warp", precision="float64")
    steps, start = 0, time.perf_counter()
    for seed in seeds:
        env.reset(seed=seed)  # the same initial conditions as the environment's episodes
        mass, x, v = (torch.tensor(a[0]) for a in (env.system.mass, env.system.x, env.system.v))
        sim = NBody(Model(mass, x, v, dt=0.1, integrator="hermite", eta=eta), backend)
        with torch.no_grad():
            state = sim.initial_state()
            for k in range(actions):
                # The same steps driven from Python, one NBody.step at a time.
                state = sim.evolve(state, (k + 1) * env.interval, compiled=False)
                steps += 1
    return steps / (time.perf_counter() - start)


def _evaluation(systems: int) -> list[dict]:
    from simdiff.rl.evaluate import evaluate
    from simdiff.rl.policy import load_policy

    start = time.perf_counter()
    results, trusted = evaluate(load_policy(), systems=systems)
    rows = []
    for r in results:
        row = {"config": "evaluation", "eta": r.name, **r.summary(trusted)}
        del row["method"]
        rows.append(row)
    rows[-1]["seconds"] = round(time.perf_counter() - start, 1)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, choices=[*CONFIGS, BASELINE])
    parser.add_argument("--iters", type=int, default=1, help="unused; one pass")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="toy sizes, for tests")
    args = parser.parse_args()
    if args.config == "evaluation":
        print(json.dumps(_evaluation(10 if args.quick else 50)))
        return
    # The Python-driven baseline takes ~1 ms a step: a few short episodes are enough.
    seeds = range(2) if args.quick else range(4)
    actions = 2 if args.quick else 5
    measure = _fewbody if args.config == "fewbody" else _python
    rows = [{"config": args.config, "eta": eta, METRIC: measure(eta, actions, seeds)}
            for eta in (0.1, 0.01)]
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
