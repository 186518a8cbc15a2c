"""Checking a scene's gradients against central finite differences in float64.

For each differentiable quantity (spring stiffness, rest lengths, damping, the actuation
sequence, initial positions and velocities) a random direction ``d`` is drawn and the
autodiff directional derivative ``<grad L, d>`` is compared with
``(L(p + eps d) - L(p - eps d)) / (2 eps)``. Directional checks cost two rollouts per quantity
whatever its size, and a wrong entry anywhere shows up in the projection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from simdiff.autodiff import rollout
from simdiff.backend import Precision, resolve_backend
from simdiff.scene import Scene, make_simulator

__all__ = ["GradCheck", "check_gradients"]

# Model fields checked, by simulator.
_FIELDS = {
    "mass_spring": ("spring_stiffness", "spring_rest_length", "spring_damping"),
    "nbody": ("body_mass", "gravitational_constant", "softening"),
    "fluid": (),  # its tensors are optional; initial velocity, dye and paddle actions are checked
    "mpm": ("particle_E", "particle_nu"),
}


@dataclass
class GradCheck:
    """One directional-derivative comparison."""

    quantity: str
    autodiff: float
    finite_difference: float
    rtol: float
    atol: float

    @property
    def error(self) -> float:
        return abs(self.autodiff - self.finite_difference)

    @property
    def ok(self) -> bool:
        return math.isfinite(self.autodiff) and self.error <= self.atol + self.rtol * abs(
            self.finite_difference
        )


def check_gradients(
    scene: Scene,
    backend: str,
    *,
    steps: int | None = None,
    eps: float = 1e-6,
    rtol: float = 1e-4,
    atol: float = 1e-9,
    seed: int = 0,
    device: str = "cpu",
) -> list[GradCheck]:
    """Compare autodiff and finite differences for the scene's loss on ``backend`` in float64.

    Checked: the simulator's differentiable model fields (``_FIELDS``), its independent initial
    quantities (``sim.initial_fields``) and, for actuated simulators, the action sequence.

    The loss is the scene's task loss plus a fixed random projection of the final independent
    state fields (so that every one matters, not only what the task looks at). Actions follow a
    fixed random smooth sequence, itself one of the checked quantities.

    Args:
        scene: The scene (its model is not modified).
        backend: ``taichi`` or ``warp``.
        steps: Horizon; defaults to the scene's.
        eps: Finite-difference step, relative to each quantity's scale.
        rtol, atol: Tolerances of each comparison.
        seed: Seed of the random directions and actions.
        device: Device of the backend.
    """
    be = resolve_backend(backend, device, Precision.FLOAT64)
    sim = make_simulator(scene, be)
    steps = steps or scene.steps
    gen = torch.Generator().manual_seed(seed)
    dtype, dev = be.torch_dtype, be.torch_device
    model = scene.model
    base = {
        name: torch.as_tensor(getattr(model, name), dtype=dtype).detach().to(dev)
        for name in _FIELDS[scene.simulator]
    }
    state0 = sim.initial_state()
    base.update({f"initial_{n}": getattr(state0, n).detach() for n in sim.initial_fields})
    if sim.action_dim:
        t = torch.arange(steps, dtype=dtype)[:, None]
        phase = torch.rand(sim.action_dim, generator=gen, dtype=dtype) * 2 * math.pi
        base["actions"] = (0.8 * torch.sin(2 * math.pi * 2.0 * t * model.dt + phase)).to(dev)
    directions = {n: torch.randn(t.shape, generator=gen, dtype=dtype).to(dev) for n, t in base.items()}
    final_weights = {
        n: torch.randn(getattr(state0, n).shape, generator=gen, dtype=dtype).to(dev)
        for n in sim.initial_fields
    }

    def loss_of(values: dict[str, torch.Tensor]) -> torch.Tensor:
        saved = {n: getattr(model, n) for n in _FIELDS[scene.simulator]}
        try:
            for n in _FIELDS[scene.simulator]:
                setattr(model, n, values[n])
            state = sim.state_from(**{n: values[f"initial_{n}"] for n in sim.initial_fields})
            actions = values.get("actions")
            controller = (lambda k, s: actions[k]) if actions is not None else None
            result = rollout(sim, state, controller, steps)
            projection = sum((w * getattr(result.final, n)).sum() for n, w in final_weights.items())
            return scene.loss(result) + 1e-2 * projection
        finally:
            for n, t in saved.items():
                setattr(model, n, t)

    leaves = {n: t.clone().requires_grad_(True) for n, t in base.items()}
    loss = loss_of(leaves)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    results = []
    with torch.no_grad():
        for (name, value), grad in zip(base.items(), grads):
            d = directions[name]
            scale = eps * max(float(value.abs().max()), 1e-3)
            plus = loss_of({**base, name: value + scale * d})
            minus = loss_of({**base, name: value - scale * d})
            fd = float((plus - minus) / (2 * scale))
            ad = float((grad * d).sum()) if grad is not None else 0.0
            results.append(GradCheck(name, ad, fd, rtol, atol))
    return results
