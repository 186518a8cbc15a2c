"""Evaluating time-step policies against every fixed eta on held-out initial conditions.

Every method (each fixed eta of :data:`~simdiff.rl.env.ETAS`, and the policy) runs the same
held-out systems over the full horizon (``max_actions * interval``; no early termination, so
all methods are compared at the same time). Per system it records the final relative energy
error, the force evaluations paid, and whether it finished: a system whose interval needs more
than ``max_interval_steps`` steps (2e5 by default, four times training's budget), or whose step
falls below ``dt_min``, stops there and counts as failed; its error is then that of the state
it reached.

Trajectory error: the RMS distance of the bodies at the end from a reference run with Hermite
at ``reference_eta``. The reference is trusted for a system only when a second run at twice its
eta ends within ``reference_tolerance`` of it (for a fourth-order scheme the error of the finer
run is then ~16 times smaller); in chaotic systems some references do not converge in float64,
and those systems are left out of trajectory statistics, with their count reported.

Held-out seeds start at :data:`HELD_OUT_SEED` (training draws its seeds from numpy's generator
seeded by the training seed, so they are almost surely different).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simdiff.rl.env import (
    ETAS,
    ThreeBodyTimestepEnv,
    initial_conditions,
    observations,
    rms_distance,
)
from simdiff.sims.nbody.fewbody import FewBody, Status

__all__ = ["HELD_OUT_SEED", "MethodResult", "evaluate", "write_pareto_plot", "write_table"]

HELD_OUT_SEED = 1_000_000


@dataclass
class MethodResult:
    """Per-system outcomes of one method, each an array of shape ``[systems]``."""

    name: str
    energy_error: np.ndarray
    evaluations: np.ndarray
    finished: np.ndarray
    trajectory_error: np.ndarray
    actions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """Chosen action indices, ``[systems, max_actions]`` (the policy only)."""

    def summary(self, trusted: np.ndarray) -> dict:
        traj = self.trajectory_error[trusted]
        return {
            "method": self.name,
            "median_energy_error": float(np.median(self.energy_error)),
            "median_evaluations": float(np.median(self.evaluations)),
            "median_trajectory_error": float(np.median(traj)) if traj.size else float("nan"),
            "finished": f"{int(self.finished.sum())}/{self.finished.size}",
        }


def _run(env: ThreeBodyTimestepEnv, ics, choose, reference_x: np.ndarray | None,
         max_interval_steps: int) -> dict:
    system = FewBody(*ics, integrator=env.integrator.value, dt_min=env.dt_min)
    alive = np.ones(system.systems, dtype=bool)
    actions = np.zeros((system.systems, env.max_actions), dtype=np.int64)
    for k in range(env.max_actions):
        actions[:, k] = choose(observations(system))
        # Stopped systems are asked to advance to where they are, which takes no step.
        t_end = np.where(alive, (k + 1) * env.interval, system.time)
        status = system.advance(t_end, ETAS[actions[:, k]], max_steps=max_interval_steps)
        alive &= status == Status.OK
    trajectory = (rms_distance(system.x, reference_x) if reference_x is not None
                  else np.full(system.systems, np.nan))
    return {"energy_error": system.energy_error(), "evaluations": system.evaluations,
            "finished": alive, "trajectory_error": trajectory, "actions": actions}


def reference_runs(env: ThreeBodyTimestepEnv, ics, reference_eta: float, tolerance: float,
                   max_interval_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Final reference positions ``[S, 3, 3]`` and whether each converged ``[S]``."""
    t_end = env.max_actions * env.interval
    finals = []
    for eta in (reference_eta, 2 * reference_eta):
        system = FewBody(*ics, integrator="hermite", dt_min=env.dt_min)
        status = system.advance(t_end, eta, max_steps=env.max_actions * max_interval_steps)
        finals.append((system.x, status == Status.OK))
    (fine, ok_fine), (coarse, ok_coarse) = finals
    converged = ok_fine & ok_coarse & (rms_distance(fine, coarse) < tolerance)
    return fine, converged


def evaluate(policy=None, *, systems: int = 50, settings: dict | None = None,
             reference_eta: float = 5e-5, reference_tolerance: float = 1e-3,
             fixed: bool = True, max_interval_steps: int = 200_000,
             ) -> tuple[list[MethodResult], np.ndarray]:
    """Run every fixed eta (if ``fixed``) and ``policy`` (a :class:`~simdiff.rl.policy.Policy`,
    optional) on ``systems`` held-out initial conditions.

    Args:
        settings: Environment settings; by default the policy's (or the defaults).
        reference_eta: Accuracy parameter of the reference run; ``0`` skips references.
        max_interval_steps: Step budget of one interval (the reference gets 5 times more);
            larger than training's, so that small fixed etas are not cut off early.

    Returns:
        The methods' results and the mask of systems whose reference converged.
    """
    if settings is None:
        settings = policy.settings if policy is not None else {}
    env = ThreeBodyTimestepEnv(**settings)
    ics = initial_conditions(range(HELD_OUT_SEED, HELD_OUT_SEED + systems))
    if reference_eta > 0:
        reference_x, trusted = reference_runs(env, ics, reference_eta, reference_tolerance,
                                              5 * max_interval_steps)
    else:
        reference_x, trusted = None, np.zeros(systems, dtype=bool)
    results = []
    if fixed:
        for index, eta in enumerate(ETAS):
            run = _run(env, ics, lambda obs, i=index: np.full(len(obs), i), reference_x,
                       max_interval_steps)
            results.append(MethodResult(f"fixed eta={eta:.2e}", **run))
    if policy is not None:
        run = _run(env, ics, policy.act, reference_x, max_interval_steps)
        results.append(MethodResult("policy", **run))
    return results, trusted


def write_table(results: list[MethodResult], trusted: np.ndarray, stem: str | Path) -> list[Path]:
    """``STEM.csv`` and ``STEM.md``: one row a method, medians over systems."""
    rows = [r.summary(trusted) for r in results]
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    header = ("| method | median energy error | median force evaluations | "
              "median trajectory error | finished |")
    lines = [header, "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['median_energy_error']:.2e} | "
              f"{r['median_evaluations']:.0f} | {r['median_trajectory_error']:.2e} | "
              f"{r['finished']} |" for r in rows]
    lines.append(f"\nTrajectory errors over the {int(trusted.sum())} of {trusted.size} systems "
                 "whose reference run converged.")
    md_path.write_text("\n".join(lines) + "\n")
    return [csv_path, md_path]


def write_pareto_plot(results: list[MethodResult], path: str | Path,
                      title: str = "energy error against cost") -> Path:
    """Final energy error against force evaluations: every system faint, medians bold; the
    fixed choices joined as a front, the policy as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    fixed = [r for r in results if r.name != "policy"]
    colors = plt.cm.viridis(np.linspace(0, 1, max(len(fixed), 1)))
    for r, color in zip(fixed, colors):
        ax.scatter(r.evaluations, r.energy_error, s=6, color=color, alpha=0.25)
    if fixed:
        med = np.array([[np.median(r.evaluations), np.median(r.energy_error)] for r in fixed])
        ax.plot(med[:, 0], med[:, 1], "-o", color="0.3", label="fixed eta (medians)")
        for r, (x, y) in zip(fixed, med):
            ax.annotate(r.name.split("=")[1], (x, y), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    for r in results:
        if r.name == "policy":
            ax.scatter(r.evaluations, r.energy_error, s=10, color="crimson", alpha=0.4)
            ax.scatter([np.median(r.evaluations)], [np.median(r.energy_error)], marker="*",
                       s=250, color="crimson", edgecolor="k", label="policy (median)", zorder=5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("force evaluations")
    ax.set_ylabel("final relative energy error")
    ax.set_title(title)
    ax.legend()
    ax.grid(True, which="both", alpha=0.2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def episode_video(policy, path: str | Path, *, seed: int = HELD_OUT_SEED,
                  frames_per_interval: int = 4, fps: int = 20) -> Path:
    """A video of one held-out episode run by ``policy``, the chosen eta and step shown.

    The video's run lands on every frame time (its steps are cut there), so it differs from
    the evaluated run by those shortened steps."""
    from simdiff.render import render_nbody, write_video

    env = ThreeBodyTimestepEnv(**policy.settings)
    ics = initial_conditions([seed])
    system = FewBody(*ics, integrator=env.integrator.value, dt_min=env.dt_min)
    positions, subtitles = [system.x[0]], ["t=0.00"]
    for k in range(env.max_actions):
        eta = ETAS[int(policy.act(observations(system))[0])]
        steps_before = int(system.steps[0])
        stopped = False
        for f in range(frames_per_interval):
            t = (k + (f + 1) / frames_per_interval) * env.interval
            stopped = system.advance(t, eta, max_steps=env.max_interval_steps)[0] != Status.OK
            positions.append(system.x[0])
            mean_dt = env.interval / max(int(system.steps[0]) - steps_before, 1)
            subtitles.append(f"t={t:.2f}  eta={eta:.1e}  mean dt={mean_dt:.1e}  "
                             f"dE/E={system.energy_error()[0]:.1e}")
            if stopped:
                break
        if stopped:
            break
    frames = render_nbody(np.stack(positions), ics[0][0], subtitles=subtitles,
                          title="learned time-stepping")
    return write_video(frames, path, fps=fps)
