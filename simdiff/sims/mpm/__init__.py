"""MLS-MPM simulator: elastic, liquid and plastic continua, muscles and tools, 2D and 3D."""

from simdiff.sims.mpm.builder import Body, box, build_model
from simdiff.sims.mpm.model import Ground, Material, Model, Tool, ToolShape, max_stable_dt
from simdiff.sims.mpm.simulator import MPM, State

__all__ = ["MPM", "Body", "Ground", "Material", "Model", "State", "Tool", "ToolShape", "box",
           "build_model", "max_stable_dt"]
