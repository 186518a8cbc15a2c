"""The fluid simulator: one step of advection, sources, buoyancy, solids and projection, for
``B`` independent worlds at once.

Two implementations of the same step, chosen by the backend name: vectorized torch
(:mod:`~simdiff.sims.fluid.grid`, backend ``torch``) and Warp kernels
(:mod:`~simdiff.sims.fluid.warp`, backend ``warp``), differentiated by Warp's adjoints through
:func:`~simdiff.bridge.apply_step`. Both share the pressure solve and its adjoint
(:mod:`~simdiff.sims.fluid.solver`); with Warp, its Laplacian and residual may be Warp kernels
too. There are no Taichi kernels for the fluid, and backend ``taichi`` is refused (see the
package docstring for why).

Worlds: every state field has a leading world axis ``[B, ...]``; :class:`~simdiff.sims.fluid.
state.Params` (obstacle, inflow velocities and concentrations, buoyancy) may be shared or
given per world. Each stage of a step is one vectorized torch operation or one Warp launch
over all worlds (Warp: the world axis folded into the component axis of every launch).
"""

from __future__ import annotations

import torch

from simdiff.backend import Backend, BackendError, BackendName
from simdiff.bridge import apply_step, run_forward
from simdiff.sims.base import Simulator, per_world
from simdiff.sims.fluid.grid import Grid
from simdiff.sims.fluid.model import SIDES, Advection, Model, as_tensor
from simdiff.sims.fluid.solver import PressureSystem, SolveStats, SymmetricSolve, pcg, unconverged
from simdiff.sims.fluid.state import Params, State, params_class

__all__ = ["Fluid"]

BACKENDS = (BackendName.TORCH, BackendName.WARP)
"""The backends the fluid runs on."""


CAPACITANCE_MAX_CELLS = 1024
"""Most cells (per world) whose operator row differs from the solid-free box's for which the
capacitance-corrected spectral solve replaces CG (its set-up costs one spectral solve per such
cell and a dense inverse of their count squared)."""

WARM_START_TOLERANCE = 1e-12
"""Tightest relative tolerance solved from a warm start: the explicit first residual ``b - A x0``
carries round-off of the guess's size, a floor between 1e-13 and 1e-12 of ``|b|`` in float64
(measured on fluid_smoke_to_image), so tighter solves (gradcheck asks 1e-13) start from zero."""


class Fluid(Simulator):
    """Differentiable incompressible flow on a MAC grid (see :mod:`simdiff.sims.fluid`),
    ``batch_size`` worlds at once.

    Args:
        model: The validated model (shared geometry of every world: grid, walls, open sides,
            inflow boxes, paddle size, time step).
        backend: ``torch``: the step in vectorized torch; ``warp``: its local operators are
            Warp kernels. Both use the backend's precision and device. ``taichi`` is refused.
        batch_size: Number of worlds B.
        adjoint: Differentiate the pressure solve by its adjoint (one more solve in backward);
            False differentiates through the unrolled iterations (a reference for tests and
            the plain-PyTorch baseline of the benchmark).
        preconditioner: ``multigrid`` or ``jacobi``.
        solver_kernels: With Warp, also apply the pressure operator inside the solve (``A x``
            and the smoother's residual on every multigrid level) by Warp kernels. Off by
            default: on the CPU these single-threaded kernels are slower than torch's
            vectorized operator (see the package docstring).
        fused_solve: Solve each projection (and its adjoint) by one Warp launch that runs the
            whole multigrid-preconditioned conjugate-gradient solve, one thread per world
            (:class:`~simdiff.sims.fluid.warp.FusedSolve`, on either backend). None (default):
            wherever it applies (CPU tensors, ``adjoint=True``, the multigrid preconditioner,
            a grid that coarsens to at most 64 cells); False: the vectorized-torch solve.
        spectral: Solve the pressure exactly by fast cosine/sine transforms
            (:class:`~simdiff.sims.fluid.spectral.SpectralSolve`) in the steps where the box has
            no solid, paddle or inflow face inside (the operator is the plain Laplacian), with
            ``adjoint=True``; other steps keep the conjugate-gradient solve. None (default):
            wherever it applies on the CPU; True: also on other devices (through the CPU);
            False: never (CG everywhere).
        capacitance: Where the box has solids or inflows that stay the same from one step to
            the next (static obstacles, inflow boxes; not a moving paddle), solve exactly by the
            box's spectral solve corrected by a capacitance matrix on the cells beside them
            (:class:`~simdiff.sims.fluid.spectral.CapacitanceSolve`; set up when an operator
            comes back in the next step, for at most :data:`CAPACITANCE_MAX_CELLS` such cells
            per world) instead of CG. Off by default (CG stays the solve of scenes with solids
            until this is measured on more of them); needs ``spectral``.
        warm_start: Start each step's pressure solve from the previous step's pressure (and
            its adjoint from the next step's adjoint), when the state came from :meth:`step`.
            The solves still reach the tolerance relative to their right-hand side. Solves
            tighter than :data:`WARM_START_TOLERANCE` start cold.
        blowup: A speed beyond this [m/s] fails a world.

    Attributes:
        stats: Conjugate-gradient iterations of every solve since construction.
        tolerance: Relative residual every pressure solve reaches, in every world.
    """

    name = "fluid"
    initial_fields = ("velocity", "dye")
    Params = Params
    backends = BACKENDS
    """The params dataclass (:class:`~simdiff.sims.fluid.state.Params3D` on a 3D grid)."""

    def __init__(
        self,
        model: Model,
        backend: Backend,
        *,
        batch_size: int = 1,
        adjoint: bool = True,
        preconditioner: str = "multigrid",
        solver_kernels: bool = False,
        fused_solve: bool | None = None,
        spectral: bool | None = None,
        capacitance: bool = False,
        warm_start: bool = True,
        blowup: float = 1e6,
    ) -> None:
        if backend.name not in BACKENDS:
            raise BackendError(
                f"backend={backend.name.value!r}: the fluid has no {backend.name.value} kernels; "
                f"use backend='torch' (its step in vectorized torch) or 'warp' (Warp kernels)"
            )
        super().__init__(model, backend, batch_size=batch_size)
        if solver_kernels and backend.name is not BackendName.WARP:
            raise ValueError("solver_kernels=True needs the warp backend")
        if preconditioner not in ("multigrid", "jacobi"):
            raise ValueError(f"preconditioner={preconditioner!r}; allowed: multigrid, jacobi")
        if model.dim == 3:
            self.Params = params_class(3)
        self.adjoint = adjoint
        self.preconditioner = preconditioner
        if fused_solve and not (adjoint and preconditioner == "multigrid"):
            raise ValueError("fused_solve=True needs adjoint=True and preconditioner='multigrid'")
        self.fused_solve = (
            backend.torch_device.type == "cpu" and adjoint and preconditioner == "multigrid"
            if fused_solve is None
            else fused_solve
        )
        if spectral and not adjoint:
            raise ValueError("spectral=True needs adjoint=True")
        if capacitance and (spectral is False or not adjoint):
            raise ValueError("capacitance=True needs adjoint=True and spectral not False")
        self.spectral = (
            backend.torch_device.type == "cpu" and adjoint if spectral is None else spectral
        )
        self.capacitance = capacitance and self.spectral
        self.warm_start = warm_start
        self._fused_cache = None
        self._spectral_solve = None
        self._box = None
        self._static_solids = None
        self._static_faces = None
        self._warm_out = None
        self.blowup = blowup
        self.stats = SolveStats()
        self.tolerance = model.tolerance or (
            1e-5 if backend.torch_dtype == torch.float32 else 1e-10
        )
        open_sides = {(SIDES.index(s) // 2, SIDES.index(s) % 2) for s in model.open_sides}
        self.grid = g = Grid(model.resolution, open_sides, backend.torch_dtype, backend.torch_device)
        # Each inflow's box as cells [1, 1, *n] (dye held there) and as the faces it imposes
        # its velocity on, [1, *(n + e_a)] per axis: static geometry, shared by every world.
        self._inflow_cells, self._inflow_faces = [], []
        for inflow in model.inflows:
            cells = torch.zeros(1, *g.n, dtype=g.dtype, device=g.device)
            cells[(slice(None), *(slice(lo, hi) for lo, hi in zip(inflow.lo, inflow.hi)))] = 1
            self._inflow_cells.append(cells[:, None])
            self._inflow_faces.append([g.face_solid(cells, a) for a in range(g.dim)])
        self.kernels = None
        """The Warp launches (:class:`~simdiff.sims.fluid.warp.StepKernels`), or None (torch)."""
        self._operator = None
        if backend.name is BackendName.WARP:
            self._build_kernels(solver_kernels)

    def _build_kernels(self, solver_kernels: bool) -> None:
        from simdiff.sims.fluid.warp import Laplacian, StepKernels

        m, g = self.model, self.grid
        source = None
        if m.inflows:
            source = torch.full(m.resolution, -1, dtype=torch.int32)
            for k, inflow in enumerate(m.inflows):  # later inflows override earlier ones
                source[tuple(slice(lo, hi) for lo, hi in zip(inflow.lo, inflow.hi))] = k
        # The first inflow touching a face imposes its velocity there (the covers are 0 or 1,
        # so this is what the torch path's sequential blending does).
        faces = torch.full((m.dim, *(k + 1 for k in m.resolution)), -1, dtype=torch.int32)
        for k in reversed(range(len(m.inflows))):
            cover = g.join([c.detach().cpu().double() for c in self._inflow_faces[k]])[0] > 0.5
            faces[cover] = k
        self.kernels = StepKernels(
            self.backend,
            m.resolution,
            batch=self.batch_size,
            channels=m.dye_channels,
            maccormack=m.advection is Advection.MACCORMACK,
            cells_per_step=m.dt / m.dx,
            dt=m.dt,
            dx=m.dx,
            open_sides=g.open_sides,
            source=None if source is None else source.to(g.device),
            inflow_face=faces.to(g.device),
            paddle_half_size=None if m.paddle is None else tuple(m.paddle.half_size),
        )
        self._operator = Laplacian(self.backend) if solver_kernels else None

    @property
    def engine(self) -> str:
        """What runs the step, e.g. ``warp:cpu:float32`` or ``torch:cpu:float32``."""
        return str(self.backend)

    @property
    def action_dim(self) -> int:
        """The paddle's velocity [m/s] per axis, or 0 without a paddle."""
        return self.model.dim if self.model.paddle is not None else 0

    @property
    def observation_dim(self) -> int:
        """Paddle position (dim), per dye channel its total (1) and center of mass (dim)."""
        dim, channels = self.model.dim, self.model.dye_channels
        return dim + channels * (1 + dim)

    def _tensor(self, value) -> torch.Tensor:
        return as_tensor(value, self.backend.torch_dtype).to(self.backend.torch_device)

    # Parameters ------------------------------------------------------------------------------
    def params(self) -> Params:
        """The model's obstacle, inflow velocities and concentrations and buoyancy, shared by
        every world (differentiable in the model's tensors)."""
        m, g = self.model, self.grid
        channels = m.dye_channels
        obstacle = (
            torch.zeros(g.n, dtype=g.dtype, device=g.device)
            if m.obstacle is None
            else self._tensor(m.obstacle)
        )
        if m.inflows:
            velocity = torch.stack([self._tensor(i.velocity) for i in m.inflows])
            concentration = torch.stack([self._tensor(i.concentration) for i in m.inflows])
        else:
            velocity = torch.zeros(0, m.dim, dtype=g.dtype, device=g.device)
            concentration = torch.zeros(0, channels, dtype=g.dtype, device=g.device)
        buoyancy = self._tensor(m.buoyancy)
        if not buoyancy.numel():
            buoyancy = torch.zeros(channels, dtype=g.dtype, device=g.device)
        return self.Params(obstacle, velocity, concentration, buoyancy)

    def _world_params(self, params: Params | None) -> Params:
        """``params`` (default: :meth:`params`) per world, in the backend's precision, or a
        ValueError naming the field, the shape given and the one expected."""
        if params is None:
            params = self.params()
        if not isinstance(params, Params):
            raise TypeError(
                f"params is a {type(params).__name__}; expected simdiff.sims.fluid.Params "
                f"(from sim.params())"
            )
        m, b = self.model, self.batch_size
        inflows, channels = len(m.inflows), m.dye_channels
        expected = {
            "obstacle": m.resolution,
            "inflow_velocity": (inflows, m.dim),
            "inflow_concentration": (inflows, channels),
            "buoyancy": (channels,),
        }
        params = self.Params(*(t.to(self.backend.torch_dtype) for t in params.tensors()))
        for name, t in zip(params.field_names(), params.tensors()):
            self._check_world_shape(t, expected[name], f"params.{name}")
        return params.per_world(b)

    def _check_world_shape(self, t: torch.Tensor, shape: tuple[int, ...], name: str) -> None:
        """``t`` is ``shape`` (shared by every world) or ``[B, *shape]``, else a ValueError."""
        b = self.batch_size
        if tuple(t.shape) not in (tuple(shape), (b, *shape)):
            raise ValueError(
                f"{name} has shape {list(t.shape)}; expected {list(shape)} (shared by every "
                f"world) or {[b, *shape]} (per world)"
            )

    # States --------------------------------------------------------------------------------
    def _world_tensor(self, value, shape: tuple[int, ...], name: str) -> torch.Tensor:
        t = self._tensor(value)
        self._check_world_shape(t, shape, name)
        return per_world(t, self.batch_size, len(shape), name)

    def initial_state(
        self,
        velocity: torch.Tensor | None = None,
        dye: torch.Tensor | None = None,
        *,
        params: Params | None = None,
    ) -> State:
        """The state at time 0 of every world: the model's (or the given) velocity, made
        divergence-free by one projection (with the solids of ``params``), and dye.

        Args:
            velocity: Face velocities [m/s], ``[dim, *(n + 1)]`` (every world) or
                ``[B, dim, *(n + 1)]``.
            dye: Dye ``[channels, *n]`` or ``[B, channels, *n]``.
            params: Whose obstacle and inflow boxes the initial projection respects (default
                :meth:`params`).
        """
        m, g = self.model, self.grid
        b = self.batch_size
        if velocity is None:
            velocity = m.velocity
        if velocity is None:
            velocity = torch.zeros(m.dim, *(k + 1 for k in m.resolution))
        if dye is None:
            dye = m.dye if m.dye is not None else torch.zeros(1, *m.resolution)
        velocity = self._world_tensor(velocity, (m.dim, *(k + 1 for k in m.resolution)),
                                      "velocity")
        dye = self._world_tensor(dye, (m.dye_channels, *m.resolution), "dye")
        p = self._world_params(params)
        paddle = m.paddle.center if m.paddle is not None else (0.0,) * m.dim
        paddle_x = self._tensor(paddle).repeat(b, 1)
        where = [(0, "the initial state")] * b
        still = torch.zeros_like(paddle_x)
        if self.kernels is not None:
            velocity = self._project_kernels(velocity, paddle_x, still, p, impose=False,
                                             where=where)
        else:
            weights, imposed = self._solids(paddle_x, still, p, impose=False)
            velocity = g.join(self.project(g.split(velocity), weights, imposed, where=where))
        return self._warm_state(
            State(velocity, dye, paddle_x, torch.zeros(b, dtype=g.dtype, device=g.device))
        )

    def state_from(self, **fields: torch.Tensor) -> State:
        return self.initial_state(fields.get("velocity"), fields.get("dye"))

    def _check_state_shapes(self, state: State) -> None:
        m, b = self.model, self.batch_size
        expected = {
            "velocity": (b, m.dim, *(k + 1 for k in m.resolution)),
            "dye": (b, m.dye_channels, *m.resolution),
            "paddle_x": (b, m.dim),
            "time": (b,),
        }
        for name, shape in expected.items():
            t = getattr(state, name)
            if tuple(t.shape) != shape:
                raise ValueError(
                    f"state.{name} has shape {list(t.shape)}; expected {list(shape)} "
                    f"(batch_size={b})"
                )

    # Solids --------------------------------------------------------------------------------
    def _solids(self, paddle_x: torch.Tensor, paddle_v: torch.Tensor, p: Params, impose: bool):
        """Fluid fraction of every face ``[B, *(n + e_a)]``, and the velocity imposed there
        times the imposing fraction: static solids impose zero, the paddle its velocity
        (``paddle_v`` ``[B, dim]``), inflow boxes theirs (a face touching an inflow cell is an
        inflow face, so the box pushes fluid out through its sides at the inflow velocity).
        ``impose=False`` or no paddle and no inflow: impose nothing (None)."""
        m, g = self.model, self.grid
        static = m.paddle is None and not m.inflows
        if static and not p.obstacle.requires_grad:
            # Walls and a fixed obstacle only: the same weights every step, nothing imposed.
            cached = self._static_solids
            if cached is None or not torch.equal(cached[0], p.obstacle):
                weights = [1 - g.face_solid(p.obstacle, a) for a in range(m.dim)]
                cached = self._static_solids = (p.obstacle.clone(), weights)
            return list(cached[1]), None
        fluid = [1 - g.face_solid(p.obstacle, a) for a in range(m.dim)]
        imposed = [torch.zeros_like(f) for f in fluid] if impose and not static else None

        def per_face(values: torch.Tensor) -> torch.Tensor:  # [B] against [B, *faces]
            return values.view(-1, *([1] * m.dim))

        if m.paddle is not None:
            half = self._tensor(m.paddle.half_size)
            lo, hi = (paddle_x - half) / m.dx, (paddle_x + half) / m.dx
            for a in range(m.dim):
                cover = g.box_coverage(lo, hi, a)
                if imposed is not None:
                    imposed[a] = imposed[a] + fluid[a] * cover * per_face(paddle_v[:, a])
                fluid[a] = fluid[a] * (1 - cover)
        for k, cover in enumerate(self._inflow_faces):
            velocity = p.inflow_velocity[:, k]
            for a in range(m.dim):
                if imposed is not None:
                    imposed[a] = imposed[a] + fluid[a] * cover[a] * per_face(velocity[:, a])
                fluid[a] = fluid[a] * (1 - cover[a])
        return fluid, imposed

    # Projection ----------------------------------------------------------------------------
    def project(
        self,
        comps: list[torch.Tensor],
        weights: list[torch.Tensor],
        solid_velocity: list[torch.Tensor] | None,
        *,
        where: list[tuple[int, str]],
        warm: tuple | None = None,
    ) -> list[torch.Tensor]:
        """Blend in the solids' velocity and remove the divergence in every world: ``u = w u*
        + (1-w) u_s - w grad p`` with ``div(w grad p) = div(w u* + (1-w) u_s)``."""
        g = self.grid
        blended = [w * u for w, u in zip(weights, comps)]
        if solid_velocity is not None:
            blended = [b + s for b, s in zip(blended, solid_velocity)]
        pressure = self._pressure(weights, g.divergence(blended), where=where, warm=warm)
        return [b - w * g.gradient(pressure, a) for a, (b, w) in enumerate(zip(blended, weights))]

    def _adjoint_system(self, detached: list[torch.Tensor]):
        """The pressure system of face weights ``detached`` and the solve that replaces the
        vectorized-torch CG (None: that one): the spectral solve where the box has nothing
        inside; else the one-launch CG, replaced (with ``capacitance=True``) by the
        capacitance-corrected spectral solve once the same operator comes back in the next
        step (static solids: its set-up is paid once), if it touches at most
        :data:`CAPACITANCE_MAX_CELLS` cells. They are reused while the weights stay the same
        from step to step (no rebuild of the levels, the coarsest pseudo-inverse or the
        transforms)."""
        cached = self._fused_cache
        if cached is not None and all(torch.equal(a, b) for a, b in zip(cached[0], detached)):
            if cached[3] == 1 and self.capacitance and not isinstance(
                cached[2], self._direct_solves()
            ):
                from simdiff.sims.fluid.spectral import CapacitanceSolve

                direct = CapacitanceSolve.build(self._spectral(), cached[1], self._box_weights(),
                                                CAPACITANCE_MAX_CELLS)
                if direct is not None:
                    cached[2] = direct
            cached[3] += 1
            return cached[1], cached[2]
        g = self.grid
        diag = sum(
            w.narrow(a + 1, 0, g.n[a]) + w.narrow(a + 1, 1, g.n[a]) for a, w in enumerate(detached)
        )
        fixed = (diag <= 1e-12).to(g.dtype)
        system = PressureSystem(detached, fixed, frozenset(g.open_sides), operator=self._operator)
        solver = None
        if self.spectral and self._plain_box(detached, fixed):
            solver = self._spectral()
        elif self.fused_solve:
            from simdiff.sims.fluid.warp import FusedSolve

            solver = FusedSolve.build(system)
        self._fused_cache = [[w.clone() for w in detached], system, solver, 1]
        return system, solver

    @staticmethod
    def _direct_solves() -> tuple[type, ...]:
        from simdiff.sims.fluid.spectral import CapacitanceSolve, SpectralSolve

        return (SpectralSolve, CapacitanceSolve)

    def _spectral(self):
        """The box's spectral solve (made once)."""
        if self._spectral_solve is None:
            from simdiff.sims.fluid.spectral import SpectralSolve

            self._spectral_solve = SpectralSolve(self.grid.n, self.grid.open_sides)
        return self._spectral_solve

    def _box_weights(self) -> list[torch.Tensor]:
        """The face weights of the box with nothing inside, ``[1, *(n + e_a)]`` (made once)."""
        if self._box is None:
            from simdiff.sims.fluid.spectral import box_weights

            g = self.grid
            self._box = box_weights(g.n, g.open_sides, g.dtype, g.device)
        return self._box

    def _plain_box(self, weights: list[torch.Tensor], fixed: torch.Tensor) -> bool:
        """Whether every world's face weights are the box's with nothing inside."""
        return not bool(fixed.any()) and all(
            bool((w == box).all()) for w, box in zip(weights, self._box_weights())
        )

    def _pressure(
        self,
        weights: list[torch.Tensor],
        divergence: torch.Tensor,
        *,
        where: list,
        warm: tuple | None = None,
    ) -> torch.Tensor:
        """The pressure [cell units] ``[B, *n]`` solving ``div(w grad p) = divergence`` (the
        divergence of the blended velocity) in every world, differentiable in both."""
        g = self.grid
        m = self.model
        if self.adjoint:
            system, solver = self._adjoint_system([w.detach() for w in weights])
            rhs = system.project(-divergence)
            options = {
                "system": system,
                "stats": self.stats,
                "tolerance": self.tolerance,
                "max_iterations": m.max_iterations,
                "where": where,
                "fused": solver,
                "link": {},
            }
            if warm is not None:
                options["guess"], options["previous"] = warm
            pressure = SymmetricSolve.apply(options, rhs, *weights)
            self._warm_out = (pressure.detach(), options["link"]) if self.warm_start else None
            return pressure
        diag = sum(
            w.narrow(a + 1, 0, g.n[a]) + w.narrow(a + 1, 1, g.n[a]) for a, w in enumerate(weights)
        )
        fixed = (diag.detach() <= 1e-12).to(g.dtype)
        system = PressureSystem(weights, fixed, frozenset(g.open_sides))
        rhs = system.project(-divergence)
        pressure, iterations, residual = pcg(
            system,
            rhs,
            tolerance=self.tolerance,
            max_iterations=m.max_iterations,
            preconditioner=self.preconditioner,
        )
        self.stats.record(iterations, residual)
        error = unconverged("pressure projection", residual, iterations, self.tolerance, where)
        if error is not None:
            raise error
        return system.project(pressure)

    def _project_kernels(
        self,
        velocity: torch.Tensor,
        paddle_x: torch.Tensor,
        paddle_v: torch.Tensor,
        p: Params,
        *,
        impose: bool,
        where: list,
        warm: tuple | None = None,
    ) -> torch.Tensor:
        """:meth:`project` by Warp kernels, from the padded velocity ``[B, dim, *(n + 1)]``
        (solids computed by a kernel too); returns the projected velocity, same shape."""
        from simdiff.sims.fluid.warp import as_grid

        m, g, k = self.model, self.grid, self.kernels
        b = self.batch_size
        if m.inflows and impose:
            inflow_v = p.inflow_velocity
        else:
            inflow_v = torch.zeros(b, max(len(m.inflows), 1), m.dim, dtype=g.dtype,
                                   device=g.device)
        constrain = (
            as_grid(velocity, m.dim),
            as_grid(p.obstacle, m.dim),
            paddle_x,
            paddle_v if impose else torch.zeros_like(paddle_v),
            inflow_v,
        )
        if m.paddle is None and not m.inflows and not p.obstacle.requires_grad:
            # Static solids: their weights (and zero imposed velocity) made once per obstacle.
            cached = self._static_faces
            if cached is None or not torch.equal(cached[0], p.obstacle):
                blended, w, div = run_forward(k.constrain, *constrain)
                cached = self._static_faces = (p.obstacle.clone(), w, torch.zeros_like(w))
            w = cached[1]
            blended, div = apply_step(k.constrain_static, constrain[0], w, cached[2])
        else:
            blended, w, div = apply_step(k.constrain, *constrain)
        # Contiguous copies: the solve's many array operations on strided views of the padded
        # tensor measured twice as slow.
        weights = [c.contiguous() for c in g.split(w.view(velocity.shape))]
        pressure = self._pressure(weights, div.view(b, *g.n), where=where, warm=warm)
        (out,) = apply_step(k.subtract, blended, w, as_grid(pressure, m.dim))
        return out.view(velocity.shape)

    # Step ----------------------------------------------------------------------------------
    def step(
        self, state: State, action: torch.Tensor | None = None, params: Params | None = None
    ) -> State:
        """Advect dye and velocity, add sources and buoyancy, move the paddle by ``action``
        (its velocity [m/s], ``[B, dim]``; None: at rest) and project, in every world."""
        m, g = self.model, self.grid
        self._check_state_shapes(state)
        p = self._world_params(params)
        paddle_v = self.check_action(action, state.paddle_x)
        paddle_x = state.paddle_x
        if m.paddle is not None:
            paddle_x = paddle_x + m.dt * paddle_v
        else:
            paddle_v = torch.zeros_like(paddle_x)
        steps = (state.time.detach() / m.dt).round().long().add(1).tolist()
        where = [(s, f"step {s}") for s in steps]
        if self.kernels is not None:
            return self._step_kernels(state, paddle_x, paddle_v, p, where=where)
        cells_per_step = m.dt / m.dx
        comps = g.split(state.velocity)
        dye = g.advect_cells(
            state.dye, comps, cells_per_step, maccormack=m.advection is Advection.MACCORMACK
        )
        comps = g.advect_velocity(comps, cells_per_step)
        for k, inside in enumerate(self._inflow_cells):
            held = p.inflow_concentration[:, k].reshape(*dye.shape[:2], *([1] * m.dim))
            dye = dye * (1 - inside) + held * inside
        if p.buoyancy.requires_grad or bool(p.buoyancy.any()):
            lift = (p.buoyancy.reshape(*dye.shape[:2], *([1] * m.dim)) * dye).sum(1)
            # Mean of the two cells beside each y-face; wall faces are blocked anyway.
            padded = torch.nn.functional.pad(lift, [0, 0] * (m.dim - 2) + [1, 1])
            comps[1] = comps[1] + m.dt * 0.5 * (padded[:, :, 1:] + padded[:, :, :-1])
        weights, imposed = self._solids(paddle_x, paddle_v, p, impose=True)
        comps = self.project(comps, weights, imposed, where=where, warm=self._warm_in(state))
        return self._warm_state(State(g.join(comps), dye, paddle_x, state.time + m.dt))

    def _warm_in(self, state: State) -> tuple | None:
        """The warm start a state from :meth:`step` carries (its pressure and solve), if any."""
        if not self.warm_start or self.tolerance < WARM_START_TOLERANCE:
            return None
        return getattr(state, "_warm", None)

    def _warm_state(self, state: State) -> State:
        """``state`` carrying the pressure just solved, the next step's initial guess (an
        attribute, not a field: a state rebuilt from its tensors starts cold)."""
        if self._warm_out is not None:
            state._warm = self._warm_out
        self._warm_out = None
        return state

    def _step_kernels(
        self,
        state: State,
        paddle_x: torch.Tensor,
        paddle_v: torch.Tensor,
        p: Params,
        *,
        where: list,
    ) -> State:
        """:meth:`step` by Warp kernels."""
        from simdiff.sims.fluid.warp import as_grid

        m = self.model
        concentration = p.inflow_concentration
        if not m.inflows:
            concentration = concentration.new_zeros(self.batch_size, 1, m.dye_channels)
        inputs = (as_grid(state.velocity, m.dim), as_grid(state.dye, m.dim), concentration)
        if p.buoyancy.requires_grad or bool(p.buoyancy.any()):
            velocity, dye = apply_step(self.kernels.advance, *inputs, p.buoyancy)
        else:
            velocity, dye = apply_step(self.kernels.advance_still, *inputs)
        velocity = self._project_kernels(
            velocity.view(state.velocity.shape), paddle_x, paddle_v, p, impose=True, where=where,
            warm=self._warm_in(state),
        )
        return self._warm_state(
            State(velocity, dye.view(state.dye.shape), paddle_x, state.time + m.dt)
        )

    # Diagnostics -----------------------------------------------------------------------------
    def divergence(self, state: State, params: Params | None = None) -> torch.Tensor:
        """Divergence [1/s] of the velocity in each cell of every world, ``[B, *n]`` (zero in
        fully solid cells)."""
        g = self.grid
        div = g.divergence(g.split(state.velocity)) / self.model.dx
        p = self._world_params(params)
        still = torch.zeros_like(state.paddle_x)
        weights, _ = self._solids(state.paddle_x, still, p, impose=False)
        diag = sum(
            w.narrow(a + 1, 0, g.n[a]) + w.narrow(a + 1, 1, g.n[a]) for a, w in enumerate(weights)
        )
        return div * (diag.detach() > 1e-12)

    def observe(self, state: State) -> torch.Tensor:
        """Per world ``[B, observation_dim]``: paddle position, and per dye channel its total
        and center of mass (cell units)."""
        dye = state.dye.flatten(2)  # [B, C, cells]
        total = dye.sum(2)
        positions = self.grid.cell_positions.reshape(-1, self.model.dim).to(dye)
        center = dye @ positions / total.clamp_min(1e-12)[..., None]
        return torch.cat([state.paddle_x, total, center.flatten(1)], dim=1)

    def check_state(self, state: State) -> dict[int, str]:
        """``{world: description}`` of worlds whose velocity or dye is not finite, or whose
        speed exceeds ``blowup``; empty when every world is healthy."""
        velocity, dye = state.velocity.detach(), state.dye.detach()
        bad = {
            "velocity": ~torch.isfinite(velocity).flatten(1).all(1),
            "dye": ~torch.isfinite(dye).flatten(1).all(1),
        }
        speed = velocity.abs().flatten(1).amax(1)
        blown = speed > self.blowup
        failed = bad["velocity"] | bad["dye"] | blown
        if not bool(failed.any()):
            return {}
        out = {}
        for b in failed.nonzero().flatten().tolist():
            for name, t in (("velocity", velocity), ("dye", dye)):
                if bool(bad[name][b]):
                    wrong = ~torch.isfinite(t[b])
                    first = [int(i) for i in wrong.nonzero()[0]]
                    kind = "component" if name == "velocity" else "channel"
                    out[b] = (
                        f"{name} is not finite in {int(wrong.sum())} entries, first {kind} "
                        f"{first[0]} at index {tuple(first[1:])}: {float(t[b][tuple(first)])}"
                    )
                    break
            else:
                out[b] = (
                    f"velocity reached {float(speed[b]):.3g} m/s, beyond "
                    f"blowup={self.blowup:.3g}"
                )
        return out
