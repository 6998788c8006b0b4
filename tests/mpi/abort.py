"""Launched by tests/test_distributed.py: one rank fails while the others wait in a collective."""

import sys

import numpy as np

from hessop.distributed import abort_on_error, world

comm = world()
mode = sys.argv[1] if len(sys.argv) > 1 else "context"


def work():
    if comm.rank == comm.size - 1:
        raise ValueError(f"batch 17 on rank {comm.rank} holds NaN")
    comm.allreduce(np.ones(4))  # the others would wait here forever


if mode == "context":
    with abort_on_error(comm):
        work()
else:
    abort_on_error(comm).install()
    work()
