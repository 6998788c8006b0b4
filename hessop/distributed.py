"""Communicators: how processes add up their partial Hessian-vector products.

A communicator has a ``rank``, a ``size``, a sum all-reduce of a native array
(:meth:`allreduce`), of a float (:meth:`allreduce_scalar`), a :meth:`broadcast`
of a picklable object, and a :meth:`barrier`. :class:`SerialComm` is the
one-process case and costs nothing. The MPI implementation lives beside it.
"""

from __future__ import annotations

from typing import Any

from ._array import Array


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

    def broadcast(self, obj: Any, root: int = 0) -> Any:
        """``obj`` as held by rank ``root``."""
        return obj

    def barrier(self) -> None:
        """Wait for every process (nothing to wait for here)."""

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
