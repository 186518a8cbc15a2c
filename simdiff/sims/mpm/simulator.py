"""The MLS-MPM simulator: one control step is ``model.substeps`` substeps in one torch op.

Memory: a step saves only its packed particle input; its grids are recomputed in backward.
With ``rollout(..., checkpoint_every=K)`` only every K-th control step's particle state is
kept, so the gradient of a long horizon holds ``steps / K`` particle states plus one segment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simdiff.backend import Backend, BackendName
from simdiff.bridge import KernelStep, apply_step
from simdiff.sims.base import Simulator
from simdiff.sims.base import State as BaseState
from simdiff.sims.mpm.model import Material, Model, drucker_prager_alpha

__all__ = ["MPM", "State"]


@dataclass
class State(BaseState):
    """MPM state: particles and the tool."""

    particle_x: torch.Tensor
    """Positions [m], shape [particle_count, dim]."""
    particle_v: torch.Tensor
    """Velocities [m/s], shape [particle_count, dim]."""
    particle_C: torch.Tensor
    """APIC affine velocity (velocity gradient) [1/s], shape [particle_count, dim, dim]."""
    particle_F: torch.Tensor
    """Deformation gradient (elastic left Cauchy-Green tensor for plastic and sand particles),
    shape [particle_count, dim, dim]."""
    tool_x: torch.Tensor
    """Center of the tool [m], shape [dim] (unused without a tool)."""


class MPM(Simulator):
    """Differentiable MLS-MPM on Taichi or Warp, 2D and 3D. Gradients in 3D need Warp: on
    Taichi, 3D backward raises ``NotImplementedError``.

    The action is the muscles' signals (``model.actuator_count`` entries) followed, when the
    model has a tool, by the tool's velocity (``dim`` entries), held for the control step.

    Args:
        model: The validated model.
        backend: Where kernels run (Taichi or Warp; the same states and gradients).
    """

    name = "mpm"
    initial_fields = ("particle_x", "particle_v")

    def __init__(self, model: Model, backend: Backend) -> None:
        super().__init__(model, backend)
        backend.ensure_initialized()
        self._kernels = self._kernel_module()
        self._launch: KernelStep = self._kernels.build_step(backend, model, model.substeps)

    def _kernel_module(self):
        if self.backend.name is BackendName.WARP:
            from simdiff.sims.mpm import warp

            return warp
        from simdiff.sims.mpm import taichi

        return taichi

    @property
    def action_dim(self) -> int:
        return self.model.actuator_count + (self.model.dim if self.model.tool is not None else 0)

    def _tensor(self, t) -> torch.Tensor:
        return torch.as_tensor(t).to(device=self.backend.torch_device,
                                     dtype=self.backend.torch_dtype)

    def initial_state(self) -> State:
        return self.state_from(particle_x=self._tensor(self.model.particle_x),
                               particle_v=self._tensor(self.model.particle_v))

    def state_from(self, **fields: torch.Tensor) -> State:
        m = self.model
        x = fields["particle_x"]
        n, dim = x.shape
        eye = torch.eye(dim, dtype=x.dtype, device=x.device).expand(n, dim, dim)
        tool = m.tool.position if m.tool is not None else (0.0,) * dim
        return State(x, fields["particle_v"], torch.zeros_like(eye), eye.clone(),
                     self._tensor(fields.get("tool_x", tool)))

    def rollout_inputs(self) -> dict[str, torch.Tensor]:
        return {"particle_params": self.particle_params()}

    def particle_params(self) -> torch.Tensor:
        """The packed per-particle parameters the kernels read, [n, 8 + dim]
        (``taichi.PARAM_COLUMNS``, then the fiber); differentiable in the model's tensors."""
        m = self.model
        plastic = m.particle_material == Material.PLASTIC
        sand = m.particle_material == Material.SAND
        # The yield column holds the von Mises yield stress of plastic particles and the
        # Drucker-Prager coefficient alpha (from the friction angle) of sand particles.
        friction = torch.where(sand, m.particle_friction_angle, torch.full_like(
            m.particle_friction_angle, 30.0))
        strength = torch.where(sand, drucker_prager_alpha(friction, m.dim),
                               torch.zeros_like(m.particle_yield))
        columns = [
            m.particle_mass,
            m.particle_volume,
            m.particle_material.to(m.particle_x.dtype),
            m.particle_actuator.to(m.particle_x.dtype),
            m.particle_E,
            m.particle_nu,
            torch.where(plastic, m.particle_yield, strength),
            m.particle_active_stress,
        ]
        params = torch.cat([torch.stack([self._tensor(c) for c in columns], 1),
                            self._tensor(m.particle_fiber)], 1)
        return params.contiguous()

    def pack(self, state: State) -> torch.Tensor:
        n = state.particle_x.shape[0]
        return torch.cat([state.particle_x, state.particle_v, state.particle_C.reshape(n, -1),
                          state.particle_F.reshape(n, -1)], 1)

    def unpack(self, p: torch.Tensor, tool_x: torch.Tensor) -> State:
        n, d = p.shape[0], self.model.dim
        x, v, C, F = torch.split(p, [d, d, d * d, d * d], 1)
        return State(x, v, C.reshape(n, d, d), F.reshape(n, d, d), tool_x)

    def _split_action(self, action: torch.Tensor | None, like: torch.Tensor):
        m = self.model
        muscles = max(m.actuator_count, 1)
        if action is None:
            return like.new_zeros(muscles), like.new_zeros(m.dim)
        if action.shape != (self.action_dim,):
            raise ValueError(f"action has shape {tuple(action.shape)}; expected ({self.action_dim},)")
        action = action.to(like.dtype)
        signals = action[: m.actuator_count] if m.actuator_count else like.new_zeros(1)
        tool_v = action[m.actuator_count:] if m.tool is not None else like.new_zeros(m.dim)
        return signals, tool_v

    def step(self, state: State, action: torch.Tensor | None = None, *,
             particle_params: torch.Tensor | None = None) -> State:
        """Advance one control step (``model.substeps`` substeps)."""
        params = self.particle_params() if particle_params is None else particle_params
        signals, tool_v = self._split_action(action, state.particle_x)
        tool = torch.cat([state.tool_x, tool_v])
        wants_grad = torch.is_grad_enabled() and any(
            t.requires_grad for t in (*state.tensors(), params, signals, tool))
        if self.model.dim == 3 and self.backend.name is BackendName.TAICHI and wants_grad:
            # Taichi's reverse mode of the 27-node stencil compiled for ~12 minutes here and
            # disagreed with finite differences: refuse rather than return wrong gradients.
            # Warp's adjoint of the same substep matches central differences.
            raise NotImplementedError(
                "MPM gradients in 3D are not available on taichi; use --backend warp "
                "(resolve_backend('warp')), or roll out under torch.no_grad()"
            )
        if self.model.dim == 3 and wants_grad and bool(
                (self.model.particle_material == Material.SAND).any()):
            # Warp's adjoint of the 3D sand law goes through the Jacobi eigenvectors, whose
            # derivative is singular at repeated eigenvalues (sand at rest, b_e ~ I): measured
            # 1e10 times central differences. Refused rather than wrong.
            raise NotImplementedError(
                "MPM sand (Material.SAND) gradients in 3D are not available; roll out under "
                "torch.no_grad() (2D sand has gradients on both backends)"
            )
        (p,) = apply_step(self._launch, self.pack(state), params, signals, tool)
        duration = self.model.substeps * self.model.dt
        return self.unpack(p, state.tool_x + duration * tool_v)

    def grid(self, state: State, action: torch.Tensor | None = None) -> torch.Tensor:
        """Grid momentum and mass after ``p2g`` of ``state``, [G]*dim + [dim + 1]
        (diagnostics; not differentiable)."""
        signals, _ = self._split_action(action, state.particle_x)
        with torch.no_grad():
            return self._kernels.particle_to_grid(self.backend, self.model, self.pack(state).detach(),
                                    self.particle_params().detach(), signals.detach())

    def center_of_mass(self, state: State) -> torch.Tensor:
        mass = self._tensor(self.model.particle_mass)
        return (mass[:, None] * state.particle_x).sum(0) / mass.sum()

    def observe(self, state: State) -> torch.Tensor:
        """Mean velocity and the positions and velocities of 8 groups of particles (by order of
        index) relative to the center of mass: small and independent of the particle count."""
        x, v = state.particle_x, state.particle_v
        com, vcom = x.mean(0), v.mean(0)
        groups = min(8, x.shape[0])
        rel_x = torch.stack([c.mean(0) for c in torch.chunk(x - com, groups)])
        rel_v = torch.stack([c.mean(0) for c in torch.chunk(v - vcom, groups)])
        return torch.cat([vcom, 10.0 * rel_x.flatten(), rel_v.flatten()])

    @property
    def observation_dim(self) -> int:
        d = self.model.dim
        return d + 2 * d * min(8, self.model.particle_count)

    def check_state(self, state: State) -> str | None:
        m = self.model
        x, v, F = (t.detach() for t in (state.particle_x, state.particle_v, state.particle_F))
        # Where the 3-node stencil still fits (walls keep particles far inside it).
        lo, hi = m.dx, (m.grid_size - 2) * m.dx
        speed_limit = m.dx / m.dt  # a particle crossing a cell per substep has blown up
        det = torch.linalg.det(F)
        fine = (torch.isfinite(x).all() and torch.isfinite(v).all() and torch.isfinite(F).all()
                and bool((x >= lo).all()) and bool((x < hi).all()) and bool((det > 0).all())
                and float(v.abs().max()) < speed_limit)
        if fine:
            return None
        for name, t in (("particle_x", x), ("particle_v", v), ("particle_F", F)):
            bad = ~torch.isfinite(t.reshape(t.shape[0], -1)).all(1)
            if bool(bad.any()):
                i = int(torch.nonzero(bad)[0, 0])
                return f"{name} of particle {i} is not finite: {t[i].tolist()}"
        speed = v.abs().max(1).values
        if not float(speed.max()) < speed_limit:
            i = int(speed.argmax())
            return (f"particle_v of particle {i} is {v[i].tolist()}, faster than dx/dt = "
                    f"{speed_limit:.4g} (blow-up; lower dt)")
        outside = ((x < lo) | (x >= hi)).any(1)
        if bool(outside.any()):
            i = int(torch.nonzero(outside)[0, 0])
            return (f"particle_x of particle {i} is {x[i].tolist()}, outside [{lo:.4g}, "
                    f"{hi:.4g}), where the kernel stencil fits (it left the domain)")
        i = int(torch.nonzero(~(det > 0))[0, 0])
        return f"particle_F of particle {i} has det F = {float(det[i]):.4g} <= 0 (inverted)"
