"""N-body gravity: direct summation, softening, leapfrog, RK4 and Hermite, adaptive steps."""

from simdiff.sims.nbody.model import Integrator, Model, StepCriterion
from simdiff.sims.nbody.simulator import NBody
from simdiff.sims.nbody.state import State

__all__ = ["Integrator", "Model", "NBody", "State", "StepCriterion"]
