"""What a solver sees of an operator: a native block product, a size, a namespace, a device.

:func:`as_linear_map` accepts

* a :class:`hessop.operator.NativeOperator` (a :class:`hessop.HessianOperator`,
  a :class:`~hessop.operator.CallableOperator`, a
  :class:`hessop.testing.SpectralOperator`): vectors stay on its device;
* a dense square array of any array-API namespace (numpy, torch, CuPy, JAX,
  ``array_api_strict``): products are ``A @ V`` in that namespace;
* a scipy ``LinearOperator`` or sparse matrix (or a ``numpy.matrix``, read as an
  array): products in numpy.

Complex operators are refused (the solvers work on real symmetric matrices and
would otherwise drop imaginary parts); half-precision ones (float16, bfloat16)
are computed in float32, since the small dense algebra (QR, eigh) has no
half-precision kernels and half precision cannot carry a Krylov recurrence.

Solvers count their own products through :attr:`LinearMap.num_matvecs`, so a
result reports exactly what that call cost.

*The one owner of reductions.* Every sum over a vector's length that a solver
does (inner products, norms, Gram matrices ``Xᵀ Y``, QR factors) is a method
of :class:`LinearMap`. For an ordinary operator they are the namespace's own
operations. For a split operator (``A.split``, a :class:`hessop.split.RowSplit`:
each rank holds a block of rows of every vector) they are the same local work
plus one all-reduce of the small result, so every rank holds the same
coefficients and solves the same small dense problems. Random vectors of a split
operator are drawn chunk by chunk (:func:`hessop._array.random_rows`): each rank
draws its own rows, and the whole vector does not depend on the number of ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import array_api_compat
import numpy as np

from .._array import (
    Array,
    from_numpy,
    namespace,
    numpy_dtype,
    random_at,
    random_matrix,
    random_rows,
    replicated,
    rng,
    to_numpy,
)
from ..operator import NativeOperator
from ..split import RowSplit


@dataclass
class LinearMap:
    """A symmetric linear map on native vectors, with a product counter and the reductions over their length.

    Shapes given to :meth:`zeros` and :meth:`random` are *logical*: a leading
    ``n`` means a whole vector, held as this rank's :attr:`rows` rows when the
    map is split.
    """

    product: Callable[[Array], Array]
    n: int
    xp: Any
    dtype: Any
    device: Any = None
    num_matvecs: int = field(default=0)
    split: RowSplit | None = None
    source: Any = None  # the operator wrapped, whose products may carry an error (product_error)

    def __call__(self, V: Array) -> Array:
        """``A @ V`` for ``V`` of shape ``(rows,)`` or ``(rows, k)``; counts ``k`` products."""
        self.num_matvecs += 1 if V.ndim == 1 else int(V.shape[1])
        return self.product(V)

    @property
    def rows(self) -> int:
        """Rows of a vector held here: ``n``, or this rank's block of a split map."""
        return self.n if self.split is None else self.split.rows

    # -- placing arrays ------------------------------------------------------------------------
    def asarray(self, a: np.ndarray) -> Array:
        """A host vector or block of this rank's rows moved to this map's namespace, device and dtype."""
        return from_numpy(np.asarray(a), self.xp, self.device, self.dtype)

    def small(self, a: np.ndarray) -> Array:
        """A small host array (coefficients, not a vector) moved next to the vectors, never split."""
        return replicated(np.asarray(a), self.xp, self.device, self.dtype)

    def vector(self, v: Any) -> Array:
        """A user's vector or block as this map's native rows: a whole host array is cut to this rank's rows."""
        if isinstance(v, np.ndarray) or not array_api_compat.is_array_api_obj(v):
            a = np.asarray(to_numpy(v) if hasattr(v, "shape") else v, dtype=np.float64)
            if self.split is not None and a.shape[:1] == (self.n,) and self.rows != self.n:
                a = self.split.scatter(a)
            return self.asarray(a)
        return v if v.dtype == self.dtype else self.xp.astype(v, self.dtype)

    def _local(self, shape) -> tuple:
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        return (self.rows, *shape[1:]) if shape and shape[0] == self.n else shape

    def random(self, seed, shape, kind: str = "gaussian") -> Array:
        """Seeded random vectors of logical ``shape`` on this map's device (drawn on the host, moved once).

        A split map takes one key from ``seed`` (the same on every rank) and draws
        this rank's rows of the whole draw (:func:`hessop._array.random_rows`).
        """
        if self.split is None:
            return self.asarray(random_matrix(rng(seed), shape, kind))
        shape = tuple(np.atleast_1d(shape))
        key = int(rng(seed).integers(2**63))
        return self.asarray(self._draw([key], int(shape[1]) if len(shape) == 2 else None, kind))

    def _draw(self, key, cols, kind) -> np.ndarray:
        split = self.split
        assert split is not None
        if split.index is not None:
            return random_at(key, self.n, split.index, cols, kind)
        return random_rows(key, self.n, split.offset, split.stop, cols, kind)

    def probes(self, keys: list, kind: str) -> Array:
        """Columns drawn from ``default_rng(key)`` for each seed sequence ``key`` (a split map: its rows)."""
        if not keys:
            return self.asarray(np.zeros((self.rows, 0)))
        if self.split is None:
            cols = [random_matrix(np.random.default_rng(key), self.n, kind) for key in keys]
        else:
            cols = [self._draw(key, None, kind) for key in keys]
        return self.asarray(np.stack(cols, axis=1))

    def zeros(self, shape) -> Array:
        """Zeros of logical ``shape`` on this map's device and dtype."""
        return self.xp.zeros(self._local(shape), dtype=self.dtype, device=self.device)

    # -- reductions over a vector's length: local work, then one all-reduce when split -------------
    def _summed(self, x: Array) -> Array:
        if self.split is None or self.split.comm.size == 1:
            return x
        if x.ndim == 0:
            return self.xp.reshape(self.split.comm.allreduce(self.xp.reshape(x, (1,))), ())
        return self.split.comm.allreduce(x)

    def inner(self, X: Array, Y: Array) -> Array:
        """``Xᵀ Y`` over the whole length (native; ``(k, l)``, ``(k,)`` or 0-d as the inputs are blocks or vectors)."""
        if X.ndim == 1:
            local = self.xp.sum(X * Y) if Y.ndim == 1 else X @ Y
        else:
            local = X.T @ Y
        return self._summed(local)

    def dots(self, X: Array, Y: Array) -> Array:
        """Column-wise inner products ``sum_i X[i, j] Y[i, j]`` (``(k,)``; 0-d for vectors)."""
        return self._summed(self.xp.sum(X * Y, axis=0))

    def colnorms(self, X: Array) -> Array:
        """Column-wise 2-norms of a block (``(k,)``; 0-d for a vector)."""
        if self.split is None:
            return self.xp.linalg.vector_norm(X, axis=0)
        return self.xp.sqrt(self.dots(X, X))

    def norm(self, X: Array) -> Array:
        """The 2-norm of a vector (Frobenius of a block) as a 0-d native array."""
        if self.split is None:
            return self.xp.linalg.vector_norm(X)
        return self.xp.sqrt(self._summed(self.xp.sum(X * X)))

    def all_finite(self, X: Array) -> bool:
        """Whether ``X`` holds no NaN or Inf on any rank (collective when split)."""
        xp = self.xp
        bad = xp.sum(xp.astype(xp.logical_not(xp.isfinite(X)), self.dtype))
        return float(to_numpy(self._summed(bad))) == 0.0

    def qr(self, Y: Array) -> tuple[Array, Array]:
        """``Y = Q R`` with orthonormal columns ``Q`` (this rank's rows) and a small square ``R``.

        The namespace's QR; for a split map, TSQR (Demmel, Grigori, Hoemmen &
        Langou 2012): each rank factors its rows, one all-reduce gathers the
        ``k x k`` factors, and every rank factors their stack identically.
        Householder throughout, so a rank-deficient ``Y`` is fine.
        """
        if self.split is None:
            return self.xp.linalg.qr(Y)
        comm, k = self.split.comm, int(Y.shape[1])
        Ql, Rl = self.xp.linalg.qr(Y)  # (rows, j), (j, k) with j = min(rows, k)
        j = int(Rl.shape[0])
        table = np.zeros((comm.size * k, k))
        table[comm.rank * k:comm.rank * k + j] = np.asarray(to_numpy(Rl), dtype=np.float64)
        Qs, R = np.linalg.qr(np.asarray(to_numpy(comm.allreduce(table)), dtype=np.float64))
        return Ql @ self.small(Qs[comm.rank * k:comm.rank * k + j]), self.small(R)

    @property
    def product_error(self) -> float:
        """The products' own relative error (``A.product_error``, e.g. finite differences; 0 for exact ones)."""
        return float(getattr(self.source, "product_error", None) or 0.0)

    @property
    def eps(self) -> float:
        """Machine epsilon of the vectors' dtype."""
        return float(np.finfo(numpy_dtype(self.xp, self.dtype)).eps)


def as_linear_map(A: Any, *, check_symmetric: bool = True, seed: int | None = 0) -> LinearMap:
    """Wrap ``A`` for the solvers; raise a clear error if it is not a square symmetric map.

    The symmetry probe compares ``uᵀ(Av)`` with ``vᵀ(Au)`` for two seeded random
    vectors (two products, counted); switch it off with ``check_symmetric=False``.
    """
    lm = _wrap(A)
    if lm.n < 1:
        raise ValueError("the operator is empty (n = 0)")
    if check_symmetric:
        _probe_symmetry(lm, seed)
    return lm


def _wrap(A: Any) -> LinearMap:
    if isinstance(A, np.matrix):
        A = np.asarray(A)
    if isinstance(A, NativeOperator):
        _square(A.shape)
        _real(A.native_dtype)
        xp, native = A.xp, A.native_dtype
        split = getattr(A, "split", None)
        if _half(native):  # vectors in float32, each product in the operator's own precision
            apply = A.apply
            return LinearMap(lambda V: xp.astype(apply(xp.astype(V, native)), xp.float32), int(A.shape[0]), xp,
                             xp.float32, A.device, split=split, source=A)
        return LinearMap(A.apply, int(A.shape[0]), xp, native, A.device, split=split, source=A)
    if array_api_compat.is_array_api_obj(A):
        _square(A.shape)
        _real(A.dtype)
        xp = namespace(A)
        if _half(A.dtype):
            A = xp.astype(A, xp.float32)
        elif not xp.isdtype(A.dtype, "real floating"):
            A = xp.astype(A, xp.float64)
        return LinearMap(lambda V: A @ V, int(A.shape[0]), xp, A.dtype, array_api_compat.device(A))
    if hasattr(A, "shape") and (hasattr(A, "matmat") or hasattr(A, "dot")):
        _square(A.shape)
        _real(getattr(A, "dtype", None))
        dtype = np.dtype(getattr(A, "dtype", None) or np.float64)
        if dtype.kind != "f":
            dtype = np.dtype(np.float64)
        elif dtype.itemsize < 4:
            dtype = np.dtype(np.float32)
        xp = array_api_compat.array_namespace(np.zeros(1))
        return LinearMap(lambda V: np.asarray(A @ V, dtype=dtype), int(A.shape[0]), xp, dtype, "cpu")
    raise TypeError(
        f"cannot use a {type(A).__name__} as an operator: pass a HessianOperator, a scipy "
        "LinearOperator or sparse matrix, a dense square array, or wrap a product function in "
        "hessop.operator.CallableOperator(fn, n, dtype, xp=...)"
    )


def _real(dtype) -> None:
    """Refuse a complex operator with a sentence (``dtype`` may be any framework's)."""
    if dtype is not None and "complex" in str(dtype):
        raise TypeError(
            f"the operator is complex ({dtype}); hessop's solvers work on real symmetric matrices. For a "
            "Hermitian H = B + iC use the real symmetric [[B, -C], [C, B]] (each eigenvalue of H appears "
            "twice in it, and its trace is 2 tr(H)), or pass H.real if the imaginary part is zero"
        )


def _half(dtype) -> bool:
    """Whether ``dtype`` (of any framework) is a 16-bit float."""
    return str(dtype).rsplit(".", 1)[-1] in ("float16", "bfloat16", "half")


def _square(shape) -> None:
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"the operator must be square; got shape {tuple(shape)}")


def _probe_symmetry(lm: LinearMap, seed) -> None:
    X = lm.random(np.random.default_rng([0 if seed is None else seed, 7]), (lm.n, 2))
    AX = lm(X)
    Xh, AXh = to_numpy(X).astype(np.float64), to_numpy(AX).astype(np.float64)
    # float64 on the host: [Xᵀ AX, |AX|², |X|²], summed over ranks when the map is split
    local = np.concatenate([(Xh.T @ AXh).ravel(), [np.sum(AXh * AXh), np.sum(Xh * Xh)]])
    sums = local if lm.split is None else np.asarray(to_numpy(lm.split.comm.allreduce(local)), dtype=np.float64)
    if not np.all(np.isfinite(sums)):
        raise FloatingPointError("the operator returned NaN or Inf on a random vector; check the model and data")
    lhs, rhs = sums[1], sums[2]
    scale = math.sqrt(sums[4]) * math.sqrt(sums[5]) + np.finfo(float).tiny
    tol = max(1e-10, 100 * math.sqrt(lm.eps))
    if abs(lhs - rhs) > tol * scale:
        raise ValueError(
            f"the operator is not symmetric: u'Av = {lhs:.6g} but v'Au = {rhs:.6g}; these solvers need a "
            "symmetric matrix (under several processes, check that every rank passes the same vectors)"
        )
