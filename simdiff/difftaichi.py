"""DiffTaichi's example scripts as baselines of ``simdiff bench --difftaichi DIR``.

The scripts (``mass_spring.py`` with ``mass_spring_robot_config.py``, ``diffmpm.py``,
``smoke_taichi.py`` from DiffTaichi's ``examples/`` folder) are read from ``DIR``, never
shipped. :func:`patch_source` makes one runnable here before it runs: every ``ti.init`` gets
``arch=ti.cpu``; ``ti.GUI`` windows and the plotting and image libraries (matplotlib, cv2,
imageio) become inert stubs; the ``if __name__ == "__main__"`` block is dropped. The benchmark
then calls the script's own functions (its forward under ``ti.ad.Tape``, its update) for a
fixed number of iterations and times them itself.

Every configuration of a workload runs in a worker process of its own (one Taichi runtime per
process; peak memory its own), set up and warmed up once (kernels compiled); the timed rounds
then alternate between the workers (``--rounds``), so a ratio compares iterations measured
seconds apart, not minutes, on a host whose load drifts. Each row also gives the median CPU
seconds per iteration (all threads of the worker) and the load average while it ran: on a
shared host a single-threaded worker waits for a core longer than a multi-threaded one. Workloads (issue 18):

* ``mass_spring``: DiffTaichi's robot 2 (its MLP, 682 steps) against ``walker_small`` with the
  MLP controller (680 steps): one training iteration (rollout, backward, update).
* ``mpm``: ``diffmpm.py``'s robot (1,024 substeps on 128^2, sine-wave actuation) against the
  ``mpm_crawler`` scene at about 3,200 particles on 128^2, 51 control steps of 20 substeps.
* ``smoke``: ``smoke_taichi.py`` (128^2, 100 steps, ten unconverged Jacobi sweeps, a periodic
  box with no inflow, optimizing the initial velocity towards a target image) against the same
  problem in simdiff: the ``fluid_smoke_to_image`` scene at 128^2, 100 steps, semi-Lagrangian
  advection as DiffTaichi's, forward and backward of its objective, projection solved to a
  relative residual of 1e-6 or tighter, on the fluid's vectorized-torch step (``torch``) and on
  Warp (``warp``; the fluid has no Taichi kernels). That scene's box has walls and nothing
  inside, so its pressure is solved exactly by fast cosine transforms
  (:mod:`simdiff.sims.fluid.spectral`, residual at round-off, 0 CG iterations). The row
  ``plume_torch`` keeps the earlier comparison: the fluid benchmark's plume (an inflow box and
  an open top, so multigrid-preconditioned CG with warm starts), a different and harder
  problem than DiffTaichi's, kept to show what a scene with solids or sources costs;
  ``plume_capacitance`` is the same with ``Fluid(capacitance=True)`` (its static inflow box
  solved exactly by the spectral solve and a capacitance matrix, CG only in the first
  solve). Each row names the solve that ran (``pressure_solve``) and its CG iterations.

Memory: each row has the worker's peak RSS and ``memory_vs_difftaichi``; the MPM rows also
``import_rss_mb`` (peak RSS once the libraries are imported and initialized: torch and the
backend for simdiff, Taichi for DiffTaichi), ``above_import_mb`` (the peak less that, the
workload's own memory) with its ratio, and simdiff's ``saved_for_backward_mb`` (bytes autograd
saved for backward in one iteration, :func:`simdiff.bench.saved_bytes`).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

__all__ = ["EXAMPLES", "WORKLOADS", "compare", "load_example", "patch_source"]

EXAMPLES = {"mass_spring": "mass_spring.py", "mpm": "diffmpm.py", "smoke": "smoke_taichi.py"}
"""The DiffTaichi script each workload runs, in DiffTaichi's ``examples/`` folder."""

WORKLOADS = {"mass_spring": ("warp", "taichi"), "mpm": ("warp", "taichi"),
             "smoke": ("torch", "warp", "plume_torch", "plume_capacitance")}
"""The simdiff backends measured against each workload's DiffTaichi script."""

_STUBBED_MODULES = ("matplotlib", "cv2", "imageio")
_STUB = "_simdiff_stub"
_PRELUDE = f'''
class {_STUB}:
    """Inert stand-in for a window or a plotting library: every use does nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return self

    def __getattr__(self, name):
        return self
'''


class _Patch(ast.NodeTransformer):
    def __init__(self) -> None:
        self.changes: list[str] = []

    @staticmethod
    def _is_ti(node: ast.AST, attr: str) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == attr
                and isinstance(node.value, ast.Name) and node.value.id == "ti")

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if self._is_ti(node.func, "init"):
            keywords = [k for k in node.keywords if k.arg != "arch"]
            cpu = ast.Attribute(value=ast.Name(id="ti", ctx=ast.Load()), attr="cpu",
                                ctx=ast.Load())
            node.keywords = [ast.keyword(arg="arch", value=cpu), *keywords]
            self.changes.append("ti.init(arch=ti.cpu)")
        elif self._is_ti(node.func, "GUI"):
            self.changes.append("ti.GUI stubbed")
            return ast.Call(func=ast.Name(id=_STUB, ctx=ast.Load()), args=[], keywords=[])
        return node

    def _stub_imports(self, node: ast.Import | ast.ImportFrom) -> ast.AST | list[ast.AST]:
        names = [(a.asname or a.name.split(".")[0]) for a in node.names]
        root = (node.module if isinstance(node, ast.ImportFrom) else node.names[0].name) or ""
        if root.split(".")[0] not in _STUBBED_MODULES:
            return node
        self.changes.append(f"{root} stubbed")
        return [ast.Assign(targets=[ast.Name(id=name, ctx=ast.Store())],
                           value=ast.Call(func=ast.Name(id=_STUB, ctx=ast.Load()), args=[],
                                          keywords=[]))
                for name in names]

    visit_Import = _stub_imports
    visit_ImportFrom = _stub_imports

    def visit_If(self, node: ast.If) -> ast.AST | None:
        test = node.test
        if (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
                and test.left.id == "__name__"):
            self.changes.append("main block dropped")
            return None
        self.generic_visit(node)
        return node


def patch_source(text: str) -> str:
    """The script ``text`` made to run headless on the CPU (see the module docstring).

    Raises:
        ValueError: the script calls no ``ti.init`` (it would not be a DiffTaichi example).
    """
    tree = ast.parse(text)
    patch = _Patch()
    tree = patch.visit(tree)
    if "ti.init(arch=ti.cpu)" not in patch.changes:
        raise ValueError("the script calls no ti.init(...); is it a DiffTaichi example?")
    body = ast.parse(_PRELUDE).body + tree.body
    return ast.unparse(ast.fix_missing_locations(ast.Module(body=body, type_ignores=[])))


def load_example(path: str | Path, argv: list[str] | None = None) -> ModuleType:
    """Run the patched script at ``path`` as a module (its folder importable, ``sys.argv`` set
    to ``[path, *argv]`` while its top level runs) and return it."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"DiffTaichi example {path} not found")
    # Taichi reads a kernel's source back from its file (inspect), so the patched text is
    # written to a file of its own; the original's folder stays importable for its imports.
    patched = Path(tempfile.mkdtemp(prefix="simdiff_difftaichi_")) / path.name
    patched.write_text(patch_source(path.read_text()))
    # dont_inherit: this module's ``from __future__ import annotations`` would turn the
    # script's kernel annotations (``t: ti.i32``) into strings, which Taichi refuses.
    code = compile(patched.read_text(), str(patched), "exec", dont_inherit=True)
    module = ModuleType(f"difftaichi_{path.stem}")
    module.__file__ = str(patched)
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(path), *(argv or [])]
    sys.path.insert(0, str(path.parent))
    try:
        exec(code, module.__dict__)  # noqa: S102 - a script the user pointed us to, like a scene
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return module


# ---------------------------------------------------------------------------------------------
# What one iteration is, per workload and configuration: setup returns (iteration, facts).

def _difftaichi_mass_spring(folder: Path) -> tuple[Callable[[], None], dict]:
    ex = load_example(folder / EXAMPLES["mass_spring"], ["2", "train", "--iters", "1"])
    ex.setup_robot(*ex.robots[2]())

    def iteration() -> None:  # its optimize(): re-initialized weights, then one iteration
        ex.optimize(toi=True, visualize=False)

    return iteration, {"particles": ex.n_objects, "springs": ex.n_springs,
                       "steps": ex.steps}


def _difftaichi_mpm(folder: Path) -> tuple[Callable[[], None], dict]:
    import numpy as np

    ex = load_example(folder / EXAMPLES["mpm"], [])
    import_rss = _peak_rss_mb()  # Taichi imported and initialized, no field allocated yet
    scene = ex.Scene()  # what its main() does before its loop
    ex.robot(scene)
    scene.finalize()
    ex.allocate_fields()
    for i in range(ex.n_actuators):
        for j in range(ex.n_sin_waves):
            ex.weights[i, j] = np.random.randn() * 0.01
    for i in range(scene.n_particles):
        ex.x[0, i] = scene.x[i]
        ex.F[0, i] = [[1, 0], [0, 1]]
        ex.actuator_id[i] = scene.actuator_id[i]
        ex.particle_type[i] = scene.particle_type[i]

    def iteration() -> None:  # one pass of its main() loop, without the visualization
        with ex.ti.ad.Tape(ex.loss):
            ex.forward()
        for i in range(ex.n_actuators):
            for j in range(ex.n_sin_waves):
                ex.weights[i, j] -= 0.1 * ex.weights.grad[i, j]
            ex.bias[i] -= 0.1 * ex.bias.grad[i]

    return iteration, {"particles": scene.n_particles, "grid": ex.n_grid,
                       "substeps": ex.steps, "import_rss_mb": import_rss}


def _difftaichi_smoke(folder: Path) -> tuple[Callable[[], None], dict]:
    import numpy as np

    ex = load_example(folder / EXAMPLES["smoke"], [])
    n = ex.n_grid
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    # Its target is an image file; a smooth blob of the same size does the same arithmetic.
    ex.init(np.exp(-((i - n / 2) ** 2 + (j - n / 2) ** 2) / (n / 4) ** 2).astype(np.float32))

    def iteration() -> None:
        with ex.ti.ad.Tape(ex.loss):
            ex.forward()
        ex.apply_grad()

    return iteration, {"grid": f"{n}x{n}", "steps": ex.steps,
                       "jacobi_sweeps": ex.num_iterations_gauss_seidel}


def _simdiff_mass_spring(backend_name: str) -> tuple[Callable[[], None], dict]:
    import torch

    from simdiff.backend import resolve_backend
    from simdiff.optim import Adam  # what `simdiff train` runs: torch's, no compiler import
    from simdiff.rollout import rollout
    from simdiff.scene import load_controller, load_scene, make_simulator
    from simdiff.threads import intra_op_threads, threads_for

    scene = load_scene("walker_small")
    sim = make_simulator(scene, resolve_backend(backend_name))
    torch.manual_seed(0)
    controller = load_controller("mlp", sim, scene)
    optimizer = Adam(controller.parameters(), lr=0.01)
    threads = threads_for(sim.initial_state())

    def iteration() -> None:  # what `simdiff train` does per iteration
        with intra_op_threads(threads):
            loss = scene.loss(rollout(sim, sim.initial_state(), controller, scene.steps))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return iteration, {"particles": scene.model.particle_count,
                       "springs": scene.model.spring_count, "steps": scene.steps}


def _simdiff_mpm(backend_name: str) -> tuple[Callable[[], None], dict]:
    import torch

    from simdiff.backend import resolve_backend
    from simdiff.bench import saved_bytes
    from simdiff.optim import Adam  # what `simdiff train` runs: torch's, no compiler import
    from simdiff.rollout import rollout
    from simdiff.scene import load_controller, load_scene, make_simulator
    from simdiff.threads import intra_op_threads, threads_for

    scene = load_scene("mpm_crawler", steps=51, grid_size=128, dt=5e-4, substeps=20, scale=1.5)
    sim = make_simulator(scene, resolve_backend(backend_name))
    import_rss = _peak_rss_mb()  # torch and the backend imported and initialized
    torch.manual_seed(0)
    controller = load_controller("sinusoid", sim, scene)
    optimizer = Adam(controller.parameters(), lr=0.05)
    threads = threads_for(sim.initial_state())
    measured: dict = {}

    def iteration() -> None:  # what `simdiff train` does per iteration
        with intra_op_threads(threads):
            with saved_bytes() as saved:
                loss = scene.loss(rollout(sim, sim.initial_state(), controller, scene.steps,
                                          check_every=10))
            measured.setdefault("saved_for_backward_mb", saved.mb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    model = scene.model
    return iteration, {"particles": model.particle_count, "grid": model.grid_size,
                       "substeps": scene.steps * model.substeps, "import_rss_mb": import_rss,
                       "measured": measured}


def _simdiff_smoke(config: str) -> tuple[Callable[[], None], dict]:
    import torch

    from simdiff.backend import resolve_backend
    from simdiff.sims.fluid import Fluid
    from simdiff.threads import intra_op_threads, threads_for

    steps = 100
    plume = config.startswith("plume_")
    capacitance = config == "plume_capacitance"
    backend = resolve_backend("torch" if capacitance else config.removeprefix("plume_"),
                              precision="float32")
    gen = torch.Generator().manual_seed(0)
    if plume:  # the fluid benchmark's inflow plume: CG, as scenes with solids or sources
        from simdiff.bench import _folder, _load
        from simdiff.rollout import rollout

        model = _load(_folder() / "fluid.py").plume((128, 128))
        sim = Fluid(model, backend, capacitance=capacitance)
        v0 = 0.05 * torch.randn(2, 129, 129, generator=gen)

        def loss() -> torch.Tensor:
            v = v0.clone().requires_grad_()
            final = rollout(sim, sim.initial_state(velocity=v), None, steps).final
            return final.dye.square().sum()
    else:  # DiffTaichi's task: smoke_taichi.py's problem, the fluid_smoke_to_image scene
        from simdiff.scene import load_scene

        scene = load_scene("fluid_smoke_to_image", resolution=128, steps=steps,
                           advection="semi_lagrangian")
        model = scene.model
        model.tolerance = 1e-6
        sim = Fluid(model, backend)
        design = scene.design(sim)
        with torch.no_grad():  # a design already moving the smoke (the optimizer's start)
            design.velocity.copy_(0.4 * torch.randn(design.velocity.shape, generator=gen))

        def loss() -> torch.Tensor:
            design.zero_grad()
            return scene.objective(sim, design)[0]

    threads = threads_for(sim.initial_state())
    stats = sim.stats

    def iteration() -> None:  # forward and backward, threads as `simdiff train` sets them
        stats.solves = stats.iterations = stats.adjoint_solves = stats.adjoint_iterations = 0
        with intra_op_threads(threads):
            loss().backward()

    def facts() -> dict:  # CG iterations per solve of the last iteration (0: spectral)
        solver = sim._fused_cache[2] if sim._fused_cache is not None else None
        return {"pressure_solve": _SOLVES.get(type(solver).__name__, "multigrid CG (torch)"),
                "cg_iterations": round(stats.iterations / max(stats.solves, 1), 2),
                "adjoint_cg_iterations": round(stats.adjoint_iterations
                                               / max(stats.adjoint_solves, 1), 2),
                "torch_threads": threads}

    iteration.facts = facts
    return iteration, {"problem": "plume" if plume else "smoke_to_image", "grid": "128x128",
                       "steps": steps, "tolerance": model.tolerance,
                       "advection": model.advection.value, "warm_start": sim.warm_start}


_SOLVES = {"SpectralSolve": "spectral", "CapacitanceSolve": "capacitance",
           "FusedSolve": "multigrid CG (one launch)"}
"""The pressure solve of a fluid row, by the class that ran it in the last iteration."""


_DIFFTAICHI = {"mass_spring": _difftaichi_mass_spring, "mpm": _difftaichi_mpm,
               "smoke": _difftaichi_smoke}
_SIMDIFF = {"mass_spring": _simdiff_mass_spring, "mpm": _simdiff_mpm, "smoke": _simdiff_smoke}


def _peak_rss_mb() -> float:
    """As :func:`simdiff.bench.peak_rss_mb`, without importing simdiff's package (and torch)
    into a DiffTaichi worker."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _worker(workload: str, config: str, folder: str) -> None:
    """Set up, warm up, then answer ``run K`` lines with K iteration times as JSON lines."""
    peak_rss_mb = _peak_rss_mb
    channel = sys.stdout
    sys.stdout = sys.stderr  # the scripts print every iteration; the channel stays clean
    if config == "difftaichi":
        iteration, facts = _DIFFTAICHI[workload](Path(folder))
    else:
        iteration, facts = _SIMDIFF[workload](config)
    started = time.perf_counter()
    iteration()  # compiles the kernels (or loads them from a cache)
    facts["first_iter_seconds"] = time.perf_counter() - started
    facts.update(facts.pop("measured", {}))  # figures the first iteration measured
    channel.write(json.dumps(facts) + "\n")
    channel.flush()
    for line in sys.stdin:
        if not line.startswith("run "):
            break
        times, cpu = [], []
        for _ in range(int(line.split()[1])):
            started, cpu_started = time.perf_counter(), time.process_time()
            iteration()
            times.append(time.perf_counter() - started)
            # CPU seconds of every thread of the process: what the work costs apart from the
            # time it waited for a core on a shared host.
            cpu.append(time.process_time() - cpu_started)
        extra = iteration.facts() if hasattr(iteration, "facts") else {}
        channel.write(json.dumps({"times": times, "cpu": cpu, "peak_rss_mb": peak_rss_mb(),
                                  **extra,
                                  "load_average": os.getloadavg()[0]}) + "\n")
        channel.flush()


class _Worker:
    def __init__(self, workload: str, config: str, folder: Path) -> None:
        self.config = config
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in close()
        # This file run by path, not ``-m simdiff.difftaichi``: a DiffTaichi worker then
        # imports neither simdiff's package nor torch, so its peak memory is the script's own.
        run = (f"import runpy, sys; sys.argv = {[__file__, '--worker', workload, config, str(folder)]!r}; "
               f"runpy.run_path({__file__!r}, run_name='__main__')")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", run],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.log.seek(0)
            tail = self.log.read()[-3000:]
            raise RuntimeError(f"{self.config} worker failed (exit {self.proc.returncode}):\n"
                               f"{tail}")
        return json.loads(line)

    def run(self, iters: int) -> dict:
        self.proc.stdin.write(f"run {iters}\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()
        self.log.close()


def compare(folder: str | Path, workloads: list[str] | None = None, *, rounds: int = 3,
            iters: int = 1, backend: str = "all") -> list[dict]:
    """Interleaved timings of simdiff and DiffTaichi per workload; one row per configuration,
    with ``vs_difftaichi`` = simdiff's time / DiffTaichi's (below 1: simdiff is faster)."""
    folder = Path(folder)
    missing = [EXAMPLES[w] for w in (workloads or EXAMPLES)
               if not (folder / EXAMPLES[w]).is_file()]
    if missing:
        raise FileNotFoundError(f"--difftaichi {folder}: missing {', '.join(missing)} "
                                f"(DiffTaichi's examples/ folder holds them)")
    rows = []
    for workload in workloads or list(EXAMPLES):
        configs = [c for c in WORKLOADS[workload] if backend in ("all", c)] + ["difftaichi"]
        print(f"difftaichi comparison {workload}: setting up {', '.join(configs)} ...",
              flush=True)
        workers = [_Worker(workload, c, folder) for c in configs]
        try:
            facts = {w.config: w.read() for w in workers}
            times: dict[str, list[float]] = {c: [] for c in configs}
            cpu: dict[str, list[float]] = {c: [] for c in configs}
            peaks: dict[str, float] = {}
            loads: list[float] = []
            for _ in range(rounds):
                for w in workers:
                    answer = w.run(iters)
                    times[w.config] += answer.pop("times")
                    cpu[w.config] += answer.pop("cpu")
                    peaks[w.config] = answer.pop("peak_rss_mb")
                    loads.append(answer.pop("load_average"))
                    facts[w.config].update(answer)  # e.g. the fluid's CG iterations
        finally:
            for w in workers:
                w.close()
        base = statistics.median(times["difftaichi"])
        for config in configs:
            median = statistics.median(times[config])
            row = {"workload": workload, "config": config, "seconds_per_iter": median,
                   "vs_difftaichi": median / base,
                   "cpu_seconds_per_iter": round(statistics.median(cpu[config]), 3),
                   "peak_rss_mb": peaks[config],
                   "memory_vs_difftaichi": peaks[config] / peaks["difftaichi"],
                   "rounds": rounds, "iters": len(times[config]),
                   "load_average": round(statistics.mean(loads), 2), **facts[config]}
            # Peak memory less what importing and initializing the libraries took: the
            # workload's own memory, compared where both sides report their import.
            if "import_rss_mb" in row:
                row["above_import_mb"] = peaks[config] - row["import_rss_mb"]
            rows.append(row)
        base_row = next(r for r in rows[-len(configs):] if r["config"] == "difftaichi")
        for row in rows[-len(configs):]:
            if "above_import_mb" in row and "above_import_mb" in base_row:
                row["above_import_vs_difftaichi"] = (row["above_import_mb"]
                                                     / base_row["above_import_mb"])
    return rows


def format_rows(rows: list[dict]) -> str:
    """The comparison as a table, ratios last."""
    header = (f"{'workload':<12} {'config':<11} {'s/iter':>9} {'vs DiffTaichi':>14} "
              f"{'peak MB':>8}  facts")
    lines = [header]
    skip = {"workload", "config", "seconds_per_iter", "vs_difftaichi", "peak_rss_mb"}
    for r in rows:
        facts = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in r.items() if k not in skip)
        lines.append(f"{r['workload']:<12} {r['config']:<11} {r['seconds_per_iter']:>9.4g} "
                     f"{r['vs_difftaichi']:>13.2f}x {r['peak_rss_mb']:>8.0f}  {facts}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", nargs=3, metavar=("WORKLOAD", "CONFIG", "DIR"))
    args = parser.parse_args(argv)
    if args.worker:
        _worker(*args.worker)


if __name__ == "__main__":
    main()
