"""Launched by tests/test_distributed.py: one rank fails while the others wait in a collective.

``context``: inside ``abort_on_error``; ``hook``: after ``abort_on_error(comm).install()``;
``default``: neither, the hook hessop installs with the first MPI communicator ends the job.
"""

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
elif mode == "hook":
    abort_on_error(comm).install()
    work()
else:
    work()
