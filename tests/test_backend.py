"""Backend resolution: names, devices and precisions are validated with clear messages."""

import pytest
import torch

from simdiff.backend import BackendError, BackendName, Precision, resolve_backend


def test_resolves_names_and_precisions():
    b = resolve_backend("WARP", "cpu", "f64")
    assert b.name is BackendName.WARP and b.precision is Precision.FLOAT64
    assert b.torch_dtype == torch.float64
    assert resolve_backend("taichi").torch_dtype == torch.float32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "jax"}, "backend='jax' is unknown; allowed: taichi, warp"),
        ({"name": "warp", "precision": "float16"}, "precision='float16' is unknown"),
        ({"name": "warp", "device": "tpu"}, "device='tpu' is unknown"),
    ],
)
def test_bad_requests_name_the_parameter(kwargs, message):
    with pytest.raises(BackendError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_backend(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_missing_cuda_is_an_error_not_a_fallback():
    with pytest.raises(BackendError, match="no CUDA device"):
        resolve_backend("taichi", "cuda")
    assert resolve_backend("warp", "auto").device == "cpu"


def test_importing_simdiff_starts_no_kernel_runtime():
    import subprocess
    import sys

    code = ("import sys, simdiff, simdiff.train, simdiff.cli, simdiff.scene; "
            "print('taichi' in sys.modules, 'warp' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_taichi_simulators_of_both_precisions_alternate():
    """Taichi fixes its float type at init: switching precision re-initializes it, and a
    simulator built before the switch still runs (and gives the same result) afterwards."""
    from conftest import tiny_robot

    from simdiff.rollout import rollout
    from simdiff.sims.mass_spring import MassSpring

    sim64 = MassSpring(tiny_robot(), resolve_backend("taichi", precision="float64"))
    first = rollout(sim64, sim64.initial_state(), None, 20).final.particle_x
    sim32 = MassSpring(tiny_robot(), resolve_backend("taichi", precision="float32"))
    single = rollout(sim32, sim32.initial_state(), None, 20).final.particle_x
    again = rollout(sim64, sim64.initial_state(), None, 20).final.particle_x
    assert torch.equal(first, again) and again.dtype == torch.float64
    assert torch.allclose(single.double(), first, atol=1e-4)


@pytest.mark.parametrize(("env", "expected"), [("0", "False"), ("1", "True"), (None, "True")])
def test_taichi_offline_cache_follows_the_users_environment(env, expected):
    """TI_OFFLINE_CACHE=0 turns Taichi's kernel cache off; unset, simdiff turns it on."""
    import os
    import subprocess
    import sys

    code = ("import taichi as ti\n"
            "from simdiff.backend import resolve_backend\n"
            "resolve_backend('taichi').ensure_initialized()\n"
            "print(ti.lang.impl.current_cfg().offline_cache)\n")
    environ = {k: v for k, v in os.environ.items() if k != "TI_OFFLINE_CACHE"}
    if env is not None:
        environ["TI_OFFLINE_CACHE"] = env
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=environ)
    assert out.stdout.strip().splitlines()[-1] == expected


def test_a_cpu_run_prints_no_cuda_driver_warning():
    """Warp's native init prints a missing-driver line on a machine without a GPU: silenced
    for device=cpu (other lines it writes to stderr still pass), kept for device=auto."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def stderr_of(code: str) -> str:
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, check=True).stderr

    plain = stderr_of("import warp; warp.config.log_level = warp.LOG_WARNING; warp.init()")
    ours = stderr_of("import os\n"
                     "from simdiff.backend import resolve_backend\n"
                     "resolve_backend('warp', 'cpu').ensure_initialized()\n"
                     "os.write(2, b'after init\\n')\n")
    assert "NVIDIA CUDA driver" not in ours and "after init" in ours  # fd 2 restored
    if torch.cuda.is_available() or "NVIDIA CUDA driver" not in plain:
        return  # a machine with a driver: nothing to silence, and nothing more to check
    auto = stderr_of("from simdiff.backend import resolve_backend\n"
                     "print(resolve_backend('warp', 'auto').device)\n")
    assert "NVIDIA CUDA driver" in auto  # asked to look for a GPU: the missing driver is said
