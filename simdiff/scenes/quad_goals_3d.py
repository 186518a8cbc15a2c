"""Goal-conditioned 3D quadruped (Fang et al. 2022): stand, walk along x and z at commanded
speeds, turn left or right at a commanded yaw rate; one controller for all.

The robot is :data:`~simdiff.sims.mass_spring.builder.QUADRUPED` (a square 3 x 1 x 3 body of 0.1
m cubes on four separate one-cube corner legs, 48 masses, 272 springs, 13 cubes, one muscle per
leg) with the shape-keeping parameters
(:data:`~simdiff.sims.mass_spring.builder.SHAPE_KEEPING`). Why they keep the body intact: the
spring force per unit strain ``k L`` is DiffTaichi's (1,500 N), so the sag under the robot's
weight is ``m g / (k L)`` ~ 3e-3 of a cell, the 15% stroke leaves a leg cube between 0.85x and
1.15x its rest height, and the 15/s drag damps a stroke's rebound within a gait period (0.07 s
against 0.33 s at 3 Hz). Each cube keeps all 28 of its corner pairs (edges, face and body
diagonals), so it resists shear and inversion in every direction. The time step is 3e-3 s: the
stability limit of this 3D spring network is 3.4e-3 s (the body diagonals make it stiffer than
the 2D walker's).

Goals are ``(velocity_x, velocity_z, turn)`` (:class:`simdiff.locomotion.GoalSpace`, dim 3),
drawn per world every ``period`` steps; the heading loss compares the yaw change of every
``window`` steps (best rotation about +y of the body's rest offsets) with the commanded yaw
rate. Left is a positive yaw rate (counterclockwise seen from above, +x turning towards -z).

Commands are sized to what the body can do, measured with open-loop sine gaits (one world per
pattern, 1.8 s at 3 Hz): a trot (leg phases 0, 1/4, 1/2, 3/4) walks 0.045 m/s along x (by the
body's symmetry, as fast along z), the phases (0, 1/4, 3/4, 1/2) turn at -0.25 rad/s and their
mirror at +0.25 rad/s; so ``vmax`` = 0.03 m/s and ``turn_max`` = 0.2 rad/s (0.06 rad per window).

Measured 2026-12-02 (``simdiff train quad_goals_3d --set period=250 --batch 8 --iters 100``:
goals switched every 250 steps in training, four per world and iteration, which is what made
the turn command learnable in this budget; 100 iterations, about 320 s of CPU time, 27 min of
wall-clock on a 2-core host at load average 11-21; best iteration 93). ``simdiff evaluate`` of
the best controller, 500-step periods, turn rate measured over each period less its first
window: commanded +0.2 rad/s (left) -> +0.118, +0.125 and +0.131 rad/s; -0.2 (right) -> -0.148,
-0.131 and -0.146 rad/s; +-0.1 -> +0.087..+0.092 and -0.071..-0.078 rad/s (so about +0.04 rad
per 100-step window for left, -0.04 for right, against 0.06 commanded); inverted_cells 0 over
every evaluated step. Walking is learned less: +0.03 m/s along z -> +0.017 m/s (with +0.012
along x), +0.03 along x -> +0.005 m/s; standing drifts under 0.001 m/s. Held-out
heading_error 0.014 rad per window (untrained 0.030); velocity_error 0.015 m/s (untrained
0.006: the untrained robot barely moves, and the trained one drifts sideways while it turns).
"""

import functools

from simdiff.locomotion import GoalSpace, goal_loss, goal_metrics
from simdiff.scene import Scene
from simdiff.sims.mass_spring.builder import QUADRUPED, SHAPE_KEEPING, robot_from_ascii
from simdiff.sims.mass_spring.tasks import locomotion_metrics


def scene(*, steps: int = 1000, dt: float = 0.003, vmax: float = 0.03, turn_max: float = 0.2,
          tasks: tuple = ("stand", "walk", "turn"), period: int = 500, window: int = 100,
          **robot) -> Scene:
    model = robot_from_ascii(QUADRUPED, dim=3, dt=dt, **{**SHAPE_KEEPING, **robot})
    goals = GoalSpace(dim=3, vmax=vmax, dt=dt, tasks=tuple(tasks), turn_max=turn_max,
                      period=period, window=window)

    return Scene(
        name="quad_goals_3d",
        simulator="mass_spring",
        model=model,
        steps=steps,
        loss=goal_loss,
        metrics=functools.partial(goal_metrics, base=locomotion_metrics),
        description="3D quadruped, 48 masses, 4 legs, goal-conditioned: walk along x and z, "
                    "turn left and right",
        default_backend="warp",
        train={"controller": "goal_mlp", "controller_options": {"frequency": 3.0}, "lr": 0.01,
               "iters": 100},
        goals=goals,
    )
