"""Shared test configuration: one thread per test process, Agg plotting.

The suite runs under pytest-xdist with one worker per core; letting each worker's
torch (and BLAS) also start a thread per core oversubscribes the machine, which
makes small Hessian-vector products tens of times slower without changing a number.
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import torch
except ImportError:  # the suite's torch tests skip themselves
    pass
else:
    torch.set_num_threads(1)
