"""CuPy: a zero-copy DLPack bridge between hessop operators and CuPy's own solvers.

:func:`to_cupy` wraps a :class:`hessop.HessianOperator` of a PyTorch model on
CUDA or a JAX model on a GPU as a ``cupyx.scipy.sparse.linalg.LinearOperator``,
so ``cupyx.scipy.sparse.linalg.eigsh`` runs on a network's Hessian. Vectors cross
through DLPack, which shares the device buffer instead of copying it;
:func:`from_cupy` brings CuPy results (eigenvectors) back as the operator's
native arrays the same way. The other direction, CuPy matrices and products as
hessop operators, is :func:`hessop.operator.as_operator` and
:class:`hessop.operator.CallableOperator` (they work on any array namespace).

CuPy is imported only when a CuPy object is needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._array import Array, device_key, import_cupy, numpy_dtype
from .operator import NativeOperator


def check_gpu_operator(H: Any) -> tuple[str, int]:
    """The CUDA device of an operator meant for CuPy, or a clear error if it lives elsewhere."""
    if not isinstance(H, NativeOperator):
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
    With ``H`` an operator on a CUDA device (these lines need a GPU and CuPy, so the doctest skips them):

    >>> import cupyx.scipy.sparse.linalg as csl                      # doctest: +SKIP
    >>> vals, vecs = csl.eigsh(to_cupy(H), k=5, which="LA")          # doctest: +SKIP
    >>> top = from_cupy(vecs[:, -1], H)                               # doctest: +SKIP

    ``top`` is then a native torch/JAX vector sharing the CuPy buffer.
    """
    key = check_gpu_operator(H)
    cupy = import_cupy()
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
    return H.xp.from_dlpack(import_cupy().ascontiguousarray(x))
