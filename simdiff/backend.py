"""Choosing and initializing a kernel backend: Taichi, Warp or torch, a device, a precision.

``torch`` names a step written in vectorized torch operations with no kernels (the fluid's
default); a simulator that has no such step refuses it, as one without Taichi kernels refuses
``taichi``, with :func:`require_backend`.

A :class:`Backend` is plain data; nothing is initialized (or even imported) at import. Building
a simulator's kernels, and every step, call :meth:`Backend.ensure_initialized`, which starts
Taichi (``ti.init``) or Warp (``wp.init``) for the requested device and precision, and costs a
comparison when nothing changed.

Taichi fixes its default float type at ``ti.init``, so one process runs Taichi kernels in one
precision at a time: asking for the other precision re-initializes Taichi (kernels recompile).
Warp kernels are compiled per precision and coexist.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

import torch

__all__ = [
    "Backend",
    "BackendError",
    "BackendName",
    "Precision",
    "require_backend",
    "resolve_backend",
]


class BackendError(ValueError):
    """A backend, device or precision that cannot be used here."""


class BackendName(str, Enum):
    TAICHI = "taichi"
    WARP = "warp"
    TORCH = "torch"
    """No kernels: a step in vectorized torch operations (the fluid only)."""


class Precision(str, Enum):
    FLOAT32 = "float32"
    FLOAT64 = "float64"


_PRECISION_ALIASES = {"f32": "float32", "f64": "float64", "fp32": "float32", "fp64": "float64"}
_PACKAGE = {BackendName.TAICHI: "taichi", BackendName.WARP: "warp-lang", BackendName.TORCH: "torch"}
_MODULE = {BackendName.TAICHI: "taichi", BackendName.WARP: "warp", BackendName.TORCH: "torch"}

# What the running process has initialized: Taichi's (device, precision), Warp's flag.
_taichi_config: tuple[str, Precision] | None = None
_taichi_runtimes = 0  # Taichi runtimes started so far: objects of an earlier one are invalid


def taichi_runtime() -> int:
    """Which Taichi runtime is live (it changes when a precision switch re-initializes
    Taichi, which frees every ndarray made before)."""
    return _taichi_runtimes
_warp_initialized = False


@dataclass(frozen=True)
class Backend:
    """Where and how kernels run.

    Attributes:
        name: Kernel language, Taichi or Warp, or torch (no kernels).
        device: ``"cpu"`` or ``"cuda"``.
        precision: Floating-point precision of states, parameters and kernels.
    """

    name: BackendName
    device: str = "cpu"
    precision: Precision = Precision.FLOAT32

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float64 if self.precision is Precision.FLOAT64 else torch.float32

    @property
    def torch_device(self) -> torch.device:
        return torch.device("cuda" if self.device == "cuda" else "cpu")

    def ensure_initialized(self) -> None:
        """Start the kernel runtime for this device and precision (idempotent)."""
        global _taichi_config, _taichi_runtimes, _warp_initialized
        if self.name is BackendName.TORCH:
            return
        if self.name is BackendName.TAICHI:
            if _taichi_config == (self.device, self.precision):
                return
            import taichi as ti

            if _taichi_config is not None:
                ti.reset()
            ti.init(
                arch=ti.cuda if self.device == "cuda" else ti.cpu,
                default_fp=ti.f64 if self.precision is Precision.FLOAT64 else ti.f32,
                default_ip=ti.i32,
                log_level=ti.ERROR,
                **_taichi_cache_option(),
            )
            _taichi_config = (self.device, self.precision)
            _taichi_runtimes += 1
        elif not _warp_initialized:
            import warp as wp

            wp.config.log_level = wp.LOG_WARNING
            with _no_cuda_driver_warning() if self.device == "cpu" else contextlib.nullcontext():
                wp.init()
            _warp_initialized = True

    def __str__(self) -> str:
        return f"{self.name.value}:{self.device}:{self.precision.value}"


# What Warp's native init prints on a machine without an NVIDIA driver; noise on a CPU run.
_CUDA_DRIVER_WARNING = "Could not find or load the NVIDIA CUDA driver"


@contextlib.contextmanager
def _no_cuda_driver_warning() -> Iterator[None]:
    """Drop Warp's "no CUDA driver" line from the process's stderr while the block runs.

    Warp's native library prints it with C ``fprintf(stderr)`` and has no setting to stop it, so
    file descriptor 2 is pointed at a temporary file for the block; every other line written
    there is passed on to stderr afterwards.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(True)
                    if _CUDA_DRIVER_WARNING not in line]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def _taichi_cache_option() -> dict[str, bool]:
    """Taichi's offline kernel cache on (cold compiles of tens of seconds become loads), unless
    the user chose with ``TI_OFFLINE_CACHE``: an argument of ``ti.init`` would override it."""
    return {} if "TI_OFFLINE_CACHE" in os.environ else {"offline_cache": True}


def _cuda_available(name: BackendName) -> bool:
    if name is BackendName.WARP:
        import warp as wp

        Backend(name, device="cuda").ensure_initialized()  # a missing driver is worth a word here
        return wp.get_cuda_device_count() > 0
    return torch.cuda.is_available()


def resolve_backend(
    name: str | BackendName,
    device: str = "cpu",
    precision: str | Precision = Precision.FLOAT32,
) -> Backend:
    """Validate a backend request and return it as data (initializes nothing but a CUDA probe).

    Args:
        name: ``"taichi"``, ``"warp"`` or ``"torch"`` (no kernels; the fluid only).
        device: ``"cpu"``, ``"cuda"``, or ``"auto"`` (CUDA when present, else CPU).
        precision: ``"float32"`` or ``"float64"`` (also ``"f32"``, ``"f64"``).

    Raises:
        BackendError: naming the parameter, its value and what is allowed, or the missing package.
    """
    try:
        backend_name = BackendName(str(getattr(name, "value", name)).lower())
    except ValueError:
        allowed = ", ".join(b.value for b in BackendName)
        raise BackendError(f"backend={name!r} is unknown; allowed: {allowed}") from None
    if importlib.util.find_spec(_MODULE[backend_name]) is None:
        raise BackendError(
            f"backend={backend_name.value!r} needs the package {_PACKAGE[backend_name]!r}, "
            f"which is not installed (pip install {_PACKAGE[backend_name]})"
        )
    precision_text = str(getattr(precision, "value", precision)).lower()
    try:
        prec = Precision(_PRECISION_ALIASES.get(precision_text, precision_text))
    except ValueError:
        raise BackendError(
            f"precision={precision!r} is unknown; allowed: float32, float64"
        ) from None
    device = str(device).lower()
    if device == "auto":
        device = "cuda" if _cuda_available(backend_name) else "cpu"
    elif device.startswith("cuda"):
        if not _cuda_available(backend_name):
            raise BackendError(
                f"device={device!r} requested but no CUDA device is visible to "
                f"{backend_name.value}; use device='cpu' or run on a machine with an NVIDIA GPU"
            )
        device = "cuda"
    elif device != "cpu":
        raise BackendError(f"device={device!r} is unknown; allowed: cpu, cuda, auto")
    return Backend(backend_name, device, prec)


def require_backend(backend: Backend, allowed: tuple[BackendName, ...], simulator: str) -> None:
    """Refuse a backend ``simulator`` has no step for, in one line saying what exists.

    Raises:
        BackendError: e.g. ``backend='torch': mass_spring runs on taichi or warp``.
    """
    if backend.name not in allowed:
        names = " or ".join(repr(b.value) for b in allowed)
        raise BackendError(
            f"backend={backend.name.value!r}: {simulator} has no {backend.name.value} step; "
            f"it runs on {names}"
        )
