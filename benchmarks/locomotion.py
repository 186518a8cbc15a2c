"""Benchmark: goal-conditioned walker_goals trained through the physics (``diffphys``: goal_mlp,
Adam, 4 worlds per iteration) against stable-baselines3 PPO (``ppo``, the baseline: the
gymnasium :class:`~simdiff.rl.locomotion_env.LocomotionEnv` over the same simulator, goal
distribution and loss terms as reward, 4 environments), for equal wall-clock budgets.

Both are scored the same way, on the same held-out walk commands (4 speeds over
``[-vmax, vmax]``, one goal period): ``velocity_error``, the mean absolute difference between
the centre of mass's velocity over 100-step windows and the command [m/s]. Each row gives the
final figure at the budget and its learning curve against wall-clock seconds (evaluation time
excluded) and simulated steps. Run through ``simdiff bench locomotion [--budget SECONDS]``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

CONFIGS = ["diffphys"]
BASELINE = "ppo"
KEYS = ("budget_s",)
METRIC, HIGHER_IS_BETTER = "velocity_error", False

OPTIONS = {"tasks": ["stand", "walk"], "steps": 500, "period": 500}


def _held_out(space):
    from simdiff.locomotion import held_out_schedule

    schedule = held_out_schedule(space, 4)
    schedule.goals = schedule.goals[:1]
    schedule.tasks = schedule.tasks[:1]
    return schedule


def _window_error(com: np.ndarray, targets: np.ndarray, space, every: int) -> float:
    """Mean |window velocity - command| from COM x sampled every ``every`` steps, [T, B]."""
    k = space.window // every
    velocity = (com[k:] - com[:-k]) / (space.window * space.dt)
    return float(np.abs(velocity - targets[None]).mean())


def _diffphys(budget: float, quick: bool) -> dict:
    from simdiff.backend import resolve_backend
    from simdiff.locomotion import goal_rollout, locomotion_losses
    from simdiff.scene import load_controller, load_scene, make_simulator

    options = {**OPTIONS, **({"steps": 100, "period": 100, "window": 50} if quick else {})}
    scene = load_scene("walker_goals", **options)
    sim = make_simulator(scene, resolve_backend("warp", "cpu", "float32"), batch_size=4)
    torch.manual_seed(0)
    controller = load_controller("goal_mlp", sim, scene, frequency=3.0).float()
    optimizer = torch.optim.Adam(controller.parameters(), lr=0.01)
    held = _held_out(scene.goals)
    targets = held.goals[0, :, 0].numpy()
    curve, spent, simulated, iteration = [], 0.0, 0, 0

    def score() -> float:
        with torch.no_grad():
            r = goal_rollout(sim, sim.initial_state(), controller, held, scene.steps)
        com = r.trace["com"][..., 0].double().numpy()
        return _window_error(com, targets, scene.goals, 1)

    curve.append({"seconds": 0.0, "simulated_steps": 0, METRIC: score()})
    while spent < budget:
        start = time.perf_counter()
        schedule = scene.goals.sample(4, scene.steps, seed=iteration)
        r = goal_rollout(sim, sim.initial_state(), controller, schedule, scene.steps)
        loss = r.mean(locomotion_losses(r)["total"])
        optimizer.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(controller.parameters(), 1.0)
        if torch.isfinite(norm):
            optimizer.step()
        spent += time.perf_counter() - start
        simulated += 4 * scene.steps
        iteration += 1
        curve.append({"seconds": round(spent, 2), "simulated_steps": simulated, METRIC: score()})
    return {"config": "diffphys", "budget_s": budget, METRIC: curve[-1][METRIC],
            "best_" + METRIC: min(c[METRIC] for c in curve), "iterations": iteration,
            "curve": curve}


def _ppo(budget: float, quick: bool) -> dict:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.logger import Logger

    from simdiff.rl.locomotion_env import LocomotionEnv

    options = {**OPTIONS, **({"steps": 100, "period": 100, "window": 50} if quick else {})}
    venv = make_vec_env(LocomotionEnv, n_envs=4, seed=0,
                        env_kwargs={"scene_options": options})
    model = PPO("MlpPolicy", venv, n_steps=64, batch_size=64, seed=0, verbose=0)
    model.set_logger(Logger(folder=None, output_formats=[]))  # no /tmp/SB3-DATE per learn()
    probe = LocomotionEnv(scene_options=options)
    held = _held_out(probe.space)
    targets = held.goals[0, :, 0].numpy()

    def score() -> float:
        coms = []
        for world in range(4):
            probe.reset(seed=world)
            probe.schedule = type(held)(held.space, held.goals[:, world:world + 1],
                                        ((held.tasks[0][world],),))
            obs, com = probe._observation(), [float(probe.state.particle_x[0, :, 0].mean())]
            done = False
            while not done:
                action, _ = model.predict(obs, deterministic=True)
                obs, _, terminated, truncated, _ = probe.step(action)
                com.append(float(probe.state.particle_x[0, :, 0].mean()))
                done = terminated or truncated
            coms.append(com)
        com = np.asarray(coms).T
        return _window_error(com, targets, probe.space, probe.control_steps)

    curve, spent, simulated = [{"seconds": 0.0, "simulated_steps": 0, METRIC: score()}], 0.0, 0
    chunk = 256
    while spent < budget:
        start = time.perf_counter()
        model.learn(total_timesteps=chunk, reset_num_timesteps=False)
        spent += time.perf_counter() - start
        simulated += chunk * probe.control_steps
        curve.append({"seconds": round(spent, 2), "simulated_steps": simulated, METRIC: score()})
    return {"config": "ppo", "budget_s": budget, METRIC: curve[-1][METRIC],
            "best_" + METRIC: min(c[METRIC] for c in curve), "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, choices=[*CONFIGS, BASELINE])
    parser.add_argument("--iters", type=int, default=1, help="unused; one run")
    parser.add_argument("--budget", type=float, default=None,
                        help="wall-clock seconds of training (default 1200; 20 with --quick)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="toy sizes, for tests")
    args = parser.parse_args()
    budget = args.budget if args.budget is not None else (20.0 if args.quick else 1200.0)
    run = _diffphys if args.config == "diffphys" else _ppo
    print(json.dumps([run(budget, args.quick)]))


if __name__ == "__main__":
    main()
