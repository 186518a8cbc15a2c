"""Incompressible grid fluid: smoke, dye, obstacles, inflows and a moving paddle.

See :mod:`simdiff.sims.fluid.model` for the physical conventions and
:mod:`simdiff.sims.fluid.solver` for the pressure solve and its adjoint.
"""

from simdiff.sims.fluid.model import Advection, Inflow, Model, Paddle
from simdiff.sims.fluid.simulator import Fluid
from simdiff.sims.fluid.state import State

__all__ = ["Advection", "Fluid", "Inflow", "Model", "Paddle", "State"]
