"""The documentation: the site builds with warnings as errors, its gallery lists every shipped
scene, the tutorials' example scripts run (at toy size) to the results the pages state, and the
README's Python example runs, its test command is CI's, and its pictures and links exist."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
README = ROOT / "README.md"


def _batched(simulator: str) -> bool:
    """Whether a simulator is on the batched contract (its own Params) yet."""
    from simdiff.sims import base

    if simulator == "mass_spring":
        from simdiff.sims.mass_spring import MassSpring as cls
    return cls.Params is not base.Params


needs_batched_mass_spring = pytest.mark.skipif(
    not _batched("mass_spring"),
    reason="the tutorials use the batched mass-spring simulator (massspring branch), not on "
           "this branch yet")


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None
                    or importlib.util.find_spec("mkdocstrings") is None,
                    reason="mkdocs/mkdocstrings not installed (pip install -e '.[docs]')")
def test_docs_build_strict(tmp_path):
    """`mkdocs build --strict` succeeds (broken links, missing pages, unresolved API
    references and docstring warnings fail it), and the gallery names every scene file."""
    site = tmp_path / "site"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                           "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    gallery = (site / "gallery" / "index.html").read_text()
    for scene in sorted(p.stem for p in (ROOT / "simdiff" / "scenes").glob("*.py")):
        assert f'id="{scene}"' in gallery, f"gallery has no section for {scene}"
    api = (site / "api" / "rollout" / "index.html").read_text()
    assert "world_metrics" in api and "health" in api
    assert ":class:" not in (site / "api" / "scene" / "index.html").read_text()
    # The API reference covers the public modules, each on its own page.
    for page, name in [("rollout", "simdiff.rollout.rollout"), ("bridge", "simdiff.bridge"),
                       ("scene", "simdiff.scene.Scene"),
                       ("locomotion", "simdiff.locomotion.goal_rollout"),
                       ("sims_mass_spring", "simdiff.sims.mass_spring.MassSpring"),
                       ("sims_mpm", "simdiff.sims.mpm.MPM"),
                       ("sims_fluid", "simdiff.sims.fluid.Fluid"),
                       ("sims_nbody", "simdiff.sims.nbody.NBody")]:
        html = (site / "api" / page / "index.html").read_text()
        assert f'id="{name}"' in html, f"api/{page} does not document {name}"


def _run(script: str, tmp_path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)
    return runpy.run_path(str(EXAMPLES / script), run_name="__main__")


@needs_batched_mass_spring
def test_write_a_scene_example(tmp_path, monkeypatch):
    """The scene tutorial: three worlds of different stiffness, and a controller gradient."""
    out = _run("run_two_legs.py", tmp_path, monkeypatch)
    stiffness = out["params"].spring_params[:, 0, 0]
    assert stiffness.shape == (3,) and len(set(stiffness.tolist())) == 3
    assert tuple(out["result"].final.particle_x.shape) == (3, 14, 2)
    assert 0 < float(out["grad"]) < 1e3


@needs_batched_mass_spring
def test_write_a_controller_example(tmp_path, monkeypatch):
    """The controller tutorial: the open-loop gait walks further after five Adam steps, and
    the trainer's loss falls over its three iterations."""
    out = _run("train_gait.py", tmp_path, monkeypatch)
    assert -out["loss"].item() > 0.005  # distance of the last hand-trained iteration [m]
    losses = [row["loss"] for row in out["run"].metrics]
    assert losses[-1] < losses[0]


@needs_batched_mass_spring
def test_inverse_problem_example(tmp_path, monkeypatch):
    """The inverse-problem tutorial: the stiffness error falls below 10% from 37.5%, and the
    objective's gradient equals its central difference."""
    out = _run("fit_stiffness.py", tmp_path, monkeypatch)
    assert out["first"]["stiffness_error"] > 0.3 and out["last"]["stiffness_error"] < 0.1
    autodiff = out["design"].log_scale.grad.item()
    central = ((out["up"] - out["down"]) / (2 * out["eps"])).item()
    assert autodiff == pytest.approx(central, rel=1e-5)


def test_topology_example(tmp_path, monkeypatch):
    """The topology tutorial: OC holds the volume and cuts the compliance by 4x; the PNG is
    written."""
    out = _run("cantilever.py", tmp_path, monkeypatch)
    pixels = out["pixels"]
    assert pixels.best_compliance < 0.25 * pixels.compliance[0]
    assert pixels.volume[-1] == pytest.approx(0.4, abs=1e-3)
    assert out["cnn"].best_compliance < out["cnn"].compliance[0]
    assert (tmp_path / "renders" / "cantilever.png").stat().st_size > 0


def _readme_blocks(heading: str, language: str) -> list[str]:
    """The fenced ``language`` blocks of the README section ``## heading``."""
    section = README.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, re.DOTALL)


@needs_batched_mass_spring
def test_readme_python_example(tmp_path, monkeypatch, capsys):
    """The README's Python example runs as printed: four worlds of different stiffness, a
    finite loss whose gradient reaches every controller weight, one line per iteration."""
    import torch

    (code,) = _readme_blocks("In Python", "python")
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:
        namespace: dict = {"__name__": "__main__"}
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in printed] == ["0", "1", "2", "3", "4"]
    assert tuple(namespace["result"].final.particle_x.shape) == (4, 20, 2)
    stiffness = namespace["params"].spring_params[:, 0, 0]
    assert len(set(stiffness.tolist())) == 4  # the worlds differ
    assert math.isfinite(float(namespace["loss"].detach()))
    grads = [p.grad for p in namespace["controller"].parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_readme_test_command_is_ci():
    """The test command the README gives is the one CI runs (.ci/run)."""
    (block,) = _readme_blocks("Two commands", "bash")
    command = next(line.split("#")[0].strip() for line in block.splitlines()
                   if line.startswith("python3 tasks.py test"))
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci, f"README says {command!r}; .ci/run runs {ci[-1]!r}"


def test_readme_pictures_and_links_exist():
    """Every picture and relative link of the README names a file of the repository."""
    targets = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    local = [t.split("#")[0] for t in targets if "://" not in t and not t.startswith("#")]
    assert any(t.endswith((".png", ".gif")) for t in local)
    missing = [t for t in local if not (ROOT / t).is_file()]
    assert not missing, f"README names missing files: {missing}"


def test_benchmarks_page_says_when_where_and_under_what_load(tmp_path, monkeypatch):
    """docs/benchmarks.md is written from the stored `simdiff bench --json` rows alone: each
    table with its date, machine and host load, full runs unmarked, the benchmarks not run
    named, and the chart drawn from the same rows."""
    spec = importlib.util.spec_from_file_location("gen_benchmarks",
                                                  ROOT / "docs" / "gen_benchmarks.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    monkeypatch.setattr(gen, "DATA", tmp_path)
    rows = [{"config": "warp", "controller": "mlp", "seconds_per_iter": 0.5, "vs_baseline": 2.0},
            {"config": "torch", "controller": "mlp", "seconds_per_iter": 1.0, "vs_baseline": 1.0}]
    gen.store("mass_spring", rows, quick=False, date="2026-12-02 17:34 UTC", where="a host",
              command="simdiff bench mass_spring",
              load={"before": [20.33, 18.5, 14.3], "after": [20.35, 20.0, 18.5], "cpus": 2})
    page = gen.render()
    assert "| [mass_spring](#mass_spring) | full | 2026-12-02 17:34 UTC | 20.3 / 20.4 on 2 " \
           "cores |" in page
    assert "- machine: a host" in page and "Quick-mode data" not in page
    assert "| warp | 2 | mlp | 0.5 |" in page
    assert "Not run for this page: `simdiff bench mpm`, `simdiff bench fluid`, " \
           "`simdiff bench nbody`, `simdiff bench design`" in page
    assert gen.chart([json.loads(p.read_text()) for p in tmp_path.glob("*.json")],
                     tmp_path / "chart.png").stat().st_size > 0
