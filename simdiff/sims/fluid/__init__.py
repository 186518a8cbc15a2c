"""Incompressible grid fluid: smoke, dye, obstacles, inflows and a moving paddle, in 2D and 3D.

One step (:meth:`Fluid.step`): advect dye (semi-Lagrangian or MacCormack) and velocity
(semi-Lagrangian) on a staggered grid, hold inflow dye, add buoyancy, move the paddle by the
action, blend in the velocity solids impose, and project onto divergence-free fields by
solving the pressure equation with multigrid-preconditioned conjugate gradients to a relative
tolerance (iterations are counted in ``Fluid.stats``; a solve that misses the tolerance raises
:class:`~simdiff.sims.base.SimulationError` with the residual and the step). Conventions are in
:mod:`~simdiff.sims.fluid.model`, the solver and its adjoint in :mod:`~simdiff.sims.fluid.solver`.

Why the step is vectorized torch and not Taichi or Warp kernels (unlike the other simulators):
a projection is 10-25 preconditioned CG iterations, each a V-cycle over 4-6 grid levels, so
a step is several hundred small array operations with a scalar reduction (a host sync) in every
iteration. On the CPU, Taichi pays ~75 us per launch plus ~60 us per tensor argument, which
alone would exceed the whole torch step at 64^2. Advection is the one part that maps to a
single kernel; measured on 2 CPU cores (float32, one semi-Lagrangian scalar advection): Warp
kernel 309 / 694 / 4875 us against torch ``grid_sample`` 358 / 987 / 4448 us at 64^2 / 128^2 /
256^2, no consistent gain for a few percent of the step, while torch gives its backward for
free. The one hand-written derivative is the pressure solve's adjoint (one more CG solve with
the same symmetric operator), which avoids storing CG iterates. The backend argument therefore
only chooses the precision and device.

Measured speed: see ``simdiff bench fluid`` (benchmarks/fluid.py) and the README.
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
