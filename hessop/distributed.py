"""Communicators: how processes add up their partial Hessian-vector products.

A communicator has a ``rank``, a ``size``, a sum all-reduce of a native array
(:meth:`allreduce`), of a float (:meth:`allreduce_scalar`), a :meth:`broadcast`
of a picklable object, a :meth:`barrier`, an :meth:`abort` and a cheap
cross-rank agreement test (:meth:`check_agree`). :class:`SerialComm` is the
one-process case and costs nothing; :class:`hessop._mpi.MPIComm` runs on
``mpi4py``.

Data-parallel use, one process per shard of the data::

    comm = hessop.distributed.world()            # MPI.COMM_WORLD, or serial
    with hessop.distributed.abort_on_error(comm):
        H = hessop.hessian(model, loss_fn, shard(batches, comm), comm=comm)
        result = hessop.eigsh(H, k=10)           # identical on every rank

Solvers run replicated: every rank draws the same seeded probes and receives the
same all-reduced products, so every rank holds the same result.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any, Iterable, Iterator

import numpy as np

from ._array import Array, to_numpy
from ._collective import is_collective, mark


class RankDisagreementError(RuntimeError):
    """Processes that must hold the same value (parameters, a solver's vector) hold different ones."""


class SerialComm:
    """A communicator of one process: every reduction is the identity."""

    rank = 0
    size = 1

    def allreduce(self, x: Array) -> Array:
        """Sum of ``x`` over all processes (here: ``x`` itself)."""
        return x

    def allreduce_scalar(self, value: float) -> float:
        """Sum of a float over all processes."""
        return float(value)

    def allreduce_max(self, x: np.ndarray) -> np.ndarray:
        """Entry-wise maximum of a host array over all processes."""
        return np.asarray(x)

    def broadcast(self, obj: Any, root: int = 0) -> Any:
        """``obj`` as held by rank ``root``."""
        return obj

    def barrier(self) -> None:
        """Wait for every process (nothing to wait for here)."""

    def abort(self, code: int = 1) -> None:
        """End the program with exit status ``code``."""
        raise SystemExit(code)

    def check_agree(self, value: Any, what: str = "value", *, rtol: float = 0.0, hint: str = "") -> None:
        """One process always agrees with itself."""

    def __repr__(self) -> str:
        return "SerialComm()"


def as_comm(comm: Any) -> Any:
    """A hessop communicator from ``None`` (serial), an existing one, or an ``mpi4py`` communicator."""
    if comm is None:
        return SerialComm()
    if hasattr(comm, "allreduce_scalar"):
        return comm
    if type(comm).__module__.startswith("mpi4py"):
        from ._mpi import MPIComm

        return MPIComm(comm)
    raise TypeError(
        f"comm must be None, a hessop communicator or an mpi4py communicator, not {type(comm).__name__}"
    )


def world() -> Any:
    """``MPI.COMM_WORLD`` as a hessop communicator, or :class:`SerialComm` when mpi4py is missing.

    Importing ``mpi4py`` initialises MPI; a script started without ``mpiexec``
    gets a world of one process.
    """
    try:
        from mpi4py import MPI
    except ImportError:
        return SerialComm()
    from ._mpi import MPIComm

    return MPIComm(MPI.COMM_WORLD)


# -- cross-rank agreement ----------------------------------------------------------------------
_CHECKSUM_NAMES = ("length", "count of NaN/Inf entries", "sum", "sum of squares", "position-weighted sum")


def checksum(value: Any) -> np.ndarray:
    """A short float64 fingerprint of a scalar or array: length, non-finite count, Σx, Σx², Σwᵢxᵢ.

    The position-weighted sum (fixed weights ``wᵢ = sin(0.75 i + 0.5)``) makes a
    permutation of the entries visible, which the plain moments would miss.
    """
    a = _host(value).ravel()
    out = np.zeros(5)
    out[0] = a.size
    step = 1 << 20  # chunks keep the float64 temporaries small for large models
    for start in range(0, a.size, step):
        x = a[start:start + step].astype(np.float64)
        bad = ~np.isfinite(x)
        if bad.any():
            x[bad] = 0.0
        w = np.sin(0.75 * np.arange(start, start + x.size) + 0.5)
        out[1:] += bad.sum(), x.sum(), x @ x, x @ w
    return out


def _host(value: Any) -> np.ndarray:
    if not hasattr(value, "shape"):
        return np.asarray(value)
    try:
        return to_numpy(value)
    except TypeError:  # torch bfloat16 has no numpy twin
        return to_numpy(value.float())


def check_agree(comm: Any, value: Any, what: str = "value", *, rtol: float = 0.0, hint: str = "") -> None:
    """Raise :class:`RankDisagreementError` on every rank if ``value`` is not the same on all ranks.

    Compares :func:`checksum` fingerprints with one small all-reduce (the
    entry-wise maximum of ``(c, -c)`` gives every rank the spread), so it costs
    one pass over ``value`` and a 10-float message. Every rank sees the same
    spread, so either all ranks raise or none does: a failed check cannot leave
    a process waiting in a collective.

    Parameters
    ----------
    comm : communicator
    value : scalar or array (any namespace)
    what : str
        Named in the error, e.g. ``"model parameters"``.
    rtol : float
        Allowed relative spread of each fingerprint entry (0: bitwise equal sums).
    hint : str
        What the user should do, appended to the error.
    """
    comm = as_comm(comm)
    if comm.size == 1:
        return
    c = checksum(value)
    if hasattr(comm, "allreduce_max"):
        m = np.asarray(comm.allreduce_max(np.concatenate([c, -c])))
        hi, lo = m[: c.size], -m[c.size :]
        bad = bool(np.any(hi - lo > rtol * np.maximum(np.abs(hi), np.abs(lo))))
        i = int(np.argmax(hi - lo > rtol * np.maximum(np.abs(hi), np.abs(lo))))
        detail = f"its {_CHECKSUM_NAMES[i]} ranges from {lo[i]:.17g} to {hi[i]:.17g}"
    else:  # a communicator with sums only: compare with rank 0's fingerprint
        ref = np.asarray(comm.broadcast(c, 0))
        mine = bool(np.any(np.abs(c - ref) > rtol * np.abs(ref)))
        bad = comm.allreduce_scalar(float(mine)) > 0
        detail = "some rank's fingerprint differs from rank 0's"
    if bad:
        raise mark(RankDisagreementError(
            f"the {comm.size} ranks disagree on the {what} ({detail}); "
            + (hint or "every rank must compute it from the same inputs and seeds")
        ))


# -- data sharding -----------------------------------------------------------------------------
def _bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank's contiguous block; the first ``n % size`` ranks get one more."""
    q, r = divmod(n, size)
    start = rank * q + min(rank, r)
    return start, start + q + (1 if rank < r else 0)


class _IndexedShard(Sequence):
    """The items ``indices`` of a map-style dataset, itself a map-style dataset."""

    def __init__(self, data: Any, indices: range):
        self.data, self.indices = data, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return _IndexedShard(self.data, self.indices[i])
        return self.data[self.indices[i]]


class _IterableShard:
    """Every item of a re-iterable (e.g. a ``DataLoader``) whose position falls in this rank's share."""

    def __init__(self, data: Iterable, keep):
        self.data, self.keep = data, keep

    def __iter__(self) -> Iterator:
        return (item for i, item in enumerate(self.data) if self.keep(i))


def shard(data: Any, comm: Any = None, *, how: str = "round_robin") -> Any:
    """This rank's share of a dataset or of a list of batches.

    ``how="round_robin"`` gives rank ``r`` the items ``r, r + size, r + 2·size, …``;
    ``how="contiguous"`` gives it one block, the first ``len % size`` ranks one item
    more. Shards may be unequal (and empty when there are fewer items than
    ranks): the Hessian weights each batch by its sample count and divides by the
    global count, so the result equals the one-process result on all of ``data``.

    Accepted ``data``
    -----------------
    * a list, ``range`` or array (numpy, torch, JAX: split along the first axis);
    * a tuple of arrays with a common first dimension, i.e. *one* batch ``(x, y)``:
      every array is split along its first axis, giving a tuple;
    * a map-style dataset (``__len__`` and ``__getitem__``): a view of it;
    * any re-iterable, such as a ``DataLoader``: yields this rank's batches each time
      it is iterated. Its order must be the same on every rank (no unseeded shuffling).
    """
    from numbers import Integral

    comm = as_comm(comm)
    if how not in ("round_robin", "contiguous"):
        raise ValueError(f"unknown how={how!r}; use 'round_robin' or 'contiguous'")
    rank, size = comm.rank, comm.size

    def cut(seq):
        if how == "round_robin":
            return seq[rank::size]
        start, stop = _bounds(len(seq), rank, size)
        return seq[start:stop]

    if isinstance(data, tuple) and data and all(hasattr(a, "shape") and len(a.shape) > 0 for a in data):
        lengths = {int(a.shape[0]) for a in data}
        if len(lengths) != 1:
            raise ValueError(f"the arrays of the batch have different first dimensions {sorted(lengths)}; "
                             "pass one (x, y) batch with one row per sample, or a list of batches")
        return tuple(cut(a) for a in data)
    if isinstance(data, (list, range)) or hasattr(data, "shape"):
        return cut(data)
    if isinstance(data, tuple):
        return list(cut(data))
    if hasattr(data, "__len__") and hasattr(data, "__getitem__") and not isinstance(data, (str, bytes, dict)):
        return _IndexedShard(data, cut(range(len(data))))
    if isinstance(data, Iterator):
        raise TypeError("cannot shard a one-shot iterator (it is consumed by the first pass over the data); "
                        "pass a list of batches, a dataset or a DataLoader")
    if hasattr(data, "__iter__"):
        if how == "round_robin":
            return _IterableShard(data, lambda i: i % size == rank)
        if not hasattr(data, "__len__"):
            raise TypeError("how='contiguous' needs the number of batches; pass how='round_robin' for an "
                            "iterable without len()")
        start, stop = _bounds(len(data), rank, size)
        return _IterableShard(data, lambda i: start <= i < stop)
    if isinstance(data, Integral):
        raise TypeError("shard a dataset or a list of batches, not a number; use range(n) to shard indices")
    raise TypeError(f"cannot shard a {type(data).__name__}: pass a list of batches, an (x, y) batch, "
                    "a dataset or a DataLoader")


# -- failure ----------------------------------------------------------------------------------
class abort_on_error(contextlib.ContextDecorator):
    """End the whole MPI job when this process fails, instead of leaving the others waiting.

    A process that raises while the others sit in a collective (the all-reduce
    of the next Hessian product) would hang the job until its time limit. Inside
    ``with abort_on_error(comm):`` (or on a function decorated with it) an
    uncaught exception, ``KeyboardInterrupt`` or non-zero ``SystemExit`` prints
    ``rank r: <traceback>`` to stderr, each line prefixed by the rank, and calls
    ``comm.abort(code)`` (``MPI_Abort``), which ends every process with a non-zero
    status. With one process the exception propagates untouched.

    Between the message and the abort it waits ``grace`` seconds: the launcher
    forwards each process's stderr through a pipe, and MPICH's ``mpiexec`` tears
    the job down on ``MPI_Abort`` without draining those pipes, so on a busy
    machine an immediate abort can swallow the traceback the user needs.

    ``abort_on_error(comm).install()`` does the same for the rest of the script
    through :data:`sys.excepthook`. hessop installs that hook itself when an
    MPI communicator of more than one process is first created (see
    :func:`abort_on_uncaught`), so an uncaught exception ends the job even
    without this context manager. An exception raised on every rank alike (a
    collective check such as :class:`RankDisagreementError`) is printed by rank
    0 alone.

    Parameters
    ----------
    comm : communicator, optional
        Default :func:`world`.
    code : int
        Exit status of the aborted job (a ``SystemExit`` passes its own).
    grace : float
        Seconds to leave the launcher to forward the message before aborting.
    """

    def __init__(self, comm: Any = None, *, code: int = 1, grace: float = 1.0):
        if grace < 0:
            raise ValueError(f"grace must be non-negative, got {grace}")
        self._comm = comm
        self.code = code
        self.grace = grace

    @property
    def comm(self) -> Any:
        if self._comm is None:
            self._comm = world()
        self._comm = as_comm(self._comm)
        return self._comm

    def __enter__(self) -> "abort_on_error":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None:
            self._handle(exc_type, exc, tb)
        return False

    def install(self) -> "abort_on_error":
        """Abort the job on any uncaught exception from now on (chains the previous hook)."""
        previous = sys.excepthook

        def hook(exc_type, exc, tb):
            self._handle(exc_type, exc, tb)
            previous(exc_type, exc, tb)

        sys.excepthook = hook
        return self

    def _handle(self, exc_type, exc, tb) -> None:
        code = self.code
        if isinstance(exc, SystemExit):
            if exc.code in (None, 0):
                return
            code = exc.code if isinstance(exc.code, int) else self.code
        elif not isinstance(exc, (Exception, KeyboardInterrupt)):
            return
        elif isinstance(exc, KeyboardInterrupt):
            code = 130
        comm = self.comm
        if comm.size <= 1:
            return
        if comm.rank == 0 or not is_collective(exc):
            text = "".join(traceback.format_exception(exc_type, exc, tb))
            prefix = f"rank {comm.rank}: "
            sys.stderr.write("".join(prefix + line + "\n" for line in text.rstrip("\n").split("\n")))
            sys.stderr.flush()
        time.sleep(self.grace)
        comm.abort(code)


ABORT_ENV = "HESSOP_ABORT_ON_ERROR"
"""Set to ``0`` to keep hessop from installing its job-ending :data:`sys.excepthook` under MPI."""

_uncaught = {"enabled": None, "installed": False}


def abort_on_uncaught(enabled: bool = True) -> None:
    """Whether an uncaught exception on one MPI process ends the whole job (default: it does).

    When an MPI communicator of more than one process is first created
    (:func:`world`, ``hessian(..., comm=MPI.COMM_WORLD)``), hessop installs
    :meth:`abort_on_error.install`'s :data:`sys.excepthook`: an exception that
    escapes the script on one rank prints ``rank r: <traceback>``, waits the
    grace second and calls ``MPI_Abort``, so the other ranks do not wait in
    their next all-reduce forever. ``abort_on_uncaught(False)`` (or the
    environment variable ``HESSOP_ABORT_ON_ERROR=0``) turns that off, for a
    program that handles failures across ranks itself.
    """
    _uncaught["enabled"] = bool(enabled)


def _abort_enabled() -> bool:
    if _uncaught["enabled"] is not None:
        return _uncaught["enabled"]
    return os.environ.get(ABORT_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def install_default_abort(comm: Any) -> None:
    """Install the job-ending excepthook once per process (called by the MPI communicator)."""
    if _uncaught["installed"] or not _abort_enabled():
        return
    _uncaught["installed"] = True
    handler = abort_on_error(comm)
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        if _abort_enabled():
            handler._handle(exc_type, exc, tb)
        previous(exc_type, exc, tb)

    sys.excepthook = hook
