"""Training and loading time-step policies (stable-baselines3 PPO over :mod:`simdiff.rl.env`).

A policy is saved as two files: ``NAME.zip`` (stable-baselines3's own format: weights, spaces,
hyperparameters) and ``NAME.json`` (the environment's settings, the feature map and the training
recipe), so that evaluation rebuilds the environment the policy was trained in.

Features: the network does not see the raw observation. Velocities grow without bound in close
encounters (|v| ~ 1/sqrt(r)) and the log energy error spans [-16, 2]; so positions and
velocities pass through ``sign(u) log(1 + |u|)`` and the log error is divided by 16
(``signed_log_v1``, 19 values). ``encounter_v2`` (the default, 23 values) adds what makes an
encounter visible, for the closest pair (separation ``r``, relative velocity ``u``, pair mass
``M = 2``, unit masses as the environment draws them):

* ``log10 r``;
* ``(r . u) / |r|^2`` times the decision interval, through the signed log: the fraction of the
  separation closed or opened in one interval (negative: approaching);
* ``log10`` of the pair's time scale ``min(r / |u|, sqrt(r^3 / M))``, which the adaptive step
  follows (``dt ~ eta`` times it);
* ``log10 q``, the two-body pericenter ``q = p / (1 + e)`` from the pair's Kepler elements
  (``p = |r x u|^2 / M``, ``e`` from the two-body energy): how close the pair will come.

Logs are clipped to [-8, 4]. The map is fixed (no running statistics to save or drift) and
recorded in the JSON file.

Initialization (``init``): PPO from a fresh network, on the telescoping reward with
``w_cost = 0.15``, collapsed to eta = 0.1 almost everywhere (seed 0 by 70k decisions: 1.7e-3
median energy error at 9.5k evaluations on 50 held-out systems; seed 2 after 200k: 1.5e-3 at
10k, 43/50 finished), although that reward's mean return over 40 training systems ranks eta = 1e-2
(-1.297), the error-feedback rule (-1.296), 2.15e-2 (-1.319), 4.64e-2 (-1.357) and 0.1
(-1.434) in that order: a uniformly exploring policy soon has a large energy error, and in
such states fine steps buy no decrease of the log error, so cheap actions look best where the
agent is. The shipped policy therefore starts from behaviour cloning of the rule
(``init="rule"``) and is fine-tuned by PPO at a small learning rate; it ends where the rule is.
Started instead from the constant eta = 1e-2 (``init="fixed"``, 30k decisions, learning rate
1e-4), PPO stays there (every action 1e-2): it does not discover the rule by itself.
Note that the rule's return differs from fixed eta = 1e-2 by less than its standard error:
the reward cannot tell them apart, while the evaluation's medians can (the rule's savings are
on systems whose error is above the median anyway).
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

import gymnasium as gym
import numpy as np

from simdiff.rl.env import OBSERVATION_SIZE, ThreeBodyTimestepEnv
from simdiff.sims.base import ValidationError

__all__ = ["FEATURES", "FEATURE_SIZES", "SHIPPED_POLICY", "Policy", "features", "load_policy",
           "train_policy"]

FEATURES = "encounter_v2"
"""The feature map new policies use."""
FEATURE_SIZES = {"signed_log_v1": OBSERVATION_SIZE, "encounter_v2": OBSERVATION_SIZE + 4}
"""Feature maps this version computes, and their sizes."""
SHIPPED_POLICY = "hermite_ppo"
"""Name of the policy shipped in ``simdiff/rl/policies/``."""


def _signed_log(u: np.ndarray) -> np.ndarray:
    return np.sign(u) * np.log1p(np.abs(u))


def _closest_pair(phase: np.ndarray, interval: float) -> np.ndarray:
    """The four encounter features (module docstring) from phase space ``[..., 18]``."""
    bodies = phase.reshape(*phase.shape[:-1], 3, 6)
    x, v = bodies[..., :3], bodies[..., 3:]
    pairs = ((0, 1), (0, 2), (1, 2))
    dx = np.stack([x[..., j, :] - x[..., i, :] for i, j in pairs], -2)
    du = np.stack([v[..., j, :] - v[..., i, :] for i, j in pairs], -2)
    r = np.linalg.norm(dx, axis=-1)
    k = np.argmin(r, axis=-1)[..., None]
    r = np.maximum(np.take_along_axis(r, k, -1)[..., 0], 1e-300)
    dx = np.take_along_axis(dx, k[..., None], -2)[..., 0, :]
    du = np.take_along_axis(du, k[..., None], -2)[..., 0, :]
    mass = 2.0
    speed = np.linalg.norm(du, axis=-1)
    with np.errstate(all="ignore"):
        closing = _signed_log((dx * du).sum(-1) / r**2 * interval)
    timescale = np.minimum(r / np.maximum(speed, 1e-300), np.sqrt(r**3 / mass))
    h2 = (np.cross(dx, du) ** 2).sum(-1)
    energy = 0.5 * speed**2 - mass / r
    ecc = np.sqrt(np.maximum(1 + 2 * energy * h2 / mass**2, 0.0))
    pericenter = (h2 / mass) / (1 + ecc)

    def log(u):
        return np.clip(np.log10(np.maximum(u, 1e-300)), -8, 4)

    return np.stack([log(r), closing, log(timescale), log(pericenter)], -1)


def features(observation: np.ndarray, kind: str = FEATURES, interval: float = 0.2) -> np.ndarray:
    """The network's input from observations ``[..., 19]`` (see the module docstring)."""
    obs = np.asarray(observation, dtype=np.float64)
    parts = [_signed_log(obs[..., :-1]), obs[..., -1:] / 16]
    if kind == "encounter_v2":
        parts.append(_closest_pair(obs[..., :-1], interval))
    elif kind != "signed_log_v1":
        raise ValidationError(f"features={kind!r} is unknown; allowed: {', '.join(FEATURE_SIZES)}")
    # A system stopped by a near-collision can leave non-finite values; the network gets bounded ones.
    return np.nan_to_num(np.concatenate(parts, -1), nan=0.0, posinf=50.0,
                         neginf=-50.0).astype(np.float32)


class FeatureWrapper(gym.ObservationWrapper):
    """Feeds :func:`features` of the environment's observation to the agent."""

    def __init__(self, env: gym.Env, kind: str = FEATURES) -> None:
        super().__init__(env)
        self.kind, self.interval = kind, float(env.unwrapped.interval)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(FEATURE_SIZES[kind],),
                                                dtype=np.float32)

    def observation(self, observation):
        return features(observation, self.kind, self.interval)


class Policy:
    """A loaded policy: ``act(observations) -> actions`` for a batch, deterministic."""

    def __init__(self, model, settings: dict, meta: dict) -> None:
        self.model, self.settings, self.meta = model, settings, meta

    def act(self, observations: np.ndarray) -> np.ndarray:
        kind = self.meta.get("features", "signed_log_v1")
        inputs = features(observations, kind, self.settings.get("interval", 0.2))
        actions, _ = self.model.predict(inputs, deterministic=True)
        return np.asarray(actions, dtype=np.int64).reshape(-1)


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".zip", ".json") else path
    return stem.with_suffix(".zip"), stem.with_suffix(".json")


def shipped_policy_path() -> Path:
    return Path(str(resources.files("simdiff.rl") / "policies" / SHIPPED_POLICY))


def load_policy(path: str | Path | None = None) -> Policy:
    """Load a policy saved by :func:`train_policy` (the shipped one when ``path`` is None).

    Raises:
        ValidationError: The files are missing or unreadable, or the policy was trained for
            another observation or action space.
    """
    from stable_baselines3 import PPO

    zip_path, json_path = _paths(shipped_policy_path() if path is None else path)
    if not zip_path.is_file():
        raise ValidationError(f"policy file {zip_path} does not exist")
    try:
        meta = json.loads(json_path.read_text()) if json_path.is_file() else {}
    except (OSError, json.JSONDecodeError) as err:
        raise ValidationError(f"policy metadata {json_path} does not load: {err}") from None
    try:
        model = PPO.load(zip_path, device="cpu")
    except Exception as err:  # noqa: BLE001 - any failure to unpickle means the same to a user
        raise ValidationError(f"policy file {zip_path} does not load: {err}") from None
    env = ThreeBodyTimestepEnv(**meta.get("settings", {}))
    kind = meta.setdefault("features", "signed_log_v1")
    if kind not in FEATURE_SIZES:
        raise ValidationError(f"policy {zip_path} uses features {kind!r}; this version computes "
                              f"{', '.join(FEATURE_SIZES)}")
    if model.observation_space.shape != (FEATURE_SIZES[kind],):
        raise ValidationError(
            f"policy {zip_path} was trained for observations of shape "
            f"{model.observation_space.shape}; its features {kind!r} give "
            f"({FEATURE_SIZES[kind]},)")
    if getattr(model.action_space, "n", None) != env.action_space.n:
        raise ValidationError(f"policy {zip_path} was trained for action space "
                              f"{model.action_space}; this environment has {env.action_space}")
    return Policy(model, env.settings, meta)


def clone_rule(model, settings: dict, feature_kind: str, seed: int, *, systems: int = 128,
               explore: float = 0.3, epochs: int = 600, constant: bool = False) -> float:
    """Fit ``model``'s policy network to :func:`~simdiff.rl.evaluate.error_feedback_rule`
    (or, if ``constant``, to the rule's fine action everywhere: the fixed eta 1e-2).

    States come from running the rule on ``systems`` training initial conditions (seeds from
    numpy's generator seeded by ``seed``, as training's), where with probability ``explore``
    an interval is run with a random one of the coarser half of the actions instead (the finer
    ones cost much and the rule never takes them), so that states off the rule's own path are
    seen too; every state is labeled with the rule's action. Returns the final accuracy.
    """
    import torch

    from simdiff.rl.env import ETAS, System, initial_conditions, observations
    from simdiff.rl.evaluate import RULE_FINE, error_feedback_rule
    
    env = ThreeBodyTimestepEnv(**settings)
    rng = np.random.default_rng(seed)
    ics = initial_conditions(rng.integers(2**31, size=systems))
    system = System(*ics, integrator=env.integrator.value, dt_min=env.dt_min)
    inputs, labels = [], []
    alive = np.ones(systems, dtype=bool)
    for k in range(env.max_actions):
        obs = observations(system)
        rule = error_feedback_rule(obs)
        if constant:
            rule = np.full_like(rule, RULE_FINE)
        inputs.append(features(obs[alive], feature_kind, env.interval))
        labels.append(rule[alive])
        random = rng.integers(len(ETAS) // 2, len(ETAS), size=systems)
        taken = np.where(rng.random(systems) < explore, random, rule)
        t_end = np.where(alive, (k + 1) * env.interval, system.time)
        status = system.advance(t_end, ETAS[taken], max_steps=env.max_interval_steps)
        alive &= (status == 0) & (system.energy_error() <= env.energy_limit)
    x = torch.as_tensor(np.concatenate(inputs))
    y = torch.as_tensor(np.concatenate(labels))
    policy = model.policy
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(epochs):
        loss = -policy.get_distribution(x).log_prob(y).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = float((policy.get_distribution(x).distribution.probs.argmax(-1) == y)
                         .float().mean())
    return accuracy


def train_policy(out: str | Path, *, steps: int, seed: int = 0, envs: int = 4,
                 settings: dict | None = None, resume: bool = False,
                 checkpoint_every: int = 10_000, rollout_steps: int = 256,
                 processes: bool = False, progress: bool = True, gamma: float = 0.999,
                 feature_kind: str = FEATURES, init: str = "none",
                 learning_rate: float = 3e-4) -> Path:
    """Train PPO on the time-step environment and save it to ``out`` (``.zip`` and ``.json``).

    Args:
        out: Where to save (suffix optional).
        steps: Environment steps (decisions) to train for in all.
        seed: Seeds the environments' initial conditions and the network.
        envs: Environments sampled in lockstep.
        settings: Environment arguments (:class:`ThreeBodyTimestepEnv`).
        resume: Continue from ``out``'s checkpoint (``NAME.checkpoint.zip``) if there is one.
        checkpoint_every: Environment steps between checkpoints.
        rollout_steps: Steps each environment samples between PPO updates.
        processes: Step the environments in worker processes (uses every core).
        progress: Show a progress bar.
        gamma: Discount; near 1 so that the telescoping reward's return is the final score.
        feature_kind: Feature map (:data:`FEATURE_SIZES`).
        init: ``none`` (a fresh network), ``rule`` or ``fixed``: before PPO, fit the policy
            network by behaviour cloning (:func:`clone_rule`) to the hand-written error-feedback
            rule (:func:`~simdiff.rl.evaluate.error_feedback_rule`), or to the constant best
            fixed eta (1e-2); PPO then fine-tunes it. Recorded in the JSON file.
        learning_rate: PPO's learning rate.

    Returns:
        The path of the saved ``.zip``.
    """
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from tqdm import tqdm

    if steps < 1:
        raise ValidationError(f"steps={steps} must be >= 1")
    if envs < 1:
        raise ValidationError(f"envs={envs} must be >= 1")
    if not 0 < gamma <= 1:
        raise ValidationError(f"gamma={gamma} must be in (0, 1]")
    if feature_kind not in FEATURE_SIZES:
        raise ValidationError(f"features={feature_kind!r} is unknown; allowed: "
                              f"{', '.join(FEATURE_SIZES)}")
    if init not in ("none", "rule", "fixed"):
        raise ValidationError(f"init={init!r} is unknown; allowed: none, rule, fixed")
    settings = dict(settings or {})
    ThreeBodyTimestepEnv(**settings)  # validates before anything is built
    zip_path, json_path = _paths(out)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = zip_path.with_suffix(".checkpoint.zip")

    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

    vec = make_vec_env(ThreeBodyTimestepEnv, n_envs=envs, seed=seed, env_kwargs=settings,
                       wrapper_class=FeatureWrapper,
                       wrapper_kwargs={"kind": feature_kind},
                       vec_env_cls=SubprocVecEnv if processes else DummyVecEnv)
    # Returns span tens of units and vary more between initial conditions than between actions;
    # scaling rewards by a running estimate of the return's spread keeps the value function's
    # loss from drowning the policy's. Training only: acting needs no reward statistics.
    vec = VecNormalize(vec, norm_obs=False, norm_reward=True, gamma=gamma)
    if resume and checkpoint.is_file():
        model = PPO.load(checkpoint, env=vec, device="cpu")
    else:
        model = PPO("MlpPolicy", vec, n_steps=rollout_steps,
                    batch_size=min(256, rollout_steps), n_epochs=10, learning_rate=learning_rate,
                    gamma=gamma, ent_coef=0.01, seed=seed, device="cpu",
                    policy_kwargs={"net_arch": [64, 64]}, verbose=0)
        if init != "none":
            clone_rule(model, settings, feature_kind, seed, constant=init == "fixed")
    remaining = max(steps - model.num_timesteps, 0)

    class Progress(BaseCallback):
        def _on_training_start(self) -> None:
            self.bar = tqdm(total=steps, initial=model.num_timesteps, unit="step",
                            disable=not progress, desc="PPO")
            self.last_checkpoint = model.num_timesteps

        def _on_step(self) -> bool:
            self.bar.update(self.training_env.num_envs)
            rewards = [info["episode"]["r"] for info in self.locals.get("infos", [])
                       if "episode" in info]
            if rewards:
                self.bar.set_postfix(episode_reward=f"{np.mean(rewards):.1f}")
            if self.num_timesteps - self.last_checkpoint >= checkpoint_every:
                self.model.save(checkpoint)
                self.last_checkpoint = self.num_timesteps
            return True

        def _on_training_end(self) -> None:
            self.bar.close()

    start = time.perf_counter()
    if remaining:
        model.learn(total_timesteps=remaining, callback=Progress(), reset_num_timesteps=False)
    model.save(zip_path)
    vec.close()
    if checkpoint.is_file():
        checkpoint.unlink()
    meta = {
        "settings": ThreeBodyTimestepEnv(**settings).settings,
        "features": feature_kind,
        "gamma": gamma,
        "learning_rate": learning_rate,
        "init": {"none": "PPO from a fresh network",
                 "rule": "behaviour cloning of the error-feedback rule, then PPO",
                 "fixed": "behaviour cloning of the constant eta=1e-2, then PPO"}[init],
        "algorithm": "PPO",
        "steps": int(model.num_timesteps),
        "seed": seed,
        "envs": envs,
        "rollout_steps": rollout_steps,
        "train_seconds": round(time.perf_counter() - start, 1),
        "recipe": f"simdiff rl train --steps {steps} --seed {seed} --envs {envs}"
                  f" --gamma {gamma} --features {feature_kind} --learning-rate {learning_rate}"
                  + (f" --init {init}" if init != "none" else "")
                  + "".join(f" --{k.replace('_', '-')} {v}" for k, v in settings.items())
                  + (" --processes" if processes else ""),
    }
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    return zip_path
