"""A run's folder: its lock (one run at a time) and its saved state (finished steps survive, ``--resume``).

**The lock**, ``--out/.hessop.lock`` (:class:`RunLock`). A second run into a
folder that a live run holds would overwrite its state and arrays (the first
run's landscapes would follow the second run's eigenvectors), so it is refused,
naming the holder. The lock records the holder's host, process id and that
process's start time; a lock left by a run that died (killed, out of memory,
the machine rebooted) is noticed on the same host and taken over, so a crash
never blocks a folder. A lock written from another host cannot be checked from
here: the message says which file to delete if that run is gone.

**The state** (:class:`RunState`): ``state.json`` (the run's configuration and
the JSON result of every finished step, rewritten atomically after each step)
and ``arrays/`` (``.npy`` arrays and ``.pt`` weights a later step needs, such as
eigenvectors; for a model split across processes, each rank's own part in a file
named by its rank and the number of ranks, :func:`part_name`). A resumed run must
have the same configuration (the number of ranks included), so the same seed
gives the same numbers whether or not the run was interrupted; saved state that
cannot be read gives a sentence naming the file (:func:`damaged`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError

LOCK_FILE = ".hessop.lock"


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # field 22, counted after the command name


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    now = _start_time(pid)
    return started is None or now is None or now == started


class RunLock:
    """The lock of one run's folder, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, path: Path, record: dict):
        self.path = path
        self.record = record

    @classmethod
    def acquire(cls, out: Path, command: str) -> RunLock:
        """Take the folder's lock; raise :class:`UsageError` if a live run holds it or the folder is not writable."""
        out = Path(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--out {str(out)!r}: cannot create the report folder ({exc.strerror}); "
                             "choose another") from exc
        path = out / LOCK_FILE
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid()),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command}
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read(path)
                if holder is None or _stale(holder):
                    path.unlink(missing_ok=True)  # left by a run that died: take it over
                    continue
                raise UsageError(
                    f"--out {str(out)!r} is in use by another hessop run (pid {holder.get('pid')} on "
                    f"{holder.get('host')}, since {holder.get('since')}); wait for it to finish or choose another "
                    f"--out (if that run is gone, delete {str(path)!r})"
                ) from None
            except OSError as exc:
                raise UsageError(f"--out {str(out)!r}: cannot write in the report folder ({exc.strerror}); "
                                 "choose another") from exc
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            return cls(path, record)
        raise UsageError(f"--out {str(out)!r}: cannot take its lock {str(path)!r}; delete it if no run uses the folder")

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        holder = _read(self.path)
        if holder is not None and holder.get("pid") == self.record["pid"] and holder.get("host") == self.record["host"]:
            self.path.unlink(missing_ok=True)


def _read(path: Path) -> dict | None:
    """The lock's record, or ``None`` when it cannot be read (a writer that died mid-write, garbage)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        try:  # a lock being written right now looks empty for a moment
            if time.time() - path.stat().st_mtime < 2.0:
                return {"pid": "?", "host": "?", "since": "just now"}
        except OSError:
            pass
        return None
    return record if isinstance(record, dict) else None


def _stale(holder: dict) -> bool:
    """Whether the holder is a process of this host that no longer runs."""
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    return not _alive(pid, holder.get("started"))


# -- the saved state ------------------------------------------------------------------------------
STATE_FILE = "state.json"
FORMAT = 1

INTERRUPT_ENV = "HESSOP_INTERRUPT_AFTER"
"""Testing hook: send this process SIGINT (Ctrl-C) after this many steps have finished in it."""


class RunState:
    """Configuration and finished steps of one run, kept in ``out/state.json``.

    Parameters
    ----------
    out : Path
        The report folder.
    config : dict
        Everything that decides the numbers (command, model, budgets, seed).
    writer : bool
        Whether this process writes files (rank 0 under MPI).
    """

    def __init__(self, out: Path, config: dict, writer: bool = True):
        self.out = Path(out)
        self.config = config
        self.writer = writer
        self.steps: dict[str, dict] = {}
        self.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._finished_here = 0

    # -- creation ----------------------------------------------------------------------------
    @classmethod
    def start(cls, out: Path, config: dict, resume: bool, writer: bool = True) -> RunState:
        """A fresh state, or the saved one when ``resume`` (which must have the same configuration)."""
        path = Path(out) / STATE_FILE
        if path.exists() and not path.is_file():
            raise UsageError(f"{str(path)!r} is a {'directory' if path.is_dir() else 'special file'}, where hessop "
                             f"keeps the run's state; move it away or choose another --out")
        if not resume:
            if writer and path.exists():
                path.unlink()  # a new run in an old folder: start clean
            return cls(out, config, writer)
        if not path.is_file():
            raise UsageError(f"--resume: no saved run in {str(out)!r} (no {STATE_FILE}); run without --resume first")
        saved = _read_state(path)
        if saved.get("config") != json.loads(json.dumps(config)):
            diff = _differences(saved.get("config", {}), config)
            raise UsageError(
                f"--resume: the run in {str(out)!r} was started with other options ({diff}); "
                "repeat the original command with --resume, or choose another --out"
            )
        state = cls(out, config, writer)
        state.steps = saved.get("steps", {})
        state.started = saved.get("started", state.started)
        return state

    # -- steps -------------------------------------------------------------------------------
    def done(self, name: str) -> bool:
        """Whether step ``name`` finished (in this run or the one being resumed)."""
        return self.steps.get(name, {}).get("status") == "done"

    def result(self, name: str) -> dict:
        """The JSON result of a finished step."""
        return self.steps[name]["result"]

    def finish(self, name: str, result: dict, seconds: float) -> None:
        """Record a finished step and save at once; then honour the testing interrupt hook."""
        self.steps[name] = {"status": "done", "seconds": round(seconds, 3), "result": result}
        self.save()
        self._finished_here += 1
        limit = os.environ.get(INTERRUPT_ENV)
        if limit and self._finished_here >= int(limit):
            if threading.current_thread() is threading.main_thread():
                signal.raise_signal(signal.SIGINT)  # a real Ctrl-C, through whatever handler is installed
            raise KeyboardInterrupt(f"{INTERRUPT_ENV}={limit}")

    @property
    def complete_steps(self) -> list[str]:
        """Names of the finished steps, in the order they finished."""
        return [k for k, v in self.steps.items() if v.get("status") == "done"]

    # -- files -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The state as saved in ``state.json``."""
        return {"format": FORMAT, "started": self.started, "config": self.config, "steps": self.steps}

    def save(self) -> None:
        """Write ``state.json`` atomically (a crash mid-write never loses the previous state)."""
        if not self.writer:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, default=_jsonable))
        os.replace(tmp, self.out / STATE_FILE)

    def array_path(self, name: str) -> Path:
        """Where the array or weights file ``name`` of this run lives."""
        return self.out / "arrays" / name

    def save_array(self, name: str, value: np.ndarray, part: tuple[int, int] | None = None) -> None:
        """Keep an array (``name.npy``) that a later or resumed step needs.

        ``part=(rank, size)``: ``value`` is this rank's own rows of an array split over ``size``
        processes (the eigenvectors of an FSDP2 model); every rank writes its own file,
        ``name.rank{rank}of{size}.npy`` (:func:`part_name`), none gathers the whole.
        """
        if self.writer or part is not None:
            self.array_path("").mkdir(parents=True, exist_ok=True)
            np.save(self.array_path(part_name(name, part) + ".npy"), value)

    def load_array(self, name: str, rows: int | None = None, part: tuple[int, int] | None = None) -> np.ndarray:
        """An array saved by :meth:`save_array` (this rank's own with ``part``); ``rows``: the first dimension
        it must have."""
        path = self.array_path(part_name(name, part) + ".npy")
        if not path.is_file():
            raise UsageError(f"--resume: {path} is missing; delete {str(self.out)!r} and run again")
        try:
            value = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise damaged(path, f"not a readable .npy array: {exc}") from exc
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or (rows is not None and (
                value.ndim != 2 or value.shape[0] != rows)):
            raise damaged(path, f"an array of shape {getattr(value, 'shape', '?')} where ({rows}, k) floats were saved")
        return value


def part_name(name: str, part: tuple[int, int] | None) -> str:
    """The file name (before its extension) of rank ``r``'s own part of ``name`` split over ``s`` processes,
    ``part=(r, s)``: ``name.rank{r}of{s}``; ``name`` itself for a whole array (``part=None``).

    The number of processes is in the name, so a run resumed on other ranks never reads parts cut
    for another layout (the run's configuration, which records the ranks, refuses it first).
    """
    return name if part is None else f"{name}.rank{part[0]}of{part[1]}"


def damaged(path: Path, what: str) -> UsageError:
    """The error for a saved file that cannot be used: names it and says what to do."""
    folder = path.parent if path.name == STATE_FILE else path.parent.parent
    return UsageError(f"--resume: {path} is damaged ({what}); delete the folder {str(folder)!r} "
                      "and run again without --resume")


def _read_state(path: Path) -> dict:
    """``state.json`` checked for the shape this module writes; a damaged file raises :func:`damaged`."""
    try:
        saved = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise damaged(path, f"not JSON text: {type(exc).__name__}") from exc
    if not (isinstance(saved, dict) and isinstance(saved.get("config"), dict)
            and isinstance(saved.get("steps", {}), dict)):
        raise damaged(path, "not the JSON object with 'config' and 'steps' that hessop writes")
    for name, step in saved.get("steps", {}).items():
        if not isinstance(step, dict) or (step.get("status") == "done" and not isinstance(step.get("result"), dict)):
            raise damaged(path, f"step {name!r} is marked done but holds no result")
        if step.get("status") == "done":
            step["result"] = SavedResult(step["result"], path, name)
    return saved


class SavedResult(dict):
    """A finished step's result read from ``state.json``: a key it lost is :func:`damaged`, not a ``KeyError``."""

    def __init__(self, result: dict, path: Path, step: str):
        super().__init__(result)
        self.path, self.step = path, step

    def __missing__(self, key: str) -> Any:
        raise damaged(self.path, f"step {self.step!r} is marked done but its result lost {key!r}")


def _differences(saved: dict, now: dict) -> str:
    keys = sorted(set(saved) | set(now))
    diffs = [f"{k}: {saved.get(k)!r} then, {now.get(k)!r} now" for k in keys if saved.get(k) != now.get(k)]
    return "; ".join(diffs[:3]) or "unknown difference"


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"cannot save a {type(x).__name__} in the run state")
