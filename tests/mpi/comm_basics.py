"""Launched by tests/test_distributed.py under mpiexec: the communicator's collectives on every array kind.

Each rank writes what it saw to ``<outdir>/rank<r>.json``; the test compares the ranks.
"""

import json
import os
import sys

import numpy as np
import torch

from hessop.distributed import RankDisagreementError, shard, world

torch.set_num_threads(1)
comm = world()
r, p = comm.rank, comm.size
out: dict = {"rank": r, "size": p}


def record(name, x, ref):
    """Store whether x is the expected sum, with its type/dtype/device preserved."""
    host = x.detach().cpu().float().numpy() if torch.is_tensor(x) else np.asarray(x)
    out[name] = {"type": type(x).__name__, "dtype": str(x.dtype), "values": host.astype(float).ravel().tolist(),
                 "ok": bool(np.array_equal(host.astype(float), np.asarray(ref, dtype=float)))}


expected = sum(np.arange(6.0).reshape(2, 3) * (k + 1) for k in range(p))
local = np.arange(6.0).reshape(2, 3) * (r + 1)

a = local.copy()
record("numpy_f64", comm.allreduce(a), expected)
out["numpy_input_untouched"] = bool(np.array_equal(a, local))
record("numpy_f32", comm.allreduce(local.astype(np.float32)), expected)
record("numpy_f16", comm.allreduce(local.astype(np.float16)), expected)
record("numpy_noncontig", comm.allreduce(np.asfortranarray(local)[:, ::2]), expected[:, ::2])
record("numpy_int", comm.allreduce(local.astype(np.int64)), expected)

t = torch.tensor(local, dtype=torch.float32, requires_grad=True)
record("torch_f32", comm.allreduce(t * 1), expected)
record("torch_f64_T", comm.allreduce(torch.tensor(local).T), expected.T)
record("torch_bf16", comm.allreduce(torch.tensor(local, dtype=torch.bfloat16)), expected)

try:
    import jax.numpy as jnp

    record("jax_f32", comm.allreduce(jnp.asarray(local, dtype=jnp.float32)), expected)
    out["jax_device"] = str(comm.allreduce(jnp.ones(3)).devices())

    # a data-parallel JAX Hessian against the full-data one built on this rank alone
    from hessop.factory import hessian

    def loss_fn(params, batch):
        x, y = batch
        return jnp.mean((jnp.tanh(x @ params["w1"]) @ params["w2"] - y) ** 2)

    gen = np.random.default_rng(5)
    params = {"w1": jnp.asarray(gen.standard_normal((3, 4)), jnp.float32),
              "w2": jnp.asarray(gen.standard_normal((4, 2)), jnp.float32)}
    batches = [(jnp.asarray(gen.standard_normal((k, 3)), jnp.float32),
                jnp.asarray(gen.standard_normal((k, 2)), jnp.float32)) for k in (3, 5, 4)]
    H_parallel = hessian(loss_fn, params, shard(batches, comm), comm=comm)
    H_alone = hessian(loss_fn, params, batches)
    v = jnp.asarray(gen.standard_normal(H_alone.shape[0]), jnp.float32)
    got, want = H_parallel.apply(v), H_alone.apply(v)
    out["jax_hvp"] = {"type": type(got).__name__, "dtype": str(got.dtype),
                      "relerr": float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))}
except ImportError:  # pragma: no cover - jax is installed here
    pass

import array_api_strict as xps  # noqa: E402

record("strict", comm.allreduce(xps.asarray(local)), expected)

out["scalar"] = comm.allreduce_scalar(r + 0.5)
out["broadcast"] = comm.broadcast({"from": r, "list": [r] * 3}, root=p - 1)
comm.barrier()

comm.check_agree(np.linspace(0, 1, 101), what="a shared vector")
comm.check_agree(3.25, what="a shared scalar")
errors = []
for name, value in [("scalar", float(r)), ("perm", np.roll(np.arange(5.0), r)),
                    ("length", np.zeros(3 + r)), ("tiny", np.array([1.0, 2.0 + r * 1e-15]))]:
    try:
        comm.check_agree(value, what=name)
        errors.append(None)
    except RankDisagreementError as e:
        errors.append(str(e))
out["disagree"] = errors

batches = [(np.full((k + 1, 2), k), k) for k in range(7)]
out["shard_rr"] = [b[1] for b in shard(batches, comm)]
out["shard_contig"] = [b[1] for b in shard(batches, comm, how="contiguous")]
x, y = shard((np.arange(10).reshape(5, 2), np.arange(5)), comm, how="contiguous")
out["shard_batch"] = y.tolist()

with open(os.path.join(sys.argv[1], f"rank{r}.json"), "w") as f:
    json.dump(out, f)
