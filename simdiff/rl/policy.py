"""Training and loading time-step policies (stable-baselines3 PPO over :mod:`simdiff.rl.env`).

A policy is saved as two files: ``NAME.zip`` (stable-baselines3's own format: weights, spaces,
hyperparameters) and ``NAME.json`` (the environment's settings, the feature map and the training
recipe), so that evaluation rebuilds the environment the policy was trained in.

Features: the network does not see the raw observation. Velocities grow without bound in close
encounters (|v| ~ 1/sqrt(r)) and the log energy error spans [-16, 2]; so positions and
velocities pass through ``sign(u) log(1 + |u|)`` and the log error is divided by 16. The map is
fixed (no running statistics to save or drift) and recorded in the JSON file.
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

__all__ = ["FEATURES", "SHIPPED_POLICY", "Policy", "features", "load_policy", "train_policy"]

FEATURES = "signed_log_v1"
SHIPPED_POLICY = "hermite_ppo"
"""Name of the policy shipped in ``simdiff/rl/policies/``."""


def features(observation: np.ndarray) -> np.ndarray:
    """The network's input from observations ``[..., 19]`` (see the module docstring)."""
    obs = np.asarray(observation, dtype=np.float64)
    phase = np.sign(obs[..., :-1]) * np.log1p(np.abs(obs[..., :-1]))
    return np.concatenate([phase, obs[..., -1:] / 16], -1).astype(np.float32)


class FeatureWrapper(gym.ObservationWrapper):
    """Feeds :func:`features` of the environment's observation to the agent."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(OBSERVATION_SIZE,),
                                                dtype=np.float32)

    def observation(self, observation):
        return features(observation)


class Policy:
    """A loaded policy: ``act(observations) -> actions`` for a batch, deterministic."""

    def __init__(self, model, settings: dict, meta: dict) -> None:
        self.model, self.settings, self.meta = model, settings, meta

    def act(self, observations: np.ndarray) -> np.ndarray:
        actions, _ = self.model.predict(features(observations), deterministic=True)
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
    if model.observation_space.shape != env.observation_space.shape:
        raise ValidationError(
            f"policy {zip_path} was trained for observations of shape "
            f"{model.observation_space.shape}; this environment gives "
            f"{env.observation_space.shape}")
    if getattr(model.action_space, "n", None) != env.action_space.n:
        raise ValidationError(f"policy {zip_path} was trained for action space "
                              f"{model.action_space}; this environment has {env.action_space}")
    if meta.get("features", FEATURES) != FEATURES:
        raise ValidationError(f"policy {zip_path} uses features {meta['features']!r}; this "
                              f"version computes {FEATURES!r}")
    return Policy(model, env.settings, meta)


def train_policy(out: str | Path, *, steps: int, seed: int = 0, envs: int = 4,
                 settings: dict | None = None, resume: bool = False,
                 checkpoint_every: int = 10_000, rollout_steps: int = 256,
                 processes: bool = False, progress: bool = True) -> Path:
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
    settings = dict(settings or {})
    ThreeBodyTimestepEnv(**settings)  # validates before anything is built
    zip_path, json_path = _paths(out)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = zip_path.with_suffix(".checkpoint.zip")

    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

    vec = make_vec_env(ThreeBodyTimestepEnv, n_envs=envs, seed=seed, env_kwargs=settings,
                       wrapper_class=FeatureWrapper,
                       vec_env_cls=SubprocVecEnv if processes else DummyVecEnv)
    # Returns span tens of units and vary more between initial conditions than between actions;
    # scaling rewards by a running estimate of the return's spread keeps the value function's
    # loss from drowning the policy's. Training only: acting needs no reward statistics.
    vec = VecNormalize(vec, norm_obs=False, norm_reward=True, gamma=0.99)
    if resume and checkpoint.is_file():
        model = PPO.load(checkpoint, env=vec, device="cpu")
    else:
        model = PPO("MlpPolicy", vec, n_steps=rollout_steps,
                    batch_size=min(256, rollout_steps), n_epochs=10, learning_rate=3e-4, gamma=0.99, ent_coef=0.01, seed=seed, device="cpu",
                    policy_kwargs={"net_arch": [64, 64]}, verbose=0)
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
        "features": FEATURES,
        "algorithm": "PPO",
        "steps": int(model.num_timesteps),
        "seed": seed,
        "envs": envs,
        "rollout_steps": rollout_steps,
        "train_seconds": round(time.perf_counter() - start, 1),
        "recipe": f"simdiff rl train --steps {steps} --seed {seed} --envs {envs}"
                  + (" --processes" if processes else ""),
    }
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    return zip_path
