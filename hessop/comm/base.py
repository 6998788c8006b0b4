"""The communicator contract: how processes add up their partial results, and how they agree.

A communicator is an instance of :class:`Communicator`. It has a ``rank`` and a
``size`` and implements four collectives: :meth:`~Communicator.allreduce` (the
sum of a native array over all processes), :meth:`~Communicator.broadcast` (a
picklable object from one rank), :meth:`~Communicator.barrier` and
:meth:`~Communicator.abort`. Everything else is built on those, here, once:
the sum of a float (:meth:`~Communicator.allreduce_scalar`), the entry-wise
maximum of a host array (:meth:`~Communicator.allreduce_max`) and the cross-rank
agreement test (:meth:`~Communicator.check_agree`); a communicator with a
cheaper native form of the first two overrides them.

This module also holds what every collective check raises with:
:class:`RankDisagreementError`, the :func:`checksum` fingerprint it compares,
and :func:`mark` / :func:`is_collective`, which tell an exception raised on
every rank alike from one raised on a single rank.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from .._array import Array, to_host

_MARK = "hessop_collective"


class RankDisagreementError(RuntimeError):
    """Processes that must hold the same value (parameters, a solver's vector) hold different ones."""


def mark(exc: BaseException) -> BaseException:
    """Mark ``exc`` as raised on every rank alike; returns it."""
    try:
        setattr(exc, _MARK, True)
    except AttributeError:  # pragma: no cover - exceptions with __slots__
        pass
    return exc


def is_collective(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) was raised on every rank alike."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if getattr(exc, _MARK, False):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


_CHECKSUM_NAMES = ("length", "count of NaN/Inf entries", "sum", "sum of squares", "position-weighted sum")


def checksum(value: Any) -> np.ndarray:
    """A short float64 fingerprint of a scalar or array: length, non-finite count, Σx, Σx², Σwᵢxᵢ.

    The position-weighted sum (fixed weights ``wᵢ = sin(0.75 i + 0.5)``) makes a
    permutation of the entries visible, which the plain moments would miss.
    """
    a = to_host(value).ravel()
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


def check_agree(comm: Communicator, value: Any, what: str = "value", *, rtol: float = 0.0,
                hint: str = "") -> None:
    """Raise :class:`RankDisagreementError` on every rank if ``value`` is not the same on all ranks.

    Compares :func:`checksum` fingerprints with one small all-reduce (the
    entry-wise maximum of ``(c, -c)`` gives every rank the spread), so it costs
    one pass over ``value`` and a 10-float message. Every rank sees the same
    spread, so either all ranks raise or none does: a failed check cannot leave
    a process waiting in a collective.

    Parameters
    ----------
    comm : Communicator
    value : scalar or array (any namespace)
    what : str
        Named in the error, e.g. ``"model parameters"``.
    rtol : float
        Allowed relative spread of each fingerprint entry (0: bitwise equal sums).
    hint : str
        What the user should do, appended to the error.
    """
    if comm.size == 1:
        return
    c = checksum(value)
    m = np.asarray(comm.allreduce_max(np.concatenate([c, -c])), dtype=np.float64)
    hi, lo = m[: c.size], -m[c.size :]
    off = hi - lo > rtol * np.maximum(np.abs(hi), np.abs(lo))
    if off.any():
        i = int(np.argmax(off))
        raise mark(RankDisagreementError(
            f"the {comm.size} ranks disagree on the {what} (its {_CHECKSUM_NAMES[i]} ranges from "
            f"{lo[i]:.17g} to {hi[i]:.17g}); " + (hint or "every rank must compute it from the same inputs and seeds")
        ))


class Communicator(abc.ABC):
    """The processes a Hessian or an estimator is spread over: what every communicator implements.

    A subclass sets ``rank`` (this process, from 0) and ``size`` (how many) and
    implements :meth:`allreduce`, :meth:`broadcast`, :meth:`barrier` and
    :meth:`abort`. Every method is collective (every rank calls it, in the same
    order) except :meth:`abort`, and every rank receives bitwise the same result:
    replicated solvers rely on it.
    """

    rank: int
    """This process's index, ``0 <= rank < size``."""
    size: int
    """The number of processes."""

    @abc.abstractmethod
    def allreduce(self, x: Array) -> Array:
        """Sum of ``x`` over all processes, with the type, dtype, shape and device of ``x``; ``x`` is not written."""

    @abc.abstractmethod
    def broadcast(self, obj: Any, root: int = 0) -> Any:
        """``obj`` as held by rank ``root`` (any picklable object)."""

    @abc.abstractmethod
    def barrier(self) -> None:
        """Wait until every process gets here."""

    @abc.abstractmethod
    def abort(self, code: int = 1) -> None:
        """End every process of the job with exit status ``code``, called by one process alone."""

    def allreduce_scalar(self, value: float) -> float:
        """Sum of a float over all processes (default: a one-entry :meth:`allreduce`)."""
        if self.size == 1:
            return float(value)
        return float(np.asarray(self.allreduce(np.array([float(value)])))[0])

    def allreduce_max(self, x: np.ndarray) -> np.ndarray:
        """Entry-wise maximum of a float64 host array over all processes (a fresh array).

        The default sums a ``(size, x.size)`` table in which each rank fills its
        own row, one :meth:`allreduce` of ``size`` times the message; fine for
        the few floats of the agreement checks, and overridden where the
        library has a native maximum.
        """
        x = np.asarray(x, dtype=np.float64)
        if self.size == 1:
            return x.copy()
        table = np.zeros((self.size, x.size))
        table[self.rank] = x.ravel()
        return np.asarray(self.allreduce(table), dtype=np.float64).max(axis=0).reshape(x.shape)

    check_agree = check_agree
    """``comm.check_agree(value, what, rtol=..., hint=...)``: the module's :func:`check_agree` as a method."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"
