"""Roll the two-legged robot out in three worlds with no actuation, then with a controller."""

from pathlib import Path

from simdiff.backend import resolve_backend
from simdiff.rollout import rollout
from simdiff.scene import initial_worlds, load_controller, load_scene, make_simulator

here = Path(__file__).parent
scene = load_scene(here / "two_legs.py", steps=60)          # options of scene(), like --set
sim = make_simulator(scene, resolve_backend("warp"), batch_size=3)
state, params = initial_worlds(scene, sim, seed=0)          # the scene's worlds() hook
print("stiffness per world:", [round(k) for k in params.spring_params[:, 0, 0].tolist()])

result = rollout(sim, state, None, scene.steps, params=params, record_every=10)
print("unactuated:", scene.metrics(result))
print("final positions:", tuple(result.final.particle_x.shape))  # [B, particles, 2]

controller = load_controller("mlp", sim, scene)              # simdiff/controllers/mlp.py
result = rollout(sim, state, controller, scene.steps, params=params)
loss = scene.loss(result)
loss.backward()                                              # through 60 steps of physics
grad = sum(p.grad.norm() ** 2 for p in controller.parameters()) ** 0.5
print(f"loss {loss.item():.4g}, controller gradient norm {grad.item():.4g}")
