"""Topology optimization: the stiffest cantilever of 40 % material under a tip load.

The script of the "Topology optimization" tutorial: a problem defined from its supports and
loads, optimized with optimality criteria on pixels, then again through a small CNN.
"""

from pathlib import Path

import imageio.v3 as imageio
import numpy as np

from simdiff.design import Problem, Structure, optimize
from simdiff.design.render import design_image

nelx, nely = 32, 16                              # elements along x and y
fixed = np.zeros((nelx + 1, nely + 1, 2), bool)  # [ix, iy, x|y], iy counted from the top
forces = np.zeros((nelx + 1, nely + 1, 2))
fixed[0, :, :] = True                            # the left edge is clamped
forces[nelx, nely // 2, 1] = -1.0                # a unit load down at the middle of the tip
problem = Problem("cantilever", fixed, forces, volfrac=0.4)
problem.validate()                               # supports hold, loads reach the structure

pixels = optimize(problem, param="pixel", optimizer="oc", iters=20)
print(f"pixels, OC: compliance {pixels.compliance[0]:.1f} -> {pixels.best_compliance:.2f}, "
      f"volume {pixels.volume[-1]:.3f}")

cnn = optimize(problem, param="cnn", optimizer="lbfgs", iters=10, seed=0)
print(f"CNN, L-BFGS: compliance {cnn.compliance[0]:.1f} -> {cnn.best_compliance:.2f}")

# The compliance is a torch op with an adjoint gradient: use it in your own loss.
structure = Structure(problem)
x = structure.initial_density().requires_grad_()
compliance = structure.compliance(structure.physical(x))
compliance.backward()
print(f"uniform design: compliance {compliance.item():.1f}, "
      f"gradient norm {x.grad.norm().item():.3g}")

out = Path("renders") / "cantilever.png"
out.parent.mkdir(exist_ok=True)
imageio.imwrite(out, design_image(pixels.design, width=240))  # best densities, black = solid
print(f"wrote {out}")
