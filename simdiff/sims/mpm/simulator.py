"""The MLS-MPM simulator: one control step of ``B`` worlds is ``model.substeps`` substeps in
one torch op, each substep three kernel launches that serve every world.

Memory: backward needs only each control step's packed particle input ``[B, n, 2d + 2d^2]``
(x, v, C, F; 155 kB for the 3,220 particles of ``benchmarks/mpm.py``'s crawler in 2D, float32)
and the step's small action and tool inputs; the substeps' grids and particle states are
recomputed from it in backward (a Taichi tape over a grid reused across substeps gives NaN
gradients) and freed substep by substep. The rule for long horizons
(:meth:`MPM.default_checkpoint_every`, applied by :func:`simdiff.rollout.rollout` when
``checkpoint_every`` is not given): while the saved particle states of the horizon stay within
:data:`CHECKPOINT_BYTES` (64 MiB: 434 control steps of that crawler), every control step's
state is kept; beyond it, segments of ``ceil(sqrt(steps))`` control steps are checkpointed, so
about ``2 sqrt(steps)`` particle states are held (the segment starts, then one segment
recomputed in backward) at the cost of one more forward pass. Measured with
:func:`simdiff.bench.saved_bytes` (``benchmarks/mpm.py`` part (c), Warp): 1,000 substeps save
7.5 MB for backward, 4,000 save 29.6 MB, 10,000 (segments of 23 control steps) 3.3 MB; the
process peaks at 437, 486 and 524 MB, of which 388 MB is importing torch and Warp (before
the pooled buffers below).

Peak memory of the DiffTaichi ``diffmpm.py`` comparison (``simdiff bench mpm --difftaichi``,
1,020 substeps, one training iteration; DiffTaichi 685 MB): Taichi 359 MB (0.52x), of which
322 MB is importing and initializing torch and Taichi; Warp 419 MB (0.61x), 387 MB of it
the import. What the run adds above its import (37 and 32 MB, from 123 on both before) is
the kernels' compiled code (~15 MB on Taichi), the 7.65 MB saved for backward and one
step's recomputed buffers (11 MB), which come from the step's buffer pool
(:mod:`simdiff.bridge`) so that the heap does not fragment around them.

Batching (``benchmarks/batch_mpm.py``, mpm_crawler on 2 shared cores): at B = 8 a batched
rollout runs 2.5-3.2x the world-steps per second of single-world rollouts forward and about
2x forward and backward, on both backends; the step's kernels serve every world per launch.
"""

from __future__ import annotations

import math

import torch

from simdiff.backend import Backend, BackendName
from simdiff.bridge import KernelStep, apply_step
from simdiff.sims.base import Simulator
from simdiff.sims.mpm.model import Material, Model, drucker_prager_alpha
from simdiff.sims.mpm.state import Params, State

__all__ = ["CHECKPOINT_BYTES", "MPM", "Params", "State"]

CHECKPOINT_BYTES = 64 * 2**20
"""Saved particle states [bytes] above which a rollout checkpoints by default."""

_PER_PARTICLE = ("particle_E", "particle_nu", "particle_yield", "particle_friction_angle",
                 "particle_active_stress", "particle_volume", "particle_density")
"""Model quantities :meth:`MPM.params` accepts per world (``[B, n]``) or shared (``[n]``)."""


class MPM(Simulator):
    """Differentiable MLS-MPM of ``batch_size`` worlds on Taichi or Warp, 2D and 3D. Gradients
    in 3D need Warp: on Taichi, 3D backward raises ``NotImplementedError``.

    The action of a world is the muscles' signals (``model.actuator_count`` entries) followed,
    when the model has a tool, by the tool's velocity (``dim`` entries), held for the control
    step; ``action`` is ``[B, action_dim]``. Worlds share the model's sizes (particles, grid,
    time step, boundaries) and may differ in their states and in every per-particle parameter
    (:meth:`params`).

    Args:
        model: The validated model.
        backend: Where kernels run (Taichi or Warp; the same states and gradients).
        batch_size: Number of worlds B.
    """

    name = "mpm"
    checkpoint_bytes = CHECKPOINT_BYTES
    """Saved particle states [bytes] above which :meth:`default_checkpoint_every` checkpoints."""
    initial_fields = ("particle_x", "particle_v")
    Params = Params

    def __init__(self, model: Model, backend: Backend, *, batch_size: int = 1) -> None:
        super().__init__(model, backend, batch_size=batch_size)
        backend.ensure_initialized()
        self._kernels = self._kernel_module()
        self._launch: KernelStep = self._kernels.build_step(backend, model, model.substeps,
                                                            self.batch_size)

    def _kernel_module(self):
        if self.backend.name is BackendName.WARP:
            from simdiff.sims.mpm import warp

            return warp
        from simdiff.sims.mpm import taichi

        return taichi

    @property
    def action_dim(self) -> int:
        return self.model.actuator_count + (self.model.dim if self.model.tool is not None else 0)

    @property
    def observation_dim(self) -> int:
        d = self.model.dim
        return d + 2 * d * min(8, self.model.particle_count)

    def _tensor(self, t) -> torch.Tensor:
        return torch.as_tensor(t).to(device=self.backend.torch_device,
                                     dtype=self.backend.torch_dtype)

    def _worlds(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` repeated for every world: ``[B, *t.shape]`` (a copy, not a view)."""
        return t.expand(self.batch_size, *t.shape).clone()

    def default_checkpoint_every(self, steps: int) -> int | None:
        """Control steps per checkpointed segment for a rollout of ``steps`` steps by
        default: ``None`` (keep every step's particle state) while those states take at most
        :attr:`checkpoint_bytes` (:data:`CHECKPOINT_BYTES`), else ``ceil(sqrt(steps))``."""
        m = self.model
        per_step = (self.batch_size * m.particle_count * (2 * m.dim + 2 * m.dim * m.dim)
                    * self.backend.torch_dtype.itemsize)
        if steps * per_step <= self.checkpoint_bytes:
            return None
        return math.isqrt(steps - 1) + 1

    def initial_state(self) -> State:
        return self.state_from(particle_x=self._worlds(self._tensor(self.model.particle_x)),
                               particle_v=self._worlds(self._tensor(self.model.particle_v)))

    def _check_field(self, name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} has shape {list(t.shape)}; expected {list(shape)} "
                             f"([batch_size, ...])")

    def state_from(self, **fields: torch.Tensor) -> State:
        """A state from ``particle_x`` and ``particle_v`` (``[B, n, dim]``), and optionally
        ``tool_x`` (``[B, dim]``; default the model's tool position); ``C = 0``, ``F = I``."""
        m, b = self.model, self.batch_size
        n, dim = m.particle_count, m.dim
        x, v = fields["particle_x"], fields["particle_v"]
        self._check_field("particle_x", x, (b, n, dim))
        self._check_field("particle_v", v, (b, n, dim))
        eye = torch.eye(dim, dtype=x.dtype, device=x.device).expand(b, n, dim, dim)
        tool = fields.get("tool_x")
        if tool is None:
            tool = self._worlds(self._tensor(m.tool.position if m.tool is not None
                                             else (0.0,) * dim))
        self._check_field("tool_x", tool, (b, dim))
        return State(x, v, torch.zeros_like(eye), eye.clone(), tool)

    def params(self, **per_particle: torch.Tensor) -> Params:
        """The packed per-particle parameters the kernels read (``state.PARAM_COLUMNS``, then
        the fiber), differentiable in the model's tensors.

        Args:
            **per_particle: Replacements of model quantities (``particle_E``, ``particle_nu``,
                ``particle_yield``, ``particle_friction_angle``, ``particle_active_stress``,
                ``particle_volume``, ``particle_density``), each shared ``[n]`` or per world
                ``[B, n]``. With any per-world value the result is ``[B, n, 8 + dim]``, else
                ``[n, 8 + dim]`` shared by every world.
        """
        m, b, n = self.model, self.batch_size, self.model.particle_count
        unknown = sorted(set(per_particle) - set(_PER_PARTICLE))
        if unknown:
            raise ValueError(f"params() got {unknown}; allowed: {list(_PER_PARTICLE)}")
        q = {}
        for name in _PER_PARTICLE:
            t = self._tensor(per_particle.get(name, getattr(m, name)))
            if tuple(t.shape) not in ((n,), (b, n)):
                raise ValueError(f"{name} has shape {list(t.shape)}; expected [{n}] (shared) "
                                 f"or [{b}, {n}] (per world)")
            q[name] = t
        plastic = self._tensor(m.particle_material == Material.PLASTIC).bool()
        sand = self._tensor(m.particle_material == Material.SAND).bool()
        # The yield column holds the von Mises yield stress of plastic particles and the
        # Drucker-Prager coefficient alpha (from the friction angle) of sand particles; other
        # particles get a harmless angle so that the column stays finite.
        phi = q["particle_friction_angle"]
        friction = torch.where(sand, phi, torch.full_like(phi, 30.0))
        strength = torch.where(sand, drucker_prager_alpha(friction, m.dim),
                               torch.zeros_like(friction))
        columns = [
            q["particle_volume"] * q["particle_density"],
            q["particle_volume"],
            self._tensor(m.particle_material),
            self._tensor(m.particle_actuator),
            q["particle_E"],
            q["particle_nu"],
            torch.where(plastic, q["particle_yield"], strength),
            q["particle_active_stress"],
        ]
        columns = torch.broadcast_tensors(*columns)
        fiber = self._tensor(m.particle_fiber)
        fiber = fiber.expand(*columns[0].shape, m.dim)
        return Params(torch.cat([torch.stack(columns, -1), fiber], -1).contiguous())

    def pack(self, state: State) -> torch.Tensor:
        """The kernels' particle layout ``[B, n, 2 d + 2 d^2]`` (x, v, C, F): the tensor a
        step returned, when ``state``'s fields are still the views :meth:`unpack` made of it,
        else a new one.

        Reusing the step's output spares a copy per control step and, more, the memory
        pattern it made: the copy was what backward saved, a block allocated beside the
        output freed a step later; the freed blocks fit no later copy (torch's allocator
        aligns its blocks, see :func:`simdiff.bridge._empty`), so each control step left a
        hole of a particle state in the heap, 7 MB over 51 steps. Gradients are the same:
        the views' gradients (where the controller or the loss reads them) and the next
        step's add into that tensor's.
        """
        packed = self._packed(state)
        if packed is not None:
            return packed
        b, n = state.particle_x.shape[:2]
        return torch.cat([state.particle_x, state.particle_v, state.particle_C.reshape(b, n, -1),
                          state.particle_F.reshape(b, n, -1)], 2)

    def _packed(self, state: State) -> torch.Tensor | None:
        """The tensor whose views ``state``'s particle fields are, laid out as :meth:`pack`
        lays them out (None if they are anything else)."""
        x = state.particle_x
        base = x._base
        d = self.model.dim
        if base is None or base.dim() != 3 or base.shape[:2] != x.shape[:2] \
                or base.shape[2] != 2 * d + 2 * d * d or not base.is_contiguous():
            return None
        b, n, width = base.shape
        start, item = base.data_ptr(), base.element_size()
        for t, offset, shape in ((x, 0, (b, n, d)), (state.particle_v, d, (b, n, d)),
                                 (state.particle_C, 2 * d, (b, n, d, d)),
                                 (state.particle_F, 2 * d + d * d, (b, n, d, d))):
            strides = (n * width, width, 1) if len(shape) == 3 else (n * width, width, d, 1)
            if (t._base is not base or t.data_ptr() != start + offset * item
                    or tuple(t.shape) != shape or t.stride() != strides):
                return None
        return base

    def unpack(self, p: torch.Tensor, tool_x: torch.Tensor) -> State:
        b, n, d = p.shape[0], p.shape[1], self.model.dim
        x, v, C, F = torch.split(p, [d, d, d * d, d * d], 2)
        return State(x, v, C.reshape(b, n, d, d), F.reshape(b, n, d, d), tool_x)

    def _split_action(self, action: torch.Tensor | None, like: torch.Tensor):
        """Muscle signals ``[B, max(actuators, 1)]`` and tool velocities ``[B, dim]``."""
        m = self.model
        action = self.check_action(action, like)
        a = m.actuator_count
        signals = action[:, :a] if a else like.new_zeros(self.batch_size, 1)
        tool_v = action[:, a:a + m.dim] if m.tool is not None else like.new_zeros(
            self.batch_size, m.dim)
        return signals, tool_v

    def _per_world_params(self, params: Params | None) -> torch.Tensor:
        params = (self.params() if params is None else params).per_world(self.batch_size)
        shape = (self.batch_size, self.model.particle_count, 8 + self.model.dim)
        if tuple(params.particle.shape) != shape:
            raise ValueError(f"params.particle has shape {list(params.particle.shape)}; expected "
                             f"{list(shape)} or {list(shape[1:])} (shared)")
        return params.particle

    def _check_state_shape(self, state: State) -> None:
        m = self.model
        self._check_field("state.particle_x", state.particle_x,
                          (self.batch_size, m.particle_count, m.dim))
        self._check_field("state.tool_x", state.tool_x, (self.batch_size, m.dim))

    def step(self, state: State, action: torch.Tensor | None = None,
             params: Params | None = None) -> State:
        """Advance every world one control step (``model.substeps`` substeps)."""
        self._check_state_shape(state)
        particle = self._per_world_params(params)
        signals, tool_v = self._split_action(action, state.particle_x)
        tool = torch.cat([state.tool_x, tool_v], 1)
        wants_grad = torch.is_grad_enabled() and any(
            t.requires_grad for t in (*state.tensors(), particle, signals, tool))
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
        (p,) = apply_step(self._launch, self.pack(state), particle, signals, tool)
        duration = self.model.substeps * self.model.dt
        return self.unpack(p, state.tool_x + duration * tool_v)

    def grid(self, state: State, action: torch.Tensor | None = None,
             params: Params | None = None) -> torch.Tensor:
        """Grid momentum and mass of every world after ``p2g`` of ``state``,
        ``[B] + [G]*dim + [dim + 1]`` (diagnostics; not differentiable)."""
        self._check_state_shape(state)
        with torch.no_grad():
            signals, _ = self._split_action(action, state.particle_x)
            particle = self._per_world_params(params)
            return self._kernels.particle_to_grid(
                self.backend, self.model, self.pack(state).detach().contiguous(),
                particle.detach().contiguous(), signals.detach().contiguous())

    def center_of_mass(self, state: State) -> torch.Tensor:
        """Center of mass of each world [m], ``[B, dim]`` (the model's particle masses)."""
        mass = self._tensor(self.model.particle_mass)
        return (mass[:, None] * state.particle_x).sum(1) / mass.sum()

    def observe(self, state: State) -> torch.Tensor:
        """Per world, the mean velocity and the positions and velocities of 8 groups of
        particles (by order of index) relative to the center of mass: small and independent
        of the particle count; ``[B, observation_dim]``."""
        x, v = state.particle_x, state.particle_v
        com, vcom = x.mean(1, keepdim=True), v.mean(1, keepdim=True)
        groups = min(8, x.shape[1])
        rel_x = torch.stack([c.mean(1) for c in torch.chunk(x - com, groups, dim=1)], 1)
        rel_v = torch.stack([c.mean(1) for c in torch.chunk(v - vcom, groups, dim=1)], 1)
        return torch.cat([vcom[:, 0], 10.0 * rel_x.flatten(1), rel_v.flatten(1)], 1)

    def check_state(self, state: State) -> dict[int, str]:
        """``{world: description}`` of worlds whose particles are not finite, left the
        stencil's reach, move faster than a cell per substep, or have ``det F <= 0``."""
        m = self.model
        x, v, F = (t.detach() for t in (state.particle_x, state.particle_v, state.particle_F))
        # Where the 3-node stencil still fits (walls keep particles far inside it).
        lo, hi = m.dx, (m.grid_size - 2) * m.dx
        speed_limit = m.dx / m.dt  # a particle crossing a cell per substep has blown up
        det = torch.linalg.det(F)
        b = x.shape[0]
        fine = (torch.isfinite(x).reshape(b, -1).all(1) & torch.isfinite(v).reshape(b, -1).all(1)
                & torch.isfinite(F).reshape(b, -1).all(1)
                & ((x >= lo) & (x < hi)).reshape(b, -1).all(1) & (det > 0).all(1)
                & (v.abs().reshape(b, -1).amax(1) < speed_limit))
        if bool(fine.all()):
            return {}
        return {int(w): self._describe(x[w], v[w], F[w], det[w], lo, hi, speed_limit)
                for w in torch.nonzero(~fine)[:, 0]}

    @staticmethod
    def _describe(x, v, F, det, lo, hi, speed_limit) -> str:
        """What is wrong with one world's particles (the first bad quantity found)."""
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
