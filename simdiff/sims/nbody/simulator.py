"""The N-body simulator: ``B`` worlds of gravitating bodies, gravity kernels on Taichi or
Warp (one launch serves every world), integrators in torch, whole intervals of few-body
systems in a compiled loop (:meth:`NBody.evolve`)."""

from __future__ import annotations

import dataclasses
import math

import torch

from simdiff.backend import Backend, BackendName
from simdiff.sims import base
from simdiff.sims.base import SimulationError, Simulator, world_field
from simdiff.sims.nbody import integrators
from simdiff.sims.nbody.forces import gravity
from simdiff.sims.nbody.model import Integrator, Model, StepCriterion
from simdiff.sims.nbody.state import State

__all__ = ["NBody", "Params"]

@dataclasses.dataclass
class Params(base.Params):
    """What a step reads besides the state; each field shared or per world ``[B, ...]``."""

    body_mass: torch.Tensor = world_field(1, "Masses [mass], shape [N] or [B, N].")
    gravitational_constant: torch.Tensor = world_field(0, "G, shape [] or [B].")
    softening: torch.Tensor = world_field(
        0, "Plummer softening [length], shape [] or [B].")
    dt: torch.Tensor = world_field(
        0, "Fixed step, the largest adaptive step, or (IAS15) the output interval [time], "
           "shape [] or [B]; may require grad.")


class NBody(Simulator):
    """Differentiable direct-summation N-body gravity for ``batch_size`` worlds.

    Args:
        model: The validated model (its tensors shared or per world).
        backend: Where the gravity kernels run.
        batch_size: Number of worlds; by default the leading size of the model's per-world
            tensors, else 1.
        blowup: A position or velocity component beyond this magnitude fails the world.
    """

    name = "nbody"
    initial_fields = ("body_x", "body_v")
    Params = Params

    def __init__(self, model: Model, backend: Backend, *, batch_size: int | None = None,
                 blowup: float = 1e8) -> None:
        super().__init__(model, backend, batch_size=batch_size or _model_batch(model))
        self.blowup = blowup
        backend.ensure_initialized()
        if backend.name is BackendName.WARP:
            from simdiff.sims.nbody.warp import build_forces
        else:
            from simdiff.sims.nbody.taichi import build_forces
        self._kernels = build_forces(backend, self.batch_size, model.body_count)
        self.initial_energy: torch.Tensor | None = None
        """Energy per world ``[B]`` of the last state made by ``initial_state`` (the
        reference of relative errors)."""
        self._initial_com: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last_status: torch.Tensor | None = None
        """Per-world outcome of the last :meth:`evolve` (:class:`Status` codes), ``[B]``."""

    # --- contract -----------------------------------------------------------------------

    @property
    def action_dim(self) -> int:
        return 0

    @property
    def observation_dim(self) -> int:
        return 6 * self.model.body_count

    def _tensor(self, value) -> torch.Tensor:
        # dtype given up front: as_tensor of a Python float would round it to float32 first.
        if isinstance(value, torch.Tensor):
            return value.to(self.backend.torch_device, self.backend.torch_dtype)
        return torch.tensor(value, dtype=self.backend.torch_dtype, device=self.backend.torch_device)

    def params(self) -> Params:
        """The model's masses, G, softening and step (differentiable in the model's tensors)."""
        m = self.model
        return Params(self._tensor(m.body_mass), self._tensor(m.gravitational_constant),
                      self._tensor(m.softening), self._tensor(m.dt))

    def _per_world(self, params: Params | None) -> Params:
        p = (self.params() if params is None else params).per_world(self.batch_size)
        return p.map(lambda t: self._tensor(t))

    def forces(self, x: torch.Tensor, v: torch.Tensor, params: Params | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Accelerations and jerks ``[B, N, 3]`` (one evaluation of all pairs of every world)."""
        p = self._per_world(params)
        gp = torch.stack([p.gravitational_constant, p.softening], 1)
        return gravity(self._kernels, x, v, p.body_mass, gp)

    def initial_state(self, x: torch.Tensor | None = None, v: torch.Tensor | None = None,
                      params: Params | None = None) -> State:
        """The state at time 0 from the model's (or the given) positions and velocities,
        each ``[N, 3]`` (shared) or ``[B, N, 3]``."""
        b = self.batch_size
        x = base.per_world(self._tensor(self.model.body_x if x is None else x), b, 2, "body_x")
        v = base.per_world(self._tensor(self.model.body_v if v is None else v), b, 2, "body_v")
        for name, t in (("body_x", x), ("body_v", v)):
            bad = ~torch.isfinite(t.detach())
            if bad.any():
                w, i = (int(k) for k in bad.nonzero()[0, :2])
                raise ValueError(f"{name} of world {w}, body {i} is {t.detach()[w, i].tolist()}; "
                                 "initial conditions must be finite")
        p = self._per_world(params)
        a, jerk = self.forces(x, v, p)
        zero = torch.zeros_like(x)
        time = x.new_zeros(b)
        stages = 7 if self.model.integrator is Integrator.IAS15 else 0
        coefficients = x.new_zeros(b, stages, *x.shape[1:])
        state = State(x, v, a, jerk, zero, zero, time, zero, zero, coefficients, coefficients,
                      time, time, torch.zeros(b, dtype=torch.int64, device=x.device))
        with torch.no_grad():
            self.initial_energy = self.energy(state, p).detach()
            self._initial_com = self._center_of_mass(state, p)
        return state

    def state_from(self, **fields: torch.Tensor) -> State:
        return self.initial_state(fields["body_x"], fields["body_v"])

    def step(self, state: State, action: torch.Tensor | None = None,
             params: Params | None = None) -> State:
        """One step of every world: fixed or adaptive (``eta``); for IAS15, ``dt`` of time
        in as many adaptive IAS15 steps as it takes (``dt`` is then the output interval; the
        gradient treats the inner step sizes as constants, see :meth:`evolve`).

        Args:
            state: The current state ``[B, ...]``.
            action: Must be None: N-body takes no action.
            params: Masses, G, softening and ``dt``; by default :meth:`params`.
        """
        if action is not None:
            raise ValueError(
                "the N-body simulator takes no action (action_dim = 0); pass action=None, got "
                f"a tensor of shape {list(action.shape)}")
        p = self._per_world(params)
        if self.model.integrator is Integrator.IAS15:
            # IAS15 chooses its own steps: one simulator step is an output interval of dt.
            return self.evolve(state, state.time.detach() + p.dt.detach(), p)
        return self._advance(state, p, self.next_dt(state, p))

    def _advance(self, state: State, p: Params, dt: torch.Tensor) -> State:
        """Step every world by ``dt`` [B]; IAS15 rejects and retries a world whose step turns
        out too long (its proposal below ``SAFETY`` of the step)."""
        gp = torch.stack([p.gravitational_constant, p.softening], 1)

        def forces(x, v):
            return gravity(self._kernels, x, v, p.body_mass, gp)

        model = self.model
        if model.integrator is not Integrator.IAS15:
            return integrators.INTEGRATORS[model.integrator.value](forces, state, dt)
        accepted = torch.zeros(self.batch_size, dtype=torch.bool, device=dt.device)
        out = None
        for _ in range(64):
            candidate = integrators.ias15(forces, state, dt, model.tolerance)
            with torch.no_grad():
                reject = (candidate.time_step < integrators.SAFETY * dt) & ~accepted
                reject &= dt > model.dt_min  # a step at dt_min is taken whatever it proposes
                fresh = ~reject & ~accepted
            out = candidate if out is None else candidate.where(fresh, out)
            accepted = accepted | fresh
            if bool(accepted.all()):
                return out
            dt = torch.where(reject, torch.clamp(candidate.time_step, min=model.dt_min), dt)
        raise SimulationError("IAS15 rejected 64 steps in a row")

    def _step_exactly(self, state: State, p: Params, dt: torch.Tensor) -> State:
        """Step every world by exactly ``dt`` [B] (IAS15 without rejection): a replay."""
        if self.model.integrator is not Integrator.IAS15:
            return self._advance(state, p, dt)
        gp = torch.stack([p.gravitational_constant, p.softening], 1)
        return integrators.ias15(lambda x, v: gravity(self._kernels, x, v, p.body_mass, gp),
                                 state, dt, self.model.tolerance)

    def next_dt(self, state: State, params: Params | None = None,
                eta: float | torch.Tensor | None = None) -> torch.Tensor:
        """The step ``[B]`` each world takes next: the fixed ``dt`` (differentiable), the
        model's criterion times ``eta`` capped at ``dt``, or IAS15's proposal (the step
        choice is not differentiated)."""
        m = self.model
        p = self._per_world(params)
        if m.integrator is Integrator.IAS15:
            with torch.no_grad():
                return torch.where(state.time_step > 0, state.time_step, p.dt.detach())
        eta = m.eta if eta is None else eta
        if eta is None:
            return p.dt
        with torch.no_grad():
            eta = torch.as_tensor(eta, dtype=p.dt.dtype, device=p.dt.device).expand(
                self.batch_size)
            dt = eta * self._criterion(state, p)
            bad = ~(dt >= m.dt_min)
            if bad.any():
                w = int(bad.nonzero()[0])
                raise SimulationError(
                    f"world {w}: adaptive time step {float(dt[w]):.3g} at "
                    f"t={float(state.time[w]):.6g} fell below dt_min={m.dt_min:.3g}; "
                    f"{self._closest_pair(state, w)}",
                    {w: (0, f"time step {float(dt[w]):.3g} below dt_min")})
            capped = dt >= p.dt.detach()
        return torch.where(capped, p.dt, dt)

    def _criterion(self, state: State, p: Params) -> torch.Tensor:
        """The time scale ``[B]`` the model's criterion gives (``next_dt`` times ``1 / eta``)."""
        if self.model.criterion is StepCriterion.COLLISION:
            return self.collision_time(state, p)
        inf = torch.tensor(math.inf, dtype=state.body_x.dtype, device=state.body_x.device)
        a = state.body_a.norm(dim=2)
        j = state.body_jerk.norm(dim=2)
        a2 = state.body_snap.norm(dim=2)
        a3 = state.body_crackle.norm(dim=2)
        aarseth = torch.sqrt((a * a2 + j * j) / (j * a3 + a2 * a2))
        # A body with no acceleration or no jerk (at rest at a symmetry point) says nothing
        # about the time scale: only bodies with both count.
        usable = (a > 0) & (j > 0)
        aarseth = torch.where(usable & torch.isfinite(aarseth) & (aarseth > 0), aarseth, inf)
        first = torch.where(usable, a / torch.where(usable, j, 1.0), inf)
        has_snap = a2.amax(1) > 0
        scale = torch.where(has_snap, aarseth.amin(1), first.amin(1))
        if not bool(torch.isfinite(scale).all()):
            # No body qualifies (all at rest): the shortest pair free-fall time.
            scale = torch.where(torch.isfinite(scale), scale, self.free_fall_time(state, p))
        return scale

    def _pair_times(self, state: State, p: Params) -> tuple[torch.Tensor, torch.Tensor]:
        x, v = state.body_x.detach(), state.body_v.detach()
        n = x.shape[1]
        r = torch.cdist(x, x)
        vr = torch.cdist(v, v)
        m = p.body_mass.detach()
        g = p.gravitational_constant.detach()[:, None, None]
        free_fall = torch.sqrt(r**3 / (g * (m[:, :, None] + m[:, None, :])))
        eye = torch.eye(n, dtype=torch.bool, device=x.device)
        free_fall = free_fall.masked_fill(eye, math.inf)
        crossing = (r / vr.clamp_min(1e-300)).masked_fill(eye, math.inf)
        return free_fall, crossing

    def free_fall_time(self, state: State, params: Params | None = None) -> torch.Tensor:
        """Shortest pair free-fall time per world ``[B]``: ``min sqrt(r^3 / (G (m_i + m_j)))``."""
        free_fall, _ = self._pair_times(state, self._per_world(params))
        return free_fall.flatten(1).amin(1)

    def collision_time(self, state: State, params: Params | None = None) -> torch.Tensor:
        """Shortest pair collision or free-fall time per world ``[B]``."""
        free_fall, crossing = self._pair_times(state, self._per_world(params))
        return torch.minimum(free_fall, crossing).flatten(1).amin(1)

    def evolve(self, state: State, t_end: float | torch.Tensor, params: Params | None = None,
               *, eta: float | torch.Tensor | None = None, max_steps: int = 10_000_000,
               health: str = "stop", compiled: bool | None = None,
               backward: str = "compiled") -> State:
        """Advance every world to ``t_end`` (scalar or ``[B]``), the last step shortened to
        land on it. See :mod:`simdiff.sims.nbody.evolve` for the compiled few-body loop and
        how gradients flow."""
        from simdiff.sims.nbody.evolve import evolve

        return evolve(self, state, t_end, params, eta=eta, max_steps=max_steps, health=health,
                      compiled=compiled, backward=backward)

    # --- observation, energy, health ----------------------------------------------------

    def _center_of_mass(self, state: State, p: Params) -> tuple[torch.Tensor, torch.Tensor]:
        w = p.body_mass.detach()
        w = (w / w.sum(1, keepdim=True))[:, :, None]
        return (w * state.body_x.detach()).sum(1), (w * state.body_v.detach()).sum(1)

    def observe(self, state: State) -> torch.Tensor:
        """Positions and velocities in each world's center-of-mass frame ``[B, 6 N]``: per
        body its position then its velocity."""
        mass = self._per_world(None).body_mass.detach()
        w = (mass / mass.sum(1, keepdim=True))[:, :, None]
        x = state.body_x - (w * state.body_x).sum(1, keepdim=True)
        v = state.body_v - (w * state.body_v).sum(1, keepdim=True)
        return torch.cat([x, v], 2).flatten(1)

    def energy(self, state: State, params: Params | None = None, *,
               chunk: int = 2048) -> torch.Tensor:
        """Kinetic plus (softened) potential energy per world ``[B]``, differentiable."""
        p = self._per_world(params)
        m, x = p.body_mass, state.body_x
        g = p.gravitational_constant[:, None, None]
        eps2 = (p.softening**2)[:, None, None]
        kinetic = 0.5 * (m * (state.body_v**2).sum(2)).sum(1)
        potential = x.new_zeros(x.shape[0])
        n = x.shape[1]
        cols = torch.arange(n, device=x.device)
        for start in range(0, n, chunk):
            rows = slice(start, min(start + chunk, n))
            d2 = ((x[:, rows, None, :] - x[:, None, :, :]) ** 2).sum(-1) + eps2
            upper = torch.arange(start, rows.stop, device=x.device)[:, None] < cols[None, :]
            inv = torch.where(upper, d2.clamp_min(1e-300).rsqrt(), torch.zeros_like(d2))
            potential = potential - (g * m[:, rows, None] * m[:, None, :] * inv).sum((1, 2))
        return kinetic + potential

    def energy_error(self, state: State) -> torch.Tensor:
        """``|E / E0 - 1|`` per world ``[B]`` against the last :meth:`initial_state`."""
        with torch.no_grad():
            e = self.energy(state)
            e0 = self.initial_energy if self.initial_energy is not None else e
            return torch.where(e0 != 0, (e / torch.where(e0 != 0, e0, 1.0) - 1).abs(),
                               (e - e0).abs())

    def diagnostics(self, state: State) -> dict[str, torch.Tensor]:
        """Per world ``[B]``: time, energy and its relative error (to the last
        ``initial_state``), angular momentum, center-of-mass drift from uniform motion,
        closest pair distance, force evaluations so far, escapers."""
        with torch.no_grad():
            p = self._per_world(None)
            m = p.body_mass
            x, v = state.body_x, state.body_v
            lz = torch.cross(x, m[:, :, None] * v, dim=2).sum(1)
            com, _ = self._center_of_mass(state, p)
            com0, vcom0 = self._initial_com or (com, torch.zeros_like(com))
            drift = com - (com0 + vcom0 * state.time[:, None])
            n = x.shape[1]
            r = torch.cdist(x, x) + torch.diag(
                torch.full((n,), math.inf, dtype=x.dtype, device=x.device))
            return {
                "time": state.time.clone(),
                "energy": self.energy(state, p),
                "energy_error": self.energy_error(state),
                "angular_momentum": lz.norm(dim=1),
                "com_drift": drift.norm(dim=1),
                "min_distance": r.flatten(1).amin(1) if n > 1 else torch.full_like(
                    state.time, math.inf),
                "force_evaluations": state.force_evaluations.clone(),
                "escapers": self.escapers(state),
            }

    def escapers(self, state: State) -> torch.Tensor:
        """Bodies leaving each world ``[B]``: unbound from the rest (positive two-body energy
        with the rest's center of mass), moving away from it, and farther from it than three
        times the rest's own extent (so a member of a tight binary is not counted)."""
        with torch.no_grad():
            p = self._per_world(None)
            m, g = p.body_mass, p.gravitational_constant
            x, v = state.body_x, state.body_v
            n = x.shape[1]
            count = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
            total = m.sum(1)
            for i in range(n if n > 2 else 0):
                others = torch.arange(n, device=x.device) != i
                rest = total - m[:, i]
                cx = (m[:, others, None] * x[:, others]).sum(1) / rest[:, None]
                cv = (m[:, others, None] * v[:, others]).sum(1) / rest[:, None]
                r, dv = x[:, i] - cx, v[:, i] - cv
                mu = m[:, i] * rest / total
                energy = 0.5 * mu * (dv**2).sum(1) - g * m[:, i] * rest / r.norm(dim=1)
                extent = (x[:, others] - cx[:, None]).norm(dim=2).amax(1)
                count += ((energy > 0) & ((r * dv).sum(1) > 0)
                          & (r.norm(dim=1) > 3 * extent)).long()
            return count

    def _closest_pair(self, state: State, world: int) -> str:
        x = state.body_x[world].detach()
        n = x.shape[0]
        if n < 2:
            return "one body"
        r = torch.cdist(x, x).fill_diagonal_(math.inf)
        k = int(r.argmin())
        return f"closest pair ({k // n}, {k % n}) at distance {float(r.flatten()[k]):.3g}"

    def check_state(self, state: State) -> dict[int, str]:
        """``{world: description}`` of worlds with a non-finite or blown-up position or
        velocity, or (with ``energy_tolerance``) too large an energy error."""
        failures: dict[int, str] = {}
        for name, t in (("body_x", state.body_x), ("body_v", state.body_v)):
            bad = ~(t.detach().abs() < self.blowup)
            if bad.any():
                for w, i, _ in bad.nonzero().tolist():
                    if w not in failures:
                        value = t.detach()[w, i].tolist()
                        failures[w] = (f"{name} of body {i} is {value} (NaN or beyond "
                                       f"{self.blowup:.3g})")
        tol = self.model.energy_tolerance
        if tol is not None and self.initial_energy is not None:
            error = self.energy_error(state)
            for w in (error > tol).nonzero().flatten().tolist():
                if w not in failures:
                    failures[w] = (f"relative energy error {float(error[w]):.3g} > "
                                   f"energy_tolerance={tol:.3g} at t={float(state.time[w]):.6g}; "
                                   f"{self._closest_pair(state, w)}")
        return dict(sorted(failures.items()))


def _model_batch(model: Model) -> int:
    """The leading size of the model's per-world tensors (1 if all are shared)."""
    sizes = set()
    for name, ndim in (("body_mass", 1), ("body_x", 2), ("body_v", 2),
                       ("gravitational_constant", 0), ("softening", 0), ("dt", 0)):
        t = getattr(model, name)
        if isinstance(t, torch.Tensor) and t.dim() == ndim + 1:
            sizes.add(int(t.shape[0]))
    if len(sizes) > 1:
        raise ValueError(f"the model's per-world tensors have different leading sizes "
                         f"{sorted(sizes)}; they must all be B")
    return sizes.pop() if sizes else 1
