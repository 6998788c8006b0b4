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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import array_api_compat
import numpy as np

from .._array import Array, from_numpy, namespace, numpy_dtype, random_matrix, rng, to_numpy
from ..operator import NativeOperator


@dataclass
class LinearMap:
    """A symmetric linear map on native vectors, with a product counter."""

    product: Callable[[Array], Array]
    n: int
    xp: Any
    dtype: Any
    device: Any = None
    num_matvecs: int = field(default=0)
    source: Any = None  # the operator wrapped, whose products may carry an error (product_error)

    def __call__(self, V: Array) -> Array:
        """``A @ V`` for ``V`` of shape ``(n,)`` or ``(n, k)``; counts ``k`` products."""
        self.num_matvecs += 1 if V.ndim == 1 else int(V.shape[1])
        return self.product(V)

    def asarray(self, a: np.ndarray) -> Array:
        """A host array moved to this map's namespace, device and dtype."""
        return from_numpy(np.asarray(a), self.xp, self.device, self.dtype)

    def random(self, seed, shape, kind: str = "gaussian") -> Array:
        """Seeded random probes of ``shape`` on this map's device (drawn on the host, moved once)."""
        return self.asarray(random_matrix(rng(seed), shape, kind))

    def zeros(self, shape) -> Array:
        """Zeros of ``shape`` on this map's device and dtype."""
        return self.xp.zeros(shape, dtype=self.dtype, device=self.device)

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
        if _half(native):  # vectors in float32, each product in the operator's own precision
            apply = A.apply
            return LinearMap(lambda V: xp.astype(apply(xp.astype(V, native)), xp.float32), int(A.shape[0]), xp,
                             xp.float32, A.device, source=A)
        return LinearMap(A.apply, int(A.shape[0]), xp, native, A.device, source=A)
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
    if not np.all(np.isfinite(AXh)):
        raise FloatingPointError("the operator returned NaN or Inf on a random vector; check the model and data")
    lhs, rhs = Xh[:, 0] @ AXh[:, 1], Xh[:, 1] @ AXh[:, 0]
    scale = np.linalg.norm(AXh) * np.linalg.norm(Xh) + np.finfo(float).tiny
    tol = max(1e-10, 100 * math.sqrt(lm.eps))
    if abs(lhs - rhs) > tol * scale:
        raise ValueError(
            f"the operator is not symmetric: u'Av = {lhs:.6g} but v'Au = {rhs:.6g}; these solvers need a "
            "symmetric matrix (under several processes, check that every rank passes the same vectors)"
        )
