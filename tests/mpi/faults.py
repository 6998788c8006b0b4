"""Launched by tests/test_distributed.py: faults on one rank, which must end the job or fail on every rank.

``python faults.py OUTDIR``: one rank's data or arguments differ; every case must raise on *every*
rank (so the script catches it and goes on to the next case); each rank writes ``OUTDIR/rank<r>.json``
with the type and message it got per case, and the seconds from the call to the error.
"""

import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hessop.distributed import shard, world
from hessop.factory import hessian
from hessop.solvers.density import density
from hessop.solvers.eigsh import eigsh
from hessop.solvers.trace import trace

torch.set_num_threads(1)
outdir = sys.argv[1]
comm = world()
r = comm.rank


def model(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)


def batches(nan_in=None):
    gen = np.random.default_rng(1)
    out = []
    for i, size in enumerate((6, 7, 5, 8)):
        x = torch.from_numpy(gen.standard_normal((size, 4)))
        if i == nan_in:
            x[2, 1] = float("nan")
        out.append((x, torch.from_numpy(gen.integers(0, 3, size))))
    return out


loss = nn.CrossEntropyLoss()
mine = shard(batches(), comm)

def case(name, fn):
    start = time.perf_counter()
    try:
        fn()
        got = None
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        got = {"type": type(exc).__name__, "message": str(exc)}
    record[name] = got
    seconds[name] = round(time.perf_counter() - start, 3)  # from the call to the error on this rank


record: dict = {"rank": r}
seconds: dict = {}
H = hessian(model(), loss, mine, comm=comm)
loader = DataLoader(TensorDataset(*[torch.cat(t) for t in zip(*batches())]), batch_size=5, shuffle=(r == 1))
cases = {
    # item 2: construction-time checks that fail on one rank only
    "empty_list": lambda: hessian(model(), loss, [] if r == 1 else mine, comm=comm),
    "empty_shard": lambda: hessian(model(), loss, shard(batches()[:1], comm), comm=comm),
    "shuffled_on_one_rank": lambda: hessian(model(), loss, loader if r == 1 else mine, comm=comm),
    "dtype": lambda: hessian(model(torch.float32 if r == 1 else torch.float64), loss, mine, comm=comm),
    "different_models": lambda: hessian(model(seed=r), loss, mine, comm=comm),  # each rank seeded its own
    "nan_in_first_batch": lambda: hessian(model(), loss, shard(batches(nan_in=1), comm), comm=comm),
    "nan_in_one_shard": lambda: eigsh(hessian(model(), loss, shard(batches(nan_in=3), comm), comm=comm), k=2),
    # item 3: solver arguments that differ between ranks
    "eigsh_k": lambda: eigsh(H, k=2 + r, seed=0),
    "eigsh_which": lambda: eigsh(H, k=2, which="LA" if r == 0 else "SA", seed=0),
    "eigsh_tol": lambda: eigsh(H, k=2, tol=1e-6 * (1 + r), seed=0),
    "eigsh_budget": lambda: eigsh(H, k=2, max_matvecs=50 + r, seed=0),
    "trace_budget": lambda: trace(H, max_matvecs=30 + 3 * r, seed=0),
    "density_seed": lambda: density(H, num_probes=2, num_steps=10, seed=r),
    # item 4: a seed per rank, even with the symmetry probe switched off
    "eigsh_seed_no_symmetry_check": lambda: eigsh(H, k=2, seed=r, check_symmetric=False),
}
for name, fn in cases.items():
    case(name, fn)
record["seconds"] = seconds
record["after"] = eigsh(H, k=2, seed=0).eigenvalues.tolist()  # the job goes on after the collective errors
with open(os.path.join(outdir, f"rank{r}.json"), "w") as f:
    json.dump(record, f)
