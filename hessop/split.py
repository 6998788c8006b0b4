"""How the vectors of a split operator are laid out across processes: :class:`RowSplit`.

An operator whose parameters do not fit one process (torch FSDP2, an MPI code
that owns a block of rows) cannot keep whole vectors on every rank either. Its
vectors are *split*: rank ``r`` holds rows ``offset : offset + rows`` of every
vector (its own shards, concatenated in a fixed order), and the ranks' blocks
tile ``0 .. n`` in rank order. A :class:`~hessop.operator.NativeOperator`
advertises this with its ``split`` attribute (``None`` for an operator whose
every rank holds whole vectors); products take and return this rank's rows.

The solvers meet a split operator through
:class:`~hessop.solvers._linear_map.LinearMap`, which owns every reduction over
a vector's length (local work plus one all-reduce of the small result). What
this module adds is the layout itself and the deliberate moves between a whole
vector and this rank's rows (:meth:`RowSplit.gather`, :meth:`RowSplit.scatter`).

This module imports no framework.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np

from ._array import Array, from_numpy, namespace, to_numpy
from .comm.base import Communicator, mark
from .distributed import as_comm


@dataclass(frozen=True)
class RowSplit:
    """This rank's block of rows of every vector of a split operator.

    Attributes
    ----------
    comm : Communicator
        The processes the vectors are split over (reductions over a vector's length go through it).
    rows : int
        How many rows of each vector this rank holds (may be zero).
    offset : int
        The global index of this rank's first row.
    n : int
        The whole length of a vector.
    index : numpy.ndarray, optional
        Where this rank's rows sit in the operator's natural order (for FSDP2, the usual flat
        parameter vector), when that is not ``offset .. offset + rows``. Random vectors are drawn
        by it, so that the same seed gives the same vector in that order for any number of ranks.
    """

    comm: Communicator
    rows: int
    offset: int
    n: int
    index: np.ndarray | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_rows(cls, rows: int, comm: Any, n: int | None = None) -> RowSplit:
        """The layout in which rank ``r`` holds ``rows`` rows after those of ranks ``0 .. r-1``.

        One all-reduce of the row counts; with ``n``, the whole length each rank
        expects, one more (a 10-float agreement check), and a layout whose ranks
        disagree on ``n`` or whose rows do not add up to it fails on every rank.
        """
        comm = as_comm(comm)
        if int(rows) != rows or rows < 0:
            raise ValueError(f"rows must be a non-negative int; got {rows!r}")
        table = np.zeros(comm.size)
        table[comm.rank] = float(rows)
        counts = np.asarray(comm.allreduce(table), dtype=np.float64).astype(np.int64)
        if counts.sum() < 1:
            raise mark(ValueError("every rank holds zero rows: the split operator is empty"))
        if n is not None:
            comm.check_agree(float(n), "whole length n of a split vector",
                             hint="every rank must build the same operator (the same model, the same size)")
            if int(counts.sum()) != int(n):
                raise mark(ValueError(f"the ranks' rows ({counts.tolist()}) add up to {int(counts.sum())}, not to the "
                                      f"whole length n = {int(n)}: each rank must hold its own rows of one vector"))
        return cls(comm, int(rows), int(counts[: comm.rank].sum()), int(counts.sum()))

    @classmethod
    def even(cls, n: int, comm: Any) -> RowSplit:
        """``n`` rows in contiguous blocks whose sizes differ by at most one (no communication)."""
        comm = as_comm(comm)
        base, extra = divmod(int(n), comm.size)
        rows = base + (comm.rank < extra)
        return cls(comm, rows, comm.rank * base + min(comm.rank, extra), int(n))

    @property
    def stop(self) -> int:
        """One past this rank's last row."""
        return self.offset + self.rows

    def _rows(self):
        return slice(self.offset, self.stop) if self.index is None else self.index

    def scatter(self, whole: Array) -> Array:
        """This rank's rows of a whole vector ``(n,)`` or block ``(n, k)`` (no communication).

        The whole vector is in the natural order: by :attr:`index` when it is set.
        """
        if whole.shape[0] != self.n:
            raise ValueError(f"expected a whole vector of {self.n} rows; got shape {tuple(whole.shape)}")
        if self.index is None:
            return whole[self.offset:self.stop, ...]
        return whole[np.asarray(self.index), ...] if isinstance(whole, np.ndarray) else whole[self._native_index(whole)]

    def _native_index(self, like: Array) -> Array:
        xp = namespace(like)
        return from_numpy(np.asarray(self.index, dtype=np.int64), xp, getattr(like, "device", None))

    def gather(self, local: Array) -> Array:
        """The whole vector (or block, in the natural order) on every rank: one all-reduce of ``n x k``.

        Costs a whole vector's memory per column on every rank, which is what a
        split operator exists to avoid: use it for small ``k`` (checks, saving a
        few eigenvectors), never on a solver's basis.
        """
        if local.shape[0] != self.rows:
            raise ValueError(f"expected this rank's {self.rows} rows; got shape {tuple(local.shape)}")
        host = np.asarray(to_numpy(local))
        full = np.zeros((self.n, *host.shape[1:]), dtype=host.dtype)
        full[self._rows(), ...] = host
        full = np.asarray(to_numpy(self.comm.allreduce(full)))
        if isinstance(local, np.ndarray):
            return full
        xp = namespace(local)
        return from_numpy(full, xp, getattr(local, "device", None), local.dtype)

    def __repr__(self) -> str:
        return f"RowSplit(rows {self.offset}:{self.stop} of {self.n}, rank {self.comm.rank} of {self.comm.size})"


def refuse_host(noun: str, split: RowSplit, what: str) -> NoReturn:
    """Raise the one-sentence refusal of a host path (scipy, ``to_dense``, ``@``) on a split operator."""
    raise TypeError(
        f"{what} on this {noun} would see only this rank's {split.rows} of the {split.n} rows of a vector "
        f"(its vectors are split over {split.comm.size} processes): use hessop's solvers (hessop.eigsh, "
        "hessop.trace, hessop.density, hessop.diagonal, hessop.sketch), which reduce across ranks, or "
        "H.apply on this rank's rows"
    )
