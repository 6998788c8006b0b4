"""Communicators: the bottom layer that adds up partial results across processes.

* :mod:`hessop.comm.base`: the contract (:class:`Communicator`), the agreement
  check and its fingerprint, :class:`RankDisagreementError`;
* :mod:`hessop.comm.serial`: :class:`SerialComm`, one process;
* :mod:`hessop.comm.mpi`: :class:`~hessop.comm.mpi.MPIComm`, over ``mpi4py``;
* :mod:`hessop.comm.torch_dist`: :class:`~hessop.comm.torch_dist.TorchDistComm`,
  over a ``torch.distributed`` process group (imports torch, so not imported here).

Nothing here imports the rest of hessop except its array helpers; choosing a
communicator from what the user passed (``None``, an ``mpi4py`` communicator, a
process group) is :func:`hessop.distributed.as_comm`'s job.
"""

from .base import Communicator, RankDisagreementError, check_agree, checksum, is_collective, mark
from .mpi import MPIComm
from .serial import SerialComm

__all__ = [
    "Communicator", "SerialComm", "MPIComm", "RankDisagreementError", "check_agree", "checksum",
    "mark", "is_collective",
]
