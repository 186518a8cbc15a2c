"""The command drawn into the frames of a goal-conditioned rollout: the task's name, an arrow
for the target speed (its length the command over ``vmax``, beside a grey arrow for the
measured window speed), and a gauge whose red line is the target height (jump) or the bar
(crawl) with the centre of mass's rise or the robot's top as a dot. In 3D a second pair of
arrows gives the speed along z, and a third the yaw rate (target red, measured over the last
window grey; an arrow to the left is a left turn). Reads the rollout's goal schedule and trace,
never the simulator."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["annotate_goals"]

_RED, _BLUE, _GREY, _INK = (214, 39, 40), (31, 119, 180), (150, 150, 150), (20, 20, 20)


def _arrow(draw: ImageDraw.ImageDraw, x0: float, y: float, length: float, color, width: int):
    x1 = x0 + length
    draw.line([(x0, y), (x1, y)], fill=color, width=width)
    if abs(length) > 2:
        s = 1 if length > 0 else -1
        draw.polygon([(x1 + s * 7, y), (x1 - s * 3, y - 6), (x1 - s * 3, y + 6)], fill=color)


def annotate_goals(frames: list[np.ndarray], steps: list[int], rollout, *, world: int = 0
                   ) -> list[np.ndarray]:
    """Frames with world ``world``'s command drawn in.

    Args:
        frames: RGB frames [H, W, 3] uint8, one per recorded step.
        steps: The step of each frame.
        rollout: A goal rollout (``goal_schedule`` and ``trace``, see :mod:`simdiff.locomotion`).
        world: The world the frames show.
    """
    schedule = rollout.goal_schedule
    space = schedule.space
    com = rollout.trace["com"][:, world].detach().double().cpu().numpy()
    top = rollout.trace["top"][:, world].detach().double().cpu().numpy()
    window = space.window
    yaw = None
    if space.dim == 3:
        from simdiff.locomotion import _yaw

        x = rollout.trace["x"][:, world].detach().double().cpu()
        yaw = np.unwrap(_yaw(x, x[0]).numpy())
    out = []
    for frame, t in zip(frames, steps):
        image = Image.fromarray(frame)
        draw = ImageDraw.Draw(image)
        w, h = image.size
        p = min(t // space.period, schedule.goals.shape[0] - 1)
        goal = schedule.goals[p, world].tolist()
        task = schedule.tasks[p][world]
        draw.text((10, h - 44), f"task: {task}", fill=_INK)
        cx, cy, half = w / 2, 28, w * 0.2
        draw.line([(cx, cy - 10), (cx, cy + 10)], fill=_GREY, width=1)
        _arrow(draw, cx, cy, half * goal[0] / space.vmax, _RED, 4)
        t0 = max(0, t - window)
        if t > t0:
            measured = (com[t, 0] - com[t0, 0]) / ((t - t0) * space.dt)
            _arrow(draw, cx, cy + 14, half * float(np.clip(measured / space.vmax, -1.5, 1.5)),
                   _GREY, 3)
        draw.text((cx - half, cy + 24), f"target {goal[0]:+.3f} m/s (red), measured (grey)",
                  fill=_INK)
        if space.dim == 2:
            # Gauge: 0 at the bottom, twice the largest target at the top.
            gx, g0, g1 = w - 30, h - 40, 60
            draw.line([(gx, g0), (gx, g1)], fill=_GREY, width=2)
            if task == "jump":
                full, target, value = 2 * space.jump_range[1], goal[1], com[t, 1] - com[0, 1]
                label = f"jump {goal[1] * 100:.1f} cm"
            elif task == "crawl":
                full, target, value = 1.5 * space.crawl_height, space.crawl_height, top[t]
                label = f"bar {space.crawl_height:.2f} m"
            else:
                full = target = value = None
            if full:
                yt, yv = (g0 - (g0 - g1) * float(np.clip(v / full, 0, 1)) for v in (target, value))
                draw.line([(gx - 12, yt), (gx + 12, yt)], fill=_RED, width=3)
                draw.ellipse([gx - 5, yv - 5, gx + 5, yv + 5], fill=_BLUE)
                draw.text((gx - 90, yt - 14), label, fill=_RED)
        else:
            rows = ((goal[1], 2, space.vmax, "z", "m/s"), (goal[2], None, space.turn_max,
                                                            "turn", "rad/s"))
            # A column under the title, clear of the robot the camera keeps in the middle.
            lx, lhalf = 80, 60
            for k, (target, axis, full, name, unit) in enumerate(rows):
                y = 70 + 62 * k
                draw.line([(lx, y - 10), (lx, y + 10)], fill=_GREY, width=1)
                # A left turn (positive yaw) points left, as seen from above facing +x.
                sign = -1.0 if axis is None else 1.0
                _arrow(draw, lx, y, sign * lhalf * target / full, _RED, 4)
                measured = float("nan")
                if t > t0:
                    delta = (com[t, axis] - com[t0, axis]) if axis is not None else (
                        yaw[t] - yaw[t0])
                    measured = delta / ((t - t0) * space.dt)
                    _arrow(draw, lx, y + 12, sign * lhalf * float(np.clip(measured / full,
                                                                          -1.5, 1.5)),
                           _GREY, 3)
                draw.text((10, y + 18), f"{name} target {target:+.3f} {unit}", fill=_INK)
                draw.text((10, y + 30), f"measured {measured:+.3f}", fill=_INK)
            side = "left" if goal[2] > 0 else "right" if goal[2] < 0 else "straight"
            draw.text((10, h - 28), f"turn {goal[2]:+.2f} rad/s ({side})", fill=_INK)
        out.append(np.asarray(image))
    return out
