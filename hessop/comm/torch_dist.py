"""A hessop communicator over ``torch.distributed``, for jobs started with ``torchrun``.

Use it when the processes already form a ``torch.distributed`` process group
(``torchrun --nproc-per-node 4 my_analysis.py``), so no MPI is needed::

    torch.distributed.init_process_group("gloo")          # "nccl" for CUDA models
    comm = TorchDistComm()
    H = hessop.hessian(model, loss_fn, shard(batches, comm), comm=comm)

The group's backend decides where sums travel: ``gloo`` reduces CPU tensors,
``nccl`` reduces CUDA tensors on each process's current device (a CPU tensor is
moved there and back). Numpy arrays (the estimators' per-probe tables) and other
namespaces go through a tensor; half-precision values are summed in float32.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .._array import Array, from_numpy, namespace, to_numpy
from .base import Communicator

_HALF = (torch.float16, torch.bfloat16)


class TorchDistComm(Communicator):
    """A hessop communicator over a ``torch.distributed`` process group.

    Parameters
    ----------
    group : ProcessGroup, optional
        The processes to reduce over (default: the whole world).
    """

    def __init__(self, group: Any = None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "torch.distributed is not initialised; call torch.distributed.init_process_group('gloo') "
                "(or 'nccl') first, e.g. in a script started with torchrun"
            )
        self.group = group
        self.rank = int(dist.get_rank(group))
        self.size = int(dist.get_world_size(group))
        self.backend = str(dist.get_backend(group))
        if self.backend == "nccl":
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")
        self.num_allreduce = 0
        """Array all-reduces done so far (one per Hessian product)."""

    def _sum(self, t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        """Reduce a tensor (a private copy, reduced in place) on the group's device; same dtype/device back."""
        work = t.detach().to(device=self.device, dtype=torch.float32 if t.dtype in _HALF else t.dtype, copy=True)
        dist.all_reduce(work, op=op, group=self.group)
        return work.to(device=t.device, dtype=t.dtype)

    def allreduce(self, x: Array) -> Array:
        """Sum of ``x`` over all processes, with the type, dtype, shape and device of ``x``."""
        self.num_allreduce += 1
        if self.size == 1:
            return x
        if isinstance(x, torch.Tensor):
            return self._sum(x.contiguous())
        if isinstance(x, np.ndarray):
            return self._sum(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        summed = self._sum(torch.from_numpy(np.ascontiguousarray(to_numpy(x)))).numpy()
        return from_numpy(summed, namespace(x), getattr(x, "device", None), x.dtype)

    def allreduce_scalar(self, value: float) -> float:
        """Sum of a float over all processes."""
        if self.size == 1:
            return float(value)
        return float(self._sum(torch.tensor([float(value)], dtype=torch.float64)).item())

    def allreduce_max(self, x: np.ndarray) -> np.ndarray:
        """Entry-wise maximum of a host array over all processes."""
        return self._sum(torch.from_numpy(np.array(x, dtype=np.float64)), op=dist.ReduceOp.MAX).numpy()

    def broadcast(self, obj: Any, root: int = 0) -> Any:
        """``obj`` as held by rank ``root`` (any picklable object)."""
        if self.size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=root, group=self.group, device=self.device)
        return box[0]

    def barrier(self) -> None:
        """Wait until every process gets here."""
        dist.barrier(group=self.group)

    def abort(self, code: int = 1) -> None:
        """End this process at once with status ``code``; ``torchrun`` then stops the other workers."""
        os._exit(code)

    def __repr__(self) -> str:
        return f"TorchDistComm(backend={self.backend}, rank={self.rank}, size={self.size})"
