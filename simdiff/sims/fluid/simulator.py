"""The fluid simulator: one step of advection, sources, buoyancy, solids and projection.

Two implementations of the same step: vectorized torch (:mod:`~simdiff.sims.fluid.grid`, the
``taichi`` backend name, which for the fluid means "no kernels": see the package docstring)
and Warp kernels (:mod:`~simdiff.sims.fluid.warp`, the ``warp`` backend), differentiated by
Warp's adjoints through :func:`~simdiff.bridge.apply_step`. Both share the pressure solve
and its adjoint (:mod:`~simdiff.sims.fluid.solver`); with Warp, its Laplacian and residual
are Warp kernels too.
"""

from __future__ import annotations

import torch

from simdiff.backend import Backend, BackendName
from simdiff.bridge import apply_step
from simdiff.sims.base import SimulationError, Simulator
from simdiff.sims.fluid.grid import Grid
from simdiff.sims.fluid.model import SIDES, Advection, Model, as_tensor
from simdiff.sims.fluid.solver import PressureSystem, SolveStats, SymmetricSolve, pcg
from simdiff.sims.fluid.state import State

__all__ = ["Fluid"]


class Fluid(Simulator):
    """Differentiable incompressible flow on a MAC grid (see :mod:`simdiff.sims.fluid`).

    Args:
        model: The validated model.
        backend: ``warp``: the step's local operators are Warp kernels; ``taichi``: the step
            is vectorized torch (no Taichi kernels). Both use the backend's precision and
            device.
        adjoint: Differentiate the pressure solve by its adjoint (one more solve in backward);
            False differentiates through the unrolled iterations (a reference for tests and
            the plain-PyTorch baseline of the benchmark).
        preconditioner: ``multigrid`` or ``jacobi``.
        solver_kernels: With Warp, also apply the pressure operator inside the solve (``A x``
            and the smoother's residual on every multigrid level) by Warp kernels. Off by
            default: on the CPU these single-threaded kernels are slower than torch's
            vectorized operator (see the package docstring).
        blowup: A speed beyond this [m/s] stops the rollout.

    Attributes:
        stats: Conjugate-gradient iterations of every solve since construction.
    """

    name = "fluid"
    initial_fields = ("velocity", "dye")

    def __init__(
        self,
        model: Model,
        backend: Backend,
        *,
        adjoint: bool = True,
        preconditioner: str = "multigrid",
        solver_kernels: bool = False,
        blowup: float = 1e6,
    ) -> None:
        super().__init__(model, backend)
        if solver_kernels and backend.name is not BackendName.WARP:
            raise ValueError("solver_kernels=True needs the warp backend")
        if preconditioner not in ("multigrid", "jacobi"):
            raise ValueError(f"preconditioner={preconditioner!r}; allowed: multigrid, jacobi")
        self.adjoint = adjoint
        self.preconditioner = preconditioner
        self.blowup = blowup
        self.stats = SolveStats()
        self.tolerance = model.tolerance or (
            1e-5 if backend.torch_dtype == torch.float32 else 1e-10
        )
        """Relative residual every pressure solve reaches."""
        open_sides = {(SIDES.index(s) // 2, SIDES.index(s) % 2) for s in model.open_sides}
        self.grid = Grid(model.resolution, open_sides, backend.torch_dtype, backend.torch_device)
        self._static: tuple | None = None
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
            cover = g.join([c.detach().cpu().double() for c in self._inflow_faces[k]]) > 0.5
            faces[cover] = k
        self.kernels = StepKernels(
            self.backend,
            m.resolution,
            channels=m.dye_channels,
            maccormack=m.advection is Advection.MACCORMACK,
            cells_per_step=m.dt / m.dx,
            dt=m.dt,
            dx=m.dx,
            open_sides=g.open_sides,
            source=None if source is None else source.to(g.device),
            inflow_face=faces.to(g.device),
            buoyancy=as_tensor(m.buoyancy).numel() > 0,
            paddle_half_size=None if m.paddle is None else tuple(m.paddle.half_size),
        )
        self._operator = Laplacian(self.backend) if solver_kernels else None

    @property
    def engine(self) -> str:
        """What runs the step, e.g. ``warp:cpu:float32`` or ``torch:cpu:float32`` (the
        ``taichi`` backend name runs the torch step: the fluid has no Taichi kernels)."""
        b = self.backend
        name = "warp" if self.kernels is not None else "torch"
        return f"{name}:{b.device}:{b.precision.value}"

    @property
    def action_dim(self) -> int:
        return self.model.dim if self.model.paddle is not None else 0

    def _tensor(self, value) -> torch.Tensor:
        return as_tensor(value, self.backend.torch_dtype).to(self.backend.torch_device)

    # States --------------------------------------------------------------------------------
    def initial_state(
        self, velocity: torch.Tensor | None = None, dye: torch.Tensor | None = None
    ) -> State:
        """The state at time 0: the model's (or the given) velocity, made divergence-free by
        one projection, and dye."""
        m, g = self.model, self.grid
        if velocity is None:
            velocity = m.velocity
        if velocity is None:
            velocity = torch.zeros(m.dim, *(k + 1 for k in m.resolution))
        if dye is None:
            dye = m.dye if m.dye is not None else torch.zeros(1, *m.resolution)
        paddle = m.paddle.center if m.paddle is not None else (0.0,) * m.dim
        paddle_x = self._tensor(paddle)
        if self.kernels is not None:
            still = torch.zeros_like(paddle_x)
            velocity = self._project_kernels(
                self._tensor(velocity), paddle_x, still, impose=False, where="the initial state"
            )
        else:
            comps = g.split(self._tensor(velocity))
            weights, solid_velocity = self._solids(paddle_x, None, impose=False)
            comps = self.project(comps, weights, solid_velocity, where="the initial state")
            velocity = g.join(comps)
        return State(
            velocity,
            self._tensor(dye),
            paddle_x,
            torch.zeros(1, dtype=self.backend.torch_dtype, device=g.device),
        )

    def state_from(self, **fields: torch.Tensor) -> State:
        return self.initial_state(fields.get("velocity"), fields.get("dye"))

    # Solids --------------------------------------------------------------------------------
    def _static_solid(self) -> list[torch.Tensor]:
        """Solid fraction of the faces of each axis from walls and the obstacle (recomputed
        when the obstacle is a tensor being optimized, cached otherwise)."""
        obstacle = self.model.obstacle
        if obstacle is not None and obstacle.requires_grad:
            return [self.grid.face_solid(self._tensor(obstacle), a) for a in range(self.grid.dim)]
        # The key holds the tensor itself, so its id cannot be reused by another one.
        key = (obstacle, None if obstacle is None else obstacle._version)
        if (
            self._static is None
            or self._static[0][0] is not obstacle
            or self._static[0][1] != key[1]
        ):
            cells = (
                torch.zeros(self.grid.n, dtype=self.grid.dtype, device=self.grid.device)
                if obstacle is None
                else self._tensor(obstacle)
            )
            self._static = (key, [self.grid.face_solid(cells, a) for a in range(self.grid.dim)])
        return self._static[1]

    def _solids(self, paddle_x: torch.Tensor, paddle_v: torch.Tensor | None, impose: bool):
        """Fluid fraction of every face, and the velocity imposed there times the imposing
        fraction: static solids impose zero, the paddle its velocity (``paddle_v``), inflow
        boxes theirs (a face touching an inflow cell is an inflow face, so the box pushes
        fluid out through its sides at the inflow velocity). ``impose=False``: impose
        nothing (the initial projection)."""
        m, g = self.model, self.grid
        fluid = [1 - s for s in self._static_solid()]
        imposed = [torch.zeros_like(f) for f in fluid] if impose else None
        if m.paddle is not None:
            half = self._tensor(m.paddle.half_size)
            lo, hi = (paddle_x - half) / m.dx, (paddle_x + half) / m.dx
            for a in range(m.dim):
                cover = g.box_coverage(lo, hi, a)
                if imposed is not None:
                    imposed[a] = imposed[a] + fluid[a] * cover * paddle_v[a]
                fluid[a] = fluid[a] * (1 - cover)
        for inflow, cover in zip(m.inflows, self._inflow_faces):
            velocity = self._tensor(inflow.velocity)
            for a in range(m.dim):
                if imposed is not None:
                    imposed[a] = imposed[a] + fluid[a] * cover[a] * velocity[a]
                fluid[a] = fluid[a] * (1 - cover[a])
        return fluid, imposed

    @property
    def _inflow_faces(self) -> list[list[torch.Tensor]]:
        if not hasattr(self, "_inflow_cache"):
            g = self.grid
            self._inflow_cache = []
            for inflow in self.model.inflows:
                cells = torch.zeros(g.n, dtype=g.dtype, device=g.device)
                cells[tuple(slice(lo, hi) for lo, hi in zip(inflow.lo, inflow.hi))] = 1
                self._inflow_cache.append([g.face_solid(cells, a) for a in range(g.dim)])
        return self._inflow_cache

    # Projection ----------------------------------------------------------------------------
    def project(
        self,
        comps: list[torch.Tensor],
        weights: list[torch.Tensor],
        solid_velocity: list[torch.Tensor] | None,
        *,
        where: str,
    ) -> list[torch.Tensor]:
        """Blend in the solids' velocity and remove the divergence: ``u = w u* + (1-w) u_s
        - w grad p`` with ``div(w grad p) = div(w u* + (1-w) u_s)``."""
        g = self.grid
        blended = [w * u for w, u in zip(weights, comps)]
        if solid_velocity is not None:
            blended = [b + s for b, s in zip(blended, solid_velocity)]
        pressure = self._pressure(weights, g.divergence(blended), where=where)
        return [b - w * g.gradient(pressure, a) for a, (b, w) in enumerate(zip(blended, weights))]

    def _pressure(
        self, weights: list[torch.Tensor], divergence: torch.Tensor, *, where: str
    ) -> torch.Tensor:
        """The pressure [cell units] solving ``div(w grad p) = divergence`` (the divergence
        of the blended velocity), differentiable in both."""
        g = self.grid
        detached = [w.detach() for w in weights]
        diag = torch.zeros(g.n, dtype=g.dtype, device=g.device)
        for a, w in enumerate(detached):
            diag = diag + w.narrow(a, 0, g.n[a]) + w.narrow(a, 1, g.n[a])
        fixed = (diag <= 1e-12).to(g.dtype)
        sides = frozenset(g.open_sides)
        m = self.model
        if self.adjoint:
            system = PressureSystem(detached, fixed, sides, operator=self._operator)
            rhs = system.project(-divergence)
            options = {
                "system": system,
                "stats": self.stats,
                "tolerance": self.tolerance,
                "max_iterations": m.max_iterations,
                "where": where,
            }
            pressure = SymmetricSolve.apply(options, rhs, *weights)
        else:
            system = PressureSystem(weights, fixed, sides)
            rhs = system.project(-divergence)
            pressure, iterations, residual = pcg(
                system,
                rhs,
                tolerance=self.tolerance,
                max_iterations=m.max_iterations,
                preconditioner=self.preconditioner,
            )
            self.stats.solves += 1
            self.stats.iterations += iterations
            self.stats.last_iterations, self.stats.last_residual = iterations, residual
            if residual > self.tolerance:
                raise SimulationError(
                    f"pressure projection at {where} did not converge: relative residual "
                    f"{residual:.3g} > tolerance {self.tolerance:.3g} after {iterations} iterations"
                )
            pressure = system.project(pressure)
        return pressure

    def _project_kernels(
        self,
        velocity: torch.Tensor,
        paddle_x: torch.Tensor,
        paddle_v: torch.Tensor,
        *,
        impose: bool,
        where: str,
    ) -> torch.Tensor:
        """:meth:`project` by Warp kernels, from the padded velocity in the kernels' layout
        (solids computed by a kernel too); returns the padded velocity in the state's."""
        from simdiff.sims.fluid.warp import as_grid, from_grid

        m, g, k = self.model, self.grid, self.kernels
        dtype, device = g.dtype, g.device
        obstacle = (
            torch.zeros(g.n, dtype=dtype, device=device)
            if m.obstacle is None
            else self._tensor(m.obstacle)
        )
        if m.inflows and impose:
            inflow_v = torch.stack([self._tensor(i.velocity) for i in m.inflows])
        else:
            inflow_v = torch.zeros(max(len(m.inflows), 1), m.dim, dtype=dtype, device=device)
        blended, w, div = apply_step(
            k.constrain,
            as_grid(velocity, m.dim),
            as_grid(obstacle, m.dim),
            paddle_x,
            paddle_v if impose else torch.zeros_like(paddle_v),
            inflow_v,
        )
        # Contiguous copies: the solve's many array operations on strided views of the padded
        # tensor measured twice as slow.
        weights = [c.contiguous() for c in g.split(from_grid(w, m.dim))]
        pressure = self._pressure(weights, from_grid(div, m.dim), where=where)
        (out,) = apply_step(k.subtract, blended, w, as_grid(pressure, m.dim))
        return from_grid(out, m.dim)

    # Step ----------------------------------------------------------------------------------
    def step(self, state: State, action: torch.Tensor | None = None) -> State:
        """Advect dye and velocity, add sources and buoyancy, move the paddle by ``action``
        (its velocity [m/s], shape [dim]) and project."""
        m, g = self.model, self.grid
        paddle_x = state.paddle_x
        paddle_v = None
        if m.paddle is not None:
            if action is None:
                action = torch.zeros_like(paddle_x)
            paddle_v = action.to(paddle_x)
            paddle_x = paddle_x + m.dt * paddle_v
        elif action is not None and action.numel():
            raise ValueError("this fluid model has no paddle; pass action=None")
        step = round(float(state.time) / m.dt) + 1
        if self.kernels is not None:
            return self._step_kernels(state, paddle_x, paddle_v, where=f"step {step}")
        cells_per_step = m.dt / m.dx
        comps = g.split(state.velocity)
        dye = g.advect_cells(
            state.dye, comps, cells_per_step, maccormack=m.advection is Advection.MACCORMACK
        )
        comps = g.advect_velocity(comps, cells_per_step)
        for inflow in m.inflows:
            box = (slice(None), *(slice(lo, hi) for lo, hi in zip(inflow.lo, inflow.hi)))
            conc = self._tensor(inflow.concentration).view(-1, *([1] * m.dim))
            inside = torch.zeros_like(dye)
            inside[box] = 1
            dye = dye * (1 - inside) + conc * inside
        buoyancy = self._tensor(m.buoyancy)
        if buoyancy.numel():
            lift = (buoyancy.view(-1, *([1] * m.dim)) * dye).sum(0)
            # Mean of the two cells beside each y-face; wall faces are blocked anyway.
            padded = torch.nn.functional.pad(lift, [0, 0] * (m.dim - 2) + [1, 1])
            comps[1] = comps[1] + m.dt * 0.5 * (padded[:, 1:] + padded[:, :-1])
        weights, imposed = self._solids(paddle_x, paddle_v, impose=True)
        comps = self.project(comps, weights, imposed, where=f"step {step}")
        return State(g.join(comps), dye, paddle_x, state.time + m.dt)

    def _step_kernels(
        self, state: State, paddle_x: torch.Tensor, paddle_v: torch.Tensor | None, *, where: str
    ) -> State:
        """:meth:`step` by Warp kernels."""
        from simdiff.sims.fluid.warp import as_grid, from_grid

        m, g = self.model, self.grid
        dtype, device = g.dtype, g.device
        channels = m.dye_channels
        if m.inflows:
            concentration = torch.stack([self._tensor(i.concentration) for i in m.inflows])
        else:
            concentration = torch.zeros(1, channels, dtype=dtype, device=device)
        buoyancy = self._tensor(m.buoyancy)
        if not buoyancy.numel():
            buoyancy = torch.zeros(channels, dtype=dtype, device=device)
        velocity, dye = apply_step(
            self.kernels.advance,
            as_grid(state.velocity, m.dim),
            as_grid(state.dye, m.dim),
            concentration,
            buoyancy,
        )
        if paddle_v is None:
            paddle_v = torch.zeros_like(paddle_x)
        velocity = self._project_kernels(
            from_grid(velocity, m.dim), paddle_x, paddle_v, impose=True, where=where
        )
        return State(velocity, from_grid(dye, m.dim), paddle_x, state.time + m.dt)

    # Diagnostics -----------------------------------------------------------------------------
    def divergence(self, state: State) -> torch.Tensor:
        """Divergence [1/s] of the velocity in each cell (zero in fully solid cells)."""
        div = self.grid.divergence(self.grid.split(state.velocity)) / self.model.dx
        weights, _ = self._solids(state.paddle_x, None, impose=False)
        diag = sum(
            w.narrow(a, 0, self.grid.n[a]) + w.narrow(a, 1, self.grid.n[a])
            for a, w in enumerate(weights)
        )
        return div * (diag.detach() > 1e-12)

    def observe(self, state: State) -> torch.Tensor:
        """Paddle position, and per dye channel its total and center of mass (cell units)."""
        dye = state.dye
        total = dye.flatten(1).sum(1)
        positions = self.grid.cell_positions.reshape(-1, self.model.dim)
        center = dye.flatten(1) @ positions / total.clamp_min(1e-12)[:, None]
        return torch.cat([state.paddle_x, total, center.flatten()])

    def check_state(self, state: State) -> str | None:
        for name in ("velocity", "dye"):
            t = getattr(state, name).detach()
            if not bool(torch.isfinite(t).all()):
                return f"{name} is not finite ({int((~torch.isfinite(t)).sum())} entries)"
        speed = float(state.velocity.detach().abs().max())
        if speed > self.blowup:
            return f"velocity reached {speed:.3g} m/s, beyond blowup={self.blowup:.3g}"
        return None
