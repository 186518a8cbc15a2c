"""Importing simdiff, and building its command line, loads neither kernel backend nor the
libraries only some verbs need (each is tens of MB resident: Warp's library alone ~100 MB)."""

import subprocess
import sys

import pytest

HEAVY = ("taichi", "warp", "matplotlib", "stable_baselines3", "ray", "scipy", "gymnasium",
         "imageio", "sympy", "torch._dynamo")


@pytest.mark.parametrize("code", [
    "import simdiff",
    "import simdiff.cli",
    "import simdiff.cli; simdiff.cli.build_parser()",
    "import simdiff.train, simdiff.render, simdiff.design, simdiff.sweep, simdiff.rl",
])
def test_imports_load_no_backend_and_no_verb_library(code):
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "", f"{code!r} imported {out.stdout.strip()}"
