"""A run's folder belongs to one run: the lock file ``--out/.hessop.lock``.

A second run into a folder that a live run holds would overwrite its state and
arrays (the first run's landscapes would follow the second run's eigenvectors),
so it is refused, naming the holder. The lock records the holder's host, process
id and that process's start time; a lock left by a run that died (killed, out of
memory, the machine rebooted) is noticed on the same host and taken over, so a
crash never blocks a folder. A lock written from another host cannot be checked
from here: the message says which file to delete if that run is gone.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

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
    def acquire(cls, out: Path, command: str) -> "RunLock":
        """Take the folder's lock; raise :class:`UsageError` if a live run holds it or the folder is not writable."""
        out = Path(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--out {str(out)!r}: cannot create the report folder ({exc.strerror}); choose another") from exc
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
