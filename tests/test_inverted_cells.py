"""Signed cell areas and volumes, and the inverted-cell fraction of a rollout."""

import itertools

import torch

from simdiff.rollout import Rollout
from simdiff.sims.mass_spring.builder import robot_from_ascii
from simdiff.sims.mass_spring.simulator import State
from simdiff.sims.mass_spring.tasks import inverted_cells, signed_cell_measure


def test_cell_measures_are_the_areas_and_volumes_as_built():
    model = robot_from_ascii("######\n00..11\n", cell=0.1)
    torch.testing.assert_close(signed_cell_measure(model.particle_x, model.cell_indices),
                               torch.full((10,), 0.01, dtype=torch.float64))
    cube = torch.tensor(list(itertools.product((0.0, 1.0), repeat=3)), dtype=torch.float64)
    shear = torch.tensor([[2.0, 0.3, 0.1], [0.0, 1.5, 0.2], [0.1, 0.0, 0.7]], dtype=torch.float64)
    volume = signed_cell_measure(cube @ shear.T, torch.arange(8)[None])
    torch.testing.assert_close(volume, torch.linalg.det(shear)[None])  # affine: exact
    model3 = robot_from_ascii("#####\n0...1\n", dim=3, depth=2, cell=0.1)
    mirrored = model3.particle_x * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert (signed_cell_measure(mirrored, model3.cell_indices) < 0).all()


def test_a_constructed_inverted_cell_is_counted_in_its_world():
    """Two worlds of a one-cell robot over three frames; world 1's cell is mirrored (signed
    area -0.01 m^2) in one frame, so 1 of its 3 cell-steps is inverted and none of world 0's."""
    model = robot_from_ascii("#", cell=0.1)
    x0 = model.particle_x.expand(2, -1, -1).clone()  # [B=2, 4, 2]
    mirrored = x0.clone()
    mirrored[1, :, 0] = 2 * mirrored[1, :, 0].mean() - mirrored[1, :, 0]
    assert float(signed_cell_measure(mirrored[1], model.cell_indices)) < 0
    zero = torch.zeros_like(x0)
    frames = {0: State(x0, zero), 1: State(mirrored, zero), 2: State(x0, zero)}
    result = Rollout(initial=frames[0], final=frames[2], steps=2, frames=frames)
    fraction = inverted_cells(result, model.cell_indices)
    torch.testing.assert_close(fraction, torch.tensor([0.0, 1 / 3], dtype=torch.float64))
