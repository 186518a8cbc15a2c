"""Incompressible grid fluid: smoke, dye, obstacles, inflows and a moving paddle, in 2D and 3D.

One step (:meth:`Fluid.step`): advect dye (semi-Lagrangian or MacCormack) and velocity
(semi-Lagrangian) on a staggered grid, hold inflow dye, add buoyancy, move the paddle by the
action, blend in the velocity solids impose, and project onto divergence-free fields by
solving the pressure equation: exactly by fast cosine/sine transforms where the box has no
solid, paddle or inflow face inside (:mod:`~simdiff.sims.fluid.spectral`: free-slip walls and
open sides only, the plain Laplacian; residual at round-off, about 1e-15, far below any
tolerance; 0 CG iterations), else with multigrid-preconditioned conjugate gradients to a
relative tolerance (iterations are counted in ``Fluid.stats``; a solve that misses the
tolerance raises :class:`~simdiff.sims.base.SimulationError` with the residual and the step).
Conventions are in :mod:`~simdiff.sims.fluid.model`, the solvers and their adjoint in
:mod:`~simdiff.sims.fluid.solver`.

Worlds: ``Fluid(model, backend, batch_size=B)`` steps B independent worlds on one grid (every
state field ``[B, ...]``; obstacle, inflow velocities and concentrations and buoyancy in
:class:`Params`, shared or per world); each stage is one vectorized operation or one Warp
launch over all worlds, and the pressure solve takes per-world step lengths (see
:mod:`~simdiff.sims.fluid.solver`). World ``b`` equals a single-world run of its state and
parameters to round-off (tests/test_fluid_batch.py). At 64^2 on this 2-core host, 16 worlds
in one rollout run 5-7x the world-steps per second of a Python loop over single-world
rollouts, forward and forward+backward, on both backends (benchmarks/batch_fluid.py).

Two implementations of the step, chosen by the backend name:

* ``--backend torch`` (every fluid scene's default): the step in vectorized torch
  (:mod:`~simdiff.sims.fluid.grid`), differentiated by torch autograd. There are no Taichi
  kernels for the fluid, and ``--backend taichi`` is refused, naming these two: a projection
  is 10-25 preconditioned CG iterations, each a V-cycle over 4-6 grid levels, so a step is
  several hundred small array operations with a host sync in every iteration, and Taichi's
  launch cost on the CPU (~75 us per launch plus ~60 us per tensor argument) alone exceeds
  the whole torch step at 64^2.
* ``--backend warp``: the step's local operators are Warp kernels (:mod:`~simdiff.sims.fluid.warp`:
  advection of dye and velocity, MacCormack, inflow sources, buoyancy, the solids' face
  weights and imposed velocities, divergence, pressure-gradient subtraction), differentiated
  by Warp's adjoints through :func:`~simdiff.bridge.apply_step`. The pressure solve is shared
  (the same multigrid-preconditioned CG and adjoint); ``Fluid(..., solver_kernels=True)`` also
  applies its operator on every level by Warp kernels. States agree with the torch path to
  2e-15 and gradients to 1e-14 (relative) in float64 (tests/test_fluid_warp.py): two
  independent implementations of one discretization.

Measured on 2 shared CPU cores (load average ~9 from other jobs, so single figures vary by
up to 2x between runs; ratios from alternating runs in one process are steadier): float32,
torch on 1 thread (Warp's CPU kernels are single-threaded), the plume of benchmarks/fluid.py,
best of 3; milliseconds per step, torch time / Warp time in brackets (above 1: Warp faster):

==========  =================  =======  =============  ========================
grid        mode               torch    warp           warp + solver_kernels
==========  =================  =======  =============  ========================
64^2        forward             28.5     30.5 (0.94)    39.8 (0.72)
64^2        forward+backward    53.5     57.0 (0.94)    77.6 (0.69)
128^2       forward             53.1     67.8 (0.78)   104.7 (0.51)
128^2       forward+backward    86.9    114.6 (0.76)   146.5 (0.59)
32^3        forward            108.3    113.9 (0.95)   168.9 (0.64)
32^3        forward+backward   116.4    115.8 (1.01)   167.3 (0.70)
==========  =================  =======  =============  ========================

An earlier run of the same script gave torch / warp 0.96, 0.83, 1.09, 0.85, 1.18, 0.76 in the
same order: the spread is the host's load. The pressure solve, shared by both, is most of
every step, so the paths differ by the local operators only, and there Warp is at best even
with torch and usually 5-25% slower: single-threaded CPU kernels cost 0.1-1 ms per launch at
128^2 even when trivial (torch's vectorized ops: tens of microseconds), and each adjoint
replays its kernel. Warp's Laplacian inside the solve is slower than torch's vectorized
operator at every size (a V-cycle launches it three times per level). So the torch path stays
the default, for every scene and size, and ``solver_kernels`` is off. GPU speeds
were not measured. The one hand-written derivative in either path is the pressure solve's
adjoint (one more CG solve with the same symmetric operator), which avoids storing CG iterates.

The pressure solve on the CPU (either backend): where the box has nothing inside, by
default the spectral solve (``Fluid(..., spectral=None)``; the choice is made per step from the
face weights and kept while they stay the same), forward and adjoint alike (the operator is
symmetric, so its adjoint solve is the same transform). Elsewhere it is one Warp launch per
solve (``Fluid(..., fused_solve=None)``; :class:`~simdiff.sims.fluid.warp.FusedSolve`): the whole
multigrid-preconditioned CG of each world in one kernel thread, with a symmetric Gauss-Seidel
V-cycle, warm-started from the previous step's pressure (the adjoint from the next step's
adjoint) and reused while the operator is unchanged. On the 128^2 plume (an inflow box and an
open top), 100 steps forward and backward at a tolerance of 1e-6: CG iterations per solve 14.0
forward and 14.7 adjoint cold, 8.2 and 10.1 warm-started.

Against DiffTaichi (``simdiff bench fluid --difftaichi DIR``, :mod:`simdiff.difftaichi`):
``smoke_taichi.py`` (128^2, 100 steps, ten unconverged Jacobi sweeps per step, forward and
backward) against the same task here, ``fluid_smoke_to_image`` at 128^2 and 100 steps with
semi-Lagrangian advection (a walled box with nothing inside: the spectral solve, converged to
round-off), forward and backward of its objective, torch step on one thread, interleaved
rounds on this shared 2-core host (benchmarks/results/difftaichi_smoke.json, and
difftaichi_smoke_load2.json for the torch row at a lower load): 0.55 s against DiffTaichi's
0.66 s per iteration at load 4.3 (0.83x its wall time), 0.44 s against 0.84 s at load 2.6
(0.53x); CPU seconds 0.45 against 0.65 (0.70x) and 0.43 against 0.64 (0.67x), steadier than
wall time on a shared host. Before: 3.7x its wall time with CG on the plume
(benchmarks/results/difftaichi_smoke_plume_cg.json), 1.15x with the spectral solve alone. The
step around the solve was made cheaper for it (measured with the torch profiler, one
iteration; after the spectral solve the solve was 40% of it and ``grid_sample``, stacking and
small ops the rest): the velocity at other components' faces by slices instead of
``grid_sample`` (3 interpolations per step instead of 5), sampling grids stacked along a
leading axis and viewed (a stack along the last axis was 7x slower), the fixed part of the
back-traced coordinates cached, the weights of static solids cached, zero buoyancy skipped
(on Warp too: its top kernel was ``solid_faces``, 7 ms of a step, now made once; Warp's
smoke-to-image is 1.3 s, 2.0x, its single-threaded kernels cost 0.3-3 ms per launch at
128^2).

Scenes with solids or inflows keep the multigrid CG by default. Where they stay put from step
to step, ``Fluid(..., capacitance=True)`` solves them exactly too
(:class:`~simdiff.sims.fluid.spectral.CapacitanceSolve`: the box's spectral solve corrected
on the cells beside the solids, set up once per operator). In the same run the inflow plume
costs 2.68 s per iteration with CG (4.1x DiffTaichi; 8.1 and 10.1 CG iterations per forward
and adjoint solve) and 0.79 s with ``capacitance=True`` (1.2x; 0 iterations after the first
solve). It stays opt-in until measured on more scenes (a moving paddle changes the operator
every step, where CG remains the solve).

Measured speed: ``simdiff bench fluid`` (benchmarks/fluid.py: configurations ``torch`` and
``warp``, against a plain-PyTorch baseline, side by side with ``warp/torch``), worlds per second
by batch size in benchmarks/batch_fluid.py, and the README.
"""

from simdiff.sims.fluid.model import Advection, Inflow, Model, Paddle, circle_sdf, solid_from_sdf
from simdiff.sims.fluid.simulator import Fluid
from simdiff.sims.fluid.state import Params, Params3D, State

__all__ = [
    "Advection",
    "Fluid",
    "Inflow",
    "Model",
    "Paddle",
    "Params",
    "Params3D",
    "State",
    "circle_sdf",
    "solid_from_sdf",
]
