"""The float64 MLP and data of tests/mpi/fsdp.py, and the factories its ``hessop analyze`` run names.

``sharded_model`` shards the model with ``fully_shard`` over every rank of the torchrun job, as
one group that keeps its gathered weights between forward and backward
(``reshard_after_forward=False``: two collectives a gradient pass, the cheapest products). From
its second call on it perturbs the weights before sharding, as a factory without a fixed seed
would, so a resumed run gives the first run's numbers only if it loads the shards that run saved.
``data`` declares ``rank`` and ``size`` and returns this rank's own batch: 26 and 14 of the 40
samples on two ranks.
"""

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

CALLS = 0


def plain_model():
    """The unsharded MLP (uneven shards over 2 ranks: 11 and 3 rows)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 11), nn.Tanh(), nn.Linear(11, 3)).double()


def all_data():
    """All 40 samples."""
    gen = np.random.default_rng(1)
    return torch.from_numpy(gen.standard_normal((40, 6))), torch.from_numpy(gen.integers(0, 3, 40))


def shard(model, mesh):
    """``model`` sharded as one group over ``mesh``."""
    fully_shard(model, mesh=mesh, reshard_after_forward=False)
    return model


def sharded_model():
    global CALLS
    CALLS += 1
    model = plain_model()
    if CALLS > 1:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1)
    return shard(model, init_device_mesh("cpu", (dist.get_world_size(),))), nn.CrossEntropyLoss()


def data(rank, size):
    x, y = all_data()
    cuts = [0, 26, 40] if size == 2 else np.linspace(0, 40, size + 1).astype(int).tolist()
    return [(x[cuts[rank]:cuts[rank + 1]], y[cuts[rank]:cuts[rank + 1]])]
