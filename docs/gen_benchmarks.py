"""Generate ``docs/benchmarks.md`` from the benchmarks' JSON output.

    python docs/gen_benchmarks.py                       # measure the default set, then write
    python docs/gen_benchmarks.py [--quick] [--only mass_spring,nbody]   # measure those, write
    python docs/gen_benchmarks.py --render                              # rewrite from the data
    python docs/gen_benchmarks.py --add mass_spring=rows.json           # a `simdiff bench --json`

Measuring runs ``simdiff bench NAME --json ...`` for each benchmark (each configuration in its
own process, as the command does) and stores its rows in ``docs/benchmarks/NAME.json`` together
with the date, the machine, the host's load average before and after it, and whether it was a
``--quick`` (toy-size) run. The default set (:data:`DEFAULT`) is the benchmarks cheap enough to
run at their full sizes on a shared 2-core host; the others are measured with ``--only``.
``--add`` stores
rows measured elsewhere, recording the file's date and this machine (say so with
``--machine``). The page is then written from every stored file: one table per benchmark, with
the ratio to the baseline that ran beside it, which is what the figures mean on a shared host.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "docs" / "benchmarks"
PAGE = ROOT / "docs" / "benchmarks.md"
CHART = ROOT / "docs" / "benchmarks.png"
BENCHMARKS = ("mass_spring", "mpm", "fluid", "nbody", "design")
DEFAULT = ("mass_spring",)
"""Measured when no ``--only`` is given: about 27 minutes at full size on 2 cores shared at a
load average of 20 (2026-12-02). The others take much longer there: the N-body benchmark's
first configuration (Warp, up to 16,384 bodies) had not finished after 17 minutes, the MPM
benchmark's plain-torch baseline takes minutes per training iteration, the design benchmark's
Jacobi-CG minutes per iteration at 384x128, the fluid's plain-torch CG hundreds of iterations
per solve at 256^2. ``--only mass_spring,nbody`` (and so on) measures them."""


def load_average() -> list[float] | None:
    """The host's 1, 5 and 15-minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine() -> str:
    """This machine in words: CPU model and cores, OS, Python and the kernel libraries."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for package in ("torch", "taichi", "warp-lang"):
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, {', '.join(versions)}")


def store(name: str, rows: list[dict], *, quick: bool, date: str, where: str,
          command: str, load: dict | None = None) -> Path:
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"{name}.json"
    record = {"benchmark": name, "date": date, "machine": where, "quick": quick,
              "command": command, "load": load, "rows": rows}
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def measure(name: str, *, quick: bool) -> Path:
    """Run ``simdiff bench NAME`` and store its rows; raises when the benchmark fails."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{name}.json"
        args = ["bench", name, *(["--quick"] if quick else []), "--json", str(out)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        before = load_average()
        done = subprocess.run([sys.executable, "-m", "simdiff.cli", *args], cwd=ROOT, env=env,
                              check=False)
        if done.returncode != 0 or not out.is_file():
            raise SystemExit(f"simdiff {' '.join(args[:-2])} failed (exit {done.returncode})")
        rows = json.loads(out.read_text())
    load = {"before": before, "after": load_average(), "cpus": os.cpu_count()}
    return store(name, rows, quick=quick, date=date, where=machine(),
                 command="simdiff " + " ".join(args[:-2]), load=load)


def _fmt(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, dict)):
        return "…"
    return "" if value is None else str(value).replace("|", "\\|")


def _load(load: dict | None) -> str:
    """The load averages a run recorded, in words."""
    if not load or not load.get("before"):
        return "not recorded"
    after = load.get("after") or [float("nan")]
    cpus = f" on {load['cpus']} cores" if load.get("cpus") else ""
    return f"{load['before'][0]:.1f} / {after[0]:.1f}{cpus}"


def _table(rows: list[dict]) -> list[str]:
    first = ["config", "vs_baseline"]
    columns = list(dict.fromkeys([*first, *(k for r in rows for k in r)]))
    columns = [c for c in columns if any(not isinstance(r.get(c), (list, dict)) and
                                         r.get(c) is not None for r in rows)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return lines


def _keys(name: str) -> tuple[str, ...]:
    """The columns that tell a benchmark's rows apart (its script's ``KEYS``)."""
    import importlib.util

    script = ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", script)
    if spec is None or not script.is_file():
        return ()
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return tuple(getattr(module, "KEYS", ()))


def chart(records: list[dict], path: Path = CHART) -> Path:
    """A bar chart of every row's ``vs_baseline`` (log scale, 1 = the baseline), one panel
    per benchmark, written from the same stored files as the page."""
    from matplotlib.figure import Figure

    panels = []
    for record in records:
        rows = [r for r in record["rows"] if isinstance(r.get("vs_baseline"), (int, float))
                and r["vs_baseline"] > 0 and r["vs_baseline"] != 1.0]
        if rows:
            panels.append((record, rows))
    height = sum(0.22 * len(rows) + 0.9 for _, rows in panels) or 1.0
    figure = Figure(figsize=(7.5, height), dpi=100, layout="constrained")
    for k, (record, rows) in enumerate(panels):
        axes = figure.add_subplot(len(panels), 1, k + 1)
        keys = _keys(record["benchmark"])
        labels = [" ".join([str(r.get("config", "")), *(
            f"{k}={_fmt(r[k])}" if isinstance(r[k], (int, float)) else _fmt(r[k])
            for k in keys if r.get(k) is not None)]) for r in rows]
        values = [r["vs_baseline"] for r in rows]
        colors = ["#2ca02c" if v >= 1 else "#d62728" for v in values]
        # Bars from 1 (the baseline) to the value: left of it slower, right of it faster.
        axes.barh(range(len(rows)), [v - 1.0 for v in values], left=1.0, color=colors)
        axes.set_xscale("log")
        axes.axvline(1.0, color="black", lw=1)
        axes.set_yticks(range(len(rows)), labels, fontsize=7)
        axes.invert_yaxis()
        mode = "quick, toy sizes" if record["quick"] else "full"
        axes.set_title(f"{record['benchmark']} ({mode}, {record['date']})", fontsize=9)
        axes.tick_params(axis="x", labelsize=7)
        if k == len(panels) - 1:
            axes.set_xlabel("times better than the baseline of the same run (log scale)",
                            fontsize=8)
    figure.savefig(path, format="png")
    return path


def render() -> str:
    """The page, from every stored benchmark file."""
    records = [json.loads(p.read_text()) for p in sorted(DATA.glob("*.json"))]
    lines = [
        "# Benchmarks",
        "",
        ("Generated by `python docs/gen_benchmarks.py` from the output of `simdiff bench NAME "
         "--json` (do not edit by hand). Absolute times on shared machines drift: every "
         "benchmark measures its baseline in the same run, and `vs_baseline` is how many "
         "times better than that baseline a row is (higher is better, whatever the metric)."),
        "",
    ]
    if not records:
        lines += ["No benchmark data yet: run `python docs/gen_benchmarks.py`.", ""]
    else:
        lines += ["![every row against its baseline, log scale](benchmarks.png)", ""]
        lines += ["| benchmark | size | run (start) | host load before / after (1-min average) |",
                  "|---|---|---|---|"]
        lines += [f"| [{r['benchmark']}](#{r['benchmark']}) | "
                  f"{'quick (toy sizes)' if r['quick'] else 'full'} | {r['date']} | "
                  f"{_load(r.get('load'))} |" for r in records]
        lines += [""]
        busy = [r["benchmark"] for r in records if (r.get("load") or {}).get("before")
                and r["load"]["before"][0] > (r["load"].get("cpus") or 1)]
        if busy:
            lines += [(f"{', '.join(busy)}: the host's load exceeded its cores (other jobs "
                       "shared them): absolute times are several times an idle host's, and "
                       "the ratios are approximate (a benchmark's configurations run one "
                       "after another, under whatever load there was)."), ""]
    missing = [name for name in BENCHMARKS if name not in {r["benchmark"] for r in records}]
    if missing:
        lines += [("Not run for this page: " + ", ".join(f"`simdiff bench {m}`" for m in missing)
                   + "; `python docs/gen_benchmarks.py --only NAME` measures one and adds it."),
                  ""]
    if any(r["quick"] for r in records):
        lines += [
            "!!! warning \"Quick-mode data\"",
            ("    Tables marked *quick* come from `--quick` runs: toy sizes that check the "
             "benchmarks run, not figures to quote. Rerun without `--quick` for real numbers."),
            "",
        ]
    for record in records:
        mode = "quick (toy sizes)" if record["quick"] else "full"
        lines += [
            f"## {record['benchmark']}",
            "",
            f"- command: `{record['command']}`, {mode}",
            f"- date: {record['date']}",
            f"- machine: {record['machine']}",
            f"- host load (1-min average) before / after: {_load(record.get('load'))}",
            "",
            *_table(record["rows"]),
            "",
        ]
    lines += ["What each benchmark measures is in the docstring of `benchmarks/NAME.py`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes (marked on the page)")
    parser.add_argument("--only", default=",".join(DEFAULT),
                        help=f"comma-separated benchmarks of {', '.join(BENCHMARKS)} "
                             f"(default: {','.join(DEFAULT)})")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite the page from docs/benchmarks/*.json")
    parser.add_argument("--add", action="append", default=[], metavar="NAME=ROWS.json",
                        help="store rows written by `simdiff bench NAME --json ROWS.json`")
    parser.add_argument("--machine", default=None,
                        help="with --add: the machine the rows were measured on "
                             "(default: this one)")
    parser.add_argument("--add-quick", action="store_true",
                        help="with --add: the rows came from a --quick run")
    args = parser.parse_args(argv)
    for item in args.add:
        name, _, path = item.partition("=")
        if not path or not Path(path).is_file():
            parser.error(f"--add {item!r}: expected NAME=PATH to an existing JSON file")
        stamp = datetime.datetime.fromtimestamp(Path(path).stat().st_mtime).astimezone()
        store(name, json.loads(Path(path).read_text()), quick=args.add_quick,
              date=stamp.strftime("%Y-%m-%d %H:%M %Z"), where=args.machine or machine(),
              command=f"simdiff bench {name}" + (" --quick" if args.add_quick else ""))
    if not args.render and not args.add:
        for name in filter(None, args.only.split(",")):
            if name not in BENCHMARKS:
                parser.error(f"--only: unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
            print(f"wrote {measure(name, quick=args.quick)}", flush=True)
    PAGE.write_text(render())
    print(f"wrote {PAGE}")
    records = [json.loads(p.read_text()) for p in sorted(DATA.glob("*.json"))]
    if records:
        print(f"wrote {chart(records)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
