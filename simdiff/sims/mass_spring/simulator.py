"""The mass-spring simulator of ``B`` worlds: builds the resident data once per model and steps
every world in one launch per kernel stage, through the torch bridge, on the chosen backend."""

from __future__ import annotations

import math

import torch

from simdiff.backend import Backend, BackendName
from simdiff.bridge import KernelStep, SegmentSpec, apply_step
from simdiff.sims.base import Simulator
from simdiff.sims.mass_spring.model import Model, cell_measure
from simdiff.sims.mass_spring.state import Params, State

__all__ = ["MassSpring", "Params", "State"]

# Sticky ground: a friction coefficient large enough to stop any tangential motion, finite so
# that 0 * friction stays 0 in the kernels.
_STICKY = 1e20


class MassSpring(Simulator):
    """Differentiable mass-spring simulator (2D or 3D) of ``batch_size`` worlds on Taichi or
    Warp.

    The worlds share the model's springs (which particles they join, which actuator drives
    them) and its gravity, ground, drag and time step; each world has its own state, action
    and, optionally, its own :class:`Params` (spring stiffness, rest length, damping,
    actuation amplitude, inverse masses).

    Args:
        model: The validated model.
        backend: Where kernels run; states and parameters use its device and precision.
        batch_size: Number of worlds B.
        blowup_speed: A particle faster than this [m/s] counts as a blow-up of its world.
    """

    name = "mass_spring"
    initial_fields = ("particle_x", "particle_v")
    Params = Params

    def __init__(self, model: Model, backend: Backend, *, batch_size: int = 1,
                 blowup_speed: float = 1e4) -> None:
        super().__init__(model, backend, batch_size=batch_size)
        self.blowup_speed = blowup_speed
        b, n, s = self.batch_size, model.particle_count, model.spring_count
        self._shapes = {"state": (b, n, model.dim), "spring_params": (b, s, 4),
                        "particle_inv_mass": (b, n)}
        self._launch = self._build_launch()
        self._segment_spec: SegmentSpec | None = None

    @property
    def action_dim(self) -> int:
        return self.model.actuator_count

    @property
    def observation_dim(self) -> int:
        return (2 * self.model.particle_count + 1) * self.model.dim

    def _tensor(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(device=self.backend.torch_device, dtype=self.backend.torch_dtype)

    def _worlds(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` repeated for every world along a new leading axis (a copy per world)."""
        return t.unsqueeze(0).repeat(self.batch_size, *([1] * t.dim()))

    def initial_state(self) -> State:
        """The model's initial state in every world, ``[B, particle_count, dim]``."""
        return State(self._worlds(self._tensor(self.model.particle_x)),
                     self._worlds(self._tensor(self.model.particle_v)))

    def state_from(self, **fields: torch.Tensor) -> State:
        return State(fields["particle_x"], fields["particle_v"])

    def params(self) -> Params:
        """The model's spring parameters and inverse masses, shared by every world (and
        differentiable in the model's tensors)."""
        m = self.model
        amp = m.spring_actuation * (m.spring_actuator >= 0).to(m.spring_actuation.dtype)
        springs = torch.stack([m.spring_stiffness, m.spring_rest_length, m.spring_damping, amp], 1)
        return Params(spring_params=self._tensor(springs),
                      particle_inv_mass=self._tensor(1.0 / m.particle_mass))

    def _build_launch(self) -> KernelStep:
        model, backend = self.model, self.backend
        backend.ensure_initialized()
        dev = backend.torch_device
        resident = {
            "particle_count": model.particle_count,
            "spring_indices": model.spring_indices.detach().to(dev, torch.int32).contiguous(),
            "spring_actuator": model.spring_actuator.detach().clamp(min=0).to(dev, torch.int32),
        }
        self._resident = resident  # the kernels' views of these tensors live as long as this
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
        return build_step(backend, model.dim, self.batch_size, resident, scalars)

    def segment_spec(self) -> SegmentSpec | None:
        """How steps chain into a captured segment (:mod:`simdiff.bridge`); Warp only.

        Carried: ``particle_x``, ``particle_v`` (trajectories ``[K + 1, B, n, dim]``); per
        step: the action ``[K, B, action_dim]``; shared by the segment's steps: the
        :class:`Params` fields by name, each given per world (``params.per_world(B)``).
        """
        if self.backend.name is not BackendName.WARP:
            return None
        if self._segment_spec is None:
            self._segment_spec = SegmentSpec(self._launch, (("x", "x_out"), ("v", "v_out")),
                                             ("particle_x", "particle_v"), ("action",),
                                             ("spring_params", "particle_inv_mass"))
        return self._segment_spec

    def world_params(self, params: Params | None) -> Params:
        """``params`` (None: :meth:`params`) per world and validated: every field
        ``[B, ...]`` of the shape the kernels read, or a ValueError naming the field."""
        p = (self.params() if params is None else params).per_world(self.batch_size)
        for name in ("spring_params", "particle_inv_mass"):
            shape = tuple(getattr(p, name).shape)
            if shape != self._shapes[name]:
                raise ValueError(f"params.{name} has shape {list(shape)}; expected "
                                 f"{list(self._shapes[name][1:])} (shared) or "
                                 f"{list(self._shapes[name])} (per world)")
        return p

    def check_shape(self, state: State) -> None:
        """A ValueError naming the field unless both are ``[B, particle_count, dim]``."""
        for name, t in (("particle_x", state.particle_x), ("particle_v", state.particle_v)):
            if tuple(t.shape) != self._shapes["state"]:
                raise ValueError(f"state.{name} has shape {list(t.shape)}; expected "
                                 f"{list(self._shapes['state'])} ([B, particle_count, dim])")

    def step(self, state: State, action: torch.Tensor | None = None,
             params: Params | None = None) -> State:
        """Advance every world one step; ``action`` is ``[B, action_dim]`` (None: zeros)."""
        self.check_shape(state)
        x, v = state.particle_x, state.particle_v
        action = self.check_action(action, x)
        p = self.world_params(params)
        x, v = apply_step(self._launch, x, v, action, p.spring_params, p.particle_inv_mass)
        return State(x, v)

    def observe(self, state: State) -> torch.Tensor:
        """Per world: velocities and positions relative to its center of mass, and the
        center's velocity, ``[B, observation_dim]``.

        Computed as one matrix product with a fixed centering operator (fewer torch ops, so
        less autograd overhead per step for closed-loop controllers).
        """
        xv = torch.cat([state.particle_v, state.particle_x], 2)  # [B, n, 2 dim]
        op = self._observation_operator(xv)
        return (op @ xv).flatten(1)[:, : -self.model.dim]

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

    def step_figures(self, state: State) -> dict[str, torch.Tensor]:
        """``inverted_cells``: per world, the fraction of the model's cells whose signed area
        (2D) or volume (3D) is not positive in ``state``, ``[B]`` (none without cells)."""
        cells = getattr(self.model, "cells", None)
        if cells is None or not len(cells):
            return {}
        x = state.particle_x.detach()
        return {"inverted_cells": (cell_measure(x, cells.to(x.device)) <= 0).to(x.dtype)
                .mean(-1)}

    def check_state(self, state: State) -> dict[int, str]:
        """``{world: "particle_v of particle 3 is [...] (NaN)"}`` for every world holding a
        non-finite position or velocity, a position beyond 1e6 m or a speed beyond
        ``blowup_speed``; ``{}`` when every world is healthy."""
        limits = (("particle_x", state.particle_x, 1e6),
                  ("particle_v", state.particle_v, self.blowup_speed))
        inf = float("inf")
        # Fast path: one reduction per quantity over every world; NaN fails the comparison.
        if all(float(torch.linalg.vector_norm(t.detach(), inf)) < lim for _, t, lim in limits):
            return {}
        failures: dict[int, str] = {}
        for name, t, limit in limits:
            t = t.detach()
            bad = ~(t.abs() < limit).all(-1)  # [B, n]
            for b in torch.nonzero(bad.any(1)).flatten().tolist():
                if b in failures:
                    continue
                i = int(torch.nonzero(bad[b])[0, 0])
                value = t[b, i].tolist()
                kind = "NaN" if bool(torch.isnan(t[b, i]).any()) else f"beyond {limit:.3g}"
                failures[b] = f"{name} of particle {i} is {value} ({kind})"
        return failures

    def energy(self, state: State, params: Params | None = None) -> torch.Tensor:
        """Per world: kinetic + spring (at rest lengths, no actuation) + gravitational energy
        [J], ``[B]``."""
        p = self.world_params(params)
        mass = 1.0 / p.particle_inv_mass  # [B, n]
        x = state.particle_x
        kinetic = 0.5 * (mass[..., None] * state.particle_v**2).sum((1, 2))
        idx = self.model.spring_indices.to(x.device)
        d = x[:, idx[:, 1]] - x[:, idx[:, 0]]
        stretch = d.norm(dim=2) - p.spring_params[..., 1]
        elastic = 0.5 * (p.spring_params[..., 0] * stretch**2).sum(1)
        potential = -(mass * x[..., 1]).sum(1) * self.model.gravity
        return kinetic + elastic + potential
