"""Importing simdiff, and building its command line, loads neither kernel backend nor the
libraries only some verbs need (each is tens of MB resident: Warp's library alone ~100 MB,
torch's compiler with sympy 71 MB, matplotlib 38 MB); a verb loads only its backend and what
it uses."""

import subprocess
import sys

import pytest

HEAVY = ("taichi", "warp", "matplotlib", "stable_baselines3", "ray", "scipy", "gymnasium",
         "imageio", "sympy", "torch._dynamo", "pytorch_optimizer")


def _loaded(code: str) -> set[str]:
    """The libraries of HEAVY loaded after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True)
    return set(out.stdout.strip().splitlines()[-1].split()) if out.stdout.strip() else set()


@pytest.mark.parametrize("code", [
    "import simdiff",
    "import simdiff.cli",
    "import simdiff.cli; simdiff.cli.build_parser()",
    "import simdiff.train, simdiff.render, simdiff.design, simdiff.sweep, simdiff.rl",
])
def test_imports_load_no_backend_and_no_verb_library(code):
    assert _loaded(code) == set(), f"{code!r} imported {_loaded(code)}"


def test_adam_runs_without_torchs_compiler():
    """Every torch.optim optimizer imports torch._dynamo (and sympy) on first use; the Adam
    that `simdiff train` uses by default does not, through all it does in a run."""
    code = """
import torch
from simdiff.train import make_optimizer
p = torch.nn.Parameter(torch.ones(3))
opt = make_optimizer("adam", [p], 0.1)
for _ in range(2):
    opt.zero_grad()
    (p * p).sum().backward()
    opt.step()
opt.load_state_dict(opt.state_dict())
assert float(p[0]) < 1.0
"""
    assert _loaded(code) == set()


@pytest.mark.parametrize("backend, other", [("taichi", "warp"), ("warp", "taichi")])
def test_train_loads_its_backend_only(tmp_path, backend, other):
    """A training run on one backend never loads the other, nor the compiler, scipy, RL or
    sweep libraries; matplotlib only for its loss plot."""
    argv = ["train", "walker_small", "--steps", "4", "--iters", "1", "--no-video", "--quiet",
            "--backend", backend, "--out", str(tmp_path / "run")]
    loaded = _loaded(f"import simdiff.cli\nassert simdiff.cli.main({argv!r}) == 0")
    assert loaded == {backend, "matplotlib"}
    assert (tmp_path / "run" / "loss.png").is_file()
