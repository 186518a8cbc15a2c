#!/usr/bin/env python3
"""Set-up and the two everyday jobs, with nothing but Python installed.

    python3 tasks.py demo   # create/reuse .venv, install, train the goal-conditioned walker
                            # (about 2 minutes on 2 cores), write renders/walker_goals/
    python3 tasks.py test   # create/reuse .venv, install, run the test suite
    python3 tasks.py sample # the demo, then its video as the README's renders/samples/walker_goals.gif

Extra arguments after ``test`` go to pytest (e.g. ``python3 tasks.py test -m slow``).
"""

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("SIMDIFF_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def setup() -> None:
    """Create the virtual environment once; reinstall only when pyproject.toml changes."""
    stamp = VENV / ".simdiff-installed"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest and PYTHON.exists():
        return
    if not PYTHON.exists():
        print(f"creating virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    run(str(PYTHON), "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(str(PYTHON), "-m", "pip", "install", "--quiet", "-e", ".[test]")
    stamp.write_text(digest)


DEMO_OUT = ROOT / "renders" / "walker_goals"
DEMO = ["train", "walker_goals", "--set", "steps=200", "--set", "period=200", "--set", "window=50",
        "--set", 'tasks=["stand","walk"]', "--set", "vmax=0.04", "--batch", "8", "--iters", "30",
        "--validate-every", "5", "--backprop-window", "0", "--controller-set", "output_init=0.1",
        "--quiet"]
"""The demo: walker_goals on its walk and stand commands (speeds up to 0.04 m/s, 200-step
goal periods), 30 iterations of 8 worlds (about 1 CPU-minute); `simdiff train` then writes the
best iteration's video following the commands forward, stop, backward, the command drawn in
every frame (walker_goals.mp4)."""


def main() -> int:
    job = sys.argv[1] if len(sys.argv) > 1 else ""
    if job not in ("demo", "test", "setup", "sample"):
        print(__doc__)
        return 2
    setup()
    if job == "sample":
        code = subprocess.run([sys.executable, __file__, "demo"], cwd=ROOT, check=False).returncode
        if code == 0:
            # Every 4th frame at half size: the README's sample stays a few hundred kB.
            convert = ("import imageio.v3 as iio; f = iio.imread('renders/walker_goals/"
                       "walker_goals.mp4')[::4, ::2, ::2]; iio.imwrite('renders/samples/"
                       "walker_goals.gif', f, duration=132, loop=0)")
            code = subprocess.run([str(PYTHON), "-c", convert], cwd=ROOT, check=False).returncode
        return code
    if job == "demo":
        out = DEMO_OUT
        cmd = [str(BIN / "simdiff"), *DEMO, "--out", str(out)]
        if (out / "checkpoint.pt").exists():
            cmd += ["--resume", str(out / "checkpoint.pt")]
        return subprocess.run(cmd, cwd=ROOT, check=False).returncode
    if job == "test":
        return subprocess.run([str(PYTHON), "-m", "pytest", *sys.argv[2:]], cwd=ROOT, check=False).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
