"""Launched by tests/test_torch_tokens.py: a token-mean Hessian over two ranks holding unequal shards.

``python tokens.py OUTDIR``: rank r takes its share of the padded batches (rank 0 one batch, rank 1 two), builds
the operator with ``nn.CrossEntropyLoss(ignore_index=-100)`` and writes its dense matrix and token count to
``OUTDIR/rank<r>.json``; the test compares them with the dense token mean of all the batches.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from test_torch_tokens import PAD, _data, _model  # noqa: E402

from hessop.distributed import abort_on_error, world  # noqa: E402
from hessop.factory import hessian  # noqa: E402

torch.set_num_threads(1)
comm = world()
with abort_on_error(comm):
    data = _data()
    mine = data[:1] if comm.rank == 0 else data[1:]
    H = hessian(_model(), torch.nn.CrossEntropyLoss(ignore_index=PAD), mine, comm=comm)
    out = {"dense": H.to_dense().tolist(), "local": H.backend.local_count}
    with open(os.path.join(sys.argv[1], f"rank{comm.rank}.json"), "w") as f:
        json.dump(out, f)
