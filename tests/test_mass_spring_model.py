"""Scene validation: every bad input is refused before any kernel compiles, naming the field."""

import math

import pytest
import torch
from conftest import tiny_robot

from simdiff.sims.base import ValidationError
from simdiff.sims.mass_spring import Ground, Model, stable_time_step
from simdiff.sims.mass_spring.builder import robot_from_ascii


def _fields(model: Model) -> dict:
    names = ["particle_x", "particle_v", "particle_mass", "spring_indices", "spring_stiffness", "spring_rest_length", "spring_damping", "spring_actuator", "spring_actuation"]
    fields = {n: getattr(model, n).clone() for n in names}
    fields.update(dt=model.dt, gravity=model.gravity, ground=model.ground, drag=model.drag)
    return fields


def test_builder_counts_and_actuators():
    m = robot_from_ascii("######\n00..11")
    assert (m.particle_count, m.spring_count, m.actuator_count) == (20, 49, 2)
    m3 = robot_from_ascii("#\n0", dim=3)
    assert m3.dim == 3 and m3.particle_count == 12
    # Every pair of a cube's 8 corners is a spring: 28 per cube, 4 shared by the two cubes.
    assert m3.spring_count == 2 * 28 - 6


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f["particle_mass"].__setitem__(3, 0.0), r"particle_mass\[3\]=0 must be > 0"),
        (lambda f: f["spring_stiffness"].__setitem__(0, -1.0), r"spring_stiffness\[0\]=-1 must be > 0"),
        (lambda f: f["spring_rest_length"].__setitem__(1, 0.0), r"spring_rest_length\[1\]=0"),
        (lambda f: f["spring_damping"].__setitem__(2, -0.5), r"spring_damping\[2\]=-0.5 must be >= 0"),
        (lambda f: f["particle_x"].__setitem__((0, 1), -0.2), "particle 0 starts at y=-0.2, below the ground"),
        (lambda f: f.update(dt=0.05), "dt=0.05 exceeds the spring stability limit"),
        (lambda f: f.update(dt=0.0), "dt=0.0 must be a positive"),
        (lambda f: f["spring_indices"].__setitem__((0, 1), 99), r"spring_indices must lie in \[0, 8\]"),
        (lambda f: f["particle_v"].__setitem__((0, 0), math.nan), "particle_v holds NaN"),
        (lambda f: f.update(ground=Ground(0.0, -1.0)), "ground.friction=-1.0 must be >= 0"),
        (lambda f: f["spring_actuation"].__setitem__(0, 1.5), r"spring_actuation must lie in \(-1, 1\)"),
    ],
)
def test_bad_model_is_refused(change, message):
    fields = _fields(tiny_robot())
    change(fields)
    with pytest.raises(ValidationError, match=message):
        Model(**fields)


def test_stable_time_step_matches_a_single_spring():
    """Two unit masses on one spring: omega^2 = 2k/m, so dt_max = 2/sqrt(2k)."""
    x = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    m = Model(x, torch.zeros_like(x), torch.ones(2, dtype=torch.float64),
              torch.tensor([[0, 1]]), torch.tensor([50.0], dtype=torch.float64),
              torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
              torch.tensor([-1]), torch.zeros(1, dtype=torch.float64), dt=0.01)
    assert stable_time_step(m) == pytest.approx(2 / math.sqrt(100.0))


def test_builder_rejects_bad_art():
    with pytest.raises(ValueError, match="allowed: '#', digits"):
        robot_from_ascii("#x#")
    with pytest.raises(ValueError, match="no cells"):
        robot_from_ascii("...")
