"""Checking a scene's gradients against central finite differences in float64.

For each differentiable quantity (spring stiffness, rest lengths, damping, the actuation
sequence, initial positions and velocities) a random direction ``d`` is drawn and the
autodiff directional derivative ``<grad L, d>`` is compared with
``(L(p + h d) - L(p - h d)) / (2 h)``. Directional checks cost two rollouts per quantity
whatever its size, and a wrong entry anywhere shows up in the projection.

A difference at one step cannot tell a wrong gradient from a loss that is not smooth at that
scale (contact switching, a limiter, a grid cell crossed within the step) or from round-off.
:func:`directional_check` therefore tries more steps when the first one disagrees: central
differences at ``16h, 4h, h, h/4, h/16`` (and their Richardson extrapolations). It reports

* ``ok`` when autodiff agrees with any of them;
* ``mismatch`` only when they settle (contract as ``h^2`` does, or agree within the
  tolerance, down to the smallest step) on something autodiff misses, with no kink at the
  point;
* ``non-smooth here`` when they do not settle, or when the one-sided differences keep
  different limits (a kink at the point itself), with those values as the evidence.

:func:`compare_backends` runs the same probe on Taichi and Warp and compares final states, loss
and directional derivatives: the cross-backend agreement of ``tests/test_cross_backend.py``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from simdiff.backend import Precision, resolve_backend
from simdiff.rollout import rollout
from simdiff.scene import Scene, make_simulator

__all__ = ["Agreement", "GradCheck", "Verdict", "backends_for", "check_gradients",
           "compare_backends", "directional_check"]

# Initial fields whose typical values sit on kinks of the step: a flow at rest samples exactly
# on grid nodes, where interpolation is not differentiable, and piecewise-constant dye puts the
# MacCormack limiter's min/max on ties (autodiff takes one side, central differences average
# both, and each backend breaks ties its own way). The check starts from a small random
# perturbation of them instead: a generic point, where the step is differentiable. Smooth, since
# white noise would put a limiter switch within any finite-difference step.
_KINKED = {"fluid": ("initial_velocity", "initial_dye")}
_EPS = {"fluid": 1e-7}
# Smaller steps tried when the first disagrees (each 4x smaller; down to the first / 256).
# Contact and wall projections put kinks along a direction at some spacing; a step below it
# sees the local derivative before round-off (growing as 1 / h) does. Measured on mpm_throw's
# initial positions (first step 1e-6 relative): 3e-4 off at 1e-7, agreeing to 1e-7 at 1e-8,
# then 2e-6, 8e-6, 6e-5 at 1e-9, 1e-10, 1e-11 (round-off).
_DOWN = 4
# The two implementations of each simulator (the fluid has no Taichi kernels: its step in
# vectorized torch is the second implementation).
_BACKENDS = {"fluid": ("torch", "warp")}


def backends_for(scene: Scene) -> tuple[str, str]:
    """The two backends a scene's simulator runs on (compared by :func:`compare_backends`)."""
    return _BACKENDS.get(scene.simulator, ("taichi", "warp"))


def _smooth_noise(shape: torch.Size, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Random values of ``shape`` [channels, *grid] interpolated from a 4-point-per-axis grid."""
    channels, grid = shape[0], tuple(shape[1:])
    coarse = torch.randn((1, channels, *(4,) * len(grid)), generator=gen, dtype=dtype)
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(grid)]
    return torch.nn.functional.interpolate(coarse, size=grid, mode=mode, align_corners=True)[0]

# Model fields checked, by simulator.
_FIELDS = {
    "mass_spring": ("spring_stiffness", "spring_rest_length", "spring_damping"),
    "nbody": ("body_mass", "gravitational_constant", "softening"),
    "fluid": (),  # its tensors are optional; initial velocity, dye and paddle actions are checked
    "mpm": ("particle_E", "particle_nu"),
}


class Verdict(str, Enum):
    """What a directional check concluded."""

    OK = "ok"
    MISMATCH = "mismatch"
    """The finite differences converge, to a value autodiff does not match: a wrong gradient."""
    NON_SMOOTH = "non-smooth here"
    """The finite differences do not converge (or the point is a kink): the loss is not
    differentiable at the resolution of the steps, and the check cannot decide."""


@dataclass
class GradCheck:
    """One directional-derivative comparison."""

    quantity: str
    autodiff: float
    finite_difference: float
    """The finite-difference estimate compared: the one that agreed, or the converged limit."""
    rtol: float
    atol: float
    verdict: Verdict | None = None
    """None: judged from the tolerances alone (a single-step comparison)."""
    steps: list[float] = field(default_factory=list)
    """Finite-difference steps used, largest first."""
    central: list[float] = field(default_factory=list)
    """Central differences at ``steps``."""
    evidence: str = ""
    """Why, in words, for anything but an agreement at the first step."""

    @property
    def error(self) -> float:
        return abs(self.autodiff - self.finite_difference)

    @property
    def ok(self) -> bool:
        if self.verdict is not None:
            return self.verdict is Verdict.OK
        return math.isfinite(self.autodiff) and self.error <= self.atol + self.rtol * abs(
            self.finite_difference
        )


def directional_check(quantity: str, loss_at: Callable[[float], float], autodiff: float,
                      step: float, *, rtol: float, atol: float, ratio: float = 4.0,
                      up: int = 2, down: int = 2) -> GradCheck:
    """Compare ``autodiff`` with finite differences of ``loss_at`` (the loss at ``t`` along the
    direction, ``loss_at(0)`` the base point), refining the step when the first disagrees.

    The first step is ``step``. If it disagrees, the check adds ``step * ratio**k`` for
    ``k = up, ..., 1`` (larger steps: less round-off) and ``k = -1, ..., -down`` (smaller ones:
    less curvature, fewer kinks crossed), and judges the ladder of central differences,
    largest step first:

    * OK when autodiff agrees with one of them or with a Richardson extrapolation of two
      successive ones;
    * MISMATCH when the ladder has settled (two successive values contract by 8x or more, as
      ``h^2`` does, or agree within a quarter of the tolerance, and no later pair moves more)
      on a value autodiff misses by more than the tolerance plus what is left of that settling;
    * NON_SMOOTH when it never settles, or when the one-sided differences keep two different
      limits as the step shrinks (a kink at the point itself).

    Args:
        quantity: Name of what is checked.
        loss_at: The loss, as a float, at signed distance ``t`` along the direction.
        autodiff: The autodiff directional derivative at ``t = 0``.
        step: The first step.
        rtol, atol: Tolerance of an agreement, relative to the finite difference.
        ratio: Factor between successive steps.
        up, down: Larger and smaller steps added when the first disagrees (together >= 2).

    Returns:
        The comparison; its ``verdict`` is OK, MISMATCH or NON_SMOOTH (module docstring).
    """
    if up < 0 or down < 0 or up + down < 2:
        raise ValueError(f"up={up}, down={down}: a convergence test needs at least two steps "
                         "besides the first (up, down >= 0)")

    def tol(value: float) -> float:
        return atol + rtol * abs(value)

    evaluated: dict[float, tuple[float, float]] = {}

    def central_at(h: float) -> float:
        if h not in evaluated:
            evaluated[h] = (loss_at(h), loss_at(-h))
        plus, minus = evaluated[h]
        return (plus - minus) / (2 * h)

    first = central_at(step)
    finite = math.isfinite(autodiff)
    if finite and abs(autodiff - first) <= tol(first):
        return GradCheck(quantity, autodiff, first, rtol, atol, Verdict.OK, [step], [first])
    steps = [step * ratio**k for k in range(up, -down - 1, -1)]
    central = [central_at(h) for h in steps]
    table = ", ".join(f"{c:.6e} at h={h:.1e}" for h, c in zip(steps, central))

    def result(verdict: Verdict, fd: float, evidence: str) -> GradCheck:
        return GradCheck(quantity, autodiff, fd, rtol, atol, verdict, steps, central, evidence)

    # Richardson: the h^2 term of a central difference cancelled between successive steps.
    extrapolated = [central[j + 1] + (central[j + 1] - central[j]) / (ratio**2 - 1)
                    for j in range(len(steps) - 1)]
    if finite:
        candidates = [*zip(steps, central), *zip(steps[1:], extrapolated)]
        for h, value in candidates:
            if abs(autodiff - value) <= tol(value):
                return result(Verdict.OK, value,
                              f"agrees at h={h:.1e}, not at h={step:.1e} (curvature, round-off "
                              f"or a kink within that step); differences: {table}")
    moves = [abs(central[j + 1] - central[j]) for j in range(len(steps) - 1)]
    # Settled at j, and stays so at every smaller step: a limit is what h -> 0 approaches. Kinks
    # at a regular spacing average out at steps far above it (the differences settle on the
    # mean slope there) and move again at steps near it; that is not a limit.
    settled = [j for j in range(len(moves))
               if (moves[j] <= tol(central[j + 1]) / 4 or (j > 0 and moves[j - 1] >= 8 * moves[j]))
               and all(m <= max(2 * moves[j], tol(central[j + 1]) / 4) for m in moves[j + 1:])]
    base = loss_at(0.0)
    forward = [(evaluated[h][0] - base) / h for h in steps]
    backward = [(base - evaluated[h][1]) / h for h in steps]
    gap = [abs(f - b) for f, b in zip(forward, backward)]
    if gap[-1] > tol(central[-1]) and 0.5 * gap[-2] <= gap[-1] <= 2 * gap[-2]:
        # Central differences then converge to the mean of two one-sided slopes; autodiff
        # takes one side (or a subgradient) by convention. No derivative to check.
        return result(Verdict.NON_SMOOTH, central[-1],
                      f"a kink at this point: one-sided slopes {forward[-1]:.6e} (forward) and "
                      f"{backward[-1]:.6e} (backward) stay apart as h shrinks; central "
                      f"differences: {table}")
    if not finite:
        return result(Verdict.MISMATCH, central[-1], f"autodiff is {autodiff}; differences: "
                                                     f"{table}")
    for j in settled:
        limit = extrapolated[j]
        if abs(autodiff - limit) > tol(limit) + 4 * moves[j]:
            return result(Verdict.MISMATCH, limit,
                          f"the differences settle on {limit:.6e} (between h={steps[j]:.1e} and "
                          f"h={steps[j + 1]:.1e}), not on autodiff: {table}")
    return result(Verdict.NON_SMOOTH, central[-1],
                  f"the differences do not settle as the step changes: {table}")


@dataclass
class _Probe:
    """A scene's checked quantities on one backend: their values, fixed random directions, and
    the loss as a function of them (the same draws on every backend for the same seed)."""

    simulator: Any
    base: dict[str, torch.Tensor]
    directions: dict[str, torch.Tensor]
    loss_of: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, Any]]

    def gradient(self) -> tuple[torch.Tensor, Any, dict[str, float]]:
        """Loss, rollout result and the directional derivative along each direction."""
        leaves = {n: t.clone().requires_grad_(True) for n, t in self.base.items()}
        loss, result = self.loss_of(leaves)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        derivatives = {
            name: float((g * self.directions[name]).sum()) if g is not None else 0.0
            for name, g in zip(leaves, grads)
        }
        return loss.detach(), result, derivatives


class _OpenLoopGoals:
    """The checked action sequence as a goal-conditioned controller that ignores its goal."""

    def __init__(self, actions: torch.Tensor, goal_dim: int) -> None:
        self.actions, self.goal_dim = actions, goal_dim

    def __call__(self, step: int, state, goal: torch.Tensor) -> torch.Tensor:
        return self.actions[step]


def _probe(scene: Scene, be, steps: int, seed: int, batch: int = 1) -> _Probe:
    sim = make_simulator(scene, be, batch_size=batch)
    if hasattr(sim, "tolerance"):
        # An iterative solve stopped at tolerance tau adds noise ~tau / eps to a central
        # difference: converge far below what the check resolves.
        sim.tolerance = min(sim.tolerance, 1e-13)
    gen = torch.Generator().manual_seed(seed)
    dtype, dev = be.torch_dtype, be.torch_device
    model = scene.model
    fields = _FIELDS[scene.simulator]
    base = {name: torch.as_tensor(getattr(model, name), dtype=dtype).detach().to(dev)
            for name in fields}
    state0 = sim.initial_state()
    base.update({f"initial_{n}": getattr(state0, n).detach() for n in sim.initial_fields})
    for name in _KINKED.get(scene.simulator, ()):
        shape = base[name].shape[1:]  # one world's field
        base[name] = base[name] + 1e-2 * _smooth_noise(shape, gen, dtype).to(dev)
    for name in sim.initial_fields if batch > 1 else ():
        # Worlds that differ: each but the first starts slightly elsewhere.
        value = base[f"initial_{name}"]
        scale = 1e-3 * float(value.std().clamp_min(1e-2))
        noise = scale * torch.randn(value.shape, generator=gen, dtype=dtype).to(dev)
        noise[0] = 0
        base[f"initial_{name}"] = value + noise
    if sim.action_dim:
        t = torch.arange(steps, dtype=dtype)[:, None, None]
        phase = torch.rand(batch, sim.action_dim, generator=gen, dtype=dtype) * 2 * math.pi
        base["actions"] = (0.8 * torch.sin(2 * math.pi * 2.0 * t * model.dt + phase)).to(dev)
    # Drawn on the CPU generator, then moved: identical on every backend and device.
    directions = {n: torch.randn(t.shape, generator=gen, dtype=dtype).to(dev)
                  for n, t in base.items()}
    final_weights = {
        n: torch.randn(getattr(state0, n).shape, generator=gen, dtype=dtype).to(dev)
        for n in sim.initial_fields
    }

    schedule = (scene.goals.sample(batch, steps, seed=seed)
                if getattr(scene, "goals", None) is not None else None)

    def loss_of(values: dict[str, torch.Tensor]):
        saved = {n: getattr(model, n) for n in fields}
        try:
            for n in fields:
                setattr(model, n, values[n])
            state = sim.state_from(**{n: values[f"initial_{n}"] for n in sim.initial_fields})
            actions = values.get("actions")
            controller = (lambda k, s: actions[k]) if actions is not None else None  # [B, A]
            if getattr(scene, "goals", None) is not None and controller is not None:
                # A goal-conditioned task: a fixed goal schedule; the actions stay open loop.
                from simdiff.locomotion import goal_rollout

                result = goal_rollout(sim, state, _OpenLoopGoals(actions, schedule.goal_dim),
                                      schedule, steps)
            else:
                result = rollout(sim, state, controller, steps)
            projection = sum((w * getattr(result.final, n)).sum() for n, w in final_weights.items())
            return scene.loss(result) + 1e-2 * projection, result
        finally:
            for n, t in saved.items():
                setattr(model, n, t)

    return _Probe(sim, base, directions, loss_of)


def check_gradients(
    scene: Scene,
    backend: str,
    *,
    steps: int | None = None,
    eps: float | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-9,
    seed: int = 0,
    device: str = "cpu",
    batch: int = 1,
    progress: Callable[[GradCheck, int], None] | None = None,
) -> list[GradCheck]:
    """Compare autodiff and finite differences for the scene's loss on ``backend`` in float64.

    Checked: the simulator's differentiable model fields (``_FIELDS``), its independent initial
    quantities (``sim.initial_fields``) and, for actuated simulators, the action sequence.

    The loss is the scene's task loss plus a fixed random projection of the final independent
    state fields (so that every one matters, not only what the task looks at). Actions follow a
    fixed random smooth sequence, itself one of the checked quantities.

    Args:
        scene: The scene (its model is not modified).
        backend: ``taichi`` or ``warp`` (``torch`` or ``warp`` for the fluid).
        steps: Horizon; defaults to the scene's.
        eps: First finite-difference step, relative to each quantity's scale (default 1e-6;
            1e-7 for the fluid, whose advection limiter switches within larger steps); refined
            by :func:`directional_check` where it disagrees (two steps up, four down).
        rtol, atol: Tolerances of each comparison.
        seed: Seed of the random directions and actions.
        device: Device of the backend.
        batch: Worlds rolled out at once; each but the first starts slightly elsewhere and
            has its own actions, and every checked quantity holds all worlds.
        progress: Called with each result as soon as it is known and the number of
            quantities checked in all (to print rows and advance a bar while it runs).
    """
    if steps is not None and steps < 1:
        raise ValueError(f"steps={steps} must be >= 1 (None: the scene's horizon)")
    be = resolve_backend(backend, device, Precision.FLOAT64)
    eps = eps if eps is not None else _EPS.get(scene.simulator, 1e-6)
    probe = _probe(scene, be, steps or scene.steps, seed, batch)
    _, _, derivatives = probe.gradient()
    results = []
    with torch.no_grad():
        for name, value in probe.base.items():
            d = probe.directions[name]
            scale = eps * max(float(value.abs().max()), 1e-3)

            def loss_at(t: float, name=name, value=value, d=d) -> float:
                return float(probe.loss_of({**probe.base, name: value + t * d})[0])

            results.append(directional_check(name, loss_at, derivatives[name], scale,
                                             rtol=rtol, atol=atol, down=_DOWN))
            if progress is not None:
                progress(results[-1], len(probe.base))
    return results


@dataclass
class Agreement:
    """One quantity computed on two backends."""

    quantity: str
    """``loss``, ``final_FIELD`` (largest difference of a final state field), ``d/dNAME``
    (a directional derivative) or ``design d/dPARAM`` (an inverse problem's objective)."""
    first: float
    second: float
    scale: float
    """What the difference is relative to: the magnitude of the compared values."""
    rtol: float

    @property
    def relative_difference(self) -> float:
        return abs(self.first - self.second) / max(self.scale, 1e-300)

    @property
    def ok(self) -> bool:
        return math.isfinite(self.first) and math.isfinite(self.second) and (
            self.relative_difference <= self.rtol)


def compare_backends(
    scene: Scene,
    backends: tuple[str, str] | None = None,
    *,
    steps: int | None = None,
    rtol: float = 1e-7,
    seed: int = 0,
    device: str = "cpu",
    gradients: bool = True,
    batch: int = 1,
) -> list[Agreement]:
    """Roll the scene out on two backends in float64 and compare the final states, the loss of
    :func:`check_gradients` and its directional derivatives along the same random directions;
    for inverse problems also the objective and its derivative along a random direction of the
    design parameters.

    Two independent kernels of the same model agreeing to round-off is the strongest evidence
    that both forward and adjoint are right: an autodiff pitfall (a value overwritten before
    its adjoint reads it) makes one of them differ far beyond ``rtol``.

    Args:
        scene: The scene (its model is not modified).
        backends: The two backends compared (default :func:`backends_for` the scene).
        steps: Horizon; defaults to the scene's.
        rtol: Largest difference allowed, relative to the compared values' magnitude.
        seed: Seed of the random directions and actions (the same on both).
        device: Device of both backends.
        gradients: False compares the forward only (final states and loss), for scenes that
            one backend cannot differentiate (3D MPM on Taichi).
        batch: Worlds rolled out at once (see :func:`check_gradients`).
    """
    steps = steps or scene.steps
    runs = []
    for name in backends or backends_for(scene):
        be = resolve_backend(name, device, Precision.FLOAT64)
        # A copy per backend: an inverse problem's objective may write its design into the
        # model (the fluid's obstacle or inflow speed), which must not reach the next run.
        run = copy.deepcopy(scene)
        probe = _probe(run, be, steps, seed, batch)
        if gradients:
            loss, result, derivatives = probe.gradient()
        else:
            with torch.no_grad():
                loss, result = probe.loss_of(probe.base)
            derivatives = {}
        final = {n: getattr(result.final, n).detach().cpu() for n in probe.simulator.initial_fields}
        design = (_design_derivative(run, probe.simulator, seed)
                  if run.design and gradients else {})
        runs.append((float(loss), final, derivatives, design))
    (loss_a, final_a, der_a, des_a), (loss_b, final_b, der_b, des_b) = runs
    out = [Agreement("loss", loss_a, loss_b, max(abs(loss_a), abs(loss_b)), rtol)]
    for n in final_a:
        diff = float((final_a[n] - final_b[n]).abs().max())
        scale = max(float(final_a[n].abs().max()), 1e-12)
        out.append(Agreement(f"final_{n}", 0.0, diff, scale, rtol))
    for n in der_a:
        out.append(Agreement(f"d/d{n}", der_a[n], der_b[n],
                             max(abs(der_a[n]), abs(der_b[n]), 1e-12), rtol))
    for n in des_a:
        out.append(Agreement(f"design {n}", des_a[n], des_b[n],
                             max(abs(des_a[n]), abs(des_b[n]), 1e-12), rtol))
    return out


def _design_derivative(scene: Scene, sim, seed: int) -> dict[str, float]:
    """An inverse problem's objective and its derivative along a random design direction."""
    design = scene.design(sim).to(sim.backend.torch_dtype)
    params = [p for p in design.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(seed + 1)
    loss, _, _ = scene.objective(sim, design)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    derivative = sum(
        float((g.cpu() * torch.randn(p.shape, generator=gen, dtype=g.dtype)).sum())
        for p, g in zip(params, grads) if g is not None
    )
    return {"objective": float(loss.detach()), "d/dparameters": derivative}
