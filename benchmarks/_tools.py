"""The measurement harness of the side-by-side benchmarks and the reproductions.

What each number means
----------------------
wall time
    ``time.perf_counter`` around one call (operator already built), the fastest of
    the timing-only repeats (the first round measures memory, whose ``malloc_trim``
    makes the call page its memory in afresh and ran a conv-net product 1.5x slower),
    with one intra-op thread (:func:`threads`). Repeats are
    *interleaved* (tool A, tool B, ..., then A, B, ... again) so that slow drifts
    of background load fall on every tool alike; the fastest run is the one least
    disturbed. One thread, because on 2 cores any other runnable thread stalls a
    2-thread OpenMP region at its barriers: a 0.2 s trace estimate measured 11 s
    beside one other busy process, where a single-threaded run only loses a share.
HVPs
    Hessian-vector products the call made, counted by wrapping each tool's own
    product function (a block of ``k`` columns counts ``k``).
peak memory
    Growth of the process's resident set size (RSS) during the call: the kernel's
    high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` before the
    call) minus the RSS before it, after ``malloc_trim`` has returned freed heap to
    the system. It sees every allocation (PyTorch's CPU allocator included, which
    ``tracemalloc`` does not see) and costs nothing while the call runs; memory a
    tool keeps cached from an earlier call is not counted again. ``tracemalloc``
    is not used because it slows Python code down and is blind to PyTorch tensors.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: no trimming, the numbers are then upper-biased baselines
    _LIBC = None


def rss_bytes() -> int:
    """The current resident set size of this process, in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0


def trim_heap() -> None:
    """Give freed heap pages back to the system, so the next RSS baseline is honest."""
    if _LIBC is not None:
        try:
            _LIBC.malloc_trim(0)
        except AttributeError:
            pass


def _status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmHWM``, ``VmRSS``), or None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_high_water_mark() -> bool:
    """Reset the kernel's peak RSS (``VmHWM``) to the current RSS (Linux 4.0+); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


class PeakRSS:
    """Context manager: the peak RSS growth (bytes) over the ``with`` block.

    On Linux the kernel keeps the exact high-water mark: it is reset on entry
    (``/proc/self/clear_refs``) and read on exit (``VmHWM``), with no thread running
    beside the measured code. Elsewhere a thread samples the RSS every ``interval``
    seconds; that sampler wakes often enough to slow multi-threaded code on a 2-core
    machine several-fold (an earlier harness measured 0.13 s for a 1.6 ms product), so
    it is only the fallback.
    """

    def __init__(self, interval: float = 1e-2):
        self.interval = interval
        self.peak = 0

    def __enter__(self) -> PeakRSS:
        trim_heap()
        self.base = rss_bytes()
        self._kernel = _reset_high_water_mark()
        if not self._kernel:
            self._top = self.base
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._top = max(self._top, rss_bytes())
            self._stop.wait(self.interval)

    def __exit__(self, *exc) -> None:
        if self._kernel:
            self.peak = max(_status_kib("VmHWM") * 1024 - self.base, 0)
            return
        self._stop.set()
        self._thread.join()
        self._top = max(self._top, rss_bytes())
        self.peak = self._top - self.base


@contextlib.contextmanager
def threads(n: int | None):
    """Run the block with ``n`` intra-op threads in PyTorch and in the BLAS libraries (None: unchanged)."""
    if not n:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        torch.set_num_threads(before)


class Counter:
    """Counts products through wrapped functions."""

    def __init__(self):
        self.count = 0

    def wrap(self, fn: Callable, columns: Callable[..., int] = lambda *a, **k: 1) -> Callable:
        """``fn`` that adds ``columns(*args)`` to the count at each call."""

        @functools.wraps(fn)
        def counted(*args, **kwargs):
            self.count += int(columns(*args, **kwargs))
            return fn(*args, **kwargs)

        return counted

    def patch(self, obj: Any, name: str, columns: Callable[..., int] = lambda *a, **k: 1) -> None:
        """Replace ``obj.name`` (an instance method or module function) by a counted version."""
        setattr(obj, name, self.wrap(getattr(obj, name), columns))


@dataclass
class Run:
    """One timed call."""

    value: Any
    seconds: float
    peak_bytes: int | None  # None: a timing-only run
    hvps: int


@dataclass
class Case:
    """A tool doing one task: ``fn(counter)`` runs it and returns its answer."""

    tool: str
    task: str
    fn: Callable[[Counter], Any]
    runs: list[Run] = field(default_factory=list)
    error: str | None = None

    @property
    def seconds(self) -> float:
        """The fastest timing-only run (the memory-measuring one when there is no other)."""
        timed = [r.seconds for r in self.runs if r.peak_bytes is None] or [r.seconds for r in self.runs]
        return min(timed) if timed else float("nan")

    @property
    def peak_mib(self) -> float:
        peaks = [r.peak_bytes for r in self.runs if r.peak_bytes is not None]
        return statistics.median(peaks) / 2**20 if peaks else float("nan")

    @property
    def hvps(self) -> int:
        return self.runs[0].hvps if self.runs else 0

    @property
    def value(self) -> Any:
        return self.runs[0].value if self.runs else None


def run_once(case: Case, memory: bool = True, inner: int = 1) -> None:
    """Run a case, timing it and recording its products (and memory); record a failure instead of raising.

    With ``memory`` the call runs inside :class:`PeakRSS`, whose ``malloc_trim`` makes the call page
    in its memory afresh; such a run gives the memory, and the time only when there is no other run.
    Without it the call is timed ``inner`` times and the fastest counts.
    """
    if case.error is not None:
        return
    counter = Counter()
    try:
        if memory:
            with PeakRSS() as mem:
                start = time.perf_counter()
                value = case.fn(counter)
                seconds = time.perf_counter() - start
            peak = mem.peak
        else:
            seconds, peak = float("inf"), None
            for _ in range(inner):
                start = time.perf_counter()
                value = case.fn(counter)
                seconds = min(seconds, time.perf_counter() - start)
    except Exception as exc:  # a tool that fails is reported, not fatal
        case.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        return
    case.runs.append(Run(value, seconds, peak, counter.count))


def interleaved(cases: list[Case], repeats: int, log: Callable[[str], None] = lambda s: None,
                long: float = 60.0, short: float = 0.1) -> list[Case]:
    """Run every case ``repeats`` times, round-robin, so load drifts hit all tools alike.

    The first round measures memory; later rounds only time, and a case whose
    first run took under ``short`` seconds is timed 10 times in each of them. A
    case whose first run took more than ``long`` seconds is not repeated (its time
    is then the single, memory-measuring run).
    """
    for rep in range(repeats):
        for case in cases:
            if rep > 0 and case.runs and case.runs[0].seconds > long:
                continue
            inner = 10 if rep > 0 and case.runs and case.runs[0].seconds < short else 1
            run_once(case, memory=rep == 0, inner=inner)
            if case.runs and case.error is None and len(case.runs) == rep + 1:
                log(f"  [{rep + 1}/{repeats}] {case.tool:<28} {case.task:<12} {case.runs[-1].seconds:8.2f} s "
                    f"{case.runs[-1].hvps:6d} HVPs")
            elif case.error is not None and rep == 0:
                log(f"  [{rep + 1}/{repeats}] {case.tool:<28} {case.task:<12} failed: {case.error}")
    return cases


def rel_err(estimate: float, truth: float) -> float:
    """``|estimate - truth| / |truth|``."""
    return abs(float(estimate) - float(truth)) / max(abs(float(truth)), np.finfo(float).tiny)


def top_err(estimates, truth_desc: np.ndarray) -> float:
    """Largest relative error of the ``k`` largest eigenvalues (both sorted descending)."""
    est = np.sort(np.asarray(estimates, dtype=np.float64).ravel())[::-1]
    ref = np.asarray(truth_desc, dtype=np.float64)[: est.size]
    return float(np.max(np.abs(est - ref) / np.maximum(np.abs(ref), np.finfo(float).tiny)))


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table."""
    fmt = lambda v: v if isinstance(v, str) else (f"{v:.3g}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def versions() -> dict[str, str]:
    """Versions of the libraries a benchmark ran with ("not installed" when absent)."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for dist in ("hessop", "numpy", "scipy", "torch", "pyhessian", "curvlinops-for-pytorch", "hessian-eigenthings"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    if out["hessop"] == "not installed":
        try:
            import hessop

            out["hessop"] = f"{hessop.__version__} (source tree)"
        except ImportError:
            pass
    return out


def replace_section(path: str, heading: str, body: str) -> None:
    """Replace the body of the ``## heading`` section of a markdown file (up to the next ``## ``)."""
    with open(path) as f:
        text = f.read()
    start = text.index(heading)
    body_start = text.index("\n", start) + 1
    nxt = text.find("\n## ", body_start)
    rest = "" if nxt < 0 else "\n" + text[nxt + 1:]
    text = text[:body_start] + "\n" + body.strip() + "\n" + rest
    with open(path, "w") as f:
        f.write(text)
