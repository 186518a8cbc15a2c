"""Benchmark: goal-conditioned walker_goals trained through the physics (``diffphys``: goal_mlp,
Adam, the scene's training worlds (32) and backpropagation windows) against
stable-baselines3 PPO (``ppo``, the baseline: PPO's ``MlpPolicy`` on
:class:`~simdiff.rl.locomotion_env.LocomotionVecEnv`, 16 environments that are the worlds of one
batched simulator, as the trainer's are, over the same goal distribution, with the same loss
terms as reward), for equal wall-clock budgets, on the walk and stand commands. The two are
trained interleaved in one process (:func:`run`: whichever has spent less training time takes
the next unit of work), so a host whose load drifts slows both alike.

Both are scored the same way, on the same held-out walk commands (4 speeds over
``[-vmax, vmax]``, one goal period): ``velocity_error``, the mean absolute difference between
the centre of mass's velocity over 100-step windows and the command [m/s]. Each row gives the
final figure at the budget and its learning curve against wall-clock seconds of training
(scoring excluded; it runs about 15 times per budget) and against simulated steps (world-steps,
all worlds counted). :func:`finish` adds to the ``diffphys`` row the wall-clock seconds it took
to reach PPO's final error (``seconds_to_ppo_final``), PPO's wall-clock seconds of training
(``ppo_seconds``, its budget) and their ratio (``time_ratio``; the issue's target is at most
1/5), and when PPO's own curve first reached that error (``ppo_seconds_to_final``),
and draws both curves (error against seconds and against simulated steps) beside the JSON
(``PATH.png``). Run through ``simdiff bench locomotion [--budget SECONDS] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from simdiff.backend import resolve_backend
from simdiff.locomotion import goal_rollout, held_out_schedule
from simdiff.scene import load_controller, load_scene, make_simulator
from simdiff.threads import intra_op_threads
from simdiff.train import scheduled_lr

METRIC = "velocity_error"

OPTIONS = {"tasks": ["stand", "walk"], "steps": 500, "period": 500}
QUICK = {"steps": 100, "period": 100, "window": 50}
WORLDS = 16
SCORES = 15
"""Scorings per budget (the curve's points after the first)."""


def _held_out(space):
    schedule = held_out_schedule(space, 4)
    schedule.goals = schedule.goals[:1]
    schedule.tasks = schedule.tasks[:1]
    return schedule


def _window_error(com: np.ndarray, targets: np.ndarray, space, every: int) -> float:
    """Mean |window velocity - command| from COM x sampled every ``every`` steps, [T, B]."""
    k = space.window // every
    velocity = (com[k:] - com[:-k]) / (space.window * space.dt)
    return float(np.abs(velocity - targets[None]).mean())


class _DiffPhys:
    """walker_goals trained through the physics, one iteration per :meth:`step`."""

    name = "diffphys"

    def __init__(self, quick: bool) -> None:
        self.scene = scene = load_scene("walker_goals", **{**OPTIONS, **(QUICK if quick else {})})
        backend = resolve_backend("warp", "cpu", "float32")
        # The worlds `simdiff train` uses (32: they cost about what 16 do, the per-step
        # overhead dominates); PPO keeps stable-baselines3's usual 16 environments.
        self.worlds = scene.train.get("batch", WORLDS)
        self.sim = make_simulator(scene, backend, batch_size=self.worlds)
        self.probe = make_simulator(scene, backend, batch_size=4)
        torch.manual_seed(0)
        self.controller = load_controller("goal_mlp", self.sim, scene,
                                          **scene.train.get("controller_options", {})).float()
        self.optimizer = torch.optim.Adam(self.controller.parameters(),
                                          lr=scene.train.get("lr", 0.01))
        self.window = scene.train.get("backprop_window") or None  # as `simdiff train` does
        self.lr = scene.train.get("lr", 0.01)
        self.lr_schedule = scene.train.get("lr_schedule", "constant")
        self.held = _held_out(scene.goals)
        self.targets = self.held.goals[0, :, 0].numpy()
        self.iteration = 0
        self.steps_per_unit = self.worlds * scene.steps

    def step(self, fraction: float) -> None:
        # The scene's learning-rate schedule, over the budget's time (its iterations are
        # not known in advance): fraction is the share of the budget spent.
        for group in self.optimizer.param_groups:
            group["lr"] = scheduled_lr(self.lr, self.lr_schedule, round(1000 * fraction), 1001)
        scene = self.scene
        schedule = scene.goals.sample(self.worlds, scene.steps, seed=self.iteration,
                                      iteration=self.iteration)
        r = goal_rollout(self.sim, self.sim.initial_state(), self.controller, schedule,
                         scene.steps, truncate_every=self.window)
        loss = scene.loss(r)
        self.optimizer.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.controller.parameters(), 1.0)
        if torch.isfinite(norm):  # a non-finite gradient is never applied
            self.optimizer.step()
        self.iteration += 1

    def score(self) -> float:
        with torch.no_grad():
            r = goal_rollout(self.probe, self.probe.initial_state(), self.controller, self.held,
                             self.scene.steps)
        com = r.trace["com"][..., 0].double().numpy()
        return _window_error(com, self.targets, self.scene.goals, 1)

    def facts(self) -> dict:
        return {"iterations": self.iteration, "worlds": self.worlds}


class _PPO:
    """stable-baselines3 PPO on the same worlds, one rollout and update per :meth:`step`."""

    name = "ppo"

    def __init__(self, quick: bool) -> None:
        from stable_baselines3 import PPO
        from stable_baselines3.common.logger import Logger

        from simdiff.rl.locomotion_env import LocomotionVecEnv

        options = {**OPTIONS, **(QUICK if quick else {})}
        venv = LocomotionVecEnv(WORLDS, scene_options=options, seed=0)
        self.n_steps = 64
        self.model = PPO("MlpPolicy", venv, n_steps=self.n_steps, batch_size=256, seed=0,
                         verbose=0)
        self.model.set_logger(Logger(folder=None, output_formats=[]))  # no /tmp/SB3-DATE
        self.probe = LocomotionVecEnv(4, scene_options=options, seed=1)
        self.space = self.probe.worlds.space
        self.held = _held_out(self.space)
        self.targets = self.held.goals[0, :, 0].numpy()
        self.steps_per_unit = self.n_steps * WORLDS * self.probe.worlds.control_steps

    def step(self, fraction: float) -> None:
        self.model.learn(total_timesteps=self.n_steps * WORLDS, reset_num_timesteps=False)

    def score(self) -> float:
        probe = self.probe
        probe.reset()
        probe.worlds.goals[:] = self.held.goals[:1].numpy()  # the held-out commands
        obs = probe.worlds.observation()
        com = [probe.worlds.state.particle_x[..., 0].double().mean(1).numpy()]
        for _ in range(probe.worlds.horizon // probe.worlds.control_steps):
            action, _ = self.model.predict(obs, deterministic=True)
            probe.worlds.step(action)
            obs = probe.worlds.observation()
            com.append(probe.worlds.state.particle_x[..., 0].double().mean(1).numpy())
        return _window_error(np.asarray(com), self.targets, self.space,
                             probe.worlds.control_steps)

    def facts(self) -> dict:
        return {"worlds": WORLDS}


def run(budget: float, quick: bool) -> list[dict]:
    """Both methods trained for ``budget`` wall-clock seconds each, interleaved: the one with
    less training time spent so far takes the next unit of work (an iteration, or one PPO
    rollout and update), so both see the same host load over the same minutes. Scoring is not
    counted as training time."""
    methods = [_DiffPhys(quick), _PPO(quick)]
    state = {m.name: {"spent": 0.0, "cpu": 0.0, "simulated": 0, "next": budget / SCORES,
                      "curve": []} for m in methods}
    with intra_op_threads(1):  # tiny torch ops (simdiff.threads), as the trainer runs them
        for m in methods:
            state[m.name]["curve"].append({"seconds": 0.0, "cpu_seconds": 0.0,
                                           "simulated_steps": 0, METRIC: m.score()})
        while True:
            left = [m for m in methods if state[m.name]["spent"] < budget]
            if not left:
                break
            m = min(left, key=lambda m: state[m.name]["spent"])
            s = state[m.name]
            start, start_cpu = time.perf_counter(), time.process_time()
            m.step(min(1.0, s["spent"] / budget))
            s["spent"] += time.perf_counter() - start
            s["cpu"] += time.process_time() - start_cpu
            s["simulated"] += m.steps_per_unit
            if s["spent"] >= s["next"] or s["spent"] >= budget:
                s["next"] += budget / SCORES
                s["curve"].append({"seconds": round(s["spent"], 2),
                                   "cpu_seconds": round(s["cpu"], 2),
                                   "simulated_steps": s["simulated"], METRIC: m.score()})
    rows = []
    for m in methods:
        s = state[m.name]
        rows.append({"config": m.name, "budget_s": budget, METRIC: s["curve"][-1][METRIC],
                     "best_" + METRIC: min(c[METRIC] for c in s["curve"]), **m.facts(),
                     "cpu_seconds": round(s["cpu"], 1),
                     "standing_" + METRIC: float(np.abs(m.targets).mean()),
                     "load_average": round(os.getloadavg()[0], 2), "curve": s["curve"]})
    return rows


def _first_reach(curve: list[dict], level: float) -> float | None:
    """Seconds of the first point of ``curve`` at or below ``level`` (None if none)."""
    return next((c["seconds"] for c in curve if c[METRIC] <= level), None)


def finish(rows: list[dict], out: str | Path | None) -> list[dict]:
    """The diffphys row gets the time it took to reach PPO's final error and its ratio to
    PPO's; the learning curves are drawn into ``out`` with suffix ``.png``."""
    by = {r["config"]: r for r in rows}
    dp, ppo = by.get("diffphys"), by.get("ppo")
    if dp and ppo:
        level = ppo[METRIC]
        reach = _first_reach(dp["curve"], level)
        ppo_reach = _first_reach(ppo["curve"], level)
        dp["ppo_final_" + METRIC] = level
        dp["seconds_to_ppo_final"] = reach
        dp["ppo_seconds_to_final"] = ppo_reach
        dp["ppo_seconds"] = ppo["curve"][-1]["seconds"]
        dp["time_ratio"] = None if reach is None else reach / dp["ppo_seconds"]
    if out is not None:
        _plot(rows, Path(out).with_suffix(".png"))
    return rows


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for row in rows:
        curve = row.get("curve") or []
        label = {"diffphys": "differentiable physics (goal_mlp, Adam)",
                 "ppo": "PPO (stable-baselines3)"}.get(row["config"], row["config"])
        for ax, key in zip(axes, ("seconds", "simulated_steps")):
            ax.plot([c[key] for c in curve], [c[METRIC] for c in curve], marker="o",
                    markersize=3, label=label)
    for ax, xlabel in zip(axes, ("training wall-clock [s]", "simulated world-steps")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out velocity error [m/s]")
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    still = next((r.get("standing_" + METRIC) for r in rows if r.get("standing_" + METRIC)),
                 None)
    if still is not None:  # what a robot that never moves scores: learning starts below it
        for ax in axes:
            ax.axhline(still, color="grey", linestyle="--", linewidth=1,
                       label="a robot standing still")
    axes[1].set_xlim(left=0)
    axes[0].legend(fontsize=8)
    dp = next((r for r in rows if r["config"] == "diffphys"), {})
    ratio = dp.get("time_ratio")
    fig.suptitle("walker_goals, walk commands: equal wall-clock budgets"
                 + (f"; DP reaches PPO's final error in {ratio:.3g} of PPO's time"
                    if ratio is not None and math.isfinite(ratio) else ""), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def summarize(rows: list[dict]) -> str:
    dp = next((r for r in rows if r["config"] == "diffphys"), None)
    if not dp or "seconds_to_ppo_final" not in dp:
        return ""
    reach = dp["seconds_to_ppo_final"]
    still = dp.get("standing_" + METRIC)
    note = ""
    if still is not None and dp["ppo_final_" + METRIC] >= 0.9 * still:
        note = (f"; PPO's final error is within 10% of a robot standing still ({still:.4g} "
                f"m/s): it has learnt no tracking, and the ratio says little")
    if reach is None:
        reached = (f"differentiable physics did not reach it within its {dp['budget_s']:g} s "
                   f"(its best {dp['best_' + METRIC]:.4g} m/s, its final {dp[METRIC]:.4g})")
    else:
        reached = (f"differentiable physics reached it after {reach} s of training, "
                   f"{dp['time_ratio']:.3g} of PPO's {dp['ppo_seconds']} s")
    return (f"PPO's final velocity error {dp['ppo_final_' + METRIC]:.4g} m/s; {reached} (PPO's "
            f"curve first reached it after {dp['ppo_seconds_to_final']} s){note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simdiff bench locomotion")
    parser.add_argument("--budget", type=float, default=None,
                        help="wall-clock seconds of training per method (default 1200; 20 "
                             "with --quick)")
    parser.add_argument("--backend", default="all", help="unused: both run on Warp")
    parser.add_argument("--iters", type=int, default=None, help="unused")
    parser.add_argument("--quick", action="store_true", help="toy sizes, for tests")
    parser.add_argument("--json", default=None, help="write the rows (and PATH.png) here")
    args = parser.parse_args(argv)
    budget = args.budget if args.budget is not None else (20.0 if args.quick else 1200.0)
    rows = finish(run(budget, args.quick), args.json)
    for row in rows:
        print("  ".join(f"{k}={v}" for k, v in row.items() if not isinstance(v, (list, dict))))
    print(summarize(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
