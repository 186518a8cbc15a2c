"""Reinforcement-learned time-stepping for the chaotic three-body problem (issue 7, in progress:
the environment is here; training, evaluation and a shipped policy are to come)."""

from simdiff.rl.env import ETAS, ThreeBodyTimestepEnv

__all__ = ["ETAS", "ThreeBodyTimestepEnv"]
