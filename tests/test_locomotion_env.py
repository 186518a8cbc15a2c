"""The goal-conditioned locomotion environment for RL baselines: gymnasium's checker, seeded
goals, and a reward that prefers moving at the commanded speed."""

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from simdiff.rl.locomotion_env import LocomotionEnv

OPTIONS = {"steps": 60, "period": 30, "window": 10, "tasks": ["walk"]}


def test_passes_gymnasium_check_env_and_is_seeded():
    env = LocomotionEnv(scene_options=OPTIONS)
    check_env(env, skip_render_check=True)
    a, _ = env.reset(seed=4)
    goal_a = env.schedule.goals.clone()
    b, _ = env.reset(seed=4)
    assert np.array_equal(a, b) and bool((env.schedule.goals == goal_a).all())
    env.reset(seed=5)
    assert not bool((env.schedule.goals == goal_a).all())
    steps = 0
    while True:
        _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        steps += 1
        assert reward <= 0 and not terminated
        if truncated:
            break
    assert steps == 60 // env.control_steps


def test_reward_is_minus_the_velocity_error():
    env = LocomotionEnv(scene_options=OPTIONS)
    env.reset(seed=0)
    _, reward, *_, info = env.step(np.zeros(env.action_space.shape, np.float32))
    error = (info["velocity"] - info["target_velocity"]) ** 2 / env.space.vmax**2
    assert info["target_velocity"] != 0 and error > 0
    assert reward == pytest.approx(-error, rel=1e-12)  # no actuation, walk: velocity term only


def test_vector_env_steps_its_worlds_together_and_restarts_them():
    """Three environments are the three worlds of one batched simulator: per-world rewards
    are minus each world's velocity term, episodes end together at the horizon with their
    terminal observations, restart with fresh goals, and PPO runs on it."""
    from stable_baselines3 import PPO

    from simdiff.rl.locomotion_env import LocomotionVecEnv

    venv = LocomotionVecEnv(3, scene_options=OPTIONS, seed=2)
    assert venv.worlds.sim.batch_size == 3
    obs = venv.reset()
    goals = venv.worlds.goals.copy()
    assert obs.shape == (3, venv.observation_space.shape[0])
    assert len({float(g) for g in goals[0, :, 0]}) == 3  # each world its own command
    for step in range(60 // venv.worlds.control_steps):
        venv.step_async(np.zeros((3, venv.action_space.shape[0]), np.float32))
        obs, reward, done, infos = venv.step_wait()
        error = np.array([(i["velocity"] - i["target_velocity"]) ** 2 for i in infos])
        np.testing.assert_allclose(reward, -error / venv.worlds.space.vmax**2, rtol=1e-5)
        assert done.all() == (step == 60 // venv.worlds.control_steps - 1)
    assert all(i["TimeLimit.truncated"] and "terminal_observation" in i for i in infos)
    assert (venv.worlds.t == 0).all() and not np.array_equal(venv.worlds.goals, goals)
    model = PPO("MlpPolicy", venv, n_steps=8, batch_size=12, n_epochs=1, seed=0)
    model.learn(total_timesteps=24)
    assert model.num_timesteps == 24
