"""`simdiff list` and `simdiff show`: what the scene files declare, read without building them
(simdiff.catalog), agrees with the built scenes; `list` imports no torch or backend; `show`
prints a scene's description, simulator, backend, trainability and typed options."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from simdiff.catalog import check_against, format_list, read_scene, scene_catalog, scene_dir
from simdiff.cli import main
from simdiff.scene import load_scene

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def test_list_imports_no_torch_or_backend():
    """`simdiff list` answers from the files alone: after it, neither torch nor Taichi nor
    Warp has been imported (what makes it fast), and every scene is listed with its
    simulator and what it trains."""
    code = ("import sys; from simdiff.cli import main; rc = main(['list']); "
            "print('IMPORTED', sorted(m for m in ('torch', 'taichi', 'warp') "
            "if m in sys.modules)); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "IMPORTED []" in done.stdout
    rows = {line.split()[0]: line.split()[1:4] for line in done.stdout.splitlines()
            if line.startswith("  ") and len(line.split()) > 3}
    assert rows["walker_small"] == ["mass_spring", "controller", "warp"]
    assert rows["nbody_infer_masses"][:2] == ["nbody", "design"]
    assert rows["nbody_plummer"] == ["nbody", "-", "taichi"]  # rendered from n's default
    assert set(rows) >= {p.stem for p in scene_dir().glob("*.py")}


@pytest.mark.parametrize("name", ["walker_small", "walker_3d", "nbody_plummer",
                                  "nbody_figure_eight", "fluid_smoke_to_image", "mpm_crawler"])
def test_catalog_agrees_with_built_scene(name):
    """Simulator, trainability, backend and description read from the file equal the
    built scene's (the cheap scenes: building them compiles nothing)."""
    info = read_scene(scene_dir() / f"{name}.py")
    assert info.simulator is not None and not info.problems
    assert check_against(info, load_scene(name)) == []


def test_catalog_reads_a_new_scene_file(tmp_path):
    """A scene file of the documented shape: f-string description from option defaults and
    module constants, a design, an unreadable backend and a **options pass-through."""
    path = tmp_path / "toy.py"
    path.write_text(textwrap.dedent('''
        """A toy scene. More text here."""
        GOAL = (1.0, 2.0)

        def scene(*, steps: int = 5, mode: str = "fast", **extra):
            model = build(**extra)
            return Scene(simulator="nbody", model=model, steps=steps,
                         description=f"reach {GOAL[:1]} {mode!r} in {steps}",
                         default_backend=model.best, design=lambda sim: None)
    '''))
    info = read_scene(path)
    assert (info.simulator, info.trains, info.default_backend) == ("nbody", "design", None)
    assert info.description == "reach (1.0,) 'fast' in 5"
    assert info.summary == "A toy scene."
    assert [str(o) for o in info.options] == ["steps: int = 5", "mode: str = 'fast'"]
    assert (info.var_keyword, info.passes_to) == ("extra", ("build",))
    assert "toy" in format_list(tmp_path)


def test_show_prints_the_scene(capsys):
    """`simdiff show walker_small`: description, simulator, backend, trains, horizon, its own
    options and those its **robot passes to robot_from_ascii (not the ones it fixes)."""
    assert main(["show", "walker_small"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("walker_small: 2D walker, 20 masses, 49 springs")
    for line in ("simulator:       mass_spring", "default backend: warp",
                 "trains:          yes: a controller (default: mlp)", "horizon:         680",
                 "  steps: int = 680", "  dt: float = 0.004",
                 "**robot: passed to robot_from_ascii():", "    stiffness: float = 15000.0",
                 "    friction: float = 1.0"):
        assert line in out, line
    assert "    dt:" not in out  # walker_small passes dt itself


def test_show_untrainable_and_inverse_scenes(capsys):
    """An N-body scene without actuators does not train; an inverse problem trains its
    design; --set options are applied before showing (the horizon follows steps)."""
    assert main(["show", "nbody_plummer", "--set", "n=64", "--steps", "7"]) == 0
    out = capsys.readouterr().out
    assert "Plummer sphere of 64 bodies" in out
    assert "trains:          no: nothing to act on" in out and "horizon:         7 steps" in out
    assert "  n: int = 1024" in out  # the signature's default, not the value set
    assert main(["show", "fluid_smoke_to_image"]) == 0
    out = capsys.readouterr().out
    assert "trains:          yes: an inverse problem" in out
    assert "  target: str = 'ring'" in out


def test_show_unknown_scene_is_one_line(capsys):
    assert main(["show", "no_such_scene"]) == 2
    err = capsys.readouterr().err
    assert "no_such_scene" in err and "not found" in err and len(err.strip().splitlines()) == 1


def test_every_shipped_scene_is_readable():
    """Every scene file has a literal simulator and a description (or docstring)."""
    infos = scene_catalog()
    assert infos and all(i.simulator and i.description and not i.problems for i in infos)
