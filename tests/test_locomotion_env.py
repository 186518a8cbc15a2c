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
