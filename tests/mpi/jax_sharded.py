"""Launched by tests/test_split.py in a fresh process: JAX parameters sharded over 2 host devices.

The flag that makes 2 CPU devices must be set before JAX is imported, hence a process of its
own. Prints one JSON line: the solvers' results for the sharded and the unsharded parameters,
the dense Hessian's top eigenvalues, and where the eigenvectors live.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.flatten_util  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import hessop  # noqa: E402

jax.config.update("jax_enable_x64", True)
mesh = Mesh(np.array(jax.devices()), ("d",))
g = np.random.default_rng(0)
plain = {"w1": jnp.asarray(g.standard_normal((4, 6))), "b1": jnp.asarray(0.1 * g.standard_normal(6)),
         "w2": jnp.asarray(g.standard_normal((6, 2)))}
sharded = {k: jax.device_put(v, NamedSharding(mesh, P("d"))) for k, v in plain.items()}
data = [(jnp.asarray(g.standard_normal((20, 4))), jnp.asarray(g.standard_normal((20, 2))))]


def loss(p, batch):
    x, y = batch
    return jnp.mean((jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] - y) ** 2)


flat, unravel = jax.flatten_util.ravel_pytree(plain)
dense = np.asarray(jax.hessian(lambda f: loss(unravel(f), data[0]))(flat))
out = {"dense": np.sort(np.linalg.eigvalsh(dense))[::-1][:5].tolist(), "devices": len(jax.devices())}
full = "full" in sys.argv[1:]
for name, params in (("plain", plain), ("sharded", sharded)):
    H = hessop.hessian(loss, params, data)
    t = hessop.trace(H, method="hutch++", max_matvecs=16, seed=1)
    rec = out[name] = {"n": int(H.shape[0]), "trace": t.estimate}
    if name == "sharded" or full:
        r = hessop.eigsh(H, k=5)
        X = r.eigenvectors
        rec.update(eigenvalues=r.eigenvalues.tolist(), converged=bool(r.all_converged),
                   vector_devices=len(X.sharding.device_set), vector_spec=str(getattr(X.sharding, "spec", "")),
                   shard_rows=sorted(int(s.data.shape[0]) for s in X.addressable_shards),
                   residual=float(np.linalg.norm(dense @ np.asarray(X) - np.asarray(X) * r.eigenvalues)))
    if full:
        rec["density"] = np.asarray(hessop.density(H, num_probes=2, num_steps=10, seed=2).nodes).ravel().tolist()
        rec["diagonal"] = np.asarray(hessop.diagonal(H, method="xdiag", max_matvecs=24, seed=3).estimate).tolist()
print(json.dumps(out))
