"""Training and loading time-step policies (stable-baselines3 PPO over :mod:`simdiff.rl.env`).

A policy is saved as two files of data: ``NAME.pt`` (the policy network's weights, loaded with
``torch.load(weights_only=True)``) and ``NAME.json`` (the environment's settings, the feature map,
the network's layer widths and the training recipe), so that evaluation rebuilds the network
and the environment the policy was trained in. Stable-baselines3's own ``.zip`` format is
refused: it loads by unpickling, which can run code (:func:`convert_sb3_zip` converts a zip
one trusts).

Training checkpoints (``NAME.checkpoint.pt``, data too) are written every ``checkpoint_every``
decisions and hold everything the rest of the run depends on: the network and its optimizer,
the step count, the reward normalization's running statistics, and the torch, numpy and Python
RNG states. The environments' episodes are cut at each checkpoint and the environments
reseeded from ``(seed, checkpoint index)``, so no environment state needs saving: a run resumed
from a checkpoint (``resume=True``) ends with the same weights as an uninterrupted one.

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
import random
import time
from importlib import resources
from pathlib import Path

import gymnasium as gym
import numpy as np

from simdiff.files import DataFileError, hold_lock, load_data, save_data
from simdiff.rl.env import OBSERVATION_SIZE, ThreeBodyTimestepEnv
from simdiff.sims.base import ValidationError

__all__ = ["FEATURES", "FEATURE_SIZES", "SHIPPED_POLICY", "Policy", "convert_sb3_zip",
           "features", "load_policy", "train_policy"]

POLICY_FORMAT = 1
CHECKPOINT_FORMAT = 1

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
    """A loaded policy: ``act(observations) -> actions`` for a batch, deterministic.

    Attributes:
        model: The policy network (stable-baselines3's ``ActorCriticPolicy``).
        settings: The environment's settings.
        meta: The policy's JSON file.
    """

    def __init__(self, model, settings: dict, meta: dict) -> None:
        self.model, self.settings, self.meta = model, settings, meta

    def act(self, observations: np.ndarray) -> np.ndarray:
        kind = self.meta.get("features", "signed_log_v1")
        inputs = features(observations, kind, self.settings.get("interval", 0.2))
        actions, _ = self.model.predict(inputs, deterministic=True)
        return np.asarray(actions, dtype=np.int64).reshape(-1)


def _paths(path: str | Path) -> tuple[Path, Path]:
    """The weights (``.pt``) and metadata (``.json``) files of a policy path, suffix optional."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".pt", ".zip", ".json") else path
    return stem.with_name(stem.name + ".pt"), stem.with_name(stem.name + ".json")


def shipped_policy_path() -> Path:
    return Path(str(resources.files("simdiff.rl") / "policies" / SHIPPED_POLICY))


def _network(observation_size: int, actions: int, net_arch: list[int]):
    """A fresh policy network of PPO's ``MlpPolicy`` with these sizes (weights to be loaded)."""
    from stable_baselines3.common.policies import ActorCriticPolicy

    return ActorCriticPolicy(
        gym.spaces.Box(-np.inf, np.inf, shape=(observation_size,), dtype=np.float32),
        gym.spaces.Discrete(actions), lambda _: 0.0, net_arch=list(net_arch))


def _architecture(state: dict, where: Path) -> tuple[int, int, list[int]]:
    """Input size, action count and hidden widths read from a policy network's weights."""
    try:
        hidden = sorted((k for k in state if k.startswith("mlp_extractor.policy_net.")
                         and k.endswith(".weight")), key=lambda k: int(k.split(".")[2]))
        widths = [int(state[k].shape[0]) for k in hidden]
        return int(state[hidden[0]].shape[1]), int(state["action_net.weight"].shape[0]), widths
    except (KeyError, IndexError, ValueError, AttributeError):
        raise ValidationError(f"policy file {where} holds no PPO MlpPolicy weights") from None


def load_policy(path: str | Path | None = None) -> Policy:
    """Load a policy saved by :func:`train_policy` (the shipped one when ``path`` is None).

    Nothing is unpickled: the weights are read with ``torch.load(weights_only=True)`` into a
    network built from their shapes, the rest comes from JSON.

    Raises:
        ValidationError: The files are missing, unreadable or need unpickling (a
            stable-baselines3 zip), or the policy was trained for another observation or
            action space.
    """
    weights, json_path = _paths(shipped_policy_path() if path is None else path)
    legacy = weights.with_suffix(".zip")
    if not weights.is_file() and legacy.is_file():
        raise ValidationError(
            f"policy file {legacy} is a stable-baselines3 zip, which loads by unpickling (it "
            f"can run code) and is refused; if you trust it, convert it with `simdiff rl "
            f"convert {legacy}`")
    if not weights.is_file():
        raise ValidationError(f"policy file {weights} does not exist")
    try:
        meta = json.loads(json_path.read_text()) if json_path.is_file() else {}
    except (OSError, json.JSONDecodeError) as err:
        raise ValidationError(f"policy metadata {json_path} does not load: {err}") from None
    try:
        data = load_data(weights, "policy file")
    except DataFileError as err:
        raise ValidationError(str(err)) from None
    if not isinstance(data, dict) or data.get("format") != POLICY_FORMAT or \
            not isinstance(data.get("policy"), dict):
        raise ValidationError(f"policy file {weights} is not a simdiff policy of format "
                              f"{POLICY_FORMAT}")
    inputs, actions, widths = _architecture(data["policy"], weights)
    env = ThreeBodyTimestepEnv(**meta.get("settings", {}))
    kind = meta.setdefault("features", "signed_log_v1")
    if kind not in FEATURE_SIZES:
        raise ValidationError(f"policy {weights} uses features {kind!r}; this version computes "
                              f"{', '.join(FEATURE_SIZES)}")
    if inputs != FEATURE_SIZES[kind]:
        raise ValidationError(
            f"policy {weights} was trained for observations of shape ({inputs},); its features "
            f"{kind!r} give ({FEATURE_SIZES[kind]},)")
    if actions != env.action_space.n:
        raise ValidationError(f"policy {weights} was trained for {actions} actions; this "
                              f"environment has {env.action_space}")
    model = _network(inputs, actions, widths)
    try:
        model.load_state_dict(data["policy"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValidationError(f"policy file {weights} does not fit a PPO MlpPolicy ({first})") \
            from None
    model.set_training_mode(False)
    return Policy(model, env.settings, meta)


def convert_sb3_zip(zip_path: str | Path, out: str | Path | None = None) -> Path:
    """Convert a stable-baselines3 PPO zip to simdiff's weights file (``NAME.pt`` beside it,
    or ``out``); the JSON metadata file is kept as it is.

    This unpickles the zip, which can run code: only for files you trust.

    Returns:
        The path of the weights file.
    """
    from stable_baselines3 import PPO

    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise ValidationError(f"policy file {zip_path} does not exist")
    weights, _ = _paths(out if out is not None else zip_path)
    if weights.exists():
        raise FileExistsError(f"{weights} exists; not overwritten")
    model = PPO.load(zip_path, device="cpu")
    save_data({"format": POLICY_FORMAT, "policy": model.policy.state_dict()}, weights)
    return weights


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


def _rng_state() -> dict:
    """Torch, numpy and Python RNG states as data (tensors, lists, numbers, strings)."""
    import torch

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "internal": list(internal),
                       "gauss_next": gauss_next}}


def _set_rng_state(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


# What a resumed run must share with its checkpoint (``steps`` may grow, ``processes`` change).
_RUN_KEYS = ("settings", "seed", "envs", "rollout_steps", "gamma", "features", "init",
             "learning_rate", "checkpoint_every")


def train_policy(out: str | Path, *, steps: int, seed: int = 0, envs: int = 4,
                 settings: dict | None = None, resume: bool = False,
                 checkpoint_every: int = 10_000, rollout_steps: int = 256,
                 processes: bool = False, progress: bool = True, gamma: float = 0.999,
                 feature_kind: str = FEATURES, init: str = "none",
                 learning_rate: float = 3e-4) -> Path:
    """Train PPO on the time-step environment and save it to ``out`` (``.pt`` and ``.json``).

    Args:
        out: Where to save (suffix optional). An existing policy there is never overwritten
            (except by ``resume`` with more ``steps``); ``out``'s folder is locked for the run.
        steps: Environment steps (decisions) to train for in all.
        seed: Seeds the environments' initial conditions and the network.
        envs: Environments sampled in lockstep.
        settings: Environment arguments (:class:`ThreeBodyTimestepEnv`).
        resume: Continue from ``out``'s checkpoint (``NAME.checkpoint.pt``) if there is one,
            exactly (module docstring); the run's other arguments must be the checkpoint's.
        checkpoint_every: Environment steps between checkpoints (a multiple of
            ``envs * rollout_steps`` avoids overshooting each by part of a rollout).
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
        The path of the saved ``.pt``.

    Raises:
        ValidationError: An argument is out of range, or the checkpoint is of another run.
        FileExistsError: ``out`` holds a policy or a checkpoint and ``resume`` is False,
            ``resume`` finds a finished run of at least ``steps``, or another process trains
            into ``out``.
    """
    if steps < 1:
        raise ValidationError(f"steps={steps} must be >= 1")
    if envs < 1:
        raise ValidationError(f"envs={envs} must be >= 1")
    if checkpoint_every < 1:
        raise ValidationError(f"checkpoint_every={checkpoint_every} must be >= 1")
    if rollout_steps < 1:
        raise ValidationError(f"rollout_steps={rollout_steps} must be >= 1")
    if not 0 < gamma <= 1:
        raise ValidationError(f"gamma={gamma} must be in (0, 1]")
    if not np.isfinite(learning_rate) or learning_rate <= 0:
        raise ValidationError(f"learning_rate={learning_rate} must be a finite number > 0")
    if feature_kind not in FEATURE_SIZES:
        raise ValidationError(f"features={feature_kind!r} is unknown; allowed: "
                              f"{', '.join(FEATURE_SIZES)}")
    if init not in ("none", "rule", "fixed"):
        raise ValidationError(f"init={init!r} is unknown; allowed: none, rule, fixed")
    settings = dict(settings or {})
    run = {"settings": ThreeBodyTimestepEnv(**settings).settings, "seed": seed, "envs": envs,
           "rollout_steps": rollout_steps, "gamma": gamma, "features": feature_kind,
           "init": init, "learning_rate": learning_rate, "checkpoint_every": checkpoint_every,
           "given_settings": settings}
    weights, json_path = _paths(out)
    with hold_lock(weights.parent, "policy", lock_name=weights.stem + ".lock"):
        return _train_locked(weights, json_path, run, steps, resume, processes, progress)


def _train_locked(weights: Path, json_path: Path, run: dict, steps: int, resume: bool,
                  processes: bool, progress: bool) -> Path:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize
    from tqdm import tqdm

    checkpoint = weights.with_name(weights.stem + ".checkpoint.pt")
    legacy = weights.with_suffix(".zip")
    saved = None
    if not resume:
        for path, what in ((weights, "a trained policy"), (legacy, "a trained policy"),
                           (checkpoint, "an unfinished run's checkpoint")):
            if path.exists():
                raise FileExistsError(
                    f"{path} exists ({what}); not overwritten: choose another --out"
                    + (", or pass --resume to continue it" if path == checkpoint else ""))
    elif checkpoint.is_file():
        try:
            saved = load_data(checkpoint, "RL checkpoint")
        except DataFileError as err:
            raise ValidationError(str(err)) from None
        if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
            raise ValidationError(f"{checkpoint} is not a simdiff RL checkpoint of format "
                                  f"{CHECKPOINT_FORMAT}")
        before = json.loads(json.dumps(saved["run"]))
        now = json.loads(json.dumps(run))
        for key in _RUN_KEYS:
            if before.get(key) != now.get(key):
                raise ValidationError(
                    f"checkpoint {checkpoint} belongs to another run: {key}={before.get(key)!r} "
                    f"there, {now.get(key)!r} here")
        if saved["num_timesteps"] >= steps:
            raise FileExistsError(
                f"{checkpoint} is of a finished run ({saved['num_timesteps']} steps >= "
                f"--steps {steps}); nothing to resume: pass a larger --steps to train further")
    elif weights.exists() or legacy.exists():
        raise FileExistsError(f"{weights if weights.exists() else legacy} is a finished policy "
                              "without a checkpoint; nothing to resume: choose another --out")
    seed, envs, gamma = run["seed"], run["envs"], run["gamma"]
    settings = dict(run["settings"])
    rollout_steps = run["rollout_steps"]
    vec = make_vec_env(ThreeBodyTimestepEnv, n_envs=envs, seed=seed, env_kwargs=settings,
                       wrapper_class=FeatureWrapper,
                       wrapper_kwargs={"kind": run["features"]},
                       vec_env_cls=SubprocVecEnv if processes else DummyVecEnv)
    # Returns span tens of units and vary more between initial conditions than between actions;
    # scaling rewards by a running estimate of the return's spread keeps the value function's
    # loss from drowning the policy's. Training only: acting needs no reward statistics.
    vec = VecNormalize(vec, norm_obs=False, norm_reward=True, gamma=gamma)
    model = PPO("MlpPolicy", vec, n_steps=rollout_steps, batch_size=min(256, rollout_steps),
                n_epochs=10, learning_rate=run["learning_rate"], gamma=gamma, ent_coef=0.01,
                seed=seed, device="cpu", policy_kwargs={"net_arch": [64, 64]}, verbose=0)
    # SB3 logs nowhere useful at verbose=0 yet makes an empty /tmp/SB3-DATE folder on every
    # learn() without a logger of its own; the run's record is its checkpoint and policy.json.
    model.set_logger(Logger(folder=None, output_formats=[]))
    if saved is not None:
        model.policy.load_state_dict(saved["policy"])
        model.policy.optimizer.load_state_dict(saved["optimizer"])
        model.num_timesteps = int(saved["num_timesteps"])
        rms = saved["return_statistics"]
        vec.ret_rms.mean = rms["mean"].numpy().astype(np.float64)
        vec.ret_rms.var = rms["var"].numpy().astype(np.float64)
        vec.ret_rms.count = float(rms["count"])
        _set_rng_state(saved["rng"])
        start_seconds = float(saved.get("train_seconds", 0.0))
    else:
        if run["init"] != "none":
            clone_rule(model, settings, run["features"], seed, constant=run["init"] == "fixed")
        start_seconds = 0.0

    def save_checkpoint() -> None:
        save_data({"format": CHECKPOINT_FORMAT, "run": run,
                   "policy": model.policy.state_dict(),
                   "optimizer": model.policy.optimizer.state_dict(),
                   "num_timesteps": int(model.num_timesteps),
                   "return_statistics": {"mean": torch.as_tensor(vec.ret_rms.mean),
                                         "var": torch.as_tensor(vec.ret_rms.var),
                                         "count": float(vec.ret_rms.count)},
                   "rng": _rng_state(),
                   "train_seconds": start_seconds + time.perf_counter() - started}, checkpoint)

    bar = tqdm(total=steps, initial=model.num_timesteps, unit="step", disable=not progress,
               desc="PPO")

    class Progress(BaseCallback):
        def _on_step(self) -> bool:
            bar.update(self.training_env.num_envs)
            rewards = [info["episode"]["r"] for info in self.locals.get("infos", [])
                       if "episode" in info]
            if rewards:
                bar.set_postfix(episode_reward=f"{np.mean(rewards):.1f}")
            return True

    started = time.perf_counter()
    every = run["checkpoint_every"]
    while model.num_timesteps < steps:
        index = model.num_timesteps // every
        if model.num_timesteps > 0:
            # A checkpoint boundary: episodes restart from seeds of (seed, index), in an
            # uninterrupted run and a resumed one alike; nothing of the environments is saved.
            vec.seed(int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))
            model._last_obs = None
        target = min((index + 1) * every, steps)
        model.learn(total_timesteps=target - model.num_timesteps, callback=Progress(),
                    reset_num_timesteps=False)
        save_checkpoint()
    bar.close()
    vec.close()
    save_data({"format": POLICY_FORMAT, "policy": model.policy.state_dict()}, weights)
    feature_kind, learning_rate, init = run["features"], run["learning_rate"], run["init"]
    meta = {
        "settings": settings,
        "features": feature_kind,
        "network": {"net_arch": [64, 64], "activation": "tanh"},
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
        "checkpoint_every": every,
        "train_seconds": round(start_seconds + time.perf_counter() - started, 1),
        "recipe": f"simdiff rl train --steps {steps} --seed {seed} --envs {envs}"
                  f" --gamma {gamma} --features {feature_kind} --learning-rate {learning_rate}"
                  f" --checkpoint-every {every}"
                  + (f" --init {init}" if init != "none" else "")
                  + "".join(f" --{k.replace('_', '-')} {v}"
                            for k, v in run["given_settings"].items())
                  + (" --processes" if processes else ""),
    }
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    return weights
