"""Incompressible grid fluid: smoke, dye, obstacles, inflows and a moving paddle, in 2D and 3D.

One step (:meth:`Fluid.step`): advect dye (semi-Lagrangian or MacCormack) and velocity
(semi-Lagrangian) on a staggered grid, hold inflow dye, add buoyancy, move the paddle by the
action, blend in the velocity solids impose, and project onto divergence-free fields by
solving the pressure equation with multigrid-preconditioned conjugate gradients to a relative
tolerance (iterations are counted in ``Fluid.stats``; a solve that misses the tolerance raises
:class:`~simdiff.sims.base.SimulationError` with the residual and the step). Conventions are in
:mod:`~simdiff.sims.fluid.model`, the solver and its adjoint in :mod:`~simdiff.sims.fluid.solver`.

Two implementations of the step, chosen by the backend name:

* ``--backend taichi`` (every fluid scene's default): the step in vectorized torch
  (:mod:`~simdiff.sims.fluid.grid`), differentiated by torch autograd. There are no Taichi
  kernels for the fluid: a projection is 10-25 preconditioned CG iterations, each a V-cycle
  over 4-6 grid levels, so a step is several hundred small array operations with a host sync
  in every iteration, and Taichi's launch cost on the CPU (~75 us per launch plus ~60 us per
  tensor argument) alone exceeds the whole torch step at 64^2. The name only chooses precision
  and device; :attr:`Fluid.engine` and the training progress bar report ``torch``.
* ``--backend warp``: the step's local operators are Warp kernels (:mod:`~simdiff.sims.fluid.warp`:
  advection of dye and velocity, MacCormack, inflow sources, buoyancy, the solids' face
  weights and imposed velocities, divergence, pressure-gradient subtraction), differentiated
  by Warp's adjoints through :func:`~simdiff.autodiff.apply_step`. The pressure solve is shared
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
64^2        forward             38.2     39.9 (0.96)    53.6 (0.71)
64^2        forward+backward    65.4     78.5 (0.83)    88.9 (0.74)
128^2       forward             74.0     68.2 (1.09)   103.6 (0.71)
128^2       forward+backward   137.3    162.3 (0.85)   255.5 (0.54)
32^3        forward            153.7    130.7 (1.18)   213.2 (0.72)
32^3        forward+backward   225.9    296.0 (0.76)   417.3 (0.54)
==========  =================  =======  =============  ========================

The pressure solve, shared by both, is most of every step, so the paths differ by the local
operators only: Warp's forward kernels are as fast as torch's (0.96-1.18, within the noise),
their adjoints slower (forward+backward 0.76-0.85: each adjoint replays its kernel, and the
trivial kernels cost 0.1-1 ms per launch at 128^2 on one thread where torch's vectorized ops
cost tens of microseconds). Warp's Laplacian inside the solve is slower than torch's
vectorized operator at every size (a V-cycle launches it three times per level). So the torch
path stays the default, for every scene and size, and ``solver_kernels`` is off. GPU speeds
were not measured. The one hand-written derivative in either path is the pressure solve's
adjoint (one more CG solve with the same symmetric operator), which avoids storing CG iterates.

Measured speed: ``simdiff bench fluid`` (benchmarks/fluid.py: configurations ``simdiff`` and
``warp`` against a plain-PyTorch baseline) and the README.
"""

from simdiff.sims.fluid.model import Advection, Inflow, Model, Paddle, circle_sdf, solid_from_sdf
from simdiff.sims.fluid.simulator import Fluid
from simdiff.sims.fluid.state import State

__all__ = [
    "Advection",
    "Fluid",
    "Inflow",
    "Model",
    "Paddle",
    "State",
    "circle_sdf",
    "solid_from_sdf",
]
