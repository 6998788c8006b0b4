"""The Hessian of a loss as a :class:`scipy.sparse.linalg.LinearOperator`.

:class:`HessianOperator` *is* a scipy ``LinearOperator`` (a subclass, with an
explicit dtype), so ``eigsh``, ``lobpcg``, ``cg`` and ``minres`` run on it
unchanged through the host path (numpy in, numpy out). The solvers of this
package use the native path, :meth:`HessianOperator.apply`, which keeps vectors
on the framework's device.

The operator imports no framework: a :class:`~hessop.backends.base.Backend`
supplies local products and a communicator adds them across processes.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
from scipy.sparse.linalg import LinearOperator

from ._array import Array, device_of, from_numpy, numpy_dtype, to_numpy
from .backends.base import Backend
from .distributed import as_comm

DENSE_LIMIT = 8192
"""Largest dimension :meth:`HessianOperator.to_dense` builds without ``max_size``."""


class HessianOperator(LinearOperator):
    """A symmetric curvature matrix (Hessian, GGN or their difference) of a loss over all the data.

    Parameters
    ----------
    backend : Backend
        The framework's curvature-vector products over this process's data.
    comm : communicator, optional
        Adds the processes' partial products (default: one process).

    Notes
    -----
    ``H @ v`` and ``H.matmat(V)`` take and return numpy arrays (the scipy
    contract); ``H.apply(V)`` takes and returns native arrays on :attr:`device`.
    A ``k``-column product counts ``k`` in :attr:`num_matvecs`.
    """

    def __init__(self, backend: Backend, comm: Any = None):
        self.backend = backend
        self.comm = as_comm(comm)
        if self.comm.size > 1 and hasattr(self.comm, "check_agree"):  # one 10-float all-reduce
            self.comm.check_agree(backend.flat_params(), "model parameters",
                                  hint="every rank must build the same model (same seed or checkpoint)")
        n = backend.n
        super().__init__(dtype=numpy_dtype(backend.xp, backend.dtype), shape=(n, n))
        self._scale = 1.0
        if backend.normalize:
            total = self.comm.allreduce_scalar(backend.local_count)
            if total <= 0:
                raise ValueError("the data holds no samples: every batch on every process is empty")
            self._scale = 1.0 / total
        self.num_matvecs = 0

    # -- native path -------------------------------------------------------------------
    @property
    def xp(self):
        """Array-API namespace of the native vectors."""
        return self.backend.xp

    @property
    def device(self):
        """Device the native vectors live on."""
        return self.backend.device

    @property
    def native_dtype(self):
        """Native dtype of the vectors (``dtype`` is its numpy twin, for scipy)."""
        return self.backend.dtype

    @property
    def curvature(self) -> str:
        """``"hessian"``, ``"ggn"`` or ``"residual"``."""
        return self.backend.curvature

    def apply(self, V: Array) -> Array:
        """``H @ V`` for a native vector ``(n,)`` or block ``(n, k)`` on this operator's device."""
        self._check_native(V)
        out = self.comm.allreduce(self.backend.hvp_sum(V))
        self.num_matvecs += 1 if V.ndim == 1 else int(V.shape[1])
        return out * self._scale if self._scale != 1.0 else out

    def _check_native(self, V: Array) -> None:
        n = self.shape[0]
        if not hasattr(V, "ndim") or V.ndim not in (1, 2) or V.shape[0] != n:
            shape = getattr(V, "shape", None)
            raise ValueError(f"expected a vector of shape ({n},) or a block ({n}, k); got shape {shape}")
        if V.dtype != self.native_dtype:
            raise TypeError(
                f"vector dtype {V.dtype} does not match the operator's {self.native_dtype}; "
                f"cast it first (e.g. xp.astype(v, H.native_dtype))"
            )
        same = getattr(V, "device", None) == self.device  # a torch vector: one comparison of devices
        if not same and str(device_of(V)) != str(self.device):  # other namespaces, in their own terms
            raise ValueError(f"vector is on device {device_of(V)} but the operator is on {self.device}; move it first")

    # -- scipy host path ---------------------------------------------------------------
    def _to_native(self, x: np.ndarray) -> Array:
        x = np.asarray(x)
        if np.iscomplexobj(x):
            raise TypeError("the Hessian operator is real; apply it to the real and imaginary parts separately")
        return from_numpy(x.astype(self.dtype, copy=False), self.xp, self.device, self.native_dtype)

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        shape = np.shape(x)
        y = to_numpy(self.apply(self._to_native(np.ravel(x))))
        return y.reshape(shape)

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        return to_numpy(self.apply(self._to_native(X)))

    def _rmatvec(self, x: np.ndarray) -> np.ndarray:
        return self._matvec(x)

    def _rmatmat(self, X: np.ndarray) -> np.ndarray:
        return self._matmat(X)

    def _adjoint(self) -> "HessianOperator":
        return self

    _transpose = _adjoint

    # -- structure -----------------------------------------------------------------------
    @property
    def parameter_names(self) -> list[str]:
        """Names of the parameter tensors, in the order of the flat vector."""
        return list(self.backend.param_names)

    @property
    def blocks(self) -> dict[str, slice]:
        """Named parameter groups (modules) in model order, as slices of the flat vector."""
        out: dict[str, slice] = {}
        start = 0
        for module, size in zip(self.backend.module_names, self.backend.param_sizes):
            stop = start + int(size)
            prev = out.get(module)
            if prev is not None and prev.stop == start:
                out[module] = slice(prev.start, stop)
            else:
                out[module if prev is None else f"{module}#{start}"] = slice(start, stop)
            start = stop
        return out

    def restrict(self, *patterns: str) -> "HessianOperator":
        """The diagonal block over some parameters, all others held fixed.

        Each pattern selects the parameters whose name equals it, starts with it
        followed by ``"."`` (a module prefix such as ``"layer1"``), or fully
        matches it as a regular expression.
        """
        if not patterns:
            raise ValueError("restrict needs at least one parameter name, module prefix or regex")
        names = self.backend.param_names
        chosen = restrict_names(names, *patterns)
        unmatched = [p for p in patterns if not any(_selects(p, name) for name in names)]
        if unmatched:
            raise ValueError(
                f"restrict: {unmatched} match no parameter; parameters are named like {names[:4]}"
                + (" ..." if len(names) > 4 else "")
            )
        return type(self)(self.backend.restrict(chosen), self.comm)

    # -- conveniences ----------------------------------------------------------------------
    def loss(self) -> float:
        """The loss over all the data (mean or sum, as the loss reduces)."""
        return self.comm.allreduce_scalar(self.backend.loss_sum()) * self._scale

    def gradient(self) -> Array:
        """The gradient of the loss over all the data, a native vector."""
        g = self.comm.allreduce(self.backend.grad_sum())
        return g * self._scale if self._scale != 1.0 else g

    def parameters(self) -> Array:
        """The current parameter values as one native vector."""
        return self.backend.flat_params()

    def loss_at(self, flat: Array) -> float:
        """The loss over all the data with the parameters replaced by ``flat`` (a native vector)."""
        return self.comm.allreduce_scalar(self.backend.loss_at(flat)) * self._scale

    def to_dense(self, max_size: int = DENSE_LIMIT) -> np.ndarray:
        """The operator as a dense host matrix, built column block by column block.

        Costs ``n`` products; refused beyond ``max_size`` (raise it knowingly).
        """
        n = self.shape[0]
        if n > max_size:
            raise ValueError(
                f"to_dense would build a {n} x {n} matrix ({n * n * self.dtype.itemsize / 2**30:.1f} GiB) "
                f"with {n} Hessian-vector products; pass max_size={n} if you mean it, or restrict() to a block"
            )
        xp = self.xp
        cols = []
        step = 256
        for start in range(0, n, step):
            stop = min(n, start + step)
            E = np.zeros((n, stop - start), dtype=self.dtype)
            E[np.arange(start, stop), np.arange(stop - start)] = 1.0
            cols.append(to_numpy(self.apply(from_numpy(E, xp, self.device, self.native_dtype))))
        return np.concatenate(cols, axis=1)

    def __repr__(self) -> str:
        n = self.shape[0]
        return (
            f"<{type(self).__name__} {self.curvature} n={n} dtype={self.dtype} "
            f"backend={type(self.backend).__name__} device={self.device} ranks={self.comm.size}>"
        )


def _selects(pattern: str, name: str) -> bool:
    if name == pattern or name.startswith(pattern + "."):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def restrict_names(names: Sequence[str], *patterns: str) -> list[str]:
    """The subset of ``names`` selected by ``patterns`` (the rule :meth:`HessianOperator.restrict` uses)."""
    return [name for name in names if any(_selects(p, name) for p in patterns)]
