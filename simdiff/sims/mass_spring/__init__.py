"""Mass-spring simulator: actuated robots with ground contact, 2D and 3D."""

from simdiff.sims.mass_spring.model import Ground, Model, stable_time_step
from simdiff.sims.mass_spring.simulator import MassSpring, State

__all__ = ["Ground", "MassSpring", "Model", "State", "stable_time_step"]
