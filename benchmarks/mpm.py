"""Benchmark of the MPM simulator against a plain-torch implementation of the same substep.

The baseline everywhere is ``simdiff.sims.mpm.torch_reference.torch_substep``, vectorized
PyTorch differentiated by torch autograd (it keeps every substep's intermediates). Float32 on
the CPU. Every measurement runs in its own process, so its peak memory is its own; ratios are
against the baseline measured in the same run.

(a) One crawler training iteration (rollout, backward, Adam update): the ``mpm_crawler`` scene
    at ``scale=1.5`` on a 128^2 grid (about 3,200 particles), 50 control steps of 20 substeps
    (1,000 substeps), the open-loop sinusoid controller. simdiff on Taichi and on Warp
    recompute grids in backward (``--checkpoint K`` also keeps only every K-th control step's
    particles). Also reported: forward-only particle-substeps per second and peak memory.
(b) 3D forward: an elastic cube of 29,791 particles (2 per cell and axis) falling on a 64^3
    grid, seconds per substep and particle-substeps per second (no gradient).
(c) Peak memory of the gradient (forward and backward of the crawler's loss, as in (a)) at
    1,000, 4,000 and 10,000 substeps; simdiff with the MPM's default rule
    (``MPM.default_checkpoint_every``: every control step's particle state while they take
    at most 64 MiB, else checkpointed segments of ``ceil(sqrt(steps))`` control steps), with
    the bytes autograd saved for backward (``saved_mb``, :func:`simdiff.bench.saved_bytes`)
    and the peak RSS right after importing torch and the backend (``import_rss_mb``); the
    torch baseline without checkpoints (plain autograd) at the sizes that fit in memory
    (estimated from a 100-substep probe; the rest reported as an estimate).

``--part a|b|c`` runs one part (default: all); ``--quick`` is a smoke test at toy sizes (the
whole benchmark in under a minute once kernels are cached). Run through ``simdiff bench mpm``.

Earlier run of part (a) with Warp (one run, 2 shared cores): a training iteration takes 4.3 s
on Warp and 9.8 s on Taichi; forward 0.83 s and 1.0 s.

Figures of ``simdiff bench mpm --iters 1`` for Taichi and torch (2026-11-29, before the Warp
configuration joined this benchmark; float32, shared 2-core CPU; the simdiff parts ran at a
load average near 9 from other jobs, the baseline's mostly at 2-5, so the ratios understate
simdiff):

* (a) training iteration: taichi 23.4 s, torch 149 s: 6.4x; forward 3.4e6 against 3.1e4
  particle-substeps/s (110x); peak memory 450 MB against 6.8 GB (15x).
* (b) 3D forward, 29,791 particles on 64^3: taichi 0.081 s per substep (3.7e5
  particle-substeps/s), torch 2.14 s (1.4e4): 26x.
* (c) gradient peak memory (process peak; growth over the process before it in brackets),
  taichi with checkpoints every 200 substeps against plain torch:

  ========  ==================  =========================================  =====
  substeps  taichi              torch                                      ratio
  ========  ==================  =========================================  =====
  1,000     445 MB (+139 MB)    6,768 MB (+6,463 MB)                       15x
  4,000     465 MB (+159 MB)    about 26 GB (estimated: does not fit)      57x
  10,000    534 MB (+228 MB)    about 65 GB (estimated: does not fit)      122x
  ========  ==================  =========================================  =====

  The baseline grows by 6.5 MB per substep (measured at 100 and 1,000 substeps, the same);
  simdiff's 10,000-substep gradient took 644 s here (loaded; the segments are recomputed).

Parts (b) and (c) after Warp joined (``--part b`` for the three configurations, then
``--config warp --part c``, one after another on the then idle machine):

* (b) seconds per substep: taichi 0.0168 (1.8e6 particle-substeps/s), warp 0.0102 (2.9e6),
  torch 0.373 (8.0e4): taichi 22x, warp 37x faster than torch.
* (c) warp peak memory 496 / 506 / 530 MB (+124 / +134 / +158 MB) at 1,000 / 4,000 / 10,000
  substeps, in 3.6 / 12.1 / 25.1 s: 14x / 52x / 123x less than torch's measured 6.8 GB and
  estimated 26 GB and 65 GB (peak memory does not depend on the load).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from simdiff.bench import peak_rss_mb, time_iterations

CONFIGS = ["taichi", "warp"]
BASELINE = "torch"
KEYS: tuple[str, ...] = ("part", "substeps")
METRIC, HIGHER_IS_BETTER = "seconds_per_iter", False

MEMORY_SUBSTEPS = (1000, 4000, 10000)
PROBE_SUBSTEPS = 100  # the torch baseline's memory per substep is measured at this size


def measure(config: str, *, iters: int, substeps: int, quick: bool, device: str = "cpu",
            checkpoint: int | None = None) -> dict:
    from simdiff.backend import resolve_backend
    from simdiff.rollout import rollout
    from simdiff.scene import load_controller, load_scene, make_simulator
    from simdiff.sims.mpm.torch_reference import torch_substep

    per_step = 20
    options = ({"grid_size": 64, "dt": 1e-3, "substeps": 10, "scale": 1.0} if quick else
               {"grid_size": 128, "dt": 5e-4, "substeps": per_step, "scale": 1.5})
    steps = max(1, substeps // options["substeps"])
    scene = load_scene("mpm_crawler", steps=steps, **options)
    # The torch baseline uses a Taichi simulator only for its model, parameters and state.
    backend = resolve_backend("taichi" if config == BASELINE else config, device)
    sim = make_simulator(scene, backend)
    model = scene.model
    torch.manual_seed(0)
    controller = load_controller("sinusoid", sim, scene).to(backend.torch_dtype)
    optimizer = torch.optim.Adam(controller.parameters(), lr=0.05)

    if config == "torch":

        def run_rollout():
            params = sim.params().per_world(1).particle
            state = sim.initial_state()
            p, tool = sim.pack(state), torch.zeros(1, 2 * model.dim, dtype=backend.torch_dtype)
            x0 = state.particle_x
            for t in range(steps):
                action = controller(t, None)  # [B = 1, action_dim]
                for _ in range(model.substeps):
                    p = torch_substep(model, p, params, action, tool)
            return -(p[..., 0].mean() - x0[..., 0].mean())
    else:

        def run_rollout():
            # No rollout checkpoints: each step already saves only its packed particle input
            # (its grids are recomputed), 150 kB here; checkpoints would add a forward pass.
            return scene.loss(rollout(sim, sim.initial_state(), controller, steps,
                                      checkpoint_every=checkpoint, check_every=10))

    def iteration() -> float:
        loss = run_rollout()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss)

    base_rss = peak_rss_mb()
    first, times = time_iterations(iteration, iters)
    with torch.no_grad():
        started = time.perf_counter()
        run_rollout()
        forward = time.perf_counter() - started
    total = steps * model.substeps
    return {
        "config": config,
        "part": "a",
        "seconds_per_iter": times[len(times) // 2],
        "first_iter_seconds": first,
        "forward_seconds": forward,
        "particle_substeps_per_s": model.particle_count * total / forward,
        "peak_rss_mb": peak_rss_mb(),
        "rss_growth_mb": peak_rss_mb() - base_rss,
        "particles": model.particle_count,
        "grid": model.grid_size,
        "substeps": total,
        "iters": iters,
        "checkpoint": checkpoint,
    }


def measure_3d(config: str, *, quick: bool, device: str = "cpu") -> dict:
    """Part (b): forward seconds per substep of a falling elastic cube in 3D."""
    from simdiff.backend import resolve_backend
    from simdiff.sims.mpm import MPM, Body, build_model
    from simdiff.sims.mpm.torch_reference import torch_substep

    grid, edge, substeps, steps = (16, 0.25, 2, 2) if quick else (64, 0.24, 5, 4)
    backend = resolve_backend("taichi" if config == BASELINE else config, device,
                              precision="float32")
    model = build_model([Body((0.38, 0.25, 0.38), (edge,) * 3, E=1e3, nu=0.2)], grid_size=grid,
                        dt=2e-4, substeps=substeps, dtype=torch.float32)
    sim = MPM(model, backend)
    state = sim.initial_state()
    if config == "torch":
        params, p = sim.params().per_world(1).particle, sim.pack(state)
        zeros = torch.zeros(1, 1), torch.zeros(1, 6)

        def step(p):
            for _ in range(substeps):
                p = torch_substep(model, p, params, *zeros)
            return p
    else:

        def step(p):
            return sim.pack(sim.step(sim.unpack(p, state.tool_x)))

    with torch.no_grad():
        p = sim.pack(state)
        started = time.perf_counter()
        p = step(p)  # compiles kernels (or loads them from the cache)
        first = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(steps):
            p = step(p)
        elapsed = time.perf_counter() - started
    total = steps * substeps
    return {"config": config, "part": "b", "seconds_per_iter": None,
            "seconds_per_substep": elapsed / total,
            "particle_substeps_per_s": model.particle_count * total / elapsed,
            "first_step_seconds": first, "peak_rss_mb": peak_rss_mb(),
            "particles": model.particle_count, "grid": grid, "dim": 3, "substeps": total}


def measure_memory(config: str, *, substeps: int, quick: bool, device: str = "cpu") -> dict:
    """Part (c): one forward and backward of the crawler's loss; peak memory."""
    from simdiff.backend import resolve_backend
    from simdiff.rollout import rollout
    from simdiff.scene import load_controller, load_scene, make_simulator
    from simdiff.sims.mpm.torch_reference import torch_substep

    options = ({"grid_size": 64, "dt": 1e-3, "substeps": 10, "scale": 1.0} if quick else
               {"grid_size": 128, "dt": 5e-4, "substeps": 20, "scale": 1.5})
    steps = max(1, substeps // options["substeps"])
    scene = load_scene("mpm_crawler", steps=steps, **options)
    backend = resolve_backend("taichi" if config == BASELINE else config, device)
    sim = make_simulator(scene, backend)
    model = scene.model
    torch.manual_seed(0)
    controller = load_controller("sinusoid", sim, scene).to(backend.torch_dtype)
    # simdiff: the simulator's default rule (checkpoint_every=None).
    checkpoint = None if config == "torch" else sim.default_checkpoint_every(steps)
    base_rss = peak_rss_mb()
    from simdiff.bench import saved_bytes
    started = time.perf_counter()
    if config == "torch":
        params, state = sim.params().per_world(1).particle, sim.initial_state()
        p, tool = sim.pack(state), torch.zeros(1, 2 * model.dim, dtype=backend.torch_dtype)
        for t in range(steps):
            action = controller(t, None)  # [B = 1, action_dim]
            for _ in range(model.substeps):
                p = torch_substep(model, p, params, action, tool)
        loss = -(p[..., 0].mean() - state.particle_x[..., 0].mean())
    else:
        with saved_bytes() as saved:
            loss = scene.loss(rollout(sim, sim.initial_state(), controller, steps,
                                      check_every=10))
    loss.backward()
    # One iteration, including loading the kernels: not a speed figure, so not the metric.
    return {"config": config, "part": "c", "seconds_per_iter": None,
            "seconds": time.perf_counter() - started,
            "peak_rss_mb": peak_rss_mb(), "rss_growth_mb": peak_rss_mb() - base_rss,
            "particles": model.particle_count, "grid": model.grid_size,
            "substeps": steps * model.substeps, "checkpoint": checkpoint,
            "import_rss_mb": base_rss,
            "saved_mb": saved.mb if config != "torch" else None}


def _available_mb() -> float:
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return float(info["MemAvailable"].split()[0]) / 1024.0


def _child(args: argparse.Namespace, case: str) -> list[dict]:
    """Run one measurement in its own process (its peak memory is its own)."""
    cmd = [sys.executable, __file__, "--config", args.config, "--case", case,
           "--device", args.device, "--iters", str(args.iters), "--substeps", str(args.substeps),
           *(["--quick"] if args.quick else []),
           *(["--checkpoint", str(args.checkpoint)] if args.checkpoint else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:  # e.g. killed for memory or time: reported, the others still run
        sys.stderr.write(done.stderr[-3000:])
        part, substeps = (case, None) if case in ("a", "b") else ("c", int(case[1:]))
        if case == "a":
            substeps = 20 if args.quick else args.substeps
        return [{"config": args.config, "part": part, "substeps": substeps,
                 "seconds_per_iter": None, "failed": f"exit status {done.returncode}"}]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"measured {args.config} {case}: {json.dumps(rows)}", file=sys.stderr, flush=True)
    return rows


def _memory_rows(args: argparse.Namespace, sizes: tuple[int, ...]) -> list[dict]:
    if args.config != BASELINE or args.quick:
        return [row for n in sizes for row in _child(args, f"c{n}")]
    # The baseline keeps every substep: measure its growth per substep on a probe, run the
    # sizes whose estimate fits in 60 % of the memory available now, estimate the others.
    (first,) = _child(args, f"c{PROBE_SUBSTEPS}")
    if "failed" in first:
        return [first]
    per_substep = first["rss_growth_mb"] / first["substeps"]
    rows = [first]
    for n in sizes:
        estimate = first["peak_rss_mb"] + per_substep * (n - first["substeps"])
        if estimate < 0.6 * _available_mb():
            rows += _child(args, f"c{n}")
        else:
            rows.append({"config": args.config, "part": "c", "substeps": n,
                         "seconds_per_iter": None, "estimated_peak_rss_mb": estimate,
                         "skipped": "does not fit in memory"})
    return rows


def summarize(rows: list[dict]) -> str:
    """Parts (b) and (c) as ratios against the torch baseline of the same run."""
    def find(config, part, **keys):
        return next((r for r in rows if r["config"] == config and r.get("part") == part
                     and all(r.get(k) == v for k, v in keys.items())), None)

    lines = []
    base = find(BASELINE, "b")
    for ours in (find(config, "b") for config in CONFIGS):
        if not (ours and base and ours.get("seconds_per_substep")
                and base.get("seconds_per_substep")):
            continue
        lines.append(
            f"(b) 3D forward, {ours['particles']} particles, {ours['grid']}^3 grid: "
            f"{ours['config']} "
            f"{ours['seconds_per_substep']:.4g} s/substep ({ours['particle_substeps_per_s']:.3g} "
            f"particle-substeps/s), torch {base['seconds_per_substep']:.4g} s/substep: "
            f"{base['seconds_per_substep'] / ours['seconds_per_substep']:.3g}x faster")
    for row in rows:
        if row["config"] not in CONFIGS or row.get("part") != "c" or "failed" in row:
            continue
        n = row["substeps"]
        base = find(BASELINE, "c", substeps=n)
        text = (f"(c) gradient at {n} substeps: {row['config']} peak {row['peak_rss_mb']:.0f} MB "
                f"(+{row['rss_growth_mb']:.0f} MB over {row['import_rss_mb']:.0f} MB of imports, "
                f"{row['seconds']:.3g} s, "
                + (f"checkpoint every {row['checkpoint']} steps" if row["checkpoint"]
                   else "no checkpoints")
                + f", {row['saved_mb']:.1f} MB saved for backward)")
        if base and base.get("peak_rss_mb"):
            text += (f"; torch peak {base['peak_rss_mb']:.0f} MB (+{base['rss_growth_mb']:.0f} "
                     f"MB): {base['peak_rss_mb'] / row['peak_rss_mb']:.3g}x less memory")
        elif base and "estimated_peak_rss_mb" in base:
            text += (f"; torch would need about {base['estimated_peak_rss_mb']:.0f} MB "
                     f"(estimated; {base['skipped']}): "
                     f"{base['estimated_peak_rss_mb'] / row['peak_rss_mb']:.3g}x")
        lines.append(text)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, choices=[*CONFIGS, BASELINE])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--substeps", type=int, default=1000, help="part (a)'s horizon")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="toy size, for tests")
    parser.add_argument("--checkpoint", type=int, default=None,
                        help="part (a), simdiff: keep one state every this many control steps")
    parser.add_argument("--part", choices=["a", "b", "c", "all"], default="all")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one measurement, in a child process
    args = parser.parse_args()
    if args.case == "a":
        substeps, iters = (20, 1) if args.quick else (args.substeps, args.iters)
        rows = [measure(args.config, iters=iters, substeps=substeps, quick=args.quick,
                        device=args.device, checkpoint=args.checkpoint)]
    elif args.case == "b":
        rows = [measure_3d(args.config, quick=args.quick, device=args.device)]
    elif args.case:
        rows = [measure_memory(args.config, substeps=int(args.case[1:]), quick=args.quick,
                               device=args.device)]
    else:
        rows = []  # the quick parts first: the baseline's part (a) takes longest
        if args.part in ("b", "all"):
            rows += _child(args, "b")
        if args.part in ("c", "all"):
            rows += _memory_rows(args, (20,) if args.quick else MEMORY_SUBSTEPS)
        if args.part in ("a", "all"):
            rows += _child(args, "a")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
