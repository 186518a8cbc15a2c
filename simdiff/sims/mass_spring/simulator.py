"""The mass-spring simulator: builds the resident data once per model and steps through the
torch bridge on the chosen backend."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from simdiff.backend import Backend, BackendName
from simdiff.bridge import KernelStep, apply_step
from simdiff.sims.base import Simulator, State
from simdiff.sims.mass_spring.model import Model

__all__ = ["MassSpring", "State"]

# Sticky ground: a friction coefficient large enough to stop any tangential motion, finite so
# that 0 * friction stays 0 in the kernels.
_STICKY = 1e20


@dataclass
class State(State):
    """Mass-spring state."""

    particle_x: torch.Tensor
    """Particle positions [m], shape [particle_count, dim]."""
    particle_v: torch.Tensor
    """Particle velocities [m/s], shape [particle_count, dim]."""


class MassSpring(Simulator):
    """Differentiable mass-spring simulator (2D or 3D) on Taichi or Warp.

    Args:
        model: The validated model.
        backend: Where kernels run; states and parameters use its device and precision.
        blowup_speed: A particle faster than this [m/s] stops the rollout as a blow-up.
    """

    name = "mass_spring"
    initial_fields = ("particle_x", "particle_v")

    def __init__(self, model: Model, backend: Backend, *, blowup_speed: float = 1e4) -> None:
        super().__init__(model, backend)
        self.blowup_speed = blowup_speed
        self._launch = self._build_launch()

    @property
    def action_dim(self) -> int:
        return self.model.actuator_count

    def _tensor(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(device=self.backend.torch_device, dtype=self.backend.torch_dtype)

    def initial_state(self) -> State:
        return State(self._tensor(self.model.particle_x), self._tensor(self.model.particle_v))

    def state_from(self, **fields: torch.Tensor) -> State:
        return State(fields["particle_x"], fields["particle_v"])

    def _build_launch(self) -> KernelStep:
        model, backend = self.model, self.backend
        backend.ensure_initialized()
        dev = backend.torch_device
        self._resident = {
            "spring_indices": model.spring_indices.detach().to(dev, torch.int32).contiguous(),
            "spring_actuator": model.spring_actuator.detach().clamp(min=0).to(dev, torch.int32),
            "inv_mass": (1.0 / model.particle_mass.detach()).to(dev, backend.torch_dtype),
        }
        ground = model.ground
        friction = ground.friction if ground is not None else 0.0
        scalars = (
            model.dt,
            model.gravity,
            math.exp(-model.drag * model.dt),
            ground.height if ground is not None else 0.0,
            _STICKY if math.isinf(friction) else friction,
            int(ground is not None),
        )
        if backend.name is BackendName.WARP:
            from simdiff.sims.mass_spring.warp import build_step
        else:
            from simdiff.sims.mass_spring.taichi import build_step
        return build_step(backend, model.dim, self._resident, scalars)

    def segment_spec(self):
        """How steps chain into a captured segment (:mod:`simdiff.bridge`); Warp only."""
        if self.backend.name is not BackendName.WARP:
            return None
        if getattr(self, "_segment_spec", None) is None:
            from simdiff.bridge import SegmentSpec

            self._segment_spec = SegmentSpec(self._launch, (("x", "x_out"), ("v", "v_out")),
                                             ("particle_x", "particle_v"), ("action",),
                                             ("spring_params",))
        return self._segment_spec

    def rollout_inputs(self) -> dict[str, torch.Tensor]:
        return {"spring_params": self.spring_params()}

    def spring_params(self) -> torch.Tensor:
        """Stiffness, rest length, damping and effective actuation amplitude, [spring_count, 4]."""
        m = self.model
        amp = m.spring_actuation * (m.spring_actuator >= 0).to(m.spring_actuation.dtype)
        params = torch.stack([m.spring_stiffness, m.spring_rest_length, m.spring_damping, amp], 1)
        return self._tensor(params)

    def step(self, state: State, action: torch.Tensor | None = None, *,
             spring_params: torch.Tensor | None = None) -> State:
        """Advance one step. ``spring_params`` may be passed to reuse one stacked tensor."""
        if action is None:
            action = torch.zeros(max(self.action_dim, 1), dtype=state.particle_x.dtype,
                                 device=state.particle_x.device)
        elif action.shape != (self.action_dim,):
            raise ValueError(f"action has shape {tuple(action.shape)}; expected ({self.action_dim},)")
        elif self.action_dim == 0:
            action = action.new_zeros(1)
        params = self.spring_params() if spring_params is None else spring_params
        x, v = apply_step(self._launch, state.particle_x, state.particle_v,
                          self._tensor(action), params)
        return State(x, v)

    def observe(self, state: State) -> torch.Tensor:
        """Velocities and positions relative to the center of mass, and the center's velocity.

        Computed as one matrix product with a fixed centering operator (fewer torch ops, so
        less autograd overhead per step for closed-loop controllers).
        """
        xv = torch.cat([state.particle_v, state.particle_x], 1)
        op = self._observation_operator(xv)
        return (op @ xv).flatten()[: -self.model.dim]

    def _observation_operator(self, like: torch.Tensor) -> torch.Tensor:
        """``[[I - 11^T/n], [1^T/n]]``: centered rows, then the mean row (of which only the
        velocity half is kept, so the observation does not depend on where the robot is)."""
        op = getattr(self, "_obs_op", None)
        if op is None or op.dtype != like.dtype or op.device != like.device:
            n = self.model.particle_count
            mean = torch.full((1, n), 1.0 / n, dtype=like.dtype, device=like.device)
            op = torch.cat([torch.eye(n, dtype=like.dtype, device=like.device) - mean, mean])
            self._obs_op = op
        return op

    @property
    def observation_dim(self) -> int:
        return (2 * self.model.particle_count + 1) * self.model.dim

    def check_state(self, state: State) -> str | None:
        limits = (("particle_x", state.particle_x, 1e6),
                  ("particle_v", state.particle_v, self.blowup_speed))
        inf = float("inf")
        # Fast path: one reduction per quantity; NaN fails the comparison.
        if all(float(torch.linalg.vector_norm(t.detach(), inf)) < lim for _, t, lim in limits):
            return None
        for name, t, limit in limits:
            bad = ~(t.detach().abs() < limit)
            if bool(bad.any()):
                i = int(torch.nonzero(bad)[0, 0])
                value = t.detach()[i].tolist()
                kind = "NaN" if bool(torch.isnan(t[i]).any()) else f"beyond {limit:.3g}"
                return f"{name} of particle {i} is {value} ({kind})"
        return None

    def energy(self, state: State) -> torch.Tensor:
        """Kinetic + spring (at rest lengths, no actuation) + gravitational energy [J]."""
        m = self.model
        mass = self._tensor(m.particle_mass)
        kinetic = 0.5 * (mass[:, None] * state.particle_v**2).sum()
        idx = m.spring_indices.to(state.particle_x.device)
        d = state.particle_x[idx[:, 1]] - state.particle_x[idx[:, 0]]
        stretch = d.norm(dim=1) - self._tensor(m.spring_rest_length)
        elastic = 0.5 * (self._tensor(m.spring_stiffness) * stretch**2).sum()
        potential = -(mass * state.particle_x[:, 1]).sum() * m.gravity
        return kinetic + elastic + potential
