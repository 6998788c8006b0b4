"""The MPI communicator: sums native arrays of any framework across processes with ``mpi4py``.

:class:`MPIComm` wraps an ``mpi4py`` communicator. Its :meth:`~MPIComm.allreduce`
takes a native array (numpy, PyTorch, JAX, CuPy or any array-API namespace) and
returns the sum over processes as an array of the same type, dtype and device.
How the bytes travel depends on where they live:

* numpy arrays and PyTorch CPU tensors: straight from their memory (a tensor's
  numpy view shares it), with the uppercase buffer ``Allreduce``, no pickling;
* CUDA tensors and CuPy arrays: the device buffer itself when the MPI library is
  CUDA-aware (see :func:`cuda_aware`), else through a host copy;
* JAX arrays (immutable) and other namespaces: through a host copy, reduced in
  place and moved back to the array's device.

Half-precision arrays are summed in float32 (MPI has no bfloat16) and cast back.
"""

from __future__ import annotations

import os
from typing import Any

import array_api_compat
import numpy as np

from .._array import Array, from_numpy, namespace, to_numpy
from .base import Communicator

CUDA_AWARE_ENV = "HESSOP_MPI_CUDA_AWARE"
"""Environment variable that forces (``1``) or forbids (``0``) passing device buffers to MPI."""


def cuda_aware() -> bool:
    """Whether the MPI library accepts CUDA device buffers.

    Asks ``mpi4py.MPI.Query_cuda_support()`` where this mpi4py provides it
    (Open MPI's ``MPIX_Query_cuda_support`` extension); the environment variable
    ``HESSOP_MPI_CUDA_AWARE=1`` (or ``0``) overrides the answer for libraries that
    cannot be asked, such as CUDA-aware MPICH or MVAPICH builds. Without either,
    device arrays are staged through the host, which is always correct.
    """
    forced = os.environ.get(CUDA_AWARE_ENV, "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    from mpi4py import MPI

    query = getattr(MPI, "Query_cuda_support", None)
    if query is None:
        return False
    try:
        return bool(query())
    except Exception:  # noqa: BLE001 - an MPI that cannot answer is not CUDA-aware for us
        return False


class MPIComm(Communicator):
    """A hessop communicator over an ``mpi4py`` communicator.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        The processes to reduce over (default ``MPI.COMM_WORLD``).
    cuda_aware : bool, optional
        Pass CUDA device buffers straight to MPI; default: ask the library
        (:func:`cuda_aware`).

    Notes
    -----
    :meth:`allreduce` never writes into its argument: the sum lands in a fresh
    array (``Allreduce(send, recv)``), or in place (``MPI.IN_PLACE``) in a host
    copy it made itself. Replicated solvers rely on every rank receiving bitwise
    the same sum. The MPI standard advises it, and MPICH's algorithms give it
    (partners add the same two partial sums, and IEEE addition is commutative,
    or one rank reduces a segment and sends it to all); the tests check it, and
    :meth:`check_agree` can verify any value a solver produces.

    Obtained through :func:`hessop.distributed.as_comm` (as :func:`~hessop.distributed.world`
    and every hessop function taking ``comm=`` do), a communicator of more than
    one process also installs the job-ending :data:`sys.excepthook` (see
    :func:`hessop.distributed.abort_on_uncaught`).
    """

    def __init__(self, comm: Any = None, *, cuda_aware: bool | None = None):
        from mpi4py import MPI

        self._MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = int(self.comm.Get_rank())
        self.size = int(self.comm.Get_size())
        self._cuda_aware = cuda_aware
        self.num_allreduce = 0
        """Array all-reduces done so far (one per Hessian product)."""

    @property
    def cuda_aware(self) -> bool:
        """Whether CUDA arrays go to MPI without a host copy (asked once, on first use)."""
        if self._cuda_aware is None:
            self._cuda_aware = cuda_aware()
        return self._cuda_aware

    # -- reductions -------------------------------------------------------------------------
    def allreduce(self, x: Array) -> Array:
        """Sum of ``x`` over all processes, with the type, dtype, shape and device of ``x``."""
        self.num_allreduce += 1
        if self.size == 1:
            return x
        if isinstance(x, np.ndarray):
            return self._reduce_numpy(x)
        if array_api_compat.is_torch_array(x):
            return self._reduce_torch(x)
        if array_api_compat.is_cupy_array(x):
            return self._reduce_cupy(x)
        if array_api_compat.is_jax_array(x):
            return self._reduce_jax(x)
        if np.isscalar(x):
            raise TypeError("allreduce sums arrays; use allreduce_scalar for a Python number")
        xp = namespace(x)
        return from_numpy(self._reduce_host(to_numpy(x), copy=True), xp, array_api_compat.device(x), x.dtype)

    def allreduce_scalar(self, value: float) -> float:
        """Sum of a float over all processes."""
        if self.size == 1:
            return float(value)
        buf = np.array([float(value)])
        self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
        return float(buf[0])

    def allreduce_max(self, x: np.ndarray) -> np.ndarray:
        """Entry-wise maximum of a host array over all processes (a fresh array)."""
        x = np.ascontiguousarray(x)
        out = np.empty_like(x)
        self.comm.Allreduce(x, out, op=self._MPI.MAX)
        return out

    def broadcast(self, obj: Any, root: int = 0) -> Any:
        """``obj`` as held by rank ``root`` (any picklable object)."""
        if self.size == 1:
            return obj
        return self.comm.bcast(obj, root=root)

    def barrier(self) -> None:
        """Wait until every process gets here."""
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        """End every process of the job with exit status ``code`` (``MPI_Abort``); never returns.

        Some MPI libraries (MPICH among them) return from ``MPI_Abort`` in the
        calling process after asking the launcher to kill the job, so this
        process then ends itself with ``os._exit`` rather than run on.
        """
        try:
            self.comm.Abort(code)
        finally:
            os._exit(code)

    def __repr__(self) -> str:
        name = self.comm.Get_name() or type(self.comm).__name__
        return f"MPIComm({name}, rank={self.rank}, size={self.size})"

    # -- per-namespace transport --------------------------------------------------------------
    def _reduce_host(self, a: np.ndarray, *, copy: bool) -> np.ndarray:
        """Sum a host array; ``copy=False`` means ``a`` is ours and may be overwritten."""
        a = np.asarray(a)
        if a.dtype == np.float16 or a.dtype.kind not in "fciu":
            a, copy = a.astype(np.float32), False
        if copy or not a.flags.c_contiguous or not a.flags.writeable:
            a = np.ascontiguousarray(a)
            out = np.empty_like(a)
            self.comm.Allreduce(a, out, op=self._MPI.SUM)
            return out
        self.comm.Allreduce(self._MPI.IN_PLACE, a, op=self._MPI.SUM)
        return a

    def _reduce_numpy(self, x: np.ndarray) -> np.ndarray:
        out = self._reduce_host(x, copy=True)
        return out.astype(x.dtype, copy=False)

    def _reduce_torch(self, x):
        import torch

        x = x.detach()
        half = x.dtype in (torch.float16, torch.bfloat16)
        if x.device.type == "cuda" and self.cuda_aware and not half:
            x = x.contiguous()
            out = torch.empty_like(x)
            torch.cuda.current_stream(x.device).synchronize()
            self.comm.Allreduce(x, out, op=self._MPI.SUM)
            return out
        if x.device.type == "cpu" and not half:
            x = x.contiguous()
            out = torch.empty_like(x)
            self.comm.Allreduce(x.numpy(), out.numpy(), op=self._MPI.SUM)
            return out
        host = x.to(device="cpu", dtype=torch.float32 if half else x.dtype, copy=True)
        summed = self._reduce_host(host.numpy(), copy=False)
        return torch.from_numpy(summed).to(device=x.device, dtype=x.dtype)

    def _reduce_cupy(self, x):
        import cupy

        if self.cuda_aware and x.dtype != cupy.float16:
            x = cupy.ascontiguousarray(x)
            out = cupy.empty_like(x)
            cupy.cuda.get_current_stream().synchronize()
            self.comm.Allreduce(x, out, op=self._MPI.SUM)
            return out
        with x.device:
            return cupy.asarray(self._reduce_host(x.get(), copy=False)).astype(x.dtype, copy=False)

    def _reduce_jax(self, x):
        import jax

        summed = self._reduce_host(np.asarray(x), copy=True)
        return jax.device_put(summed.astype(x.dtype, copy=False), x.sharding)
