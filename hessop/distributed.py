"""Running on several processes: choosing the communicator, sharding the data, ending a failed job.

The communicators themselves live in :mod:`hessop.comm` (the contract
:class:`~hessop.comm.Communicator`, :class:`SerialComm`,
:class:`~hessop.comm.mpi.MPIComm`, :class:`~hessop.comm.torch_dist.TorchDistComm`).
This module turns what a user passes as ``comm=`` into one (:func:`as_comm`,
:func:`world`), gives each rank its share of the data (:func:`shard`), and ends
the whole job when one process fails (:class:`abort_on_error`,
:func:`abort_on_uncaught`). :class:`SerialComm`, :class:`RankDisagreementError`,
:func:`checksum` and :func:`check_agree` are importable from here as well.

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
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from .comm.base import Communicator, RankDisagreementError, checksum, is_collective
from .comm.base import check_agree as _check_agree
from .comm.mpi import MPIComm
from .comm.serial import SerialComm

__all__ = [
    "as_comm", "world", "shard", "abort_on_error", "abort_on_uncaught", "check_agree", "checksum",
    "Communicator", "SerialComm", "MPIComm", "RankDisagreementError",
]


def as_comm(comm: Any) -> Communicator:
    """A hessop communicator from ``None`` (serial), a :class:`~hessop.comm.Communicator`,
    an ``mpi4py`` communicator or a ``torch.distributed`` process group.

    An MPI communicator of more than one process also installs the job-ending
    :data:`sys.excepthook` (see :func:`abort_on_uncaught`). A communicator of
    your own subclasses :class:`~hessop.comm.Communicator`.
    """
    if comm is None:
        return SerialComm()
    if isinstance(comm, Communicator):
        out = comm
    elif type(comm).__module__.startswith("mpi4py"):
        out = MPIComm(comm)
    elif type(comm).__module__.startswith("torch.distributed"):
        from .comm.torch_dist import TorchDistComm  # imports torch, which this module must not

        out = TorchDistComm(comm)
    else:
        raise TypeError(
            f"comm must be None, a hessop communicator (a subclass of hessop.comm.Communicator), an mpi4py "
            f"communicator or a torch.distributed process group, not {type(comm).__name__}"
        )
    if isinstance(out, MPIComm) and out.size > 1:  # from now on an uncaught exception on one rank ends the job
        install_default_abort(out)
    return out


def world() -> Communicator:
    """``MPI.COMM_WORLD`` as a hessop communicator, or :class:`SerialComm` when mpi4py is missing.

    Importing ``mpi4py`` initialises MPI; a script started without ``mpiexec``
    gets a world of one process.
    """
    try:
        from mpi4py import MPI  # optional dependency
    except ImportError:
        return SerialComm()
    return as_comm(MPI.COMM_WORLD)


def check_agree(comm: Any, value: Any, *args: Any, **kwargs: Any) -> None:
    """:func:`hessop.comm.base.check_agree` for ``comm`` anything :func:`as_comm` takes (an mpi4py communicator)."""
    _check_agree(as_comm(comm), value, *args, **kwargs)


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
    MPI communicator of more than one process first passes through
    :func:`as_comm` (see :func:`abort_on_uncaught`), so an uncaught exception ends the job even
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

    def __enter__(self) -> abort_on_error:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self._handle(exc_type, exc, tb)

    def install(self) -> abort_on_error:
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

    When an MPI communicator of more than one process first passes through
    :func:`as_comm` (:func:`world`, ``hessian(..., comm=MPI.COMM_WORLD)``, a
    solver's ``comm=``), hessop installs
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
    """Install the job-ending excepthook once per process (called by :func:`as_comm` for MPI)."""
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
