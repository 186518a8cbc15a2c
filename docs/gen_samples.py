"""Regenerate the README's still pictures in ``renders/samples/`` from the current code.

    python docs/gen_samples.py [--only design_bridge,rl_pareto]

Each sample is what a command writes, copied under the name the README uses:

- ``design_bridge.png``: ``simdiff design robot --iters 30`` (its ``design.png``: the CNN's
  stiffness layout with the payload, the legs and the sag);
- ``rl_pareto.png``: ``simdiff rl eval --no-video`` (its ``pareto.png``: the shipped
  time-step policy, the error-feedback rule and every fixed eta on the held-out systems).

The animations have their own commands: ``python3 tasks.py sample`` runs the demo (the
goal-conditioned walker) and writes ``walker_goals.gif``; ``python docs/gen_gallery.py`` writes the gallery's posters.
``design_suite.png`` comes from ``simdiff design suite --iters 100`` (about 25 minutes on two
cores), which this script leaves alone. The exit code is 1 if a command failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "renders" / "samples"
COMMANDS = {
    # sample: (simdiff arguments before --out, the file the command writes into --out)
    "design_bridge": (["design", "robot", "--iters", "30"], "design.png"),
    "rl_pareto": (["rl", "eval", "--no-video"], "pareto.png"),
}


def regenerate(name: str) -> Path:
    """Run the sample's command into a fresh folder and copy its picture into place."""
    args, written = COMMANDS[name]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        command = [sys.executable, "-m", "simdiff.cli", *args, "--out", str(out)]
        done = subprocess.run(command, cwd=ROOT, env=env, check=False)
        if done.returncode != 0 or not (out / written).is_file():
            raise RuntimeError(f"simdiff {' '.join(args)} failed (exit {done.returncode})")
        SAMPLES.mkdir(parents=True, exist_ok=True)
        target = SAMPLES / f"{name}.png"
        shutil.copyfile(out / written, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(COMMANDS),
                        help=f"comma-separated samples (default: {','.join(COMMANDS)})")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in COMMANDS]
    if unknown:
        parser.error(f"--only: unknown sample {unknown[0]!r}; known: {', '.join(COMMANDS)}")
    failed = 0
    for name in names:
        try:
            print(f"wrote {regenerate(name)}", flush=True)
        except RuntimeError as err:
            print(f"FAILED {name}: {err}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
