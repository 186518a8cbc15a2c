"""The DiffTaichi baseline's patching: a tiny synthetic example script, patched and run against
a recording stand-in for taichi (no DiffTaichi files, no kernels, no timings)."""

import inspect
import sys
import types

import pytest

from simdiff.difftaichi import load_example, patch_source

EXAMPLE = '''
import taichi as ti
import argparse
import matplotlib.pyplot as plt
import cv2
from imageio import imwrite

ti.init(default_fp=ti.f32, arch=ti.gpu, flatten_if=True)
gui = ti.GUI("window", (64, 64), background_color=0xFFFFFF)
parser = argparse.ArgumentParser()
parser.add_argument("robot_id", type=int)
options = parser.parse_args()
steps = 3


def kernel(t: ti.i32):
    return t


def forward(visualize=True):
    if visualize:
        gui.circle((0.5, 0.5), 0xFF0000, 7)
        gui.show()
    plt.plot([1, 2])
    cv2.imshow("smoke", None)
    imwrite("out.png", None)
    return steps * options.robot_id


if __name__ == "__main__":
    raise SystemExit("main ran")
'''


@pytest.fixture()
def fake_taichi(monkeypatch):
    calls = []
    ti = types.ModuleType("taichi")
    ti.cpu, ti.gpu, ti.f32, ti.i32 = "cpu", "gpu", "f32", "i32"
    ti.init = lambda **kwargs: calls.append(("init", kwargs))

    def gui(*args, **kwargs):
        calls.append(("GUI", args))
        raise AssertionError("a window was opened")

    ti.GUI = gui
    monkeypatch.setitem(sys.modules, "taichi", ti)
    return calls


def test_patched_example_runs_on_the_cpu_headless_without_its_main(tmp_path, fake_taichi):
    script = tmp_path / "example.py"
    script.write_text(EXAMPLE)
    module = load_example(script, ["2"])
    assert fake_taichi == [("init", {"arch": "cpu", "default_fp": "f32", "flatten_if": True})]
    assert module.forward(visualize=True) == 6  # GUI, plots and images are inert
    assert sys.argv[0] != str(script)  # argv restored after the top level ran
    # Taichi reads kernels' annotations as objects and their source through inspect.
    assert module.kernel.__annotations__["t"] == "i32"
    assert inspect.getsource(module.kernel).startswith("def kernel(t: ti.i32)")


def test_patch_rewrites_arch_and_stubs_libraries_in_the_text():
    text = patch_source(EXAMPLE)
    assert "arch=ti.cpu" in text and "ti.gpu" not in text
    for gone in ("import matplotlib", "import cv2", "from imageio", "ti.GUI(", "__main__"):
        assert gone not in text
    added = patch_source("import taichi as ti\nti.init()\n")
    assert "ti.init(arch=ti.cpu)" in added


def test_a_file_that_is_not_an_example_is_refused():
    with pytest.raises(ValueError, match="calls no ti.init"):
        patch_source("print('hello')\n")


@pytest.mark.slow
def test_smoke_workload_is_the_smoke_to_image_task_solved_spectrally():
    """The ``smoke`` row measures DiffTaichi's task (smoke-to-image, 128^2, 100 steps) with
    the exact spectral solve (0 CG iterations), and the plume row the CG solve."""
    from simdiff.difftaichi import _simdiff_smoke

    iteration, facts = _simdiff_smoke("torch")
    assert facts["problem"] == "smoke_to_image"
    assert facts["steps"] == 100 and facts["grid"] == "128x128" and facts["tolerance"] <= 1e-6
    iteration()
    counts = iteration.facts()
    assert counts["pressure_solve"] == "spectral"
    assert counts["cg_iterations"] == 0 and counts["adjoint_cg_iterations"] == 0
    iteration, plume = _simdiff_smoke("plume_torch")
    assert plume["problem"] == "plume"
    iteration()
    counts = iteration.facts()
    assert counts["pressure_solve"].startswith("multigrid CG") and counts["cg_iterations"] > 1
