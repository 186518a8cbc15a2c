"""One run of a sweep, in a worker process (local pool or Ray task).

A worker process lives for many runs, so each kernel backend is initialized once per worker.
The run's output (Python and native, stdout and stderr) goes to ``RUN_DIR/output.log``; its
record (status, arguments, exit code, time, error, final metric) to ``RUN_DIR/run.json``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
from enum import Enum
from pathlib import Path
from typing import Any

__all__ = ["RunStatus", "read_metric", "read_record", "run_one", "write_record"]

RECORD = "run.json"
LOG = "output.log"
SWEEP_FILES = {RECORD, LOG}


class RunStatus(str, Enum):
    """Where a run stands."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``run.json``, or None if it never started."""
    try:
        return json.loads((run_dir / RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    """Atomically replace the run's ``run.json``."""
    tmp = run_dir / (RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, run_dir / RECORD)


def read_metric(run_dir: Path, metric: str) -> tuple[float | None, float | None]:
    """Final and best (lowest) value of ``metric`` in the run's ``metrics.jsonl``, if it has one."""
    for path in sorted(run_dir.rglob("metrics.jsonl")):
        values = []
        for line in path.read_text().splitlines():
            try:
                value = json.loads(line).get(metric)
            except json.JSONDecodeError:
                continue
            if isinstance(value, (int, float)):
                values.append(float(value))
        if values:
            return values[-1], min(values)
    return None, None


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def run_one(task: dict[str, Any]) -> dict[str, Any]:
    """Run one ``simdiff`` command; never raises for the run's own failure.

    Args:
        task: ``run_dir``, ``argv`` (``{run_dir}`` filled in), ``cwd``, ``threads``, ``metric``,
            ``record`` (the run's record so far: id, params, attempts).

    Returns:
        The run's final record, also written to ``run_dir/run.json``.

    Raises:
        FolderBusyError: another process writes into the run's folder (the engine records the
            run as failed).
    """
    from simdiff.files import hold_lock

    run_dir = Path(task["run_dir"])
    # The run's folder is this worker's while it runs; the command inside takes the same lock
    # (shared within the process), and anything else writing there is refused.
    with hold_lock(run_dir, "sweep run"):
        return _run_locked(task, run_dir)


def _run_locked(task: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    import torch

    from simdiff.cli import main

    record = dict(task["record"])
    record.update(status=RunStatus.RUNNING.value, argv=task["argv"], host=socket.gethostname(),
                  pid=os.getpid(), started=time.time(), attempts=record.get("attempts", 0) + 1,
                  error=None, exit_code=None)
    write_record(run_dir, record)
    torch.set_num_threads(max(1, int(task["threads"])))
    cwd = os.getcwd()
    if Path(task["cwd"]).is_dir():
        os.chdir(task["cwd"])
    started = time.perf_counter()
    error = None
    with open(run_dir / LOG, "a", buffering=1) as log:
        log.write(f"$ simdiff {' '.join(task['argv'])}\n")
        sys.stdout.flush()
        sys.stderr.flush()
        saved_fds, saved_streams = (os.dup(1), os.dup(2)), (sys.stdout, sys.stderr)
        os.dup2(log.fileno(), 1)  # native output (kernel compilers) too
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
        try:
            code = main(task["argv"])
        except SystemExit as exit_:  # argparse and SystemExit(message) inside commands
            code = exit_.code if isinstance(exit_.code, int) else 1
            if not isinstance(exit_.code, int) and exit_.code is not None:
                print(exit_.code, file=log)
        except BaseException as err:  # the run fails, the sweep goes on
            code = 1
            error = "".join(traceback.format_exception_only(type(err), err)).strip()
            traceback.print_exc(file=log)
            if isinstance(err, KeyboardInterrupt):
                raise
        finally:
            log.flush()
            sys.stdout, sys.stderr = saved_streams
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            os.close(saved_fds[0])
            os.close(saved_fds[1])
            os.chdir(cwd)
    seconds = time.perf_counter() - started
    code = 0 if code is None else int(code)
    final, best = read_metric(run_dir, task["metric"])
    if code != 0 and error is None:
        error = _tail(run_dir / LOG)
    elif error is not None:
        error = _tail(run_dir / LOG, 6)
    record.update(status=(RunStatus.DONE if code == 0 else RunStatus.FAILED).value,
                  exit_code=code, seconds=seconds, final=final, best=best, error=error,
                  finished=time.time())
    write_record(run_dir, record)
    return record
