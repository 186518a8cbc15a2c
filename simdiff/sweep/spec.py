"""A sweep specification: one ``simdiff`` command, the values its parameters take, and the seeds.

A SPEC file is YAML (``.yaml``/``.yml``), JSON, or Python (a ``.py`` file defining a dict
``SPEC``). Its keys:

``command``
    A ``simdiff`` subcommand path: ``train``, ``design``, ``rl train``, ... Each run is this
    command called through :func:`simdiff.cli.main` with its parameters turned into flags.
``out``
    The sweep's output folder (relative to where ``simdiff sweep`` runs). Each run gets
    ``OUT/runs/RUN_ID/``; ``OUT/sweep.json`` records the spec, ``OUT/summary.{csv,md}`` the table.
``fixed``
    Parameters shared by every run: ``{scene: walker_small, iters: 40, quiet: true}``.
``grid``
    Parameters swept over, each a list of values; runs are every combination.
``runs``
    A list of parameter dicts (e.g. one per problem); combined with every grid point.
``seeds``
    A list of seeds, or a count ``n`` for seeds ``0..n-1``; passed as ``--seed``.
``metric``
    The key read from a run's ``metrics.jsonl`` for the table (default ``loss``).
``resources``
    Per-run requests ``{num_cpus: 1, num_gpus: 0}``: Ray's task resources, and the torch threads
    of a run on either engine. A run given a GPU also needs ``device: cuda`` among its parameters.

Parameter names are the command's argparse destinations (``max_actions`` or ``max-actions`` for
``--max-actions``); positional arguments are parameters too (``scene`` of ``train``), so a sweep
can range over scenes or problems. ``true`` sets a flag, ``false`` leaves it out, ``null`` leaves
an option at its default, a list repeats a repeatable option, and a dict given to ``set`` becomes
``--set KEY=VALUE`` items. The sweep sets ``out`` itself (a ``{run_dir}`` template may be given
instead; any other ``out`` in ``fixed``, ``grid`` or ``runs`` is refused, since runs sharing a
folder would overwrite each other) and ``resume``.

A ``.py`` spec is code: loading it runs it. ``.yaml`` and ``.json`` specs are data.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import itertools
import json
import re
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Run", "SpecError", "SweepSpec", "command_parser", "load_spec", "parse_spec", "to_argv"]

# Where a command puts its output when the spec does not say: a folder, except for commands
# whose --out is a file stem.
_DEFAULT_OUT = {"rl train": "{run_dir}/policy"}
_KEYS = {"command", "out", "fixed", "grid", "runs", "seeds", "metric", "resources"}
_SWEEP_OWNED = {"resume"}


class SpecError(ValueError):
    """A sweep specification that cannot be run; the message names the key and what is wrong."""


@dataclass
class Run:
    """One run of a sweep: a point of the grid with one seed."""

    id: str
    """Folder name under ``OUT/runs/``, made from the swept parameter values."""
    params: dict[str, Any]
    """The swept parameters of this run (grid, runs entry and seed), for the table."""
    argv: list[str]
    """``simdiff`` arguments of a fresh run, with ``{run_dir}`` still to be filled in."""


@dataclass
class SweepSpec:
    """A validated sweep specification (see the module docstring for the keys)."""

    command: str
    out: Path
    fixed: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=lambda: [{}])
    seeds: list[int] | None = None
    metric: str = "loss"
    resources: dict[str, float] = field(default_factory=lambda: {"num_cpus": 1, "num_gpus": 0})

    def identity(self) -> dict[str, Any]:
        """What makes two sweeps the same sweep (resources and engine may change between runs)."""
        return {"command": self.command, "fixed": self.fixed, "grid": self.grid,
                "runs": self.runs, "seeds": self.seeds, "metric": self.metric}

    def expand(self) -> list[Run]:
        """Every run: runs entries x grid combinations x seeds, validated against the command."""
        parser = command_parser(self.command)
        keys = list(self.grid)
        seeds = self.seeds if self.seeds is not None else [None]
        runs, seen = [], {}
        for entry in self.runs:
            for values in itertools.product(*(self.grid[k] for k in keys)):
                for seed in seeds:
                    swept = {**entry, **dict(zip(keys, values))}
                    if seed is not None:
                        swept["seed"] = seed
                    run_id = _run_id(swept)
                    if run_id in seen:
                        raise SpecError(f"two runs have the same parameters {swept}; "
                                        "remove the duplicate value")
                    seen[run_id] = True
                    params = {**self.fixed, **swept}
                    params.setdefault("out", _DEFAULT_OUT.get(self.command, "{run_dir}"))
                    if "quiet" in _actions(parser):
                        params.setdefault("quiet", True)  # progress bars do not belong in logs
                    argv = self.command.split() + to_argv(parser, params)
                    _check_parses(parser, argv[len(self.command.split()):], run_id)
                    runs.append(Run(run_id, swept, argv))
        return runs


def load_spec(path: str | Path, *, out: str | Path | None = None) -> SweepSpec:
    """Read and validate a SPEC file; ``out`` overrides its output folder.

    Raises:
        SpecError: the file is unreadable, or a key, command, parameter or value is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec {path} does not exist")
    try:
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise SpecError(f"spec {path}: YAML specs need PyYAML (pip install pyyaml); "
                                "or write the spec as .json or .py") from None
            data = yaml.safe_load(path.read_text())
        elif path.suffix == ".json":
            data = json.loads(path.read_text())
        elif path.suffix == ".py":
            data = runpy.run_path(str(path)).get("SPEC")
        else:
            raise SpecError(f"spec {path}: unknown format {path.suffix!r}; use .yaml, .json or .py")
    except SpecError:
        raise
    except Exception as err:  # noqa: BLE001 - any parse error is reported the same way
        raise SpecError(f"spec {path} could not be read: {err}") from None
    if not isinstance(data, dict):
        raise SpecError(f"spec {path}: expected a mapping of keys (a .py spec defines SPEC = {{}})")
    return parse_spec(data, out=out, where=str(path))


def parse_spec(data: dict, *, out: str | Path | None = None, where: str = "spec") -> SweepSpec:
    """Validate a spec given as a dict (the contents of a SPEC file)."""
    unknown = set(data) - _KEYS
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    if not isinstance(data.get("command"), str) or not data["command"].strip():
        raise SpecError(f"{where}: 'command' must name a simdiff command, e.g. 'train'")
    command = " ".join(data["command"].split())
    parser = command_parser(command)
    out = out if out is not None else data.get("out")
    if not out:
        raise SpecError(f"{where}: 'out' (the sweep's output folder) is required")
    fixed = _mapping(data.get("fixed", {}), "fixed", where)
    grid = _mapping(data.get("grid", {}), "grid", where)
    if "grid" in data and not grid:
        raise SpecError(f"{where}: 'grid' is empty; give each swept parameter a list of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SpecError(f"{where}: grid parameter {key!r} must be a non-empty list of values, "
                            f"not {values!r}")
    runs = data.get("runs", [{}])
    if not isinstance(runs, list) or not runs or not all(isinstance(r, dict) for r in runs):
        raise SpecError(f"{where}: 'runs' must be a non-empty list of parameter mappings")
    seeds = data.get("seeds")
    if seeds is not None:
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            seeds = list(range(seeds))
        if not isinstance(seeds, list) or not seeds or not all(
                isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise SpecError(f"{where}: 'seeds' must be a positive count or a non-empty list of "
                            f"integers, not {data['seeds']!r}")
        if len(set(seeds)) != len(seeds):
            raise SpecError(f"{where}: 'seeds' {seeds} repeats a seed")
    resources = {"num_cpus": 1, "num_gpus": 0, **_mapping(data.get("resources", {}),
                                                          "resources", where)}
    if set(resources) - {"num_cpus", "num_gpus"}:
        raise SpecError(f"{where}: resources allows num_cpus and num_gpus, not "
                        f"{sorted(set(resources) - {'num_cpus', 'num_gpus'})}")
    if not all(isinstance(v, (int, float)) and v >= 0 for v in resources.values()) or \
            resources["num_cpus"] <= 0:
        raise SpecError(f"{where}: resources {resources} must be numbers, num_cpus > 0")
    # Parameter names are checked before anything runs: against the command's own parser.
    names = _actions(parser)
    sources = [("fixed", fixed), ("grid", grid)] + [(f"runs[{i}]", r) for i, r in enumerate(runs)]
    if seeds is not None:
        if "seed" not in names:
            raise SpecError(f"{where}: 'seeds' given but `simdiff {command}` has no --seed")
        sources.append(("seeds", {"seed": seeds}))
    owner: dict[str, str] = {}
    for source, params in sources:
        for key in params:
            dest = _dest(key)
            if dest not in names:
                raise SpecError(
                    f"{where}: {source} names {key!r}, which `simdiff {command}` does not take; "
                    f"its parameters: {', '.join(sorted(set(names) - _SWEEP_OWNED))}")
            if dest in _SWEEP_OWNED:
                raise SpecError(f"{where}: {source} sets {key!r}, which the sweep sets itself")
            if dest == "out":
                values = params[key] if source == "grid" else [params[key]]
                if not all(isinstance(v, str) and "{run_dir}" in v for v in values):
                    raise SpecError(
                        f"{where}: {source} sets 'out' to {params[key]!r}; the sweep gives each "
                        "run its own folder: leave 'out' out, or give a path inside it "
                        "('{run_dir}/NAME'); the sweep's own folder is the top-level 'out'")
            if source.startswith("runs[") and owner.get(dest, "runs").startswith("runs"):
                owner[dest] = "runs"
                continue
            if dest in owner:
                raise SpecError(f"{where}: {key!r} is given in both {owner[dest]} and {source}")
            owner[dest] = source
    fixed = {_dest(k): v for k, v in fixed.items()}
    grid = {_dest(k): v for k, v in grid.items()}
    runs = [{_dest(k): v for k, v in r.items()} for r in runs]
    metric = data.get("metric", "loss")
    if not isinstance(metric, str):
        raise SpecError(f"{where}: 'metric' must be a key of the runs' metrics.jsonl rows")
    spec = SweepSpec(command, Path(out), fixed, grid, runs, seeds, metric, resources)
    spec.expand()  # values are checked too: every run's arguments must parse
    return spec


def command_parser(command: str) -> argparse.ArgumentParser:
    """The argparse parser of a ``simdiff`` subcommand path such as ``rl train``."""
    from simdiff.cli import build_parser

    parser = build_parser()
    path = []
    for word in command.split():
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        choices = subparsers[0].choices if subparsers else {}
        if word not in choices or word == "sweep":
            known = [" ".join(path + [c]) for c in choices if c != "sweep"]
            raise SpecError(f"command {command!r} is unknown: `simdiff {' '.join(path + [word])}` "
                            f"does not exist; known: {', '.join(known) or '(no subcommands)'}")
        parser = choices[word]
        path.append(word)
    if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
        raise SpecError(f"command {command!r} is incomplete: name one of its subcommands")
    return parser


def to_argv(parser: argparse.ArgumentParser, params: dict[str, Any]) -> list[str]:
    """Command-line arguments for ``params``: positionals in order, then flags."""
    actions = _actions(parser)
    positional, flags = [], []
    for action in parser._actions:
        if action.dest in params and not action.option_strings:
            positional.append(_text(params[action.dest]))
    for dest, value in params.items():
        action = actions[dest]
        if not action.option_strings or value is None:  # None: leave the option at its default
            continue
        flag = max(action.option_strings, key=len)
        if action.nargs == 0:  # store_true and friends
            if value is True:
                flags.append(flag)
            elif value is not False:
                raise SpecError(f"parameter {dest!r} is a flag: give true or false, not {value!r}")
            continue
        if isinstance(value, dict):
            value = [f"{k}={json.dumps(v)}" for k, v in value.items()]
        for item in value if isinstance(value, list) else [value]:
            flags += [flag, _text(item)]
    return positional + flags


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest != "help"}


def _dest(key: str) -> str:
    return str(key).lstrip("-").replace("-", "_")


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (bool, type(None))) else str(value)


def _mapping(value: Any, key: str, where: str) -> dict:
    if not isinstance(value, dict):
        raise SpecError(f"{where}: {key!r} must be a mapping of parameter names to values")
    return dict(value)


def _check_parses(parser: argparse.ArgumentParser, argv: list[str], run_id: str) -> None:
    probe = [a.replace("{run_dir}", "RUN_DIR") for a in argv]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser.parse_args(probe)
    except SystemExit:
        message = err.getvalue().strip().splitlines()
        raise SpecError(f"run {run_id}: {message[-1] if message else 'arguments do not parse'} "
                        f"(arguments: {' '.join(argv)})") from None


def _run_id(swept: dict[str, Any]) -> str:
    if not swept:
        return "run"
    text = "_".join(f"{k}={v}" for k, v in swept.items())
    text = re.sub(r"[^A-Za-z0-9._=+-]+", "-", text).strip("-")
    if len(text) <= 80:
        return text
    digest = hashlib.sha1(json.dumps(swept, sort_keys=True, default=str).encode()).hexdigest()
    return f"{text[:70]}-{digest[:8]}"
