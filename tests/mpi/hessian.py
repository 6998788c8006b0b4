"""Launched by tests/test_distributed.py: a small torch model's Hessian, data- and probe-parallel.

``python hessian.py OUTDIR``           both ways of splitting the work, one after the other:
    ``data``   each rank holds a shard of the batches; the operator all-reduces every product;
               solve, funm and logdet on that operator too: they make every decision from
               all-reduced numbers, so all ranks take the same path (an indefinite system, where
               CG hands over to MINRES, included) and end with the one-process result;
    ``probe``  each rank holds all the data; the stochastic estimators split their probes;
    ``tokens`` a token-mean Hessian (a tiny language model, padded batches of unequal shapes) over the
               ranks' shares of three batches: the mean over every kept token of all of them.
``torchrun ... hessian.py OUTDIR torchrun``  the same over torch.distributed (gloo) instead of MPI.

Every rank writes its numbers to ``OUTDIR/rank<r>.json``; the test compares the
ranks with each other and with a one-process run of the same script.
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np
import scipy.sparse.linalg
import torch
from test_torch_tokens import PAD, _data, _model
from torch import nn

from hessop.distributed import abort_on_error, as_comm, shard, world
from hessop.factory import hessian
from hessop.solvers.density import density
from hessop.solvers.diagonal import diagonal
from hessop.solvers.eigsh import eigsh
from hessop.solvers.funm import funm
from hessop.solvers.solve import solve
from hessop.solvers.trace import trace
from hessop.solvers.trace_function import logdet

torch.set_num_threads(1)
outdir = sys.argv[1]
if sys.argv[2:] == ["torchrun"]:
    from hessop.comm.torch_dist import TorchDistComm

    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    comm = as_comm(torch.distributed.group.WORLD)  # a process group becomes a TorchDistComm
    assert isinstance(comm, TorchDistComm), comm
else:
    comm = world()


def model_and_batches():
    """A float64 tanh MLP (4 -> 6 -> 3, 51 parameters) and 7 seeded batches of unequal sizes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    gen = np.random.default_rng(1)
    batches = []
    for size in (5, 9, 6, 11, 7, 8, 4):
        x = torch.from_numpy(gen.standard_normal((size, 4)))
        y = torch.from_numpy(gen.integers(0, 3, size))
        batches.append((x, y))
    return model, batches


def products(H):
    """Products, loss and gradient: what every rank must get bitwise alike."""
    gen = np.random.default_rng(2)
    v, V = gen.standard_normal(H.shape[0]), gen.standard_normal((H.shape[0], 3))
    return {"hvp": (H @ v).tolist(), "hmm": (H @ V).tolist(), "loss": H.loss(), "grad": H.gradient().tolist()}


def estimators(H, comm=None):
    """Hutchinson trace and diagonal and an SLQ density, their probes split over ``comm``."""
    tr = trace(H, method="hutchinson", max_matvecs=24, seed=3, comm=comm)
    dg = diagonal(H, method="hutchinson", max_matvecs=12, seed=4, comm=comm)
    sd = density(H, num_probes=4, num_steps=20, seed=6, comm=comm)  # 20 < n: no Lanczos breakdown
    return {"trace": [tr.estimate, tr.stderr], "diag": np.asarray(dg.estimate).tolist(),
            "density": [np.asarray(a).ravel().tolist() for a in (sd.nodes, sd.weights, sd.values)]}


def functions(H):
    """A damped indefinite solve, exp(-H) b and a deflated log det (issue 22's functions of the operator)."""
    b = np.random.default_rng(2).standard_normal(H.shape[0])
    auto = solve(H, b, damping=1e-3, rtol=1e-9)
    f = funm(H, b, lambda t: np.exp(-t), rtol=1e-9)
    d = logdet(H, damping=1.0, num_probes=8, deflate=2)
    return {"solve": {"x": np.asarray(auto.x).tolist(), "converged": auto.converged, "method": auto.method,
                      "matvecs": auto.num_matvecs},
            "funm": np.asarray(f.x).tolist(), "logdet": [d.estimate, d.stderr]}


with abort_on_error(comm):
    model, batches = model_and_batches()
    loss = nn.CrossEntropyLoss()
    mine = shard(batches, comm)
    H = hessian(model, loss, mine, comm=comm)  # data-parallel
    out = {"rank": comm.rank, "size": comm.size, "local_batches": len(mine), "n": H.shape[0]}
    out.update(products(H))
    out["dense"] = H.to_dense().tolist()
    v0 = np.ones(H.shape[0])  # ARPACK's default start vector is random: each rank would draw its own
    out["arpack"] = np.sort(scipy.sparse.linalg.eigsh(H, k=3, which="LA", v0=v0)[0]).tolist()
    top = eigsh(H, k=3, seed=5)
    out["eigsh"] = np.sort(np.asarray(top.eigenvalues)).tolist() + [bool(np.all(top.converged))]
    out.update(estimators(H))
    out.update(functions(H))

    H_all = hessian(model, loss, batches)  # every rank holds all the data: probe-parallel
    out.update({f"probe_{key}": value for key, value in estimators(H_all, comm).items()})

    tokens = hessian(_model(), nn.CrossEntropyLoss(ignore_index=PAD), shard(_data(), comm), comm=comm)
    out["tokens"] = {"dense": tokens.to_dense().tolist(), "local": tokens.backend.local_count}
    with open(os.path.join(outdir, f"rank{comm.rank}.json"), "w") as f:
        json.dump(out, f)
