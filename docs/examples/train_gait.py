"""Train the open-loop gait on the two-legged robot: by hand, then with simdiff's trainer."""

import tempfile
from pathlib import Path

import torch

from simdiff.backend import resolve_backend
from simdiff.rollout import rollout
from simdiff.scene import initial_worlds, load_controller, load_scene, make_simulator
from simdiff.train import TrainConfig, train

here = Path(__file__).parent
scene = load_scene(here / "two_legs.py", steps=100)
sim = make_simulator(scene, resolve_backend("warp"), batch_size=2)
gait = load_controller(here / "gait.py", sim, scene, frequency=2.5)
optimizer = torch.optim.Adam(gait.parameters(), lr=0.1)
for iteration in range(5):
    state, params = initial_worlds(scene, sim, seed=iteration)   # new worlds each time
    result = rollout(sim, state, gait, scene.steps, params=params)
    loss = scene.loss(result)                 # one scalar: the mean over the worlds
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"iteration {iteration}: distance {-loss.item():.4f} m")

# The same with the trainer: metrics.jsonl, checkpoints, resume, best iteration.
with tempfile.TemporaryDirectory() as out:
    config = TrainConfig(scene=str(here / "two_legs.py"), controller=str(here / "gait.py"),
                         iters=3, batch=2, lr=0.1, scene_options={"steps": 100})
    run = train(config, Path(out) / "run", progress=False)
    print("trainer losses:", [round(row["loss"], 4) for row in run.metrics])
