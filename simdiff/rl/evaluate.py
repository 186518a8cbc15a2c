"""Evaluating time-step policies against every fixed eta on held-out initial conditions.

Every method (each fixed eta of :data:`~simdiff.rl.env.ETAS`, and the policy) runs the same
held-out systems over the full horizon (``max_actions * interval``; no early termination, so
all methods are compared at the same time). Per system it records the final relative energy
error, the force evaluations paid, and whether it finished: a system whose interval needs more
than ``max_interval_steps`` steps (2e5 by default, four times training's budget), or whose step
falls below ``dt_min``, stops there and counts as failed; its error is then that of the state
it reached.

Trajectory error: the RMS distance of the bodies at ``trajectory_time`` (the end of the interval
nearest it; 2 time units by default) from a reference run with Hermite at ``reference_eta``.
Not at the end of the horizon: at t = 10 the reference runs of most systems do not converge in
float64 (the systems are chaotic, and two references a factor 2 apart in eta end far apart
after a few close encounters), so a trajectory error there would measure the reference. The
reference eta is 2e-4 by default: finer references stop at the near-collisions of these
systems (steps below ``dt_min`` or past the step budget; on the first 50 held-out systems at
t = 2, references at 5e-5 converged on 1, at 2e-4 on 30, at 1e-3 on 39), and 2e-4 is still 50
times finer than the best fixed eta (~6e6 times more accurate for a fourth-order scheme). The
reference is trusted for a system only when a second run at twice its
eta ends within ``reference_tolerance`` of it (for a fourth-order scheme the error of the finer
run is then ~16 times smaller); in chaotic systems some references do not converge in float64,
and those systems are left out of trajectory statistics, with their count reported.

Baseline (``rule=True``): :func:`error_feedback_rule`, a hand-written controller that uses the
observation's energy error only: eta = 1e-2 while the relative energy error is below 1e-6,
4.64e-2 after. Once the error is large, finer steps buy little of the (log) final error; the
learned policy should at least match it.

Held-out seeds start at :data:`HELD_OUT_SEED` (training draws its seeds from numpy's generator
seeded by the training seed, so they are almost surely different).
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simdiff.rl.env import (
    ETAS,
    Status,
    System,
    ThreeBodyTimestepEnv,
    initial_conditions,
    observations,
    rms_distance,
)

__all__ = ["HELD_OUT_SEED", "MethodResult", "error_feedback_rule", "evaluate", "front_gap",
           "pareto_figure", "write_pareto_plot", "write_table"]

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


RULE_NAME = "rule: eta 1e-2 while dE/E < 1e-6, else 4.6e-2"
RULE_FINE, RULE_COARSE = 6, 8
"""The rule's actions: ETAS[6] = 1e-2 (the best fixed eta), ETAS[8] = 4.64e-2."""


def error_feedback_rule(observations: np.ndarray, threshold: float = 1e-6,
                        fine: int = RULE_FINE, coarse: int = RULE_COARSE) -> np.ndarray:
    """Action ``fine`` (eta = ETAS[6] = 1e-2) while the observed relative energy error is below
    ``threshold``, else ``coarse`` (ETAS[8] = 4.64e-2); for a batch of observations."""
    return np.where(observations[:, -1] < np.log10(threshold), fine, coarse)


def _run(env: ThreeBodyTimestepEnv, ics, choose, reference_x: np.ndarray | None,
         max_interval_steps: int, trajectory_interval: int) -> dict:
    system = System(*ics, integrator=env.integrator.value, dt_min=env.dt_min)
    alive = np.ones(system.systems, dtype=bool)
    actions = np.zeros((system.systems, env.max_actions), dtype=np.int64)
    x_compared = system.x
    for k in range(env.max_actions):
        actions[:, k] = choose(observations(system))
        # Stopped systems are asked to advance to where they are, which takes no step.
        t_end = np.where(alive, (k + 1) * env.interval, system.time)
        status = system.advance(t_end, ETAS[actions[:, k]], max_steps=max_interval_steps)
        alive &= status == Status.OK
        if k + 1 == trajectory_interval:
            x_compared = system.x
    trajectory = (rms_distance(x_compared, reference_x) if reference_x is not None
                  else np.full(system.systems, np.nan))
    return {"energy_error": system.energy_error(), "evaluations": system.evaluations,
            "finished": alive, "trajectory_error": trajectory, "actions": actions}


def reference_runs(env: ThreeBodyTimestepEnv, ics, reference_eta: float, tolerance: float,
                   max_interval_steps: int, intervals: int | None = None,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Reference positions ``[S, 3, 3]`` after ``intervals`` intervals (all by default) and
    whether each converged ``[S]``."""
    t_end = (env.max_actions if intervals is None else intervals) * env.interval
    finals = []
    for eta in (reference_eta, 2 * reference_eta):
        system = System(*ics, integrator="hermite", dt_min=env.dt_min)
        status = system.advance(t_end, eta, max_steps=int(t_end / env.interval + 1)
                                * max_interval_steps)
        finals.append((system.x, status == Status.OK))
    (fine, ok_fine), (coarse, ok_coarse) = finals
    converged = ok_fine & ok_coarse & (rms_distance(fine, coarse) < tolerance)
    return fine, converged


def evaluate(policy=None, *, systems: int = 50, settings: dict | None = None,
             reference_eta: float = 2e-4, reference_tolerance: float = 1e-3,
             fixed: bool = True, max_interval_steps: int = 200_000,
             trajectory_time: float = 2.0, rule: bool = False,
             ) -> tuple[list[MethodResult], np.ndarray]:
    """Run every fixed eta (if ``fixed``) and ``policy`` (a :class:`~simdiff.rl.policy.Policy`,
    optional) on ``systems`` held-out initial conditions.

    Args:
        settings: Environment settings; by default the policy's (or the defaults).
        reference_eta: Accuracy parameter of the reference run; ``0`` skips references.
        max_interval_steps: Step budget of one interval (the reference gets 5 times more);
            larger than training's, so that small fixed etas are not cut off early.
        trajectory_time: When trajectories are compared (module docstring); the end of the
            interval nearest it, at most the horizon.
        rule: Also run :func:`error_feedback_rule`.

    Returns:
        The methods' results and the mask of systems whose reference converged.
    """
    if settings is None:
        settings = policy.settings if policy is not None else {}
    env = ThreeBodyTimestepEnv(**settings)
    ics = initial_conditions(range(HELD_OUT_SEED, HELD_OUT_SEED + systems))
    compared = int(min(max(round(trajectory_time / env.interval), 1), env.max_actions))
    if reference_eta > 0:
        reference_x, trusted = reference_runs(env, ics, reference_eta, reference_tolerance,
                                              5 * max_interval_steps, compared)
    else:
        reference_x, trusted = None, np.zeros(systems, dtype=bool)
    results = []
    if fixed:
        for index, eta in enumerate(ETAS):
            run = _run(env, ics, lambda obs, i=index: np.full(len(obs), i), reference_x,
                       max_interval_steps, compared)
            results.append(MethodResult(f"fixed eta={eta:.2e}", **run))
    if rule:
        run = _run(env, ics, error_feedback_rule, reference_x, max_interval_steps, compared)
        results.append(MethodResult(RULE_NAME, **run))
    if policy is not None:
        run = _run(env, ics, policy.act, reference_x, max_interval_steps, compared)
        results.append(MethodResult("policy", **run))
    return results, trusted


def front_gap(results: list[MethodResult], name: str) -> float:
    """How far method ``name``'s median lies above the fixed-eta front, in decades of energy
    error (negative: below it).

    The front is the lower envelope of the fixed etas' medians (energy error against force
    evaluations): neighbors joined by straight lines in log-log, and never above the error of
    any fixed eta that is cheaper (more evaluations cannot excuse a larger error). Left of the
    cheapest fixed eta the gap is -inf if the method's error is below that eta's, else +inf."""
    fixed = sorted((float(np.median(r.evaluations)), float(np.median(r.energy_error)))
                   for r in results if r.name.startswith("fixed"))
    (method,) = [r for r in results if r.name == name]
    n, e = float(np.median(method.evaluations)), float(np.median(method.energy_error))
    best = np.inf
    for (n0, e0), (n1, e1) in itertools.pairwise(fixed):
        if n0 <= n <= n1:
            w = np.log(n / n0) / np.log(n1 / n0) if n1 > n0 else 0.0
            best = min(best, np.exp((1 - w) * np.log(e0) + w * np.log(e1)))
    best = min([best] + [e0 for n0, e0 in fixed if n0 <= n])  # flat envelope: any cheaper point
    if not np.isfinite(best):
        return -np.inf if e < fixed[0][1] else np.inf
    return float(np.log10(e) - np.log10(best))


def write_table(results: list[MethodResult], trusted: np.ndarray, stem: str | Path,
                trajectory_time: float | None = None) -> list[Path]:
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
    when = f" at t = {trajectory_time:g}" if trajectory_time is not None else ""
    lines.append(f"\nEnergy errors and evaluations at the end of the horizon, over {trusted.size} "
                 f"held-out systems; trajectory errors{when} over the {int(trusted.sum())} of "
                 f"{trusted.size} systems whose reference run converged.")
    for name in [r.name for r in results if not r.name.startswith("fixed")]:
        if any(r.name.startswith("fixed") for r in results):
            gap = front_gap(results, name)
            where = "on or below" if gap <= 0 else "above"
            lines.append(f"\n{name}: {where} the fixed-eta front, {gap:+.2f} decades of energy "
                         "error from it at the same median force evaluations.")
    md_path.write_text("\n".join(lines) + "\n")
    return [csv_path, md_path]


def write_pareto_plot(results: list[MethodResult], path: str | Path,
                      title: str = "energy error against cost") -> Path:
    """Final energy error against force evaluations: every finished system faint, medians
    bold; the fixed choices joined as a front (each labeled with its eta), the error-feedback
    rule as orange diamonds, the policy as crimson stars. Systems a method did not finish
    (stopped at the step cap) are left out of its points and medians, and counted in its
    legend entry."""
    # The object-oriented Figure renders with Agg without pyplot, so it neither needs a
    # display nor switches the backend of a caller's session.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pareto_figure(results, title).savefig(path)
    return path


def pareto_figure(results: list[MethodResult], title: str = "energy error against cost"):
    """The matplotlib ``Figure`` that :func:`write_pareto_plot` saves."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.patheffects import withStroke

    def done(r: MethodResult) -> tuple[np.ndarray, np.ndarray, str]:
        keep = np.asarray(r.finished, dtype=bool)
        left = int((~keep).sum())
        return (np.asarray(r.evaluations)[keep], np.asarray(r.energy_error)[keep],
                f", {left} unfinished left out" if left else "")

    figure = Figure(figsize=(7.5, 5.2), dpi=110, layout="constrained")
    ax = figure.add_subplot()
    fixed = [r for r in results if r.name.startswith("fixed")]
    colors = colormaps["viridis"](np.linspace(0, 0.9, max(len(fixed), 1)))
    medians, skipped = [], 0
    for r, color in zip(fixed, colors):
        x, y, _ = done(r)
        skipped += int(np.size(r.finished) - x.size)
        ax.scatter(x, y, s=6, color=color, alpha=0.25)
        if x.size:
            medians.append((np.median(x), np.median(y), r.name.split("=")[1]))
    if medians:
        med = np.array([m[:2] for m in medians])
        note = f", {skipped} unfinished left out" if skipped else ""
        ax.plot(med[:, 0], med[:, 1], "-o", color="0.3", label=f"fixed eta (medians{note})")
        for k, (x, y, eta) in enumerate(medians):
            # Alternating sides keep neighbouring labels apart on a dense front.
            ax.annotate(f"eta {eta}", (x, y), fontsize=8, textcoords="offset points",
                        xytext=(6, -12) if k % 2 else (6, 5),
                        path_effects=[withStroke(linewidth=3, foreground="white")])
    for r in results:
        x, y, note = done(r)
        if r.name == RULE_NAME:
            ax.scatter(x, y, s=10, marker="D", color="tab:orange", alpha=0.35)
            if x.size:
                ax.scatter([np.median(x)], [np.median(y)], marker="D", s=90,
                           color="tab:orange", edgecolor="k", zorder=4,
                           label=f"error-feedback rule (median{note})")
        elif r.name == "policy":
            ax.scatter(x, y, s=14, marker="*", color="crimson", alpha=0.4)
            if x.size:
                ax.scatter([np.median(x)], [np.median(y)], marker="*", s=260, color="crimson",
                           edgecolor="k", zorder=5, label=f"policy (median{note})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.margins(x=0.12)  # room for the last labels
    ax.set_xlabel("force evaluations per system")
    ax.set_ylabel("final |relative energy error|")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.2)
    return figure


def episode_video(policy, path: str | Path, *, seed: int = HELD_OUT_SEED,
                  frames_per_interval: int = 4, fps: int = 20) -> Path:
    """A video of one held-out episode run by ``policy``, the chosen eta and step shown.

    The video's run lands on every frame time (its steps are cut there), so it differs from
    the evaluated run by those shortened steps."""
    from simdiff.render import render_nbody, write_video

    env = ThreeBodyTimestepEnv(**policy.settings)
    ics = initial_conditions([seed])
    system = System(*ics, integrator=env.integrator.value, dt_min=env.dt_min)
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
