"""Inverse problem: recover a robot's spring stiffness from its observed fall and bounce.

A scene file for the "An inverse problem" tutorial: ``simdiff train
docs/examples/stiffness_fit.py``. The truth is simulated once, when the scene is built; the
design is one number, the log of the stiffness scale, that the trainer fits.
"""

import dataclasses
import math

import torch
from torch import nn

from simdiff.backend import resolve_backend
from simdiff.rollout import rollout
from simdiff.scene import Scene
from simdiff.sims.mass_spring import MassSpring
from simdiff.sims.mass_spring.builder import robot_from_ascii

ART = """
###
#.#
"""
HIDDEN = 1.6  # the true stiffness is HIDDEN times the model's


class StiffnessScale(nn.Module):
    """The design: ``scale = exp(log_scale)``, positive by construction."""

    def __init__(self, start: float) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(start), dtype=torch.float64))

    def params(self, sim):
        """The simulator's params with every spring's stiffness (column 0) scaled."""
        base = sim.params()
        factor = torch.ones_like(base.spring_params)
        factor[:, 0] = self.log_scale.exp()
        return dataclasses.replace(base, spring_params=base.spring_params * factor)


def observe(sim, params, snapshots: int, every: int):
    """Positions every ``every`` steps, ``[snapshots, B, particles, 2]``, and the rollout."""
    state, seen, result = sim.initial_state(), [], None
    for _ in range(snapshots):
        result = rollout(sim, state, None, every, params=params)
        state = result.final
        seen.append(state.particle_x)
    return torch.stack(seen), result


def scene(*, snapshots: int = 8, every: int = 10, start: float = 1.0) -> Scene:
    model = robot_from_ascii(ART, lift=0.15)     # dropped from 15 cm: it lands and bounces
    truth = MassSpring(model, resolve_backend("warp", precision="float64"))
    with torch.no_grad():
        observed, _ = observe(truth, StiffnessScale(HIDDEN).params(truth), snapshots, every)

    def objective(sim, design, record_every=0):
        predicted, result = observe(sim, design.params(sim), snapshots, every)
        loss = ((predicted - observed.to(predicted)) ** 2).sum(-1).mean()
        error = abs(design.log_scale.exp().item() / HIDDEN - 1)
        return loss, result, {"stiffness_error": error}

    return Scene(
        name="stiffness_fit",
        simulator="mass_spring",
        model=model,
        steps=snapshots * every,
        loss=lambda result: result.final.particle_x.new_zeros(()),  # the objective decides
        description=f"recover a stiffness {HIDDEN}x the model's from {snapshots} snapshots",
        train={"precision": "float64", "lr": 0.1, "iters": 30},
        design=lambda sim: StiffnessScale(start),
        objective=objective,
    )
