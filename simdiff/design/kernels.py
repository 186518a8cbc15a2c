"""Taichi kernel of the matrix-free stiffness operator ``y = K u`` on a structured grid.

One kernel serves every multigrid level: each node gathers the rows of the (up to) four
elements around it, so threads never write the same entry and no atomics are needed. An
element's 8x8 matrix is ``scale[e] * mats[e * stride : e * stride + 64]``: on the finest level
``stride = 0`` (one KE scaled by the element's Young's modulus), on coarse levels ``stride = 64``
(each coarse element has its own Galerkin matrix) with unit scale. Entries of ``y`` on fixed
degrees of freedom are multiplied by ``mask`` (0 there).

Every local is typed float64 explicitly, so the kernel computes in float64 whatever precision
Taichi was initialized with by another simulator in the same process. One compile per process
(about 2-3 s on 2 cores; Taichi's offline cache shortens later ones).
"""


import numpy as np

__all__ = ["apply_operator"]

_kernel = None


def _build():
    global _kernel
    import taichi as ti

    from simdiff.backend import _taichi_config, resolve_backend

    if _taichi_config is None:  # start Taichi if no simulator did; otherwise share its runtime
        resolve_backend("taichi", "cpu", "float64").ensure_initialized()

    @ti.kernel
    def apply(u: ti.types.ndarray(dtype=ti.f64, ndim=1), scale: ti.types.ndarray(dtype=ti.f64, ndim=1),
              mats: ti.types.ndarray(dtype=ti.f64, ndim=1), stride: ti.i32,
              mask: ti.types.ndarray(dtype=ti.f64, ndim=1), y: ti.types.ndarray(dtype=ti.f64, ndim=1),
              nelx: ti.i32, nely: ti.i32):
        for ix, iy in ti.ndrange(nelx + 1, nely + 1):
            acc_x = ti.f64(0.0)
            acc_y = ti.f64(0.0)
            for a, b in ti.static(ti.ndrange(2, 2)):
                ex = ix - 1 + a
                ey = iy - 1 + b
                if 0 <= ex < nelx and 0 <= ey < nely:
                    # This node's local index (counterclockwise from bottom-left) in element
                    # (ex, ey): a == 1 puts it on the element's left side, b == 1 on its top.
                    li = ti.static(3 if (a == 1 and b == 1) else 0 if a == 1 else 2 if b == 1 else 1)
                    e = nely * ex + ey
                    base = e * stride
                    s = scale[e]
                    n_tl = (nely + 1) * ex + ey
                    n_tr = n_tl + nely + 1
                    nodes = ti.Vector([n_tl + 1, n_tr + 1, n_tr, n_tl])
                    for k in ti.static(range(4)):
                        ux = u[2 * nodes[k]]
                        uy = u[2 * nodes[k] + 1]
                        rx = base + 16 * li + 2 * k
                        ry = rx + 8
                        acc_x += s * (mats[rx] * ux + mats[rx + 1] * uy)
                        acc_y += s * (mats[ry] * ux + mats[ry + 1] * uy)
            n = (nely + 1) * ix + iy
            y[2 * n] = acc_x * mask[2 * n]
            y[2 * n + 1] = acc_y * mask[2 * n + 1]

    _kernel = apply


def apply_operator(u: np.ndarray, scale: np.ndarray, mats: np.ndarray, mask: np.ndarray,
                   nelx: int, nely: int) -> np.ndarray:
    """``K u`` with element matrices ``scale[e] * mats[e]`` (``mats`` of shape [64], one shared
    matrix, or [nel, 64]); contiguous float64 arrays."""
    if _kernel is None:
        _build()
    y = np.empty_like(u)
    stride = 0 if mats.ndim == 1 else 64
    _kernel(u, scale, mats.reshape(-1), stride, mask, y, nelx, nely)
    return y
