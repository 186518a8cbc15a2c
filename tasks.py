#!/usr/bin/env python3
"""Set-up and the two everyday jobs, with nothing but Python installed.

    python3 tasks.py demo   # create/reuse .venv, install, train the goal walker into renders/
    python3 tasks.py test   # create/reuse .venv, install, run the test suite
    python3 tasks.py sample # the demo, then its video as renders/samples/walker_goals.gif
    python3 tasks.py media  # regenerate the gallery, docs/benchmarks.md and the README's stills

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


def main() -> int:
    job = sys.argv[1] if len(sys.argv) > 1 else ""
    if job not in ("demo", "test", "setup", "sample", "media"):
        print(__doc__)
        return 2
    setup()
    if job == "sample":
        code = subprocess.run([sys.executable, __file__, "demo"], cwd=ROOT, check=False).returncode
        if code == 0:
            # Every 6th frame at 480 x 270 (the command's labels still readable), played at
            # half speed: the README's sample stays under 2 MB.
            convert = ("import imageio.v3 as iio, numpy as np; from PIL import Image; "
                       "f = iio.imread('renders/walker_goals/walker_goals.mp4')[::6]; "
                       "g = [np.asarray(Image.fromarray(x).resize((480, 270), Image.LANCZOS)) "
                       "for x in f]; iio.imwrite('renders/samples/walker_goals.gif', "
                       "np.stack(g), duration=200, loop=0)")
            code = subprocess.run([str(PYTHON), "-c", convert], cwd=ROOT, check=False).returncode
        return code
    if job == "media":
        # One after the other (each is heavy); every one runs even if an earlier one failed.
        scripts = ("docs/gen_gallery.py", "docs/gen_benchmarks.py", "docs/gen_samples.py")
        codes = [subprocess.run([str(PYTHON), s], cwd=ROOT, check=False).returncode
                 for s in scripts]
        return max(codes)
    if job == "demo":
        # The goal-conditioned walker on its first curriculum stage (stand and walk at a
        # commanded speed): 120 iterations, 135 s on 2 idle cores (measured); its video shows
        # the best iteration following forward, stop and backward commands.
        out = ROOT / "renders" / "walker_goals"
        cmd = [str(BIN / "simdiff"), "train", "walker_goals", "--set", 'tasks=["stand","walk"]',
               "--iters", "120", "--out", str(out)]
        if (out / "checkpoint.pt").exists():
            cmd += ["--resume", str(out / "checkpoint.pt")]
        return subprocess.run(cmd, cwd=ROOT, check=False).returncode
    if job == "test":
        return subprocess.run([str(PYTHON), "-m", "pytest", *sys.argv[2:]], cwd=ROOT, check=False).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
