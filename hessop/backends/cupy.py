"""CuPy: GPU operators for the generic solvers, and a zero-copy DLPack bridge to CuPy's own.

Two directions
--------------
* Into hessop: :func:`as_operator` wraps a dense ``cupy`` array or a
  ``cupyx.scipy.sparse`` matrix, and :class:`CallableOperator` wraps a user's
  product ``fn(V) -> A @ V``, as operators speaking hessop's native protocol
  (``apply``, ``xp``, ``device``, ``native_dtype``, ``num_matvecs``), so
  ``hessop.solvers`` run on them with every vector on the GPU. They are scipy
  ``LinearOperator``\\ s too (host numpy in and out).
* Out to CuPy: :func:`to_cupy` wraps a :class:`hessop.HessianOperator` of a
  PyTorch model on CUDA or a JAX model on a GPU as a
  ``cupyx.scipy.sparse.linalg.LinearOperator``, so ``cupyx.scipy.sparse.linalg.eigsh``
  runs on a network's Hessian. Vectors cross through DLPack, which shares the
  device buffer instead of copying it; :func:`from_cupy` brings CuPy results
  (eigenvectors) back as the operator's native arrays the same way.

CuPy is imported only when a CuPy object is needed; the checks and
:class:`CallableOperator` work on any array-API namespace (numpy included), which
is how they are tested on machines without a GPU.
"""

from __future__ import annotations

from typing import Any, Callable

import array_api_compat
import numpy as np
from scipy.sparse.linalg import LinearOperator

from .._array import Array, device_of, from_numpy, numpy_dtype, to_numpy


def _cupy():
    try:
        import cupy
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise ImportError(
            "this needs CuPy with a CUDA device: pip install cupy-cuda12x (or the wheel matching your CUDA)"
        ) from err
    return cupy


class CallableOperator(LinearOperator):
    """A symmetric operator given by its product ``fn(V)`` on native arrays.

    Parameters
    ----------
    fn : callable
        ``fn(V) -> A @ V`` for ``V`` of shape ``(n,)`` or ``(n, k)``, returning the
        same shape, dtype and device. It must handle both shapes.
    n : int
        The dimension.
    dtype : dtype
        The real floating dtype of the vectors (a numpy dtype or its name).
    xp : namespace, optional
        The array namespace of the vectors (default: CuPy's).
    device : optional
        Their device (default: CuPy's current device, or ``"cpu"`` for numpy).
    """

    def __init__(self, fn: Callable[[Array], Array], n: int, dtype: Any, *, xp: Any = None, device: Any = None):
        if not callable(fn):
            raise TypeError(f"fn must be callable (V -> A @ V), not {type(fn).__name__}")
        if int(n) != n or n < 1:
            raise ValueError(f"n must be a positive integer, not {n!r}")
        if xp is None:
            cupy = _cupy()
            xp = array_api_compat.array_namespace(cupy.empty(0))
            device = cupy.cuda.Device() if device is None else device
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"the operator's dtype must be a real float (float32 or float64), not {dtype}")
        self._fn, self.xp = fn, xp
        self.native_dtype = getattr(xp, dtype.name)
        self.device = device if device is not None else device_of(xp.zeros(1))
        super().__init__(dtype=numpy_dtype(xp, self.native_dtype), shape=(int(n), int(n)))
        self.num_matvecs = 0

    def apply(self, V: Array) -> Array:
        """``A @ V`` for a native ``(n,)`` vector or ``(n, k)`` block on this operator's device."""
        check_vector(V, self.shape[0], self.native_dtype, self.device)
        out = self._fn(V)
        if getattr(out, "shape", None) != V.shape:
            raise ValueError(f"fn returned shape {getattr(out, 'shape', None)} for an input of shape {V.shape}; "
                             "it must return A @ V of the same shape")
        self.num_matvecs += 1 if V.ndim == 1 else int(V.shape[1])
        return out

    def _native(self, x: np.ndarray) -> Array:
        return from_numpy(np.asarray(x, dtype=self.dtype), self.xp, self.device, self.native_dtype)

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        return to_numpy(self.apply(self._native(np.ravel(x)))).reshape(np.shape(x))

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        return to_numpy(self.apply(self._native(X)))

    def _adjoint(self) -> "CallableOperator":
        return self

    def __repr__(self) -> str:
        n = self.shape[0]
        return f"<CallableOperator n={n} dtype={self.dtype} device={self.device}>"


def as_operator(A: Any) -> CallableOperator:
    """A dense square array or a sparse matrix (CuPy, or numpy/scipy) as a native operator.

    ``A`` must be symmetric (the solvers check it with one random probe).
    Integer matrices are refused: cast them to float32 or float64 first.
    """
    shape = getattr(A, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"expected a square matrix; got {type(A).__name__} of shape {shape}")
    storage = A.data if _is_sparse(A) else A
    xp = array_api_compat.array_namespace(storage)
    return CallableOperator(lambda V: A @ V, shape[0], np.dtype(A.dtype), xp=xp, device=device_of(storage))


def _is_sparse(A: Any) -> bool:
    return hasattr(A, "tocsr") and hasattr(A, "nnz")


def check_vector(V: Any, n: int, dtype: Any, device: Any) -> None:
    """Raise a clear error unless ``V`` is an ``(n,)`` or ``(n, k)`` array of ``dtype`` on ``device``."""
    if not hasattr(V, "ndim") or V.ndim not in (1, 2) or V.shape[0] != n:
        raise ValueError(f"expected a vector of shape ({n},) or a block ({n}, k); got shape {getattr(V, 'shape', None)}")
    if V.dtype != dtype:
        raise TypeError(f"vector dtype {V.dtype} does not match the operator's {dtype}; cast it first")
    if not same_device(device_of(V), device):
        raise ValueError(f"vector is on device {device_of(V)} but the operator is on {device}; move it first")


def same_device(a: Any, b: Any) -> bool:
    """Whether two devices, possibly named by different frameworks, are the same one."""
    try:
        return device_key(a) == device_key(b)
    except ValueError:
        return str(a) == str(b)


def device_key(device: Any) -> tuple[str, int]:
    """A device as ``(kind, index)`` with kind ``"cpu"`` or ``"cuda"``, whatever framework named it.

    Understands ``torch.device``, JAX devices, ``cupy.cuda.Device``, strings such
    as ``"cuda:1"``, ``"gpu:0"`` or ``"cpu"``, and integers (a CUDA ordinal).
    """
    if isinstance(device, (int, np.integer)):
        return ("cuda", int(device))
    if hasattr(device, "platform"):  # JAX
        kind = "cuda" if device.platform in ("gpu", "cuda", "rocm") else str(device.platform)
        index = getattr(device, "local_hardware_id", None)
        return (kind, int(device.id if index is None else index))
    if hasattr(device, "type") and hasattr(device, "index"):  # torch
        return (_kind(device.type), int(device.index or 0))
    if type(device).__module__.startswith("cupy"):  # cupy.cuda.Device
        return ("cuda", int(device.id))
    text = str(device).lower()
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda", "gpu") or (index and not index.isdigit()):
        raise ValueError(f"cannot interpret device {device!r}; use e.g. 'cpu', 'cuda:0' or a framework device")
    return (_kind(kind), int(index or 0))


def _kind(name: str) -> str:
    return "cpu" if name == "cpu" else "cuda"


def check_gpu_operator(H: Any) -> tuple[str, int]:
    """The CUDA device of an operator meant for CuPy, or a clear error if it lives elsewhere."""
    for attr in ("apply", "xp", "device", "native_dtype"):
        if not hasattr(H, attr):
            raise TypeError(f"to_cupy needs a hessop operator (HessianOperator); got a {type(H).__name__}")
    key = device_key(H.device)
    if key[0] != "cuda":
        raise ValueError(
            f"to_cupy needs an operator on a CUDA device, but this one is on {H.device}; "
            "build it from a model and data on the GPU (model.cuda(), or JAX arrays on a GPU device)"
        )
    return key


def to_cupy(H: Any):
    """``H`` as a ``cupyx.scipy.sparse.linalg.LinearOperator`` exchanging vectors by DLPack.

    Each product passes the CuPy vector to the framework with ``xp.from_dlpack``
    and the result back with ``cupy.from_dlpack``: both share the device buffer,
    so no vector is copied (a non-contiguous block is made contiguous first).
    CuPy vectors on another GPU than ``H`` are refused with an error.

    Examples
    --------
    >>> import cupyx.scipy.sparse.linalg as csl
    >>> vals, vecs = csl.eigsh(to_cupy(H), k=5, which="LA")
    >>> top = from_cupy(vecs[:, -1], H)           # a native torch/JAX vector
    """
    key = check_gpu_operator(H)
    cupy = _cupy()
    from cupyx.scipy.sparse.linalg import LinearOperator as CupyLinearOperator

    n = H.shape[0]
    dtype = np.dtype(numpy_dtype(H.xp, H.native_dtype))

    def product(x):
        if device_key(x.device) != key:
            raise ValueError(f"the CuPy vector is on GPU {x.device.id} but the operator is on {H.device}; "
                             "move it with cupy.cuda.Device(i).use() / cupy.asarray")
        v = H.xp.from_dlpack(cupy.ascontiguousarray(x, dtype=dtype))
        return cupy.from_dlpack(H.apply(v))

    return CupyLinearOperator((n, n), matvec=product, rmatvec=product, matmat=product, rmatmat=product, dtype=dtype)


def from_cupy(x: Any, H: Any) -> Array:
    """A CuPy array as a native array of ``H``'s framework, sharing its buffer (DLPack)."""
    key = check_gpu_operator(H)
    if device_key(x.device) != key:
        raise ValueError(f"the CuPy array is on GPU {x.device.id} but the operator is on {H.device}")
    return H.xp.from_dlpack(_cupy().ascontiguousarray(x))
