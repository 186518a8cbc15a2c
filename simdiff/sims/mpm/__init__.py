"""MLS-MPM simulator: elastic, liquid and plastic continua, muscles and tools, 2D and 3D."""

from simdiff.sims.mpm.builder import Body, box, build_model
from simdiff.sims.mpm.model import Ground, Material, Model, Tool, ToolShape, max_stable_dt
from simdiff.sims.mpm.simulator import MPM
from simdiff.sims.mpm.state import PARAM_COLUMNS, Params, State

__all__ = ["MPM", "PARAM_COLUMNS", "Body", "Ground", "Material", "Model", "Params", "State",
           "Tool", "ToolShape", "box", "build_model", "max_stable_dt"]
