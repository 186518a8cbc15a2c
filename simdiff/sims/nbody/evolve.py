"""Advancing whole intervals: ``NBody.evolve(state, t_end, params)``.

Every world steps with its own adaptive (or fixed) steps until its ``t_end``, the last step
shortened to land on it. Two paths, one result:

* **Compiled** (systems of at most ``FEW_BODIES`` bodies; float64 inside): one Warp launch
  advances every world through all its steps, one thread per world, in
  :mod:`simdiff.sims.nbody.fewbody` (the same integrators and step criteria as
  :mod:`~simdiff.sims.nbody.integrators` and ``NBody.next_dt``, operation for operation, except
  that IAS15 evaluates its forces at the compensated positions there, which takes its energy
  error from REBOUND's ~1e-10 to ~1e-13 in close encounters; tests check the two give the same
  trajectories). About a microsecond per three-body Hermite step and 4 us per IAS15 step,
  against ~0.5 ms and ~3 ms for a step driven from Python.
* **Stepped** (otherwise): ``NBody`` steps from Python, all worlds per launch, finished worlds
  frozen; gradients by torch autograd through the steps.

Gradients of the compiled path: when any input requires grad, the compiled loop records every
world's accepted step sizes, and the end state it returns (every field the compiled forward's,
bit for bit) is a differentiable function of the start state's positions, velocities,
accelerations and jerks, the masses, G and the softening. Its backward
(``backward="compiled"``, the default, every integrator) is one more Warp launch, one
thread per world (:func:`simdiff.sims.nbody.fewbody.backward`): the thread takes the recorded
steps again through the forward loop's operations, keeping the state before each step, then
goes back step by step with hand-written adjoints (an RK4 step re-run with its stage
positions on a tape, an IAS15 step's predictor-corrector iterations with their node positions,
so the adjoint sees the forces at the same compensated positions as the forward). It takes 1.2-3.5 times the forward's time
(Hermite to IAS15 through close encounters), the torch replay's forward and backward 400-2,200
times the compiled path's (``benchmarks/nbody_backward.py``). The torch replay
(``backward="replay"``) takes the recorded steps again through the
torch integrators with the sizes as constants and differentiates them by autograd; it is the
reference the compiled backward is tested against (to ~1e-15), but it forms IAS15's forces at
the rounded positions, so its end state differs from the compiled forward's by round-off.
Either way the step sizes, and IAS15's iteration counts and its predictor, are constants in
backward: the step-size choice is not differentiated, the usual treatment (REBOUND's
variational equations do the same); tests check the gradients against central differences
with frozen steps and against REBOUND's variational particles. On the compiled path no
gradient flows to ``dt`` (the stepped path differentiates a fixed ``dt``).
"""

from __future__ import annotations

import dataclasses
import warnings

import torch

from simdiff.sims.base import SimulationError
from simdiff.sims.nbody.model import Integrator

__all__ = ["Status", "evolve"]


class Status:
    """Per-world outcome codes of :func:`evolve` (``NBody.last_status``)."""

    OK = 0
    DT_BELOW_MIN = 1
    MAX_STEPS = 2
    NOT_FINITE = 3


def _end_times(sim, state, t_end) -> torch.Tensor:
    t = torch.as_tensor(t_end, dtype=state.time.dtype, device=state.time.device)
    t = t.expand(sim.batch_size) if t.dim() == 0 else t
    if tuple(t.shape) != (sim.batch_size,):
        raise ValueError(f"t_end has shape {list(t.shape)}; expected [] or [{sim.batch_size}]")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"t_end={t.tolist()} must be finite")
    return t


def _eta(sim, eta) -> torch.Tensor | None:
    eta = sim.model.eta if eta is None else eta
    if eta is None:
        return None
    e = torch.as_tensor(eta, dtype=sim.backend.torch_dtype).expand(sim.batch_size)
    if not bool(((e > 0) & (e <= 10)).all()):
        raise ValueError(f"eta={e.tolist()} must lie in (0, 10]")
    return e


def evolve(sim, state, t_end, params=None, *, eta=None, max_steps: int = 10_000_000,
           health: str = "stop", compiled: bool | None = None, backward: str = "compiled"):
    """See :meth:`simdiff.sims.nbody.NBody.evolve`.

    Args:
        eta: Accuracy parameter per world (scalar or ``[B]``), overriding the model's.
        max_steps: Most steps a world may take in this call.
        health: ``stop`` raises :class:`SimulationError` naming the world that failed (step
            below ``dt_min``, ``max_steps`` reached, a non-finite state); ``mask`` freezes
            failed worlds where they stopped. ``sim.last_status`` holds each world's
            :class:`Status` either way.
        compiled: Force (True) or refuse (False) the compiled loop; None takes it for few
            bodies.
        backward: How gradients of the compiled loop are computed: ``compiled`` (in one
            Warp launch) or ``replay`` (the torch replay, the reference).
    """
    if health not in ("stop", "mask"):
        raise ValueError(f"health={health!r} is unknown; allowed: stop, mask")
    if backward not in ("compiled", "replay"):
        raise ValueError(f"backward={backward!r} is unknown; allowed: compiled, replay")
    t_end = _end_times(sim, state, t_end)
    etas = _eta(sim, eta)
    p = sim._per_world(params)
    from simdiff.sims.nbody import fewbody

    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (*state.tensors(), *p.tensors()))
    if compiled and not fewbody.supports(sim):
        raise ValueError(f"compiled=True needs at most {fewbody.FEW_BODIES} bodies; the model "
                         f"has {sim.model.body_count}")
    if fewbody.supports(sim) if compiled is None else compiled:
        final, status, steps = fewbody.advance(sim, state, p, t_end, etas, max_steps,
                                               record=needs_grad)
        if needs_grad:
            if backward == "compiled":
                final = _compiled_gradient(sim, state, p, final, steps, sim.last_steps)
            else:
                final = _replay(sim, state, p, steps)
    else:
        final, status = _stepped(sim, state, p, t_end, etas, max_steps)
    sim.last_status = status
    if health == "stop" and bool((status != Status.OK).any()):
        w = int((status != Status.OK).nonzero()[0])
        what = {Status.DT_BELOW_MIN: f"the step fell below dt_min={sim.model.dt_min:.3g}",
                Status.MAX_STEPS: f"max_steps={max_steps} were reached",
                Status.NOT_FINITE: "the state stopped being finite"}[int(status[w])]
        raise SimulationError(
            f"world {w}: evolve stopped at t={float(final.time[w]):.6g} of "
            f"{float(t_end[w]):.6g}: {what}; {sim._closest_pair(final, w)}",
            {w: (0, what)})
    return final


def _stepped(sim, state, p, t_end, etas, max_steps):
    """Step all worlds from Python until each reaches its end; finished worlds frozen."""
    model = sim.model
    status = torch.zeros(sim.batch_size, dtype=torch.int64)
    taken = 0
    while True:
        active = (state.time < t_end * (1 - 1e-14)) & (status == Status.OK)
        if not bool(active.any()):
            return state, status
        if taken >= max_steps:
            status[active] = Status.MAX_STEPS
            return state, status
        with torch.no_grad():
            if model.integrator is Integrator.IAS15 or etas is None:
                chosen = sim.next_dt(state, p).detach()
            else:
                chosen = etas.to(p.dt) * sim._criterion(state, p)
                low = ~(chosen >= model.dt_min) & active
                status[low] = Status.DT_BELOW_MIN
                active = active & ~low
                chosen = torch.minimum(chosen, p.dt.detach())
            remaining = t_end - state.time.detach()
        if etas is None and model.integrator is not Integrator.IAS15:
            dt = torch.where(chosen < remaining, p.dt, remaining)
        else:
            dt = torch.minimum(chosen, remaining)
        # Frozen worlds take a harmless step that is thrown away (dt = 0 divides in Hermite's
        # snap estimate, and a NaN there would poison the gradient through the selection).
        dt = torch.where(active, dt, p.dt.detach())
        new = sim._advance(state, p, dt)
        state = new.where(active, state)
        bad = torch.tensor(sorted(sim.check_state(state)), dtype=torch.int64)
        if bad.numel():
            status[bad] = Status.NOT_FINITE
        taken += 1


def _replay(sim, state, p, steps: torch.Tensor):
    """The recorded steps ``[B, S]`` (0 past a world's last) taken again through the torch
    integrators, differentiably, with the sizes as constants."""
    for k in range(steps.shape[1]):
        dt = steps[:, k].to(state.time)
        active = dt > 0
        if not bool(active.any()):
            break
        new = sim._step_exactly(state, p, torch.where(active, dt, p.dt.detach()))
        state = new.where(active, state)
    return state


class _CompiledGradient(torch.autograd.Function):
    """The compiled loop's end state as a function of the start state's positions,
    velocities, accelerations and jerks, the masses, G and the softening; backward by
    :func:`simdiff.sims.nbody.fewbody.backward`."""

    @staticmethod
    def forward(ctx, run, x, v, a, jerk, mass, g, eps):
        ctx.run = run
        ctx.dtypes = [t.dtype for t in (x, v, a, jerk, mass, g, eps)]
        end = run["final"]
        return (end.body_x.clone(), end.body_v.clone(), end.body_a.clone(),
                end.body_jerk.clone())

    @staticmethod
    def backward(ctx, adj_x, adj_v, adj_a, adj_j):
        from simdiff.sims.nbody import fewbody

        run = ctx.run
        grads, end = fewbody.backward(run["sim"], run["state"], run["p"], run["steps"],
                                      run["counts"], (adj_x, adj_v, adj_a, adj_j))
        final = run["final"]
        if not (torch.equal(end[0].to(final.body_x), final.body_x)
                and torch.equal(end[1].to(final.body_v), final.body_v)):
            # Never seen (a test checks it): the replay repeats the forward's operations.
            warnings.warn("NBody.evolve: the compiled backward's replay left the forward's "
                          "trajectory; its gradient is that of a neighbouring one",
                          RuntimeWarning, stacklevel=2)
        return (None, *(g.to(dtype) for g, dtype in zip(grads, ctx.dtypes)))


def _compiled_gradient(sim, state, p, final, steps, counts):
    """The compiled loop's end state ``final`` made differentiable: the same values, the
    gradient from the compiled backward."""
    run = {"sim": sim, "state": state.detach(), "p": p.map(lambda t: t.detach()),
           "final": final, "steps": steps, "counts": counts.clone()}
    x, v, a, jerk = _CompiledGradient.apply(
        run, state.body_x, state.body_v, state.body_a, state.body_jerk, p.body_mass,
        p.gravitational_constant, p.softening)
    return dataclasses.replace(final, body_x=x, body_v=v, body_a=a, body_jerk=jerk)
