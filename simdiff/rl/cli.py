"""``simdiff rl``: train and evaluate learned time-stepping for the three-body problem."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_rl_parser"]


def _settings(args: argparse.Namespace) -> dict:
    names = ("integrator", "interval", "max_actions", "w_energy", "w_cost", "w_trajectory",
             "reward")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _cmd_train(args: argparse.Namespace) -> int:
    from simdiff.files import check_output_folder
    from simdiff.rl.policy import train_policy

    out = check_output_folder(args.out, "RL policy")
    path = train_policy(out / "policy", steps=args.steps, seed=args.seed, envs=args.envs,
                        settings=_settings(args), resume=args.resume,
                        checkpoint_every=args.checkpoint_every,
                        processes=args.processes, progress=not args.quiet, gamma=args.gamma,
                        feature_kind=args.features, init=args.init,
                        learning_rate=args.learning_rate)
    print(f"policy: {path} (and {path.with_suffix('.json').name})")
    return 0


def _policy_file(path: str | None) -> Path | None:
    """A policy named by its weights file or by the folder `simdiff rl train --out` wrote."""
    return None if path is None else Path(path) / "policy" if Path(path).is_dir() else Path(path)


def _cmd_convert(args: argparse.Namespace) -> int:
    from simdiff.files import check_output_folder
    from simdiff.rl.policy import convert_sb3_zip

    zip_path = Path(args.zip)
    if args.out is None:
        weights = None  # beside the zip, as NAME.pt
    else:
        weights = check_output_folder(args.out, "RL policy") / zip_path.stem
        weights.parent.mkdir(parents=True, exist_ok=True)
    written = [convert_sb3_zip(zip_path, weights)]
    meta = zip_path.with_suffix(".json")
    copy = None if weights is None else weights.with_name(weights.name + ".json")
    if copy is not None and meta.is_file() and not copy.exists():
        # The policy's settings travel with its weights (load_policy reads NAME.json beside them).
        written.append(copy)
        written[-1].write_text(meta.read_text())
    for path in written:
        print(f"wrote {path}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from simdiff.files import check_output_folder
    from simdiff.rl.evaluate import (
        episode_video,
        evaluate,
        write_pareto_plot,
        write_table,
    )
    from simdiff.rl.policy import load_policy

    out = check_output_folder(args.out, "RL evaluation")
    policy = load_policy(_policy_file(args.policy))
    settings = dict(policy.settings)
    if args.integrator:
        settings["integrator"] = args.integrator  # transfer: same policy, another integrator
    if args.max_actions:
        settings["max_actions"] = args.max_actions
    policy.settings = settings
    results, trusted = evaluate(policy, systems=args.systems, settings=settings,
                                reference_eta=args.reference_eta,
                                trajectory_time=args.trajectory_time, rule=not args.no_rule)
    paths = write_table(results, trusted, out / "evaluation",
                        trajectory_time=min(args.trajectory_time,
                                            settings["max_actions"] * settings["interval"]))
    paths.append(write_pareto_plot(results, out / "pareto.png",
                                   title=f"{settings['integrator']}: energy error against cost"))
    if not args.no_video:
        paths.append(episode_video(policy, out / "episode.mp4"))
    print((out / "evaluation.md").read_text())
    for path in paths:
        print(f"wrote {path}")
    return 0


def add_rl_parser(sub) -> None:
    """Register ``simdiff rl train`` and ``simdiff rl eval`` on the top-level subparsers."""
    rl = sub.add_parser("rl", help="learned time-stepping for the three-body problem")
    rl_sub = rl.add_subparsers(dest="rl_command", required=True)

    p = rl_sub.add_parser("train", help="train a PPO policy that chooses eta")
    p.add_argument("--steps", type=int, default=50_000,
                   help="environment steps (decisions; default: 50000)")
    p.add_argument("--out", default="renders/rl/policy",
                   help="output folder: policy.pt, policy.json and policy.checkpoint.pt "
                        "(default: renders/rl/policy)")
    p.add_argument("--seed", type=int, default=0, help="seed of PPO and the systems (default: 0)")
    p.add_argument("--envs", type=int, default=4,
                   help="environments sampled in lockstep (default: 4)")
    p.add_argument("--integrator", choices=["hermite", "leapfrog", "rk4"],
                   help="integrator whose eta the policy chooses (default: hermite)")
    p.add_argument("--interval", type=float,
                   help="physical time between decisions (default: 0.2)")
    p.add_argument("--max-actions", dest="max_actions", type=int,
                   help="decisions an episode (default: 50)")
    p.add_argument("--w-energy", dest="w_energy", type=float,
                   help="weight of the energy error in the reward (default: 1.0)")
    p.add_argument("--w-cost", dest="w_cost", type=float,
                   help="weight of the cost (integrator steps) in the reward (default: 0.1)")
    p.add_argument("--w-trajectory", dest="w_trajectory", type=float,
                   help="weight of the trajectory error against a reference run (default 0)")
    p.add_argument("--reward", choices=["telescoping", "cumulative"],
                   help="reward form (default telescoping; cumulative is the paper's)")
    p.add_argument("--gamma", type=float, default=0.999, help="discount (default 0.999)")
    p.add_argument("--features", choices=["encounter_v2", "signed_log_v1"],
                   default="encounter_v2", help="the network's input map (default: encounter_v2)")
    p.add_argument("--learning-rate", dest="learning_rate", type=float, default=3e-4,
                   help="PPO's learning rate (default: 3e-4)")
    p.add_argument("--init", choices=["none", "rule", "fixed"], default="none",
                   help="start PPO from behaviour cloning of the error-feedback rule or of the "
                        "fixed eta 1e-2 (default: a fresh network)")
    p.add_argument("--processes", action="store_true",
                   help="step the environments in worker processes, every core (default: "
                        "in this process)")
    p.add_argument("--resume", action="store_true",
                   help="continue exactly from OUT/policy.checkpoint.pt (same arguments; --steps "
                        "may grow; default: a fresh run)")
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=10_000,
                   help="environment steps between checkpoints (default 10000)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (default: show it)")
    p.set_defaults(func=_cmd_train)

    p = rl_sub.add_parser("eval", help="policy against every fixed eta on held-out systems")
    p.add_argument("policy", nargs="?", default=None,
                   help="policy: its .pt file or the folder `rl train --out` wrote (default: "
                        "the policy shipped with simdiff)")
    p.add_argument("--systems", type=int, default=50,
                   help="held-out initial conditions (default: 50)")
    p.add_argument("--integrator", choices=["hermite", "leapfrog", "rk4"],
                   help="run the policy on another integrator, a transfer (default: the "
                        "policy's)")
    p.add_argument("--max-actions", dest="max_actions", type=int,
                   help="decisions an episode (default: the policy's)")
    p.add_argument("--reference-eta", dest="reference_eta", type=float, default=2e-4,
                   help="Hermite eta of the reference run for trajectory errors (0: none; "
                        "default: 2e-4)")
    p.add_argument("--trajectory-time", dest="trajectory_time", type=float, default=2.0,
                   help="time at which trajectories are compared with the reference (default 2)")
    p.add_argument("--no-rule", dest="no_rule", action="store_true",
                   help="leave out the hand-written error-feedback baseline (default: "
                        "include it)")
    p.add_argument("--out", default="renders/rl/eval",
                   help="output folder: evaluation.md/.csv, pareto.png, episode.mp4 "
                        "(default: renders/rl/eval)")
    p.add_argument("--no-video", action="store_true",
                   help="skip the episode video (default: write episode.mp4)")
    p.set_defaults(func=_cmd_eval)

    p = rl_sub.add_parser("convert", help="convert a stable-baselines3 PPO zip you trust to "
                                          "weights + JSON (unpickles it: it can run code)")
    p.add_argument("zip", help="the .zip saved by stable-baselines3")
    p.add_argument("--out", default=None,
                   help="output folder of NAME.pt (default: the zip's folder)")
    p.set_defaults(func=_cmd_convert)
