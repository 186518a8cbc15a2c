"""Files simdiff reads and writes for a user: data loaded without running code, and output
folders that one process at a time may write.

Trust model: scene files, controller files and ``.py`` sweep specs are code and run as such;
checkpoints, controller weights, policies and ``.yaml``/``.json`` specs are data. Data files are
loaded with ``torch.load(weights_only=True)`` (tensors, dicts, lists, numbers, strings), so a
file that would need unpickling anything else is refused before any of its code could run.

Every output folder (a training run, a design, an RL policy, a sweep and each of its runs)
holds a lock file for as long as a process writes into it: ``fcntl.flock`` on
``FOLDER/.simdiff.lock``, which the kernel releases when the process ends, however it ends. A
second process is refused with one line naming the first. On a clean exit the holder removes
the file (and the folder, if it made it and nothing was written). A lock file left by a killed
process holds no lock: the next run takes it over, and no command counts it as a run's output.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "LOCK_NAME",
    "DataFileError",
    "FolderBusyError",
    "check_creatable",
    "check_output_folder",
    "folder_kind",
    "hold_lock",
    "load_data",
    "save_data",
]

LOCK_NAME = ".simdiff.lock"
"""Name of the lock file in an output folder."""


class DataFileError(ValueError):
    """A data file (checkpoint, weights, policy) that is missing, unreadable, or would need
    unpickling code to load."""


class FolderBusyError(FileExistsError):
    """An output folder another live process is writing into."""


def load_data(path: str | Path, what: str = "file") -> Any:
    """Load a file written by :func:`save_data` (or ``torch.save`` of plain data) without
    unpickling anything but tensors, dicts, lists, tuples, numbers and strings.

    Args:
        path: The file.
        what: What the file is, for messages (``checkpoint``, ``controller weights``).

    Raises:
        DataFileError: The file is missing, corrupt, or holds objects that need unpickling
            (their code never runs: the safe unpickler refuses the first such global).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL\s+([\w.]+)|[Uu]nsupported global:?\s+([\w.]+)", str(err))
        if not found:  # not a global the safe unpickler refused: a damaged or foreign file
            raise DataFileError(f"{what} {path} is unreadable or corrupt (not a torch data "
                                "file)") from None
        name = f" ({found.group(1) or found.group(2)})"
        raise DataFileError(
            f"{what} {path} holds objects that need unpickling{name}; simdiff loads only data "
            "(tensors, numbers, strings, lists, dicts) and refused it without running it"
        ) from None
    except Exception as err:  # noqa: BLE001 - any unreadable file is refused the same way
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataFileError(f"{what} {path} is unreadable or corrupt ({first})") from None


def save_data(obj: Any, path: str | Path) -> None:
    """Write ``obj`` (plain data: see :func:`load_data`) atomically: a crash mid-write leaves
    the previous file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def check_creatable(path: str | Path, what: str = "--out", *, folder: bool = True) -> Path:
    """Check, before any work, that ``path`` can be written: an existing folder (or file when
    ``folder`` is False), or a new one under a writable folder. Nothing is created.

    Raises:
        ValueError: naming ``what``, the path and why it cannot be written.
    """
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise ValueError(f"{what} {path} is a file, not a folder")
        if not folder and path.is_dir():
            raise ValueError(f"{what} {path} is a folder, not a file")
        target = path if path.is_dir() else path.parent
    else:
        target = path.parent
        while not target.exists() and target != target.parent:
            target = target.parent
        if not target.is_dir():
            raise ValueError(f"{what} {path} cannot be created: {target} is a file")
    if not os.access(target, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path} cannot be created: {target} is not writable")
    return path


# What each command leaves in its output folder, so that a folder holding one kind of run is
# recognised before another kind's files are mixed into it (or replace its own).
_SIGNATURES = {
    "training run": ("checkpoint.pt", "config.json"),
    "design": ("design.npy", "stiffness_layout.png", "results.csv"),
    "sweep": ("sweep.json",),
    "rollout": ("metrics.json",),
    "RL policy": ("policy.json", "policy.checkpoint.pt"),
    "RL evaluation": ("evaluation.md",),
    "goal evaluation": ("evaluation.json",),
    "benchmark": ("bench_*.json",),
}

# Suffixes that make ``--out x.mp4`` a file the user meant, not a folder's name.
_FILE_SUFFIXES = (".mp4", ".gif", ".webm", ".avi", ".mov", ".png", ".jpg", ".json", ".jsonl",
                  ".pt", ".csv", ".md")


def folder_kind(path: str | Path) -> str | None:
    """The kind of run an output folder holds (``"training run"``, ``"design"``, ``"sweep"``,
    ``"rollout"``, ``"RL policy"``, ``"RL evaluation"``, ``"goal evaluation"``,
    ``"benchmark"``), from the files that command writes; None for a missing or empty folder or
    one no command wrote."""
    path = Path(path)
    if not path.is_dir():
        return None
    for kind, names in _SIGNATURES.items():
        if any(next(path.glob(name), None) is not None for name in names):
            return kind
    return None


def check_output_folder(path: str | Path, kind: str, what: str = "--out", *,
                        hint: str = "") -> Path:
    """Check, before any work, that ``path`` can be the output folder of a ``kind`` run:
    creatable and writable (:func:`check_creatable`), not a file's name (``x.mp4``), and not
    holding another kind of run. A folder holding the same kind is accepted; whether its files
    may be replaced is the command's to decide. Nothing is created.

    Args:
        path: The folder.
        kind: What will be written there (a key of the signatures: ``"rollout"``).
        what: The option, for messages.
        hint: What to pass instead of a file path, appended to that message.

    Raises:
        ValueError: ``path`` cannot be created or written, or names a file.
        FileExistsError: ``path`` holds another kind of run.
    """
    path = Path(path)
    if path.suffix.lower() in _FILE_SUFFIXES and not path.is_dir():
        raise ValueError(f"{what} {path} names a {path.suffix} file; {what} takes a folder "
                         f"(its files are written inside it): pass {what} "
                         f"{path.with_suffix('')}{hint}")
    check_creatable(path, what)
    found = folder_kind(path)
    if found is not None and found != kind:
        raise FileExistsError(f"{what} {path} holds a {found}; a {kind} would mix its files "
                              f"into it: choose another {what}")
    return path


# Locks this process holds: lock-file path -> (open file, count). flock locks belong to an
# open file description, so a second open in the same process would block itself; nested
# holders (the CLI around the library call, a sweep worker around its run) share one.
_HELD: dict[str, list] = {}


@contextlib.contextmanager
def hold_lock(folder: str | Path, what: str = "output folder", *,
              lock_name: str = LOCK_NAME) -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (created if missing) while the block runs.

    Args:
        folder: The output folder.
        what: What writes there, for the message (``training run``, ``sweep``).
        lock_name: The lock file's name in ``folder`` (an RL policy locks ``NAME.lock`` so
            that two policies may share a folder).

    Raises:
        FolderBusyError: Another live process holds the lock.
        OSError: ``folder`` cannot be created.
    """
    folder = Path(folder)
    created = not folder.exists()
    path = folder / lock_name
    key = str(path.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield folder
        finally:
            _HELD[key][1] -= 1
        return
    handle = _acquire(folder, path, what)
    _HELD[key] = [handle, 1]
    try:
        yield folder
    finally:
        _HELD[key][1] -= 1
        if _HELD[key][1] == 0:
            del _HELD[key]
            # Removed while still locked, so that no other process can hold a lock on it:
            # one that opened it meanwhile finds the path gone or another file (_acquire).
            with contextlib.suppress(OSError):
                path.unlink()
            handle.close()  # releases the lock
            if created:  # a run refused before writing anything leaves no empty folder
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _acquire(folder: Path, path: Path, what: str):
    """Open and lock ``path`` (creating ``folder``), the lock file a holder may remove."""
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            handle = open(path, "a+")  # noqa: SIM115 - kept open while the lock is held
        except FileNotFoundError:  # the folder was removed by a holder leaving: make it again
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise FolderBusyError(
                f"cannot write the {what} into {folder}: it is in use by another simdiff "
                f"process ({holder}); wait for it to finish or choose another output folder"
            ) from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        mine = os.fstat(handle.fileno())
        if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino,
                                                                        mine.st_dev):
            break
        handle.close()  # locked a file its holder removed on leaving: lock the path's own
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle
