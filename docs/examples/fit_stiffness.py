"""Fit the hidden stiffness with the trainer, then check the gradient by central differences."""

import tempfile
from pathlib import Path

import torch

from simdiff.backend import resolve_backend
from simdiff.scene import load_scene, make_simulator
from simdiff.train import TrainConfig, train

here = Path(__file__).parent
with tempfile.TemporaryDirectory() as out:
    config = TrainConfig(scene=str(here / "stiffness_fit.py"), iters=15, lr=0.1)
    run = train(config, Path(out) / "fit", progress=False)
first, last = run.metrics[0], run.metrics[-1]
print(f"loss {first['loss']:.3g} -> {last['loss']:.3g}; "
      f"stiffness error {first['stiffness_error']:.1%} -> {last['stiffness_error']:.1%}")

# The objective's gradient against a central difference, in float64.
scene = load_scene(here / "stiffness_fit.py")
sim = make_simulator(scene, resolve_backend("warp", precision="float64"))
design = scene.design(sim)
loss, _, _ = scene.objective(sim, design)
loss.backward()
eps = 1e-6
with torch.no_grad():
    design.log_scale += eps
    up = scene.objective(sim, design)[0]
    design.log_scale -= 2 * eps
    down = scene.objective(sim, design)[0]
print(f"d loss / d log_scale: autodiff {design.log_scale.grad.item():.6e}, "
      f"central difference {((up - down) / (2 * eps)).item():.6e}")
