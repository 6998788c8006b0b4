"""Curvature through training: top eigenvalues, trace and density every N steps, to a JSONL file.

:class:`CurvatureTracker` is a callback for any training loop. At every
``every``-th step (or epoch) it builds a fresh operator with the user's
``make_operator()``, estimates the top eigenvalues (thick-restart Lanczos), the
trace with its standard error (XTrace) and optionally the SLQ density, and
appends one JSON record to a file, flushed and synced to disk at once: an
interrupted run (Ctrl-C, a killed job) keeps every record written before it.

Every record uses the same probe seed (common random numbers), so changes from
one record to the next reflect the curvature, not a new draw of probes.
This is the measurement behind the curvature-through-training figures of
Ghorbani et al. (2019) and Yao et al. (2020).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .._renamed import renamed
from . import plots
from .results import TrackRecord, finite_or_none
from .spectrum import block_spectrum

__all__ = ["CurvatureTracker", "TrackRecord", "read_track", "plot_track"]

UNITS = ("step", "epoch")


class CurvatureTracker:
    """Record curvature every ``every`` steps (or epochs) to a JSONL file.

    Parameters
    ----------
    make_operator : callable
        ``make_operator()`` returns the operator at the current parameters, e.g.
        ``lambda: hessop.hessian(model.eval(), loss_fn, probe_batches)``.
        (Put the model back in train mode after the call if your loop needs it.)
    path : str or path-like
        The JSONL file; records are appended, so a resumed run continues it.
    every : int
        Record at steps (or epochs) divisible by ``every``.
    unit : {"step", "epoch"}
        The name of the counter the loop passes; the records' x-axis.
    k : int
        Top eigenvalues per record (0 to skip).
    trace : bool
        Estimate the trace (with ``trace_max_matvecs`` products) and its standard error.
    density : bool
        Store the SLQ density (grid, values, and the mass below minus its resolution
        ``sigma``, :meth:`hessop.SpectralDensity.negative_mass`) too.
    seed : int
        Probe seed, the same for every record.
    trace_max_matvecs, density_steps, num_probes : int
        Budgets of the trace and density estimators.

    Examples
    --------
    >>> import os, tempfile
    >>> import torch, hessop
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> model, loss_fn = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)), nn.CrossEntropyLoss()
    >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> path = os.path.join(tempfile.mkdtemp(), "track.jsonl")
    >>> tracker = CurvatureTracker(lambda: hessop.hessian(model, loss_fn, [(x, y)]), path, every=5, k=1)
    >>> for step in range(10):
    ...     opt.zero_grad()
    ...     loss = loss_fn(model(x), y)
    ...     loss.backward()
    ...     opt.step()
    ...     _ = tracker(step, loss=loss.item())        # measures at steps 0 and 5
    >>> [(r.step, len(r.top_eigenvalues)) for r in read_track(path)]
    [(0, 1), (5, 1)]
    """

    @renamed(trace_matvecs="trace_max_matvecs")
    def __init__(
        self,
        make_operator: Callable[[], Any],
        path: str | os.PathLike = "track.jsonl",
        *,
        every: int = 100,
        unit: str = "step",
        k: int = 1,
        trace: bool = True,
        density: bool = False,
        seed: int = 0,
        trace_max_matvecs: int = 60,
        density_steps: int = 60,
        num_probes: int = 2,
    ):
        if not callable(make_operator):
            raise TypeError("make_operator must be a function returning the operator, e.g. lambda: hessop.hessian(...)")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer; got {every!r}")
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}; got {unit!r}")
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be an integer >= 0 (0 skips the eigenvalues); got {k!r}")
        if not (k or trace or density):
            raise ValueError("nothing to record: ask for k >= 1 eigenvalues, trace=True or density=True")
        self.make_operator = make_operator
        self.path = os.fspath(path)
        self.every, self.unit, self.k = every, unit, k
        self.trace, self.density, self.seed = trace, density, seed
        self.trace_max_matvecs, self.density_steps, self.num_probes = trace_max_matvecs, density_steps, num_probes
        self.records_written = 0

    def due(self, step: int) -> bool:
        """Whether ``step`` is a recording step."""
        return step % self.every == 0

    def measure(self, H: Any, step: int = 0, **extra: Any) -> TrackRecord:
        """The curvature numbers of one operator, as a record at ``step`` (``extra``: the loop's numbers)."""
        start = time.perf_counter()
        b = block_spectrum(H, k=max(self.k, 1), trace_max_matvecs=self.trace_max_matvecs,
                           density_steps=self.density_steps,
                           num_probes=self.num_probes, seed=self.seed, with_density=self.density,
                           with_trace=self.trace)
        measured: dict[str, Any] = {}
        if self.k:
            measured["top_eigenvalues"] = b.eigenvalues[: self.k]
            measured["residual_norms"] = [finite_or_none(v) for v in b.residual_norms[: self.k]]
            measured["converged"] = b.converged
        if self.trace:
            measured["trace"], measured["trace_stderr"] = finite_or_none(b.trace), finite_or_none(b.trace_stderr)
        if self.density:
            rho = b.density
            measured["density"] = {
                "grid": np.asarray(rho.grid, dtype=float).tolist(),
                "values": np.asarray(rho.values, dtype=float).tolist(),
                "negative_mass": rho.negative_mass(),
                "negative_mass_below": -rho.sigma,
            }
        return TrackRecord(int(step), self.unit, time.time(), b.num_params, b.num_matvecs, **measured,
                           seconds=time.perf_counter() - start, extra=dict(extra))

    def __call__(self, step: int, **extra: Any) -> TrackRecord | None:
        """At a recording step, measure and append one record; return it (None on other steps).

        Keyword arguments (e.g. ``loss=0.3``, ``accuracy=0.9``) are stored in the record.
        """
        if not self.due(step):
            return None
        start = time.perf_counter()
        rec = self.measure(self.make_operator(), step, **extra)
        rec = dataclasses.replace(rec, seconds=time.perf_counter() - start)
        self._append(rec)
        return rec

    def _append(self, rec: TrackRecord) -> None:
        line = json.dumps(rec.to_dict(), allow_nan=False) + "\n"
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records_written += 1


def _lines(path: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        yield from f


def read_track(path: str | os.PathLike) -> list[TrackRecord]:
    """The records of a tracking file, in order (``record.to_dict()`` gives the line back).

    A last line cut short (a process killed mid-write) is skipped; a malformed
    line elsewhere raises, since it means the file is not a tracking file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no tracking file at {path!r}; check the path given to CurvatureTracker")
    lines = list(_lines(path))
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(TrackRecord.from_dict(json.loads(line)))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1 and not line.endswith("\n"):
                break
            raise ValueError(f"{path}:{i + 1} is not a JSON record ({err.msg}); is this a tracking file?") from err
    return records


def plot_track(track: str | os.PathLike | list, axes=None, *, title: str | None = None):
    """Plot top eigenvalues and trace (±2 stderr) against the step or epoch, from a file or records."""
    records = read_track(track) if isinstance(track, (str, os.PathLike)) else list(track)
    return plots.plot_track(records, axes, title=title)
