"""Running a sweep: prepare its folder, skip finished runs, resume interrupted ones, run the rest
on an engine (local processes or Ray tasks) and keep the summary table current.

The output folder holds ``sweep.json`` (the spec; a different sweep is refused there),
``runs/RUN_ID/`` (each run's own output, ``run.json`` and ``output.log``) and
``summary.csv``/``summary.md``, rewritten as each run finishes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import os
import shutil
import socket
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from tqdm import tqdm

from simdiff.files import LOCK_NAME, hold_lock
from simdiff.sweep.spec import Run, SpecError, SweepSpec, command_parser
from simdiff.sweep.worker import SWEEP_FILES, RunStatus, read_record, run_one, write_record

__all__ = ["Engine", "SweepError", "SweepResult", "run_sweep"]

SWEEP_FORMAT = 1


class SweepError(RuntimeError):
    """A sweep that cannot start: its folder holds another sweep, or its engine is unreachable."""


class Engine(str, Enum):
    """Where the runs execute."""

    LOCAL = "local"
    RAY = "ray"


@dataclass
class SweepResult:
    """What :func:`run_sweep` did."""

    out: Path
    records: list[dict[str, Any]]
    """Every run's record, in the spec's order."""
    skipped: list[str]
    """Runs already done before this call, not run again."""

    @property
    def failed(self) -> list[str]:
        return [r["id"] for r in self.records if r["status"] == RunStatus.FAILED.value]


def run_sweep(spec: SweepSpec, *, engine: str | Engine = Engine.LOCAL, address: str | None = None,
              workers: int | None = None, progress: bool = True) -> SweepResult:
    """Run every run of ``spec`` not yet done; see the module docstring for what is written.

    Args:
        spec: A validated spec.
        engine: ``local`` (a pool of worker processes) or ``ray`` (one Ray task per run).
        address: Ray cluster address (``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``); None
            starts a local Ray instance, or uses the one this process is already connected to.
        workers: Local worker processes (default: cores / the spec's ``num_cpus``); with Ray and
            no address, the CPUs of the local instance.
        progress: Show a progress bar.

    Raises:
        SweepError: the folder holds another sweep or the Ray address cannot be reached.
        SpecError: the spec's runs do not validate.
    """
    engine = Engine(engine)
    if workers is not None and workers < 1:
        raise SpecError(f"workers={workers} must be >= 1")
    if address is not None and engine is not Engine.RAY:
        raise SpecError("--address is for --engine ray")
    runs = spec.expand()
    out = spec.out.resolve()
    executor = _LocalEngine(workers, spec) if engine is Engine.LOCAL else \
        _RayEngine(address, workers, spec)
    executor.start()  # an unreachable engine fails here, before anything is written
    try:
        with hold_lock(out, "sweep"):  # concurrent sweeps into one folder: the second refused
            return _run_locked(spec, runs, out, executor, progress)
    finally:
        executor.stop()


def _run_locked(spec: SweepSpec, runs: list[Run], out: Path, executor,
                progress: bool) -> SweepResult:
    _claim_folder(out, spec)
    parser = command_parser(spec.command)
    records: dict[str, dict[str, Any]] = {}
    tasks, skipped = [], []
    for run in runs:
        run_dir = out / "runs" / run.id
        record = read_record(run_dir)
        if record is not None and record.get("status") == RunStatus.DONE.value:
            records[run.id] = record
            skipped.append(run.id)
            continue
        record = {**(record or {}), "id": run.id, "params": run.params,
                  "status": RunStatus.PENDING.value}
        records[run.id] = record
        argv = _resumed_argv(parser, [a.replace("{run_dir}", str(run_dir)) for a in run.argv],
                             run_dir)
        tasks.append({"run_dir": str(run_dir), "argv": argv, "cwd": os.getcwd(),
                      "threads": max(1, int(spec.resources["num_cpus"])),
                      "metric": spec.metric, "record": record})
    table = _Table(out, runs, spec.metric)
    table.write(records)
    bar = tqdm(total=len(runs), initial=len(skipped), desc=f"sweep {out.name}",
               unit="run", disable=not progress, dynamic_ncols=True)
    counts = {"running": 0, "failed": 0}

    def show() -> None:
        done = sum(r["status"] == RunStatus.DONE.value for r in records.values())
        bar.set_postfix(done=done, running=counts["running"], failed=counts["failed"])

    def started(n: int) -> None:
        counts["running"] = n
        show()

    def finished(record: dict[str, Any]) -> None:
        records[record["id"]] = record
        counts["failed"] += record["status"] == RunStatus.FAILED.value
        table.write(records)
        bar.update(1)
        show()

    show()
    executor.run(tasks, started, finished)
    bar.close()
    ordered = [records[run.id] for run in runs]
    return SweepResult(out, ordered, skipped)


def _claim_folder(out: Path, spec: SweepSpec) -> None:
    """Create the sweep's folder or check that it holds this same sweep; nothing is overwritten."""
    marker = out / "sweep.json"
    identity = json.loads(json.dumps(spec.identity(), default=str))
    if marker.is_file():
        try:
            saved = json.loads(marker.read_text())["spec"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            raise SweepError(f"{marker} is unreadable; not a simdiff sweep folder") from None
        if saved != identity:
            changed = sorted(k for k in set(saved) | set(identity)
                             if saved.get(k) != identity.get(k))
            raise SweepError(
                f"{out} holds a different sweep (it differs in: {', '.join(changed)}); "
                f"choose another output folder (--out) or restore the spec in {marker}")
        return
    if out.exists() and (not out.is_dir() or any(p.name != LOCK_NAME for p in out.iterdir())):
        raise SweepError(f"{out} exists and is not a simdiff sweep folder (no sweep.json); "
                         "choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"format": SWEEP_FORMAT, "spec": identity,
                                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2))


def _resumed_argv(parser, argv: list[str], run_dir: Path) -> list[str]:
    """Arguments that continue an interrupted or failed run from its checkpoint, or restart it."""
    leftovers = [p for p in run_dir.iterdir()
                 if p.name not in SWEEP_FILES and not p.name.endswith(".lock")] \
        if run_dir.is_dir() else []
    if not leftovers:
        return argv
    resume = next((a for a in parser._actions if a.dest == "resume"), None)
    if resume is not None and resume.nargs == 0:  # the command finds its own checkpoint
        return argv + ["--resume"]
    if resume is not None:
        checkpoints = sorted(run_dir.rglob("checkpoint.pt"))
        if checkpoints:
            return argv + ["--resume", str(checkpoints[0])]
    # Nothing to resume from: the run's partial output is its own and is started over.
    for path in leftovers:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return argv


def _failed(task: dict[str, Any], error: str) -> dict[str, Any]:
    record = {**task["record"], "status": RunStatus.FAILED.value, "argv": task["argv"],
              "error": error, "exit_code": None, "final": None, "best": None, "seconds": None}
    run_dir = Path(task["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    write_record(run_dir, record)
    return record


class _LocalEngine:
    """A pool of worker processes on this machine, each running one run at a time."""

    def __init__(self, workers: int | None, spec: SweepSpec):
        cores = os.cpu_count() or 1
        self.workers = workers or max(1, cores // max(1, int(spec.resources["num_cpus"])))

    def start(self) -> None:
        pass

    def run(self, tasks: list[dict], started: Callable[[int], None],
            finished: Callable[[dict], None]) -> None:
        if not tasks:
            return
        # spawn: a fresh interpreter per worker, no forked Taichi/Warp/torch state.
        context = multiprocessing.get_context("spawn")
        queue = list(reversed(tasks))
        slots = min(self.workers, len(tasks))
        with ProcessPoolExecutor(max_workers=slots, mp_context=context) as pool:
            running = {}  # at most one task per worker, so these are the runs running now
            while queue or running:
                while queue and len(running) < slots:
                    task = queue.pop()
                    running[pool.submit(run_one, task)] = task
                started(len(running))
                ready, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in ready:
                    task = running.pop(future)
                    try:
                        record = future.result()
                    except Exception as err:  # noqa: BLE001 - a dead worker fails its run only
                        record = _failed(task, f"worker process failed: {err!r}")
                    started(len(running))
                    finished(record)

    def stop(self) -> None:
        pass


class _RayEngine:
    """One Ray task per run, with the spec's CPU/GPU requests, on a cluster or a local instance."""

    def __init__(self, address: str | None, workers: int | None, spec: SweepSpec):
        self.address, self.workers, self.resources = address, workers, spec.resources
        self.owned = False

    def start(self) -> None:
        try:
            import ray
        except ImportError:
            raise SweepError("--engine ray needs Ray: pip install 'ray>=2.9'") from None
        if ray.is_initialized():
            if self.address is None:
                return  # already connected (a notebook, a test): use that instance
            ray.shutdown()
        if self.address not in (None, "auto", "local"):
            _check_reachable(self.address)
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if self.address is None:
            options["num_cpus"] = self.workers
        try:
            ray.init(address=self.address, **options)
        except Exception as err:  # noqa: BLE001 - Ray raises several kinds; none falls back
            raise SweepError(f"cannot connect to Ray at {self.address or 'a local instance'}: "
                             f"{err}") from None
        self.owned = True

    def run(self, tasks: list[dict], started: Callable[[int], None],
            finished: Callable[[dict], None]) -> None:
        import ray

        remote = ray.remote(run_one).options(num_cpus=self.resources["num_cpus"],
                                             num_gpus=self.resources["num_gpus"], max_retries=0)
        pending = {remote.remote(task): task for task in tasks}
        while pending:
            started(len(pending))  # submitted and not finished: running or queued in Ray
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                task = pending.pop(ref)
                try:
                    record = ray.get(ref)
                except Exception as err:  # noqa: BLE001 - a lost task fails its run only
                    record = _failed(task, f"Ray task failed: {err}")
                started(len(pending))
                finished(record)

    def stop(self) -> None:
        if self.owned:
            import ray

            ray.shutdown()


def _check_reachable(address: str) -> None:
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            pass
    except (OSError, ValueError) as err:
        raise SweepError(
            f"Ray address {address!r} cannot be reached ({err}); start the cluster there "
            "(`ray start --head`) or leave out --address for a local Ray instance") from None


class _Table:
    """The summary table, as CSV (full precision) and Markdown, one row per run."""

    def __init__(self, out: Path, runs: list[Run], metric: str):
        self.out, self.runs, self.metric = out, runs, metric
        self.params = list(dict.fromkeys(k for run in runs for k in run.params))

    def rows(self, records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        rows = []
        for run in self.runs:
            r = records.get(run.id, {"status": RunStatus.PENDING.value})
            error = (r.get("error") or "").strip().splitlines()
            rows.append({"run": run.id, "status": r["status"],
                         **{k: run.params.get(k, "") for k in self.params},
                         f"final_{self.metric}": r.get("final"),
                         f"best_{self.metric}": r.get("best"),
                         "exit_code": r.get("exit_code"), "seconds": r.get("seconds"),
                         "error": error[-1] if error else ""})
        return rows

    def write(self, records: dict[str, dict[str, Any]]) -> None:
        rows = self.rows(records)
        columns = list(rows[0]) if rows else []
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
        _atomic_write(self.out / "summary.csv", text.getvalue())
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in rows:
            lines.append("| " + " | ".join(_md(v) for v in row.values()) + " |")
        _atomic_write(self.out / "summary.md", "\n".join(lines) + "\n")


def _md(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value).replace("|", "\\|")[:80]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
