"""The N-body simulator: gravity kernels on Taichi or Warp, integrators in torch."""

from __future__ import annotations

import math

import torch

from simdiff.backend import Backend, BackendName
from simdiff.bridge import apply_step
from simdiff.sims.base import SimulationError, Simulator
from simdiff.sims.nbody.integrators import INTEGRATORS
from simdiff.sims.nbody.model import Integrator, Model, StepCriterion, as_float
from simdiff.sims.nbody.state import State

__all__ = ["NBody"]


class NBody(Simulator):
    """Differentiable direct-summation N-body gravity.

    Args:
        model: The validated model.
        backend: Where the gravity kernel runs.
        blowup: A position or velocity component beyond this magnitude stops the rollout.

    Attributes:
        force_evaluations: Gravity evaluations (each all pairs) since the last
            ``initial_state`` (that of the rollout started from it; the metrics report it per
            rollout, not accumulated over training iterations).
    """

    name = "nbody"
    initial_fields = ("body_x", "body_v")

    def __init__(self, model: Model, backend: Backend, *, blowup: float = 1e8) -> None:
        super().__init__(model, backend)
        self.blowup = blowup
        self.force_evaluations = 0
        backend.ensure_initialized()
        if backend.name is BackendName.WARP:
            from simdiff.sims.nbody.warp import build_forces
        else:
            from simdiff.sims.nbody.taichi import build_forces
        self._forces = build_forces(backend, model.body_count)
        self._integrate = INTEGRATORS[Integrator(model.integrator).value]
        self.initial_energy: float | None = None
        """Energy of the last state made by ``initial_state`` (the reference of errors)."""
        self._initial_com: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def action_dim(self) -> int:
        return 0

    def _tensor(self, value) -> torch.Tensor:
        # dtype given up front: as_tensor of a Python float would round it to float32 first.
        if isinstance(value, torch.Tensor):
            return value.to(self.backend.torch_device, self.backend.torch_dtype)
        return torch.tensor(value, dtype=self.backend.torch_dtype, device=self.backend.torch_device)

    def rollout_inputs(self) -> dict[str, torch.Tensor]:
        m = self.model
        params = torch.stack([self._tensor(m.gravitational_constant), self._tensor(m.softening)])
        return {"mass": self._tensor(m.body_mass), "params": params}

    def forces(self, x: torch.Tensor, v: torch.Tensor, mass: torch.Tensor | None = None,
               params: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Accelerations and jerks of all bodies (one evaluation of all pairs)."""
        if mass is None or params is None:
            shared = self.rollout_inputs()
            mass, params = shared["mass"], shared["params"]
        self.force_evaluations += 1
        return apply_step(self._forces, x, v, mass, params)

    def initial_state(self, x: torch.Tensor | None = None, v: torch.Tensor | None = None) -> State:
        """The state at time 0 from the model's (or the given) positions and velocities."""
        x = self._tensor(self.model.body_x if x is None else x)
        v = self._tensor(self.model.body_v if v is None else v)
        self.force_evaluations = 0  # counted per rollout, like initial_energy
        a, jerk = self.forces(x, v)
        zero = torch.zeros_like(x)
        state = State(x, v, a, jerk, zero, zero, x.new_zeros(1))
        self.initial_energy = float(self.energy(state).detach())
        self._initial_com = self._center_of_mass(state)
        return state

    def _center_of_mass(self, state: State) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            w = self._tensor(self.model.body_mass).detach()
            w = (w / w.sum())[:, None]
            return (w * state.body_x).sum(0), (w * state.body_v).sum(0)

    def state_from(self, **fields: torch.Tensor) -> State:
        return self.initial_state(fields["body_x"], fields["body_v"])

    def next_dt(self, state: State, eta: float | None = None) -> float:
        """The step the model's criterion gives for ``state`` (a float: step choice is not
        differentiated), or the fixed ``dt`` when no ``eta`` is set."""
        m = self.model
        eta = m.eta if eta is None else eta
        if eta is None:
            return m.dt
        with torch.no_grad():
            if m.criterion is StepCriterion.COLLISION:
                dt = eta * self.collision_time(state)
            else:
                a = state.body_a.norm(dim=1)
                j = state.body_jerk.norm(dim=1)
                a2 = state.body_snap.norm(dim=1)
                a3 = state.body_crackle.norm(dim=1)
                if float(a2.max()) > 0:
                    dt = eta * float(torch.sqrt((a * a2 + j * j) / (j * a3 + a2 * a2)).min())
                else:
                    dt = eta * float((a / j).min())
                    if not math.isfinite(dt):
                        # Bodies at rest have no jerk: the shortest pair free-fall time sets
                        # the first step instead (O(N^2) memory, so only then).
                        dt = eta * self.free_fall_time(state)
        if not dt >= m.dt_min:
            raise SimulationError(
                f"adaptive time step {dt:.3g} at t={float(state.time):.6g} fell below "
                f"dt_min={m.dt_min:.3g}; {self._closest_pair(state)}"
            )
        return min(dt, m.dt)

    def free_fall_time(self, state: State) -> float:
        """Shortest pair free-fall time, min over pairs of ``sqrt(r^3 / (G (m_i + m_j)))``."""
        x = state.body_x.detach()
        r = torch.cdist(x, x)
        mass = self._tensor(self.model.body_mass).detach()
        g = as_float(self.model.gravitational_constant)
        free_fall = torch.sqrt(r**3 / (g * (mass[:, None] + mass[None, :])))
        return float(free_fall.fill_diagonal_(math.inf).min())

    def collision_time(self, state: State) -> float:
        """Shortest pair collision or free-fall time, min over pairs of
        ``min(r / v_rel, sqrt(r^3 / (G (m_i + m_j))))``."""
        x, v = state.body_x.detach(), state.body_v.detach()
        r = torch.cdist(x, x)
        vr = torch.cdist(v, v)
        mass = self._tensor(self.model.body_mass).detach()
        g = as_float(self.model.gravitational_constant)
        free_fall = torch.sqrt(r**3 / (g * (mass[:, None] + mass[None, :])))
        crossing = r / vr.clamp_min(1e-300)
        pair = torch.minimum(free_fall, crossing)
        pair = pair.fill_diagonal_(math.inf)
        return float(pair.min())

    def step(self, state: State, action: torch.Tensor | None = None, *, dt=None,
             eta: float | None = None, mass: torch.Tensor | None = None,
             params: torch.Tensor | None = None) -> State:
        """One step of the model's integrator.

        Args:
            state: The current state.
            action: Unused (N-body takes no actions); must be None.
            dt: The step (float or 0-d tensor); by default the model's fixed or adaptive step.
            eta: Overrides the model's accuracy parameter for this step (RL time-stepping).
            mass, params: Per-rollout tensors from :meth:`rollout_inputs`.
        """
        if action is not None:
            raise ValueError("the N-body simulator takes no action; pass action=None")
        if mass is None or params is None:
            shared = self.rollout_inputs()
            mass, params = shared["mass"], shared["params"]
        if dt is None:
            dt = self.next_dt(state, eta)
        return self._integrate(lambda x, v: self.forces(x, v, mass, params), state, dt)

    def evolve(self, state: State, t_end: float, *, max_steps: int = 10_000_000) -> State:
        """Step until ``t_end`` (the last step shortened to land on it)."""
        steps = 0
        while float(state.time) < t_end * (1 - 1e-14):
            dt = min(self.next_dt(state), t_end - float(state.time))
            state = self.step(state, dt=dt)
            steps += 1
            if steps >= max_steps:
                raise SimulationError(f"evolve reached max_steps={max_steps} at t={float(state.time):.6g}")
            problem = self.check_state(state)
            if problem:
                raise SimulationError(f"t={float(state.time):.6g}: {problem}")
        return state

    def observe(self, state: State) -> torch.Tensor:
        """Positions and velocities in the center-of-mass frame, flattened."""
        mass = self._tensor(self.model.body_mass).detach()
        w = (mass / mass.sum())[:, None]
        x = state.body_x - (w * state.body_x).sum(0)
        v = state.body_v - (w * state.body_v).sum(0)
        return torch.cat([x, v], 1).flatten()

    def energy(self, state: State, *, chunk: int = 2048) -> torch.Tensor:
        """Kinetic plus (softened) potential energy, differentiable."""
        m = self._tensor(self.model.body_mass)
        g = self._tensor(self.model.gravitational_constant)
        eps2 = self._tensor(self.model.softening) ** 2
        x = state.body_x
        kinetic = 0.5 * (m * (state.body_v**2).sum(1)).sum()
        potential = x.new_zeros(())
        n = x.shape[0]
        for start in range(0, n, chunk):
            rows = slice(start, min(start + chunk, n))
            d2 = ((x[rows, None, :] - x[None, :, :]) ** 2).sum(-1) + eps2
            idx = torch.arange(start, rows.stop, device=x.device)
            upper = idx[:, None] < torch.arange(n, device=x.device)[None, :]
            inv = torch.where(upper, d2.clamp_min(1e-300).rsqrt(), torch.zeros_like(d2))
            potential = potential - g * (m[rows, None] * m[None, :] * inv).sum()
        return kinetic + potential

    def diagnostics(self, state: State) -> dict[str, float]:
        """Energy and its relative error (to the last ``initial_state``), angular momentum,
        center-of-mass drift from uniform motion, closest pair distance, force evaluations so
        far, escapers."""
        with torch.no_grad():
            m = self._tensor(self.model.body_mass)
            e = float(self.energy(state))
            e0 = self.initial_energy if self.initial_energy is not None else e
            x, v = state.body_x, state.body_v
            lz = torch.cross(x, m[:, None] * v, dim=1).sum(0)
            com, _ = self._center_of_mass(state)
            com0, vcom0 = self._initial_com or (com, torch.zeros_like(com))
            # Drift: distance from where uniform motion of the initial center of mass leads.
            drift = com - (com0 + vcom0 * float(state.time))
            n = x.shape[0]
            r = torch.cdist(x, x).fill_diagonal_(math.inf)
            return {
                "time": float(state.time),
                "energy": e,
                "energy_error": abs((e - e0) / e0) if e0 != 0 else abs(e - e0),
                "angular_momentum": float(lz.norm()),
                "com_drift": float(drift.norm()),
                "min_distance": float(r.min()) if n > 1 else math.inf,
                "force_evaluations": self.force_evaluations,
                "escapers": self.escapers(state),
            }

    def escapers(self, state: State) -> int:
        """Bodies leaving the system: unbound from the rest (positive two-body energy with the
        rest's center of mass), moving away from it, and farther from it than three times the
        rest's own extent (so a member of a tight binary is not counted)."""
        with torch.no_grad():
            m = self._tensor(self.model.body_mass)
            g = as_float(self.model.gravitational_constant)
            x, v = state.body_x, state.body_v
            n, total = x.shape[0], m.sum()
            count = 0
            for i in range(n if n > 2 else 0):
                others = torch.arange(n, device=x.device) != i
                rest = total - m[i]
                cx = (m[others, None] * x[others]).sum(0) / rest
                cv = (m[others, None] * v[others]).sum(0) / rest
                r, dv = x[i] - cx, v[i] - cv
                mu = m[i] * rest / total
                energy = 0.5 * mu * (dv**2).sum() - g * m[i] * rest / r.norm()
                extent = (x[others] - cx).norm(dim=1).max()
                count += int(energy > 0 and (r * dv).sum() > 0 and r.norm() > 3 * extent)
            return count

    def _closest_pair(self, state: State) -> str:
        x = state.body_x.detach()
        n = x.shape[0]
        if n < 2:
            return "one body"
        r = torch.cdist(x, x).fill_diagonal_(math.inf)
        k = int(r.argmin())
        return f"closest pair ({k // n}, {k % n}) at distance {float(r.flatten()[k]):.3g}"

    def check_state(self, state: State) -> str | None:
        inf = float("inf")
        for name, t in (("body_x", state.body_x), ("body_v", state.body_v)):
            if not float(torch.linalg.vector_norm(t.detach(), inf)) < self.blowup:
                bad = ~(t.detach().abs() < self.blowup)
                i = int(torch.nonzero(bad)[0, 0])
                return f"{name} of body {i} is {t.detach()[i].tolist()} (NaN or beyond {self.blowup:.3g})"
        tol = self.model.energy_tolerance
        if tol is not None and self.initial_energy not in (None, 0.0):
            e = float(self.energy(state).detach())
            error = abs((e - self.initial_energy) / self.initial_energy)
            if error > tol:
                return (f"relative energy error {error:.3g} > energy_tolerance={tol:.3g} at "
                        f"t={float(state.time):.6g}; {self._closest_pair(state)}")
        return None
