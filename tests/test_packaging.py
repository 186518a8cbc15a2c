"""Packaging: the wheel ships the scenes, controllers and ``py.typed``, and a wheel installed in
a fresh virtual environment, run outside the repository, lists and runs the shipped scenes."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built (``pip wheel --no-deps``) from a copy of the sources: building in the
    repository would leave ``build/`` and ``simdiff.egg-info/`` there."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "simdiff", src / "simdiff",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([PYTHON, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), str(src)], check=True, capture_output=True, text=True)
    return next(dist.glob("simdiff-*.whl"))


def _shipped(folder: str) -> set[str]:
    return {p.stem for p in (ROOT / "simdiff" / folder).glob("*.py") if not p.stem.startswith("_")}


def test_the_wheel_holds_every_scene_controller_and_py_typed(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("scenes", "controllers"):
        assert _shipped(folder), folder
        missing = {f"simdiff/{folder}/{name}.py" for name in _shipped(folder)} - names
        assert not missing
    assert "simdiff/py.typed" in names
    assert any(n.startswith("simdiff/rl/policies/") and n.endswith(".pt") for n in names)
    # Only the package: no top-level scenes/, controllers/ or tests/ beside it.
    assert {n.split("/")[0] for n in names} == {"simdiff", wheel.name.split("-py3")[0]
                                                + ".dist-info"}


def test_an_installed_wheel_lists_and_runs_the_shipped_scenes(wheel, tmp_path):
    """``simdiff list`` and ``simdiff run`` from a fresh virtual environment holding only the
    wheel, in a folder outside the repository, with no PYTHONPATH or SIMDIFF_* overrides
    (about 10 s: Warp's kernel cache is shared with the other tests).

    The environment is made by the project's Python with ``--system-site-packages``; that
    interpreter is itself a virtual environment, whose base has no torch, so a ``.pth`` file
    adds the project environment's site-packages (torch, Taichi, Warp) after the new one's:
    nothing is downloaded, and ``simdiff`` is imported from the wheel (the project's editable
    install is a ``.pth`` of its own site folder, which a path entry does not run)."""
    venv = tmp_path / "venv"
    subprocess.run([PYTHON, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
                   check=True)
    python = venv / "bin" / "python"
    subprocess.run([PYTHON, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                    str(wheel)], check=True, capture_output=True, text=True)
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.run([python, "-c", code], check=True, capture_output=True,
                               text=True).stdout.strip())
    (site / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "SIMDIFF_SCENES", "SIMDIFF_CONTROLLERS")}
    work = tmp_path / "elsewhere"
    work.mkdir()

    def simdiff(*args: str) -> str:
        done = subprocess.run([venv / "bin" / "simdiff", *args], cwd=work, env=env,
                              capture_output=True, text=True, check=False, timeout=600)
        assert done.returncode == 0, done.stderr
        return done.stdout

    where = subprocess.run([python, "-c", "import simdiff; print(simdiff.__file__)"], cwd=work,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), where  # the wheel's copy, not the repository's
    listed = simdiff("list")
    for name in _shipped("scenes") | _shipped("controllers"):
        assert f"\n  {name} " in listed, name
    simdiff("run", "walker_small", "--controller", "sinusoid", "--steps", "4", "--backend",
            "warp", "--out", "out", "--video", "gif")
    assert (work / "out" / "walker_small.gif").stat().st_size > 0
    assert (work / "out" / "metrics.json").is_file()
