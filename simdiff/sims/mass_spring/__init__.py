"""Mass-spring simulator: actuated robots with ground contact, 2D and 3D, B worlds at once."""

from simdiff.sims.mass_spring.model import Ground, Model, cell_measure, stable_time_step
from simdiff.sims.mass_spring.simulator import MassSpring
from simdiff.sims.mass_spring.state import Params, State

__all__ = ["Ground", "MassSpring", "Model", "Params", "State", "cell_measure", "stable_time_step"]
