"""Design through simulation: the paper's CNN reparameterization lays out the stiffness of a
mass-spring bridge that simdiff's own mass-spring simulator loads and lets settle.

The structure is a deck of ``nx`` by ``ny`` cells standing on two legs (built with
:func:`~simdiff.sims.mass_spring.builder.robot_from_ascii`, so every cell is a braced square
of springs). A payload of heavy particles sits on the middle of the deck's top row. Each deck
cell has a density from the CNN (through the volume-constrained sigmoid, mean ``volfrac``); a
spring's stiffness is ``k0 * (kmin + mean density of its cells ** 3)`` (SIMP on springs; legs
are solid). The loss is the payload's mean drop over the end of a heavily damped rollout:
gradients flow from it through every simulator step (the mass-spring autograd op) to the
stiffnesses, the sigmoid offset and the network weights.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

from simdiff.design.params import CNNParam, constrained_sigmoid

__all__ = ["BridgeDesign", "design_bridge"]


@dataclasses.dataclass
class BridgeDesign:
    losses: list[float]
    uniform_sag: float
    best_sag: float
    density: np.ndarray
    seconds: float
    paths: list[Path]


def _bridge(nx: int, ny: int, leg: int, leg_height: int, cell: float, payload: float,
            stiffness: float):
    from simdiff.sims.mass_spring.builder import robot_from_ascii

    rows = ["#" * nx] * ny + [("#" * leg) + "." * (nx - 2 * leg) + ("#" * leg)] * leg_height
    model = robot_from_ascii("\n".join(rows), cell=cell, stiffness=stiffness, damping=2.0,
                             drag=8.0, mass=0.2, friction=2.0, lift=0.0, dt=0.001)
    x = model.particle_x
    height = ny + leg_height
    col = torch.round((x[:, 0] - x[:, 0].min()) / cell).long()
    row = torch.round((x[:, 1] - x[:, 1].min()) / cell).long()  # 0 at the bottom
    top = torch.nonzero(row == height).flatten()
    middle = top[(col[top] >= nx // 3) & (col[top] <= nx - nx // 3)]
    mass = model.particle_mass.clone()
    mass[middle] = payload / len(middle)
    model.particle_mass = mass
    # Spring -> cells (a shared edge belongs to two cells, a diagonal to one): rows of a
    # [springs, deck cells + 1] averaging matrix, the last column standing for leg cells.
    pairs = model.spring_indices
    mid_c = (col[pairs[:, 0]] + col[pairs[:, 1]]).double() / 2
    mid_r = (row[pairs[:, 0]] + row[pairs[:, 1]]).double() / 2
    entries = []
    for s in range(pairs.shape[0]):
        cs = {int(np.floor(mid_c[s] + d)) for d in (-0.25, 0.25)}
        rs = {int(np.floor(mid_r[s] + d)) for d in (-0.25, 0.25)}
        cells = []
        for c in cs:
            for r in rs:
                if not (0 <= c < nx and 0 <= r < height):
                    continue
                if r >= leg_height:  # deck cell: image row 0 is the deck's top
                    cells.append((height - 1 - r) * nx + c)
                elif c < leg or c >= nx - leg:
                    cells.append(nx * ny)  # a leg
        for k in cells:
            entries.append((s, k, 1.0 / len(cells)))
    average = torch.zeros(pairs.shape[0], nx * ny + 1, dtype=torch.float64)
    for s, k, w in entries:
        average[s, k] += w
    return model, middle, average


def design_bridge(out: str | Path | None = None, *, nx: int = 16, ny: int = 8, iters: int = 30,
                  volfrac: float = 0.5, steps: int = 500, lr: float = 0.03, seed: int = 0,
                  payload: float = 10.0, stiffness: float = 5e4,
                  backend: str = "warp", progress=print) -> BridgeDesign:
    """Optimize the deck's stiffness layout with the CNN and Adam; write the design image, a
    GIF of the loaded structure settling and the loss curve into ``out`` when given.

    Raises:
        ValidationError: an argument out of range, named, before anything is built.
    """
    from simdiff.backend import resolve_backend
    from simdiff.sims.base import ValidationError

    for name, value, low in (("nx", nx, 1), ("ny", ny, 1), ("iters", iters, 1),
                             ("steps", steps, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValidationError(f"{name}={value!r} must be an integer >= {low}")
    if not (isinstance(volfrac, (int, float)) and 0.0 < volfrac < 1.0):
        raise ValidationError(f"volfrac={volfrac!r} must lie strictly between 0 and 1 (the "
                              "mean density of the deck's cells)")
    for name, value in (("lr", lr), ("payload", payload), ("stiffness", stiffness)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValidationError(f"{name}={value!r} must be a finite number > 0")
    from simdiff.rollout import rollout
    from simdiff.sims.mass_spring import MassSpring

    start = time.perf_counter()
    leg, leg_height = 2, 4
    model, payload, average = _bridge(nx, ny, leg=leg, leg_height=leg_height, cell=0.05,
                                      payload=payload, stiffness=stiffness)
    k0, kmin = float(model.spring_stiffness[0]), 0.05
    sim = MassSpring(model, resolve_backend(backend, "cpu", "float64"))
    y0 = model.particle_x[payload, 1].mean()
    net = CNNParam((ny, nx), seed=seed)

    def sag(density: torch.Tensor, record_every: int = 0):
        cells = torch.cat([density.reshape(-1), density.new_ones(1)])
        sim.model.spring_stiffness = k0 * (kmin + (average @ cells) ** 3)
        # the mean drop over the last 40 % of the rollout, sampled every 20 steps (the
        # structure still rings a little after the heavy damping)
        settle = int(0.6 * steps)
        first = rollout(sim, sim.initial_state(), None, settle, record_every=record_every,
                        checkpoint_every=50)
        state, drops = first.final, []
        for _ in range((steps - settle) // 20):
            state = rollout(sim, state, None, 20).final
            drops.append(y0 - state.particle_x[0, payload, 1].mean())  # the one world
        return torch.stack(drops).mean(), first

    with torch.no_grad():
        uniform = float(sag(torch.full((ny, nx), volfrac, dtype=torch.float64))[0])
    progress(f"uniform density {volfrac}: payload sag {1e3 * uniform:.3f} mm")
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses, best, best_density = [], float("inf"), None
    for i in range(iters):
        density = constrained_sigmoid(net(), volfrac)
        loss, _ = sag(density)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if losses[-1] < best:
            best, best_density = losses[-1], density.detach().clone()
        if i % max(1, iters // 10) == 0 or i == iters - 1:
            progress(f"iteration {i:>4}  payload sag {1e3 * losses[-1]:.3f} mm")
    paths: list[Path] = []
    if out is not None:
        out = Path(out)
        # In the picture's cells (y down from the deck's top): the payload's nodes and the
        # legs the deck stands on.
        loads = [(c, 0.0) for c in range(nx // 3, nx - nx // 3 + 1)]
        legs = [(0, leg, ny, ny + leg_height), (nx - leg, nx, ny, ny + leg_height)]
        paths = _write(out, sim, best_density, losses, sag, volfrac, nx, ny, loads=loads,
                       legs=legs, payload_kg=float(model.particle_mass[payload].sum()))
    return BridgeDesign(losses, uniform, best, best_density.numpy(),
                        time.perf_counter() - start, paths)


def _write(out: Path, sim, density, losses, sag, volfrac, nx, ny, *, loads, legs,
           payload_kg: float) -> list[Path]:
    """The outputs every design run writes: ``design.png`` (the layout, a color bar, the
    payload, the legs and the sag), ``settling.gif`` (the loaded bridge settling), ``sag.png`` (the loss curve),
    ``metrics.jsonl`` and ``design.npy``."""
    import json

    from simdiff.design.render import density_figure
    from simdiff.render import plot_series, render_mass_spring, write_video

    out.mkdir(parents=True, exist_ok=True)
    best = min(losses)
    png = density_figure(density.numpy(), out / "design.png",
                         title=f"CNN stiffness layout, {nx}x{ny} deck, volfrac {volfrac}\n"
                               f"payload sag {1e3 * best:.3f} mm",
                         label="stiffness density (cell stiffness ~ density^3)",
                         loads=loads, supports=legs,
                         load_label=f"payload {payload_kg:g} kg (on these top nodes)",
                         support_label="legs (fixed stiffness, on the ground)")
    with torch.no_grad():
        _, result = sag(density, record_every=5)
    states = result.recorded()
    positions = np.stack([s.particle_x.numpy() for s in states])
    springs = sim.model.spring_indices.numpy()
    stiffness = sim.model.spring_stiffness.detach().numpy()
    # stiff springs drawn red, soft ones grey: the layout in motion
    shade = np.clip(stiffness / stiffness.max(), 0, 1)
    dt = float(sim.model.dt)
    frames = render_mass_spring(positions, springs, actuation=np.tile(shade, (len(states), 1)),
                                follow=False, title=f"CNN stiffness layout, volfrac {volfrac}",
                                times=[t * dt for t in sorted(result.frames)],
                                legend=("stiffness", "soft", "stiff"), legend_range=(0.0, 1.0))
    gif = write_video(frames, out / "settling.gif", fps=20)
    curve = plot_series(list(range(len(losses))), {"sag": losses}, out / "sag.png",
                        xlabel="iteration", ylabel="payload sag [m]",
                        title=f"payload sag, {nx}x{ny} deck")
    metrics = out / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"iteration": i, "sag_m": v}) + "\n"
                               for i, v in enumerate(losses)))
    npy = out / "design.npy"
    np.save(npy, density.numpy())
    return [png, gif, curve, metrics, npy]
