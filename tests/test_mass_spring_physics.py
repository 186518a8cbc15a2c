"""Physical invariants and known results of the mass-spring simulator, on both backends."""

import math

import pytest
import torch
from conftest import sine_actions, tiny_robot

from simdiff.rollout import rollout
from simdiff.sims.base import SimulationError
from simdiff.sims.mass_spring import Ground, MassSpring, Model, State


def _free(model: Model, **changes) -> Model:
    names = ["particle_x", "particle_v", "particle_mass", "spring_indices", "spring_stiffness", "spring_rest_length", "spring_damping", "spring_actuator", "spring_actuation"]
    fields = {n: getattr(model, n).clone() for n in names}
    fields.update(dt=model.dt, gravity=model.gravity, ground=model.ground, drag=model.drag)
    fields.update(changes)
    return Model(**fields)


def test_energy_is_conserved_without_damping_ground_or_gravity(backend64):
    """Symplectic Euler with dt far below the stability limit: relative energy drift < 0.5%."""
    torch.manual_seed(1)
    base = tiny_robot()
    x = base.particle_x + 0.01 * torch.randn_like(base.particle_x)
    model = _free(base, particle_x=x, particle_v=0.3 * torch.randn_like(x), gravity=0.0,
                  ground=None, drag=0.0, dt=2e-5,
                  spring_damping=torch.zeros_like(base.spring_damping))
    sim = MassSpring(model, backend64)
    state = sim.initial_state()
    e0 = float(sim.energy(state)[0])
    energies = []
    for _ in range(10):
        state = rollout(sim, state, None, 300).final
        energies.append(float(sim.energy(state)[0]))
    drift = max(abs(e - e0) for e in energies) / e0
    assert drift < 5e-3
    assert e0 > 0.01  # springs start stretched and particles moving: the test is not trivial


def test_momentum_is_conserved_without_gravity_and_ground(backend64):
    """Springs act in equal and opposite pairs (damping and muscles included)."""
    torch.manual_seed(2)
    base = tiny_robot()
    mass = 0.5 + torch.rand(base.particle_count, dtype=torch.float64)
    model = _free(base, particle_mass=mass, particle_v=torch.randn_like(base.particle_x),
                  gravity=0.0, ground=None, drag=0.0)
    sim = MassSpring(model, backend64)
    actions = sine_actions(300, sim.action_dim)[:, None]
    state = sim.initial_state()
    p0 = (mass[:, None] * state.particle_v[0]).sum(0)
    final = rollout(sim, state, lambda t, s: actions[t], 300).final
    p1 = (mass[:, None] * final.particle_v[0]).sum(0)
    assert torch.allclose(p0, p1, atol=1e-11)
    assert (final.particle_v - state.particle_v).abs().max() > 0.1  # it did move


def test_sliding_block_stops_where_coulomb_friction_says(backend64):
    """A particle sliding on the ground at v0 decelerates at mu g: it stops after v0^2/(2 mu g)."""
    mu, v0, g = 0.5, 2.0, 9.8
    x = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    model = Model(x, torch.tensor([[v0, 0.0]], dtype=torch.float64),
                  torch.ones(1, dtype=torch.float64), torch.zeros(0, 2, dtype=torch.long),
                  *(torch.zeros(0, dtype=torch.float64),) * 3, torch.zeros(0, dtype=torch.long),
                  torch.zeros(0, dtype=torch.float64), dt=1e-3, gravity=-g, ground=Ground(0.0, mu))
    sim = MassSpring(model, backend64)
    final = rollout(sim, sim.initial_state(), None, 1000).final
    expected = v0**2 / (2 * mu * g)
    assert float(final.particle_x[0, 0, 0]) == pytest.approx(expected, rel=5e-3)
    assert float(final.particle_x[0, 0, 1]) == 0.0
    assert float(final.particle_v[0, 0, 0]) == 0.0


def test_nothing_sinks_into_the_ground(backend64):
    model = tiny_robot(friction=0.8)
    sim = MassSpring(model, backend64)
    actions = sine_actions(400, sim.action_dim)[:, None]
    result = rollout(sim, sim.initial_state(), lambda t, s: actions[t], 400, record_every=1)
    lowest = min(float(s.particle_x[..., 1].min()) for s in result.recorded())
    assert lowest >= -1e-12  # exactly on the ground up to round-off
    assert len(result.recorded()) == 401


def test_blow_up_names_the_world_step_and_quantity(backend64):
    model = tiny_robot()
    sim = MassSpring(model, backend64, batch_size=2)
    state = sim.initial_state()
    v = state.particle_v.clone()
    v[1, 5, 0] = math.nan

    def controller(t, s):
        return torch.zeros(2, 2, dtype=torch.float64)

    with pytest.raises(SimulationError,
                       match=r"world 1, step 1 of 10: particle_x of particle \d+ is .*NaN"):
        rollout(sim, State(state.particle_x, v), controller, 10)
    fast = state.particle_v.clone()
    fast[0, 2, 1] = 1e5
    with pytest.raises(SimulationError, match=r"world 0, step 1 of 10: particle_v of particle 2"):
        rollout(sim, State(state.particle_x, fast), None, 10)
