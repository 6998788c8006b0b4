"""Checks that fail on every rank together, so a failed check can never leave a process waiting.

With several processes a check that can fail on one rank only (this rank's
data is empty, this rank was called with another seed) would let that rank
raise while the others wait in their next all-reduce until the job's time
limit. The helpers here turn such a check into a collective one:

* :func:`together` runs a step on every rank and, if it raised on any of them,
  raises on all of them (the failing rank its own exception, the others one of
  the same type naming the rank and its message);
* :func:`check_arguments` compares a solver's arguments (``k``, ``which``,
  ``tol``, ``seed``, budgets, start vector) across ranks with one small
  all-reduce and raises :class:`~hessop.comm.RankDisagreementError` on
  every rank if any differs, naming the argument.

An exception raised on every rank this way is *marked* collective
(:func:`is_collective`): the command line then ends every process with the same
exit code instead of aborting the job.
"""

from __future__ import annotations

import builtins
import hashlib
import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from ._array import namespace
from .comm.base import RankDisagreementError, checksum, is_collective, mark
from .distributed import as_comm

__all__ = ["together", "summed", "check_arguments", "mark", "is_collective"]

T = TypeVar("T")


def together(comm: Any, step: Callable[[], T], what: str = "", known: tuple[type, ...] = ()) -> T:
    """``step()`` on every rank; if it raises on any rank, raise on every rank.

    Costs one 1-float all-reduce when every rank succeeds; on failure one more
    broadcast carries the first failing rank's message to the others.

    Parameters
    ----------
    comm : communicator
    step : callable
        The rank-local work (e.g. building this rank's backend over its shard).
    what : str
        Named in the other ranks' error, e.g. ``"while building the Hessian"``.
    known : tuple of exception types
        Types the other ranks may raise by name besides the built-in ones
        (their constructor must take one message); others become ``RuntimeError``.
    """
    comm = as_comm(comm)
    if comm.size == 1:
        return step()
    try:
        result, err = step(), None
    except Exception as exc:  # noqa: BLE001 - re-raised on this rank below
        result, err = None, exc
    _raise_everywhere(comm, err, what, known)
    return result  # type: ignore[return-value]


def summed(comm: Any, reduce: Callable[[Any], T], local: Callable[[], Any], failed: Callable[[], Any],
           what: str = "") -> T:
    """``reduce(local())`` on every rank; if ``local`` raises on any rank, raise on every rank.

    A rank whose ``local()`` raises still takes part in the reduction, with
    ``failed()`` (NaN of the right shape) in place of its part, so the others are
    not left waiting in it; the NaN then reaches every rank's sum, and only then
    (a non-finite sum, one cheap test) do the ranks exchange who failed, and
    all raise. With one process this is ``reduce(local())``.
    """
    comm = as_comm(comm)
    if comm.size == 1:
        return reduce(local())
    try:
        part, err = local(), None
    except Exception as exc:  # noqa: BLE001 - re-raised on this rank below
        part, err = failed(), exc
    out = reduce(part)
    if err is None and _finite(out):
        return out
    _raise_everywhere(comm, err, what)
    return out  # non-finite, but no rank raised: the caller's own checks decide


def _finite(x: Any) -> bool:
    if not hasattr(x, "shape"):
        return math.isfinite(float(x))
    xp = namespace(x)
    return bool(xp.all(xp.isfinite(xp.sum(x))))


def _raise_everywhere(comm: Any, err: BaseException | None, what: str, known: tuple[type, ...] = ()) -> None:
    """Collective: return if no rank holds an error, else raise on every rank (the first failing rank's)."""
    flag = np.array([float(comm.size - comm.rank) if err is not None else 0.0])
    top = int(comm.allreduce_max(flag)[0])
    if top == 0:
        return
    first = comm.size - top
    sent = (type(err).__name__, str(err)) if comm.rank == first else None
    name, message = comm.broadcast(sent, root=first)
    if err is not None:
        raise mark(err)
    cls = next((k for k in known if k.__name__ == name), None) or getattr(builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = RuntimeError
    where = f" {what}" if what else ""
    try:
        other = cls(f"rank {first} failed{where}: {message}")
    except Exception:  # noqa: BLE001 - an exception type that takes other arguments
        other = RuntimeError(f"rank {first} failed{where}: {name}: {message}")
    raise mark(other)


def _fingerprint(value: Any) -> float:
    """A float that equals on two ranks exactly when ``value`` does (52 bits of a hash)."""
    if hasattr(value, "shape") and getattr(value, "ndim", 0) > 0:
        text = repr((tuple(int(s) for s in value.shape), str(value.dtype), checksum(value).tolist()))
    elif isinstance(value, (list, tuple)):
        text = repr(tuple(_fingerprint(v) for v in value))
    elif hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        text = repr(value.item())
    else:
        text = repr(value)
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return float(int.from_bytes(digest, "little") >> 12)


def _show(value: Any) -> str:
    if hasattr(value, "shape") and getattr(value, "ndim", 0) > 0:
        return f"an array of shape {tuple(value.shape)}"
    return repr(value)


def check_arguments(solver: str, A: Any = None, comm: Any = None, **arguments: Any) -> None:
    """Raise :class:`~hessop.comm.RankDisagreementError` on every rank if ``arguments`` differ.

    Checked over the operator's communicator (``A.comm``, data-parallel) and
    over ``comm`` (probe-parallel), whichever has more than one process; one
    :meth:`~hessop.comm.Communicator.allreduce_max` of two floats per argument
    each. Call it first thing in a solver: ranks that stop after different
    numbers of products would leave one of them waiting forever.

    Parameters
    ----------
    solver : str
        The solver's name, for the message (``"eigsh"``).
    A : operator, optional
    comm : communicator, optional
    **arguments
        Numbers, strings, ``None``, tuples of them, or arrays (compared by
        :func:`~hessop.comm.checksum`).
    """
    comms: list[Any] = []
    for c in (getattr(A, "comm", None), comm):
        if c is None:
            continue
        try:
            c = as_comm(c)
        except TypeError:
            continue
        if c.size > 1 and all(c is not d for d in comms):
            comms.append(c)
    if not comms:
        return
    names = list(arguments)
    split = getattr(A, "split", None)
    if split is not None:  # a split operator's vectors (v0) are this rank's rows: compare their shape only
        arguments = {k: (("split rows", tuple(v.shape[1:])) if getattr(v, "ndim", 0) > 0 and v.shape[0] == split.rows
                         else v) for k, v in arguments.items()}
    mine = np.array([_fingerprint(arguments[k]) for k in names])
    for c in comms:
        spread = np.asarray(c.allreduce_max(np.concatenate([mine, -mine])), dtype=np.float64)
        differs = spread[: len(names)] != -spread[len(names):]
        if differs.any():
            bad = [names[i] for i in np.flatnonzero(differs)]
            shown = ", ".join(f"{k}={_show(arguments[k])}" for k in bad)
            raise mark(RankDisagreementError(
                f"the {c.size} ranks called {solver} with different arguments ({', '.join(bad)}; rank {c.rank} "
                f"passed {shown}); every rank must pass the same {', '.join(names)}, e.g. the same seed on every "
                "rank, not one derived from the rank"
            ))
