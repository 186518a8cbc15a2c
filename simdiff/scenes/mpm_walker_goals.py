"""Goal-conditioned 2D MPM soft robot (Fang et al. 2022): the crawler of ``mpm_crawler`` (a
jelly body on two legs, four muscles) tracks a commanded speed (``--set
'tasks=["stand","walk"]'`` adds standing).

Commands are sized to what the body can do, measured with open-loop sine gaits (8 worlds in one
batch, 1 s): 0.12 m/s forward at 4 Hz, 0.03 m/s backward at 6 Hz, so ``vmax`` = 0.05 m/s. A
control step is ``substeps`` MPM substeps (0.01 s); goals are held for ``period`` control steps
(1 s) and velocity windows are ``window`` control steps (0.25 s). The controller's position
inputs are 64 of the particles (``goal_mlp``'s ``points``).

Measured 2026-12-02. With goal_mlp's default output gain 0.1 the body stays still (0.0003 m/s,
untrained and after 20 iterations), so there is no gait for the command to modulate: hence
``output_gain`` 1 (untrained, it crawls 0.010-0.015 m/s whatever the command). Trained on
stand and walk at Adam's 0.01 the loss rose and fell without settling (commanded 0.025 and
0.05 m/s gave -0.028 and +0.021). With these defaults, walk commands only, Adam at 0.003, 4
worlds, 40 iterations (360 s of training wall-clock at load average 3-4, best validated
iteration 35), ``simdiff evaluate mpm_walker_goals --batch 4``: commanded -0.03, -0.01,
+0.01, +0.03 m/s gave -0.0124, +0.0013, +0.0047, +0.0226 m/s (mean speeds over the period
less its first window), distinct and in the commands' order; velocity_error 0.0144 m/s. The
body stays whole (looked at in the goal video).
"""

import functools
import importlib.util

from simdiff.locomotion import GoalSpace, goal_loss, goal_metrics
from simdiff.scene import Scene, scene_dir
from simdiff.sims.mpm import Ground, build_model
from simdiff.sims.mpm.tasks import locomotion_metrics


def _crawler_bodies(**body):
    """The bodies of scenes/mpm_crawler.py (loaded by path: scene files are not a package)."""
    spec = importlib.util.spec_from_file_location("simdiff_scene_mpm_crawler_bodies",
                                                  scene_dir() / "mpm_crawler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.crawler_bodies(**body)


def scene(*, steps: int = 200, grid_size: int = 64, substeps: int = 10, dt: float = 1e-3,
          friction: float = 2.0, vmax: float = 0.05, period: int = 100, window: int = 25,
          tasks: tuple = ("walk",), **body) -> Scene:
    model = build_model(_crawler_bodies(y0=3 / grid_size, **body), grid_size=grid_size, dt=dt,
                        substeps=substeps, ground=Ground(friction=friction))
    goals = GoalSpace(dim=2, vmax=vmax, dt=model.control_dt, tasks=tuple(tasks), period=period,
                      window=window)

    return Scene(
        name="mpm_walker_goals",
        simulator="mpm",
        model=model,
        steps=steps,
        loss=goal_loss,
        metrics=functools.partial(goal_metrics, base=locomotion_metrics),
        description=f"2D MPM soft crawler, {model.particle_count} particles, goal-conditioned "
                    f"speed tracking",
        default_backend="warp",
        render_every=2,
        # Full-size first actions (output_gain 1): with goal_mlp's default 0.1 the untrained
        # body does not move (0.0003 m/s), nor after 20 iterations (below 0.001 m/s at every
        # command), so there was no gait whose speed the command could modulate.
        train={"controller": "goal_mlp",
               "controller_options": {"frequency": 4.0, "output_gain": 1.0}, "lr": 0.003,
               "iters": 40, "batch": 4},
        goals=goals,
    )
