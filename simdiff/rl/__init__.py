"""Reinforcement-learned time-stepping for the chaotic three-body problem.

``env`` holds the gymnasium environment, ``policy`` training (stable-baselines3 PPO) and
loading, ``evaluate`` the comparison against every fixed time-step parameter, and ``cli`` the
``simdiff rl`` commands. Importing this package loads none of them.
"""

__all__ = ["ETAS", "ThreeBodyTimestepEnv"]


def __getattr__(name: str):
    if name in __all__:
        from simdiff.rl import env

        return getattr(env, name)
    raise AttributeError(f"module 'simdiff.rl' has no attribute {name!r}")
