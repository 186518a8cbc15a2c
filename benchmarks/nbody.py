"""Benchmark: direct-summation gravity throughput, and an accuracy race on a hard problem.

Throughput: pair interactions per second of one evaluation of accelerations and jerks (forward)
and of that evaluation with its backward pass (forward+backward), for N = 1,024, 4,096 and
16,384 bodies of a Plummer sphere, float32 and float64. Baseline: a plain vectorized PyTorch
version (rows chunked to bound memory); reference: REBOUND's direct summation (one leapfrog
step, which evaluates gravity once; it also computes no jerk, so it does less work).

Accuracy: the Pythagorean problem to t = 70 on the default path (``NBody.evolve``, IAS15 at
tolerance 1e-9 in the compiled few-body loop) against REBOUND's IAS15 at the same tolerance:
relative energy error, the final binary's a and e, body 3's distance, wall time. Measured
(2-core host, shared): simdiff 0.16 s, energy error 1.5e-13 (forces at the compensated
positions; 1e-13 at every tolerance from 1e-7 to 1e-12), a = 0.5525, e = 0.98870, r = 21.42;
REBOUND 0.18 s, 3.1e-11, 0.5524, 0.98870, 21.42.

Run through ``simdiff bench nbody``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

CONFIGS = ["warp", "taichi"]
REFERENCES = ["rebound"]
BASELINE = "torch"
KEYS = ("n", "mode", "precision")
METRIC, HIGHER_IS_BETTER = "pairs_per_second", True


def _best_time(fn, repeats: int) -> float:
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _torch_forces(x, v, mass, g, chunk=512):
    a, jerk = [], []
    for start in range(0, x.shape[0], chunk):
        dx = x[None, :, :] - x[start:start + chunk, None, :]
        dv = v[None, :, :] - v[start:start + chunk, None, :]
        r2 = (dx * dx).sum(-1)
        r2 = torch.where(r2 > 0, r2, torch.ones_like(r2))
        own = (r2 == 1) & ((dx * dx).sum(-1) == 0)
        inv3 = torch.where(own, torch.zeros_like(r2), r2.rsqrt() ** 3) * g * mass[None, :]
        rv = (dx * dv).sum(-1) / r2
        a.append((inv3[..., None] * dx).sum(1))
        jerk.append((inv3[..., None] * (dv - 3 * rv[..., None] * dx)).sum(1))
    return torch.cat(a), torch.cat(jerk)


def throughput(config: str, n: int, precision: str, repeats: int, device: str) -> list[dict]:
    from simdiff.backend import resolve_backend
    from simdiff.sims.nbody import Model, NBody
    from simdiff.sims.nbody.initial import plummer

    mass, x, v = plummer(n)
    pairs = n * (n - 1)
    rows = []
    if config == "rebound":
        import rebound

        sim = rebound.Simulation()
        sim.integrator = "leapfrog"
        sim.dt = 1e-6
        for m, xi, vi in zip(mass.tolist(), x.tolist(), v.tolist()):
            sim.add(m=m, x=xi[0], y=xi[1], z=xi[2], vx=vi[0], vy=vi[1], vz=vi[2])
        seconds = _best_time(lambda: sim.steps(1), repeats)
        return [{"config": config, "n": n, "mode": "forward", "precision": "float64",
                 "pairs_per_second": pairs / seconds, "seconds": seconds}]
    dtype = torch.float64 if precision == "float64" else torch.float32
    xs, vs, ms = x.to(dtype), v.to(dtype), mass.to(dtype)
    weights = torch.randn(n, 3, dtype=dtype)
    if config == "torch":
        forward = lambda: _torch_forces(xs, vs, ms, 1.0)

        def both():
            xg = xs.clone().requires_grad_()
            a, j = _torch_forces(xg, vs, ms, 1.0)
            ((a + j) * weights).sum().backward()
    else:
        sim = NBody(Model(mass, x, v), resolve_backend(config, device, precision))
        params = sim._per_world(None)
        xs, vs, weights = xs[None], vs[None], weights[None]
        forward = lambda: sim.forces(xs, vs, params)

        def both():
            # Gradients to positions and masses: the gather-form adjoint (forces.py).
            xg = xs.clone().requires_grad_()
            mg = params.body_mass.clone().requires_grad_()
            a, j = sim.forces(xg, vs, type(params)(mg, *params.tensors()[1:]))
            ((a + j) * weights).sum().backward()

    modes = [("forward", forward), ("forward+backward", both)]
    if config == "torch" and n > 4096:
        modes = modes[:1]  # its backward graph of all pairs needs about 20 GB at n = 16,384
    for mode, fn in modes:
        with torch.no_grad() if mode == "forward" else torch.enable_grad():
            seconds = _best_time(fn, repeats)
        rows.append({"config": config, "n": n, "mode": mode, "precision": precision,
                     "pairs_per_second": pairs / seconds, "seconds": seconds})
    return rows


def _binary(x, v, mass) -> tuple[float, float, float]:
    """Semi-major axis and eccentricity of bodies 1, 2 (masses 4, 5); distance of body 0."""
    import numpy as np

    x, v, mass = (np.asarray(t, dtype=float) for t in (x, v, mass))
    r, u, mu = x[2] - x[1], v[2] - v[1], float(mass[1] + mass[2])
    energy = 0.5 * u @ u - mu / np.linalg.norm(r)
    h = np.cross(r, u)
    return (float(-mu / (2 * energy)), float(np.sqrt(max(0.0, 1 + 2 * energy * (h @ h) / mu**2))),
            float(np.linalg.norm(x[0])))


def pythagorean(config: str, t_end: float) -> list[dict]:
    from simdiff.sims.nbody.initial import pythagorean as bodies

    mass, x, v = bodies()
    if config == "rebound":
        import rebound

        start = time.perf_counter()
        sim = rebound.Simulation()
        sim.integrator = "ias15"
        sim.integrator.epsilon = 1e-9
        for m, xi, vi in zip(mass.tolist(), x.tolist(), v.tolist()):
            sim.add(m=m, x=xi[0], y=xi[1], z=xi[2], vx=vi[0], vy=vi[1], vz=vi[2])
        e0 = sim.energy()
        sim.integrate(t_end, exact_finish_time=1)
        seconds = time.perf_counter() - start
        error = abs((sim.energy() - e0) / e0)
        evaluations = None
        binary = _binary([[p.x, p.y, p.z] for p in sim.particles],
                         [[p.vx, p.vy, p.vz] for p in sim.particles], mass)
    else:
        from simdiff.backend import resolve_backend
        from simdiff.sims.nbody import Model, NBody

        sim = NBody(Model(mass, x, v, dt=1e-3, integrator="ias15", tolerance=1e-9),
                    resolve_backend(config, precision="float64"))
        sim.evolve(sim.initial_state(), 1e-3)  # compile outside the timing
        start = time.perf_counter()
        final = sim.evolve(sim.initial_state(), t_end)
        seconds = time.perf_counter() - start
        diag = sim.diagnostics(final)
        error, evaluations = float(diag["energy_error"][0]), int(diag["force_evaluations"][0])
        binary = _binary(final.body_x[0].tolist(), final.body_v[0].tolist(), mass)
    return [{"config": config, "n": 3, "mode": f"pythagorean t={t_end:g}", "precision": "float64",
             "energy_error": error, "seconds": seconds, "force_evaluations": evaluations,
             "binary_a": binary[0], "binary_e": binary[1], "body3_r": binary[2]}]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, choices=[*CONFIGS, *REFERENCES, BASELINE])
    parser.add_argument("--iters", type=int, default=3, help="repetitions (best is kept)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="toy sizes, for tests")
    args = parser.parse_args()
    sizes = [128] if args.quick else [1024, 4096, 16384]
    precisions = ["float64"] if args.config == "rebound" else ["float32", "float64"]
    if args.quick:
        precisions = precisions[-1:]
    rows = []
    for n in sizes:
        # The plain torch version is slow at the largest size: measure it once there.
        repeats = 1 if (args.config == "torch" and n > 4096) else args.iters
        for precision in precisions:
            rows += throughput(args.config, n, precision, repeats, args.device)
            if args.config == "rebound":
                break
    if args.config != "torch":
        rows += pythagorean(args.config, 1.0 if args.quick else 70.0)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
