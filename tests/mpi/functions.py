"""Launched by tests/test_functions_mpi.py: solve, funm and logdet on a data-parallel torch Hessian.

``python functions.py OUTDIR``: each rank holds a shard of the batches and the operator all-reduces
every product; the solvers make every decision from all-reduced numbers, so all ranks must take the
same path (an indefinite system, where CG hands over to MINRES, included) and end with the same
result as one process. Every rank writes ``OUTDIR/rank<r>.json``.
"""

import json
import os
import sys

import numpy as np
import torch
from torch import nn

from hessop.distributed import abort_on_error, shard, world
from hessop.factory import hessian
from hessop.solvers.funm import funm
from hessop.solvers.solve import solve
from hessop.solvers.trace_function import logdet

torch.set_num_threads(1)
outdir = sys.argv[1]
comm = world()

with abort_on_error(comm):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    gen = np.random.default_rng(1)
    batches = [(torch.from_numpy(gen.standard_normal((s, 4))), torch.from_numpy(gen.integers(0, 3, s)))
               for s in (5, 9, 6, 11, 7, 8, 4)]
    H = hessian(model, nn.CrossEntropyLoss(), shard(batches, comm), comm=comm)
    b = np.random.default_rng(2).standard_normal(H.shape[0])
    auto = solve(H, b, damping=1e-3, rtol=1e-9)
    f = funm(H, b, lambda t: np.exp(-t), rtol=1e-9)
    d = logdet(H, damping=1.0, num_probes=8, deflate=2)
    out = {"rank": comm.rank, "x": np.asarray(auto.x).tolist(), "residual": auto.residual,
           "converged": auto.converged, "method": auto.method, "matvecs": auto.num_matvecs,
           "funm": np.asarray(f.x).tolist(), "funm_error": f.error, "logdet": [d.estimate, d.stderr],
           "dense": H.to_dense().tolist()}
    with open(os.path.join(outdir, f"rank{comm.rank}.json"), "w") as fh:
        json.dump(out, fh)
