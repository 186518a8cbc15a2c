"""RL sweep: the time-step policy's energy weight over two values and two seeds, at toy size.

    simdiff sweep sweeps/rl_reward_weights.py [--engine ray]
"""

SPEC = {
    "command": "rl train",
    "out": "runs/sweep_rl_reward_weights",
    "fixed": {"steps": 512, "envs": 2, "max_actions": 16},
    "grid": {"w_energy": [1.0, 4.0]},
    "seeds": [0, 1],
    "resources": {"num_cpus": 1, "num_gpus": 0},
}
