"""Mass-spring task metrics per world: distance travelled and inverted cells.

* The builder's cells are upright squares / cubes: their signed measure is cell^dim exactly.
* A constructed trajectory with a mirrored (inverted) and a collapsed cell gives the exact
  expected fraction of inverted cell-steps per world, in 2D and 3D.
* An upright walker rolled out in two worlds has no inverted cells; the metrics report the
  distance and the inverted-cell fraction per world and as mean / min / max.
"""

import itertools

import pytest
import torch
from conftest import sine_actions, tiny_robot, tiny_robot_3d

from simdiff.backend import resolve_backend
from simdiff.rollout import rollout
from simdiff.sims.mass_spring import MassSpring, cell_measure
from simdiff.sims.mass_spring.tasks import (
    distance_travelled,
    inverted_cells,
    locomotion_loss,
    locomotion_metrics,
)


@pytest.mark.parametrize("dim", [2, 3])
def test_builder_cells_are_upright(dim):
    model = tiny_robot(cell=0.1) if dim == 2 else tiny_robot_3d(cell=0.1)
    count = 4 if dim == 2 else 2  # "##/01" and "#/0"
    assert model.cells.shape == (count, 2**dim)
    measure = cell_measure(model.particle_x[None], model.cells)
    torch.testing.assert_close(measure, torch.full((1, count), 0.1**dim, dtype=torch.float64))


@pytest.mark.parametrize("dim", [2, 3])
def test_inverted_cell_fraction_of_a_constructed_trajectory(dim):
    """One unit cell, 4 steps, 2 worlds: world 0 stays upright; world 1 is mirrored along x
    at step 1 (negative measure) and flattened at step 3 (zero measure): 2 of 4 cell-steps."""
    corners = torch.tensor(list(itertools.product((0.0, 1.0), repeat=dim)), dtype=torch.float64)
    cells = torch.arange(2**dim)[None]
    mirrored = corners.clone()
    mirrored[:, 0] = 1.0 - mirrored[:, 0]
    flat = corners.clone()
    flat[:, 1] = 0.0
    world0 = torch.stack([corners] * 4)
    world1 = torch.stack([corners, mirrored, corners, flat])
    positions = torch.stack([world0, world1], 1)  # [T=4, B=2, n, dim]
    measure = cell_measure(positions[:, 1], cells)[:, 0]
    assert measure.tolist() == [1.0, -1.0, 1.0, 0.0]
    assert inverted_cells(positions, cells).tolist() == [0.0, 0.5]


def test_an_upright_walker_reports_no_inverted_cells_per_world():
    backend = resolve_backend("warp", precision="float64")
    sim = MassSpring(tiny_robot(friction=0.8), backend, batch_size=2)
    actions = sine_actions(200, sim.action_dim)[:, None].repeat(1, 2, 1)
    actions[:, 1] *= 0.5  # the worlds walk differently
    result = rollout(sim, sim.initial_state(), lambda t, s: actions[t], 200, record_every=5)
    metrics = locomotion_metrics(result, cells=sim.model.cells)
    distance = distance_travelled(result)
    assert distance.shape == (2,) and float((distance[0] - distance[1]).abs()) > 1e-4
    assert metrics["distance"] == pytest.approx(float(distance.mean()), rel=1e-12)
    assert metrics["distance_per_world"] == pytest.approx(distance.tolist(), rel=1e-12)
    assert metrics["distance_min"] == pytest.approx(float(distance.min()), rel=1e-12)
    assert metrics["inverted_cells"] == 0.0 and metrics["inverted_cells_per_world"] == [0.0, 0.0]
    assert float(locomotion_loss(result)) == pytest.approx(-float(distance.mean()), rel=1e-12)
    # The cells must have been exercised: the muscles change every cell's area.
    areas = cell_measure(torch.stack([f.particle_x for f in result.recorded()]).flatten(0, 1),
                         sim.model.cells)
    assert float(areas.max() - areas.min()) > 1e-4


def test_inverted_cells_count_every_step_not_only_the_recorded_ones():
    """A free cell (no gravity, springs and damping negligible) whose corners move so that its
    signed area, ``2 c^2 - (a + b) c t + a b t^2`` for diagonals of half-length c and corner
    speeds a, b, is negative for t in (0.305, 0.820) s of 1.2 s only: the first and last states
    are upright, yet the rollout's metric (no frames recorded) reports the 43% of the states in
    between, equal to the count over every step's frame."""
    from simdiff.sims.mass_spring.builder import robot_from_ascii

    model = robot_from_ascii("#", stiffness=1e-9, damping=0.0, drag=0.0, gravity=0.0,
                             lift=1.0, dt=0.004)
    sim = MassSpring(model, resolve_backend("warp", precision="float64"), batch_size=2)
    corner = model.cells[0]  # particles at corners (0,0), (0,1), (1,0), (1,1)
    v = torch.zeros(2, 4, 2, dtype=torch.float64)
    v[0, corner[3]] = torch.tensor([0.0, -0.1])  # world 0: a = 0.1 m/s, b = 0.8 m/s
    v[0, corner[1]] = torch.tensor([0.8, 0.0])
    state = sim.state_from(particle_x=sim.initial_state().particle_x, particle_v=v)
    steps = 300
    result = rollout(sim, state, None, steps)
    assert result.frames == {}
    ends = torch.stack([result.initial.particle_x, result.final.particle_x])
    assert inverted_cells(ends, model.cells).tolist() == [0.0, 0.0]  # first and last: upright
    metrics = locomotion_metrics(result)
    expected = (0.8203 - 0.3047) / 0.004 / (steps + 1)
    assert metrics["inverted_cells_per_world"][0] == pytest.approx(expected, abs=2 / steps)
    assert metrics["inverted_cells_per_world"][1] == 0.0  # world 1 does not move
    recorded = rollout(sim, state, None, steps, record_every=1)
    frames = torch.stack([f.particle_x for f in recorded.recorded()])
    assert metrics["inverted_cells_per_world"] == inverted_cells(frames, model.cells).tolist()
    stepped = rollout(sim, state, None, steps, capture=False)  # the step-by-step loop counts alike
    assert locomotion_metrics(stepped)["inverted_cells_per_world"] == \
        metrics["inverted_cells_per_world"]
