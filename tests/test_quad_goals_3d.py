"""The 3D quadruped: layered ASCII art, the four-legged body it builds, the heading loss's sign
on a constructed rotation and the goal-conditioned scene's refusals of bad goals."""

import math
from types import SimpleNamespace

import pytest
import torch

from simdiff.locomotion import locomotion_losses, period_figures, tracking_metrics
from simdiff.scene import load_scene
from simdiff.sims.mass_spring.builder import QUADRUPED, SHAPE_KEEPING, robot_from_ascii
from simdiff.sims.mass_spring.model import cell_measure


def _components(n: int, pairs: list[tuple[int, int]]) -> list[set[int]]:
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        parent[find(a)] = find(b)
    groups: dict[int, set[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), set()).add(i)
    return list(groups.values())


def test_quadruped_has_a_body_and_four_separate_legs():
    m = robot_from_ascii(QUADRUPED, dim=3, dt=0.003, **SHAPE_KEEPING)
    cell = 0.1
    # 3 x 1 x 3 body cubes (4 * 2 * 4 corners) and 4 leg cubes adding 4 foot corners each.
    assert (m.particle_count, m.actuator_count, m.cells.shape[0]) == (48, 4, 13)
    # Every cube is upright at rest: signed volume cell^3 (six positive tetrahedra).
    volume = cell_measure(m.particle_x[None], m.cells)[0]
    assert torch.allclose(volume, torch.full_like(volume, cell ** 3), rtol=1e-12)
    x = m.particle_x
    lift = float(x[:, 1].min())
    level = torch.round((x[:, 1] - lift) / cell).long()  # 0 feet, 1 hips, 2 back
    pairs = [tuple(p) for p in m.spring_indices.tolist()]
    assert len(_components(m.particle_count, pairs)) == 1  # one connected robot
    # Without the body (levels 1-2), the feet fall into four groups of four, one per leg.
    feet = [(a, b) for a, b in pairs if level[a] == 0 and level[b] == 0]
    legs = [c for c in _components(m.particle_count, feet) if level[next(iter(c))] == 0]
    assert sorted(len(c) for c in legs) == [4, 4, 4, 4]
    # A leg's muscle acts on its own cube only: springs of actuator j touch one leg's feet.
    for j in range(4):
        touched = {i for (a, b), act in zip(pairs, m.spring_actuator.tolist()) if act == j
                   for i in (a, b) if level[i] == 0}
        assert sum(touched <= leg for leg in legs) == 1 and len(touched) == 4
    # Legs stand at the body's four corners (x, z in cells).
    corners = sorted(tuple(torch.round((x[sorted(leg)].mean(0)[[0, 2]] - x[:, [0, 2]].min(0)
                                        .values) / cell * 2).long().tolist()) for leg in legs)
    assert corners == [(1, 1), (1, 5), (5, 1), (5, 5)]  # centres at 0.5 and 2.5 cells


def test_single_picture_art_still_extrudes_along_z():
    m = robot_from_ascii("#\n0", dim=3, depth=2)
    assert m.particle_count == 18 and m.cells.shape[0] == 4
    layered = robot_from_ascii(("#\n0", "#\n0"), dim=3)
    assert layered.particle_count == 18 and layered.spring_count == m.spring_count


def test_layered_art_refuses_bad_input():
    with pytest.raises(ValueError, match="art given as 2 layers needs dim=3; got dim=2"):
        robot_from_ascii(("#", "#"), dim=2)
    with pytest.raises(ValueError, match="depth=2 with layered art"):
        robot_from_ascii(("#", "#"), dim=3, depth=2)
    with pytest.raises(ValueError, match="no cells"):
        robot_from_ascii(("..", " "), dim=3)


def _rotated_trace(x0: torch.Tensor, rate: torch.Tensor, dt: float) -> dict:
    """The rest body ``x0`` [n, 3] turning about +y at ``rate`` [T] rad/s (right-handed: +x
    towards -z, a left turn seen from above)."""
    yaw = torch.cat([torch.zeros(1, dtype=x0.dtype), torch.cumsum(rate * dt, 0)])
    c, s = torch.cos(yaw)[:, None], torch.sin(yaw)[:, None]
    centre = x0.mean(0)
    r = x0 - centre
    x = torch.stack([r[:, 0] * c + r[:, 2] * s, r[:, 1].expand(len(yaw), -1),
                     -r[:, 0] * s + r[:, 2] * c], -1) + centre
    x = x[:, None]  # [T + 1, B = 1, n, 3]
    return {"com": x.mean(2), "top": x[..., 1].amax(2), "x": x}


def test_heading_loss_sign_for_a_constructed_left_turn():
    scene = load_scene("quad_goals_3d", steps=40, period=20, window=10)
    space = scene.goals
    x0 = scene.model.particle_x
    rate = torch.full((40,), space.turn_max, dtype=torch.float64)  # turning left throughout
    trace = _rotated_trace(x0, rate, space.dt)
    # The front (+x) of the body moves towards -z: a left turn.
    front = x0[:, 0] > x0[:, 0].mean()
    assert float(trace["x"][-1, 0, front, 2].mean()) < float(x0[front, 2].mean())
    left = space.schedule([("turn", space.turn_max)] * 2)
    right = space.schedule([("turn", -space.turn_max)] * 2)
    on = locomotion_losses(SimpleNamespace(goal_schedule=left, trace=trace))["heading"]
    off = locomotion_losses(SimpleNamespace(goal_schedule=right, trace=trace))["heading"]
    assert float(on) < 1e-20
    change = 2 * space.turn_max * space.window * space.dt  # commanded right, turned left
    assert float(off) == pytest.approx(change ** 2, rel=1e-9)
    error = tracking_metrics(SimpleNamespace(goal_schedule=right, trace=trace))["heading_error"]
    assert float(error) == pytest.approx(change, rel=1e-9)
    # What evaluate reports per period: the measured yaw rate, positive for this left turn.
    periods = period_figures(SimpleNamespace(goal_schedule=right, trace=trace))
    assert [p["task"] for p in periods] == ["turn", "turn"]
    for p in periods:
        assert p["yaw_rate"] == pytest.approx(space.turn_max, rel=1e-9)
        assert p["goal"][2] == -space.turn_max
        assert max(abs(v) for v in p["velocity"]) < 1e-12  # turning in place


def test_period_figures_measure_a_turn_past_half_a_revolution():
    scene = load_scene("quad_goals_3d", steps=400, period=200, window=20, turn_max=20.0)
    space = scene.goals
    rate = torch.full((400,), -20.0, dtype=torch.float64)  # 2.4 rad per period: wraps past pi
    trace = _rotated_trace(scene.model.particle_x, rate, space.dt)
    periods = period_figures(SimpleNamespace(goal_schedule=space.schedule([("turn", -20.0)] * 2),
                                             trace=trace))
    assert [round(p["yaw_rate"], 9) for p in periods] == [-20.0, -20.0]


def test_quad_scene_refuses_bad_goals():
    space = load_scene("quad_goals_3d").goals
    with pytest.raises(ValueError, match=r"commanded turn=0.5 rad/s is outside \[-0.2, 0.2\]"):
        space.goal("turn", 0.5)
    with pytest.raises(ValueError, match=r"commanded velocity_z=-0.1 m/s is outside"):
        space.goal("walk", 0.0, -0.1)
    with pytest.raises(ValueError, match=r"task='jump' is not in this goal space"):
        space.goal("jump", 0.05)
    with pytest.raises(ValueError, match=r"tasks=\('crawl',\); allowed \(dim 3\)"):
        load_scene("quad_goals_3d", tasks=("crawl",))
    assert math.isclose(space.dt, 0.003) and space.dim == 3


def test_goal_controller_output_gain_sets_the_first_actions_and_is_checked():
    from simdiff.backend import resolve_backend
    from simdiff.scene import load_controller, make_simulator

    scene = load_scene("quad_goals_3d", steps=4, period=4, window=2)
    sim = make_simulator(scene, resolve_backend("warp", "cpu", "float64"), batch_size=1)
    state, goal = sim.initial_state(), torch.zeros(1, 3)
    actions = []
    for gain in (0.1, 0.5):
        torch.manual_seed(0)
        controller = load_controller("goal_mlp", sim, scene, output_gain=gain).double()
        actions.append(controller(0, state, goal.double()))
    # The output layer's pre-activation scales with the gain (sin is near-linear there).
    assert torch.allclose(torch.asin(actions[1]), 5 * torch.asin(actions[0]), rtol=1e-9)
    with pytest.raises(ValueError, match=r"output_gain=0 must lie in \(0, 1\]"):
        load_controller("goal_mlp", sim, scene, output_gain=0)
