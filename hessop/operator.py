"""The Hessian of a loss as a :class:`scipy.sparse.linalg.LinearOperator`.

:class:`NativeOperator` is the one base of hessop's operators: a scipy
``LinearOperator`` (with an explicit dtype) whose host path (numpy in, numpy
out) and native path (:meth:`~NativeOperator.apply`, vectors on the operator's
device) are written once, with the shape, dtype and device checks and the
product count. A subclass implements only :meth:`~NativeOperator._product`:

* :class:`HessianOperator`: a framework's curvature products, summed over processes;
* :class:`CallableOperator`: a user's ``fn(V) -> A @ V`` on any array namespace
  (CuPy included), and :func:`as_operator` for dense and sparse matrices;
* :class:`hessop.testing.SpectralOperator`: a prescribed spectrum.

scipy's ``eigsh``, ``lobpcg``, ``cg`` and ``minres`` run on all of them unchanged;
the solvers of this package use the native path. This module imports no
framework: a :class:`~hessop.backends.base.Backend` supplies local products and
a communicator adds them across processes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np
from scipy.sparse.linalg import LinearOperator

from ._array import Array, device_of, from_numpy, import_cupy, numpy_dtype, same_device, to_numpy
from ._collective import summed
from ._names import restrict_names
from .backends.base import Backend
from .comm.base import Communicator, mark
from .distributed import as_comm
from .split import RowSplit, refuse_host


def _nan() -> float:
    return float("nan")


def _finite_everywhere(comm: Communicator, out: Array, what: str) -> Array:
    """``out`` (this rank's rows of a split result), or an error on every rank if any rank's rows are not finite."""
    xp = array_api_compat.array_namespace(out)
    bad = comm.allreduce_scalar(float(not bool(xp.all(xp.isfinite(out)))))
    if bad:
        raise mark(FloatingPointError(f"the {what} holds NaN or Inf on {int(bad)} of {comm.size} ranks; check "
                                      "the model, the data and the dtype"))
    return out


DENSE_LIMIT = 8192
"""Largest dimension :meth:`HessianOperator.to_dense` builds without ``max_size``."""


class NativeOperator(LinearOperator):
    """A symmetric operator with a native path: ``apply`` on arrays of its namespace and device.

    Subclasses call ``super().__init__(n, xp, device, native_dtype)`` and implement
    :meth:`_product`; :meth:`apply` checks the vector and counts the products,
    and the scipy host path converts numpy arrays in and out.

    Attributes
    ----------
    xp : namespace
        Array-API namespace of the native vectors.
    device
        Device the native vectors live on.
    native_dtype
        Native dtype of the vectors (``dtype`` is its numpy twin, for scipy).
    num_matvecs : int
        Products so far (a ``k``-column block counts ``k``).
    split : hessop.split.RowSplit or None
        Set by an operator whose vectors are split across processes: each rank
        holds a block of rows (``split.rows`` of ``n``) and :meth:`apply` takes and
        returns that block. The scipy host path and ``to_dense`` then refuse
        (a rank's rows are not a vector); hessop's solvers reduce across ranks.
    """

    noun = "operator"
    """What the operator is called in error messages."""
    split: RowSplit | None = None

    def __init__(self, n: int, xp: Any, device: Any, native_dtype: Any):
        self.xp, self.native_dtype = xp, native_dtype
        self.device = device if device is not None else device_of(xp.zeros(1, dtype=native_dtype))
        super().__init__(dtype=numpy_dtype(xp, native_dtype), shape=(int(n), int(n)))
        self.num_matvecs = 0

    def _product(self, V: Array) -> Array:
        """``A @ V`` for a checked native ``(n,)`` or ``(n, k)`` array."""
        raise NotImplementedError

    def apply(self, V: Array) -> Array:
        """``A @ V`` for a native vector ``(n,)`` or block ``(n, k)`` on this operator's device."""
        self._check_native(V)
        out = self._product(V)
        self.num_matvecs += 1 if V.ndim == 1 else int(V.shape[1])
        return out

    @property
    def rows(self) -> int:
        """Rows of a native vector on this rank: ``n``, or this rank's block when :attr:`split`."""
        return self.shape[0] if self.split is None else self.split.rows

    def _check_native(self, V: Array) -> None:
        n = self.rows
        if not hasattr(V, "ndim") or V.ndim not in (1, 2) or V.shape[0] != n:
            shape = getattr(V, "shape", None)
            whose = "" if self.split is None else f" (this rank's rows of the split {self.noun})"
            raise ValueError(f"expected a vector of shape ({n},) or a block ({n}, k){whose}; got shape {shape}")
        if V.dtype != self.native_dtype:
            raise TypeError(
                f"vector dtype {V.dtype} does not match the operator's {self.native_dtype}; "
                f"cast it first (e.g. xp.astype(v, H.native_dtype))"
            )
        if getattr(V, "device", None) == self.device:  # torch: one comparison (device_of costs 10-30 us)
            return
        device = device_of(V)
        if device != self.device and not same_device(device, self.device):
            raise ValueError(f"vector is on device {device} but the operator is on {self.device}; move it first")

    # -- scipy host path ---------------------------------------------------------------
    def _to_native(self, x: np.ndarray) -> Array:
        x = np.asarray(x)
        if np.iscomplexobj(x):
            raise TypeError(f"the {self.noun} is real; apply it to the real and imaginary parts separately")
        return from_numpy(x.astype(self.dtype, copy=False), self.xp, self.device, self.native_dtype)

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        if self.split is not None:
            refuse_host(self.noun, self.split, "a scipy or host product")
        return to_numpy(self.apply(self._to_native(np.ravel(x)))).reshape(np.shape(x))

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        if self.split is not None:
            refuse_host(self.noun, self.split, "a scipy or host product")
        return to_numpy(self.apply(self._to_native(X)))

    def _rmatvec(self, x: np.ndarray) -> np.ndarray:
        return self._matvec(x)

    def _rmatmat(self, X: np.ndarray) -> np.ndarray:
        return self._matmat(X)

    def _adjoint(self) -> NativeOperator:
        return self

    _transpose = _adjoint


class HessianOperator(NativeOperator):
    """A symmetric curvature matrix (Hessian, GGN or their difference) of a loss over all the data.

    Parameters
    ----------
    backend : Backend
        The framework's curvature-vector products over this process's data.
    comm : Communicator, mpi4py communicator or torch.distributed process group, optional
        Adds the processes' partial products (default: one process); see
        :func:`hessop.distributed.as_comm`. A backend with a ``split`` layout (the
        parameters themselves are split, e.g. FSDP2) returns its rows of products
        over every rank's data already: the operator is then split too.

    Notes
    -----
    ``H @ v`` and ``H.matmat(V)`` take and return numpy arrays (the scipy
    contract); ``H.apply(V)`` takes and returns native arrays on :attr:`device`.
    A ``k``-column product counts ``k`` in :attr:`num_matvecs`.
    """

    noun = "Hessian operator"

    def __init__(self, backend: Backend, comm: Any = None):
        self.backend = backend
        self.comm: Communicator = as_comm(comm)
        self.split = getattr(backend, "split", None)
        if self.comm.size > 1 and self.split is None:  # one 10-float all-reduce
            self.comm.check_agree(backend.flat_params(), "model parameters",
                                  hint="every rank must build the same model (same seed or checkpoint)")
        super().__init__(backend.n, backend.xp, backend.device, backend.dtype)
        self._scale = 1.0
        self._product_error: float | None = None
        if backend.normalize:
            total = self.comm.allreduce_scalar(backend.local_count)
            if total <= 0:
                raise ValueError("the data holds no samples: every batch on every process is empty")
            self._scale = 1.0 / total

    @property
    def curvature(self) -> str:
        """``"hessian"``, ``"ggn"`` or ``"residual"``."""
        return self.backend.curvature

    def _product(self, V: Array) -> Array:
        if self.split is not None:  # the backend's own collectives summed over the ranks' data
            out = _finite_everywhere(self.comm, self.backend.hvp_sum(V), "product")
        else:
            out = summed(self.comm, self.comm.allreduce, lambda: self.backend.hvp_sum(V), lambda: V * float("nan"),
                         "in a product")
        if self._product_error is None and self.comm.size > 1:
            self._product_error = self._measured_error()
        return out * self._scale if self._scale != 1.0 else out

    @property
    def product_error(self) -> float | None:
        """The products' relative error: 0.0 for exact products, the measured estimate for finite differences,
        None before it is measured (the first product). Under several processes, the largest over the ranks,
        taken once at the first product. Solvers report no residual below it."""
        if self.comm.size == 1:
            return getattr(self.backend, "product_error", 0.0)
        return self._product_error

    def _measured_error(self) -> float:
        """The backend's error after the first product, the largest over the ranks (collective, called once)."""
        error = getattr(self.backend, "product_error", 0.0)
        error = 0.0 if error is None else float(error)
        if self.comm.size > 1:
            error = float(self.comm.allreduce_max(np.array([error]))[0])
        return error

    # -- structure -----------------------------------------------------------------------
    @property
    def parameter_names(self) -> list[str]:
        """Names of the parameter tensors, in the order of the flat vector."""
        return list(self.backend.param_names)

    @property
    def parameter_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the parameter tensors, in the order of the flat vector (every backend)."""
        return [tuple(int(d) for d in shape) for shape in self.backend.param_shapes]

    @property
    def parameter_sizes(self) -> list[int]:
        """Number of entries of each parameter tensor; the flat vector concatenates them in this order."""
        return [int(size) for size in self.backend.param_sizes]

    @property
    def parameter_modules(self) -> list[str]:
        """For each parameter, the module it belongs to (the block :attr:`blocks` groups it in)."""
        return list(self.backend.module_names)

    @property
    def blocks(self) -> dict[str, slice]:
        """Named parameter blocks (modules) in the order of the flat vector, as slices of it."""
        if self.split is not None:
            raise TypeError(
                "H.blocks are slices of the whole flat vector, which no rank of a split operator holds: select a "
                "block by name with H.restrict(name) (its vectors are split too), or map this rank's rows with "
                "H.backend.global_indices()"
            )
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

    def restrict(self, *patterns: str) -> HessianOperator:
        """The diagonal block over some parameters, all others held fixed.

        Each pattern selects the parameters whose name equals it, starts with it
        followed by ``"."`` (a module prefix such as ``"layer1"``), or fully
        matches it as a regular expression.
        """
        if not patterns:
            raise ValueError("restrict needs at least one parameter name, module prefix or regex")
        names = self.backend.param_names
        chosen = restrict_names(names, *patterns)
        unmatched = [p for p in patterns if not restrict_names(names, p)]
        if unmatched:
            raise ValueError(
                f"restrict: {unmatched} match no parameter; parameters are named like {names[:4]}"
                + (" ..." if len(names) > 4 else "")
            )
        return type(self)(self.backend.restrict(chosen), self.comm)

    # -- conveniences ----------------------------------------------------------------------
    def loss(self) -> float:
        """The loss over all the data (mean or sum, as the loss reduces)."""
        return summed(self.comm, self.comm.allreduce_scalar, self.backend.loss_sum, _nan, "in the loss") * self._scale

    def gradient(self) -> Array:
        """The gradient of the loss over all the data, a native vector."""
        if self.split is not None:
            g = _finite_everywhere(self.comm, self.backend.grad_sum(), "gradient")
        else:
            g = summed(self.comm, self.comm.allreduce, self.backend.grad_sum,
                       lambda: self.parameters() * float("nan"), "in the gradient")
        return g * self._scale if self._scale != 1.0 else g

    def parameters(self) -> Array:
        """The current parameter values as one native vector."""
        return self.backend.flat_params()

    def loss_at(self, flat: Array) -> float:
        """The loss over all the data with the parameters replaced by ``flat`` (a native vector)."""
        loss = summed(self.comm, self.comm.allreduce_scalar, lambda: self.backend.loss_at(flat), _nan, "in the loss")
        return loss * self._scale

    def to_dense(self, max_size: int = DENSE_LIMIT) -> np.ndarray:
        """The operator as a dense host matrix, built column block by column block.

        Costs ``n`` products; refused beyond ``max_size`` (raise it knowingly),
        and refused for a split operator (no rank can hold its columns).
        """
        if self.split is not None:
            refuse_host(self.noun, self.split, "to_dense()")
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


class CallableOperator(NativeOperator):
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
            cupy = import_cupy()
            xp = array_api_compat.array_namespace(cupy.empty(0))
            device = cupy.cuda.Device() if device is None else device
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"the operator's dtype must be a real float (float32 or float64), not {dtype}")
        self._fn = fn
        super().__init__(n, xp, device, getattr(xp, dtype.name))

    def _product(self, V: Array) -> Array:
        out = self._fn(V)
        if getattr(out, "shape", None) != V.shape:
            raise ValueError(f"fn returned shape {getattr(out, 'shape', None)} for an input of shape {V.shape}; "
                             "it must return A @ V of the same shape")
        return out

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
