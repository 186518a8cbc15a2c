"""Batched MPM worlds: world-steps per second of mpm_crawler at B worlds per launch, against a
Python loop over B single-world rollouts measured in the same run.

For each backend and B, in its own process (so that its peak memory is its own): an open-loop
rollout of the crawler (sinusoidal muscle signals, a phase per world) with B worlds in one
simulator, forward only (under ``torch.no_grad``) and forward + backward (the locomotion loss,
averaged over the worlds, differentiated in the actions); then the same B worlds as B
single-world rollouts one after the other. Each figure is the best of ``repeats`` runs after a
warm-up (kernels compiled or loaded from the cache), with torch's intra-op threads chosen as
training chooses them (``simdiff.threads.threads_for``). Rows hold ``world_steps_per_s`` (worlds
times control steps per second), ``speedup_vs_b1`` (against B = 1 of the same backend and
mode), ``vs_loop`` (against the loop of the same run) and ``peak_rss_mb`` (of the batched runs
alone, before the loop runs).

Run: ``python benchmarks/batch_mpm.py [--quick] [--json PATH]``. Measured on 2 shared CPU
cores: see :data:`MEASURED`.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time

MEASURED = """
2026-12-02, 2 CPU cores shared with other jobs (load average 9-16 throughout, so figures drift
by 2x between minutes; ``vs_loop``, measured in the same process right after the batched runs,
is the steadier ratio), float32, 376 particles, 64^2 grid, 10 substeps per control step.

Warp, 100 control steps, best of 2:
  B   forward w-steps/s  vs B=1  vs loop   fwd+bwd w-steps/s  vs B=1  vs loop   peak MB
  1        44.0           1.00    1.06          13.6          1.00    1.08       423
  2        82.9           1.88    2.14          20.5          1.51    1.63       431
  4       112.0           2.54    3.71          19.8          1.46    1.14       449
  8       111.9           2.54    2.77          26.6          1.96    1.94       488
Warp and Taichi, 30 control steps, best of 2 (torch threads as training picks them):
  warp    B=8: forward 246 w-steps/s (3.2x the loop), fwd+bwd 42.9 (2.1x the loop); 452 MB
          against 418 MB at B=1
  taichi  B=8: forward 230 w-steps/s (4.7x the loop), fwd+bwd 17.1 (1.9x the loop); 388 MB
          against 354 MB at B=1
The forward is launch-bound at B=1 and gains most; the backward (Warp's single-threaded
adjoints, whose cost grows with the worlds' particles and nodes, plus the grid recompute) is
closer to compute-bound, so forward+backward gains about 2x at B=8. Memory per world: about
5 MB (the grids of one control step, recomputed in backward, and the particle states).
Before torch was kept to one intra-op thread here, Taichi's forward+backward at B=8 ran
slower than the loop: the bridge's torch copies of grid-sized adjoints (above torch's
32,768-element grain) waited for a second thread on the busy cores (grid_update's adjoint at
B=8: 14.5 ms with two threads, 3.8 ms with one). The bridge now copies them with numpy
(``bridge._copy``): 4.9 ms with two torch threads.
"""

SCENE = "mpm_crawler"


def _options(quick: bool, steps: int | None) -> dict:
    # Quick: a toy size for the test suite; full: the scene's own size (376 particles, 64^2
    # grid, 100 control steps of 10 substeps), with ``steps`` control steps if given.
    options = {"steps": 4, "grid_size": 32} if quick else {}
    return {**options, **({"steps": steps} if steps else {})}


def measure(backend_name: str, batch: int, *, quick: bool, repeats: int,
            steps: int | None = None) -> dict:
    """One (backend, B) row: batched forward and forward + backward, then the loop."""
    import torch

    from simdiff.backend import resolve_backend
    from simdiff.bench import peak_rss_mb
    from simdiff.rollout import rollout
    from simdiff.scene import load_scene
    from simdiff.sims.mpm import MPM
    from simdiff.threads import intra_op_threads, threads_for

    scene = load_scene(SCENE, **_options(quick, steps))
    backend = resolve_backend(backend_name, precision="float32")
    steps = scene.steps
    model = scene.model
    t = torch.arange(steps, dtype=torch.float32)[:, None, None] * model.control_dt
    phase = torch.arange(batch, dtype=torch.float32)[None, :, None] * 0.7
    muscle = torch.arange(model.actuator_count, dtype=torch.float32)[None, None, :] * 1.3
    actions = 0.8 * torch.sin(2 * math.pi * 2.0 * t + phase + muscle)  # [steps, B, A]

    def run(sim, acts, grad: bool) -> float:
        leaf = acts.clone().requires_grad_(grad)
        state = sim.initial_state()
        started = time.perf_counter()
        # Torch's intra-op threads as training picks them (simdiff.threads): one for these
        # sizes, where a threaded copy of a grid waited milliseconds on shared cores.
        with torch.set_grad_enabled(grad), intra_op_threads(threads_for(state)):
            result = rollout(sim, state, lambda k, s: leaf[k], steps, check_every=10)
            loss = scene.loss(result)
            if grad:
                loss.backward()
        return time.perf_counter() - started

    def best(fn) -> float:
        fn()  # warm-up: compiles or loads kernels
        return min(fn() for _ in range(repeats))

    sim = MPM(model, backend, batch_size=batch)
    forward = best(lambda: run(sim, actions, False))
    backward = best(lambda: run(sim, actions, True))
    rss = peak_rss_mb()
    single = MPM(model, backend)

    def loop(grad: bool) -> float:
        return sum(run(single, actions[:, b:b + 1], grad) for b in range(batch))

    loop_forward = best(lambda: loop(False))
    loop_backward = best(lambda: loop(True))
    world_steps = batch * steps
    return {"backend": backend_name, "batch": batch, "steps": steps,
            "particles": model.particle_count, "grid": model.grid_size,
            "substeps": model.substeps,
            "forward": {"world_steps_per_s": world_steps / forward,
                        "loop_world_steps_per_s": world_steps / loop_forward,
                        "vs_loop": loop_forward / forward},
            "forward_backward": {"world_steps_per_s": world_steps / backward,
                                 "loop_world_steps_per_s": world_steps / loop_backward,
                                 "vs_loop": loop_backward / backward},
            "peak_rss_mb": rss}


def _child(backend: str, batch: int, quick: bool, repeats: int, steps: int | None) -> dict:
    cmd = [sys.executable, __file__, "--child", backend, str(batch), "--repeats", str(repeats),
           *(["--quick"] if quick else []), *(["--steps", str(steps)] if steps else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
        return {"backend": backend, "batch": batch, "failed": f"exit status {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def mpm_batch(batches=(1, 2, 4, 8), backends=("warp", "taichi"), quick: bool = False,
              *, repeats: int | None = None, isolate: bool | None = None,
              steps: int | None = None) -> list[dict]:
    """Rows per backend, B and mode (``forward``, ``forward_backward``): world-steps/s batched
    and looped, ``speedup_vs_b1``, ``vs_loop``, ``peak_rss_mb``.

    Args:
        batches: The numbers of worlds B (1 is the reference of ``speedup_vs_b1``).
        backends: ``warp`` and/or ``taichi``.
        quick: Toy size (4 control steps on a 32^2 grid), for tests.
        repeats: Measured runs per figure (the best is kept); default 1 quick, 3 full.
        isolate: One process per (backend, B) so that peak memory is per row (default: not
            when quick).
        steps: Control steps per rollout (default: the scene's 100, 4 when quick).
    """
    repeats = repeats or (1 if quick else 3)
    isolate = (not quick) if isolate is None else isolate
    measured = []
    for backend in backends:
        for batch in batches:
            row = (_child(backend, batch, quick, repeats, steps) if isolate
                   else measure(backend, batch, quick=quick, repeats=repeats, steps=steps))
            print(f"measured {backend} B={batch}: {json.dumps(row)}", file=sys.stderr, flush=True)
            measured.append(row)
    rows = []
    for row in measured:
        if "failed" in row:
            rows.append(row)
            continue
        for mode in ("forward", "forward_backward"):
            ref = next((r for r in measured if r["backend"] == row["backend"]
                        and r["batch"] == 1 and "failed" not in r), None)
            figures = row[mode]
            rows.append({
                "workload": SCENE, "backend": row["backend"], "batch": row["batch"],
                "mode": mode, "steps": row["steps"], "particles": row["particles"],
                "grid": row["grid"], "world_steps_per_s": figures["world_steps_per_s"],
                "loop_world_steps_per_s": figures["loop_world_steps_per_s"],
                "vs_loop": figures["vs_loop"],
                "speedup_vs_b1": (figures["world_steps_per_s"] / ref[mode]["world_steps_per_s"]
                                  if ref is not None else None),
                "peak_rss_mb": row["peak_rss_mb"],
            })
    return rows


def summarize(rows: list[dict]) -> str:
    header = (f"{'backend':8} {'B':>3} {'mode':17} {'world-steps/s':>14} {'loop':>10} "
              f"{'vs loop':>8} {'vs B=1':>7} {'peak MB':>8}")
    lines = [header]
    for r in rows:
        if "failed" in r:
            lines.append(f"{r['backend']:8} {r['batch']:>3} failed: {r['failed']}")
            continue
        lines.append(f"{r['backend']:8} {r['batch']:>3} {r['mode']:17} "
                     f"{r['world_steps_per_s']:>14.1f} {r['loop_world_steps_per_s']:>10.1f} "
                     f"{r['vs_loop']:>8.2f} {r['speedup_vs_b1']:>7.2f} {r['peak_rss_mb']:>8.0f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--backends", default="warp,taichi")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--child", nargs=2, default=None, metavar=("BACKEND", "B"))
    args = parser.parse_args()
    if args.child:
        row = measure(args.child[0], int(args.child[1]), quick=args.quick,
                      repeats=args.repeats or (1 if args.quick else 3), steps=args.steps)
        print(json.dumps(row))
        return
    rows = mpm_batch(tuple(int(b) for b in args.batches.split(",")),
                     tuple(args.backends.split(",")), args.quick, repeats=args.repeats,
                     steps=args.steps)
    print(summarize(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
