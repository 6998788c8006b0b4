"""An FSDP2 model's Hessian and ``hessop analyze`` of it, on 2 gloo ranks under torchrun (tests/test_split.py).

The last script of the ``torchrun_job`` launch of tests/conftest.py.

``python fsdp.py OUTDIR``: a float64 MLP sharded with ``fully_shard`` (uneven shards: 11 and 3 rows
do not split evenly over 2 ranks); rank 0 holds 2 batches (26 samples) and rank 1 one batch (14),
so the weights and the forward-pass padding are exercised. Each rank compares products, the loss,
the gradient and ``loss_at`` with the dense Hessian of the unsharded model over all the data. Then
the command line analyses the same model in process (``fsdp_factories.py``: sharded as one group,
each rank its own batch), every step, into ``OUTDIR/report`` (the first report kept as
``OUTDIR/first.json``), and resumes that run with its landscapes dropped from its state and the
factory's weights perturbed; rank 0 checks the saved eigenvectors and the landscapes against the
dense model, and the eigenvalues and trace are repeated with the command line's seeds on the same
model sharded over one rank (all the data). The same model and data are then sharded over the 2-D
(HSDP) meshes (2, 1) and (1, 2): products, top 3 eigenvalues and trace. Each rank writes
``OUTDIR/rank<r>.json``; then rank 1 fails inside a product, which must end the job.
"""

import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from fsdp_factories import all_data, plain_model, shard  # beside this script
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

import hessop
from hessop.cli.main import main
from hessop.cli.steps import BUDGETS, STEPS, step_seed

torch.set_num_threads(1)
if not dist.is_initialized():  # tests/mpi/job.py may have run a script that started it
    dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
model = plain_model()
plain = copy.deepcopy(model)
x_all, y_all = all_data()
loss = nn.CrossEntropyLoss()

names = [n for n, _ in plain.named_parameters()]
params = [p.detach() for p in plain.parameters()]


def loss_of(*ps):
    out = torch.func.functional_call(plain, dict(zip(names, ps)), (x_all,))
    return loss(out, y_all)


def dense_loss(flat):
    """The unsharded model's loss over all the data at the whole flat parameter vector ``flat``."""
    cuts = np.cumsum([0] + [p.numel() for p in params])
    return float(loss_of(*(torch.from_numpy(flat[a:b]).reshape(p.shape) for a, b, p in zip(cuts, cuts[1:], params))))


blocks = torch.autograd.functional.hessian(loss_of, tuple(params))
dense = torch.cat([torch.cat([b.reshape(p.numel(), q.numel()) for b, q in zip(row, params)], 1)
                   for row, p in zip(blocks, params)]).numpy()
n = dense.shape[0]
truth = np.sort(np.linalg.eigvalsh(dense))[::-1]

mesh = init_device_mesh("cpu", (world,))
for layer in model:
    if isinstance(layer, nn.Linear):
        fully_shard(layer, mesh=mesh)
fully_shard(model, mesh=mesh)
cuts = [(0, 14), (14, 26)] if rank == 0 else [(26, 40)]
mine = [(x_all[a:b], y_all[a:b]) for a, b in cuts]

H = hessop.hessian(model, loss, mine)
idx = H.backend.global_indices()
record = {"rank": rank, "n": n, "shape": list(H.shape), "rows": H.split.rows, "split": H.split is not None,
          "truth": truth.tolist(), "trace": float(np.trace(dense))}
offsets = np.cumsum([0] + [p.numel() for p in params])
for layer in ("0", "2"):  # the dense blocks of the layer-wise table
    block = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i, name in enumerate(names)
                            if name.startswith(layer + ".")])
    sub = dense[np.ix_(block, block)]
    record.setdefault("block_tops", []).append(float(np.linalg.eigvalsh(sub)[-1]))
    record.setdefault("block_traces", {})[layer] = float(np.trace(sub))
v = np.random.default_rng(2).standard_normal((n, 3))
got = H.apply(torch.from_numpy(H.split.scatter(v)))
record["product_error"] = float(np.abs(got.numpy() - (dense @ v)[idx]).max() / np.abs(dense @ v).max())
exact = dense @ v
record["product_error_2norm"] = float(np.linalg.norm(H.split.gather(got).numpy() - exact) / np.linalg.norm(exact))
record["product_error_estimate"] = H.product_error  # measured by the first product (a ladder of steps)
record["loss"] = [H.loss(), float(loss_of(*params))]
whole = [p.clone().requires_grad_() for p in params]
full_g = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_of(*whole), whole)]).numpy()
record["gradient_error"] = float(np.abs(H.gradient().numpy() - full_g[idx]).max())
# loss_at shifts this rank's shards only, and puts them back exactly, even when the loss raises (Ctrl-C)
theta = H.parameters().clone()
flat = torch.cat([p.reshape(-1) for p in params]).numpy()
d = torch.from_numpy(H.split.scatter(v[:, 0]))
record["loss_at"] = [H.loss_at(theta + 0.01 * d), dense_loss(flat + 0.01 * v[:, 0])]
restored = torch.equal(H.parameters(), theta)


def interrupted():
    raise KeyboardInterrupt


H.backend.loss_sum = interrupted  # on both ranks, after the shift: as if Ctrl-C came mid-loss
try:
    H.backend.loss_at(theta + d)
except KeyboardInterrupt:
    pass
del H.backend.loss_sum
record["restored"] = [restored, torch.equal(H.parameters(), theta)]
try:  # one rank passes another shape: every rank raises, none waits in a forward
    H.loss_at(theta[:-1] if rank == 1 else theta)
except ValueError as exc:
    record["loss_at_shape"] = str(exc)
try:
    H @ np.ones(n)
except TypeError as exc:
    record["host"] = str(exc)

try:
    _ = H.blocks
except TypeError as exc:
    record["blocks"] = str(exc)
ddp = DistributedDataParallel(copy.deepcopy(plain))
D = hessop.hessian(ddp, loss, mine)
record["ddp"] = [D.comm.size, float(np.abs(D @ v[:, 0] - dense @ v[:, 0]).max()), D.split is None]

# hessop analyze of the same model and data, every step (factories in fsdp_factories.py), then a
# resume of that run as if its landscapes had been lost, with weights the factory now perturbs
root = Path(sys.argv[1])
out = root / "report"
factories = Path(__file__).with_name("fsdp_factories.py")
argv = ["analyze", "--model", f"{factories}:sharded_model", "--data", f"{factories}:data", "--out", str(out),
        "--budget", "small", "--eig", "5", "--trace", "--density", "--landscape", "--layerwise", "--quiet"]
seen = {}  # what each rank computed in the steps, to compare across ranks (rank 0 alone writes the report)
for name in ("eigenvalues", "trace"):
    def kept(*args, _step=STEPS[name], _name=name, **kwargs):
        seen[_name] = _step(*args, **kwargs)
        return seen[_name]
    STEPS[name] = kept
record["cli_codes"] = [main(argv)]
record["cli_numbers"] = [seen["eigenvalues"]["eigenvalues"], seen["trace"]["trace"]]
if rank == 0:
    (root / "first.json").write_text((out / "report.json").read_text())
    state = json.loads((out / "state.json").read_text())
    for name in ("landscape_1d", "landscape_2d"):
        del state["steps"][name]
    (out / "state.json").write_text(json.dumps(state))
dist.barrier()
record["cli_codes"].append(main([*argv, "--resume"]))
indices = [None] * world
dist.all_gather_object(indices, idx.tolist())
if rank == 0:  # the eigenvectors each rank kept, put together, and the landscapes along them, against the dense model
    report = json.loads((out / "report.json").read_text())
    steps = report["steps"]
    parts = [np.load(out / "arrays" / f"eigenvectors.rank{r}of{world}.npy") for r in range(world)]
    X = np.zeros((n, parts[0].shape[1]))
    for r, part in enumerate(parts):
        X[indices[r]] = part
    lam = np.array(steps["eigenvalues"]["eigenvalues"])
    record["cli_vectors"] = {"rows": [int(part.shape[0]) for part in parts],
                             "residual": float(np.abs(dense @ X - X * lam).max())}
    line = [[dense_loss(flat + a * X[:, i]) for a in curve["alphas"]]
            for i, curve in enumerate(steps["landscape_1d"]["curves"])]
    plane = steps["landscape_2d"]
    grid = [[dense_loss(flat + a * X[:, 0] + b * X[:, 1]) for b in plane["betas"]] for a in plane["alphas"]]
    record["cli_landscapes"] = {
        "center": [steps["landscape_1d"]["center_loss"], float(loss_of(*params))],
        "line_error": float(np.abs(np.array([c["losses"] for c in steps["landscape_1d"]["curves"]]) - line).max()),
        "plane_error": float(np.abs(np.array(plane["losses"]) - grid).max()),
        "slopes": [[c["slope"] for c in steps["landscape_1d"]["curves"]], (full_g @ X[:, :2]).tolist()]}
# the same model sharded over one rank (a mesh of this rank alone), all the data in the command line's
# two batches: its seeds must give the command line's numbers, since vectors are drawn in parameter
# order whatever the number of ranks
alone = [dist.new_group([r]) for r in range(world)][rank]
one = shard(plain_model(), DeviceMesh.from_group(alone, "cpu"))
H1 = hessop.hessian(one, loss, [(x_all[:26], y_all[:26]), (x_all[26:], y_all[26:])])
small = BUDGETS["small"]
r1 = hessop.eigsh(H1, k=5, which="LA", tol=small.eig_tol, seed=step_seed(0, "eigenvalues"))
t1 = hessop.trace(H1, max_matvecs=small.trace_max_matvecs, rtol=small.trace_rtol, seed=step_seed(0, "trace"))
record["one_rank"] = {"rows": H1.split.rows, "eigenvalues": r1.eigenvalues.tolist(), "num_matvecs": r1.num_matvecs,
                      "trace": t1.estimate}
# the same MLP and data on the two 2-D (HSDP) meshes two ranks make: (2, 1), each rank a replica of the whole
# model with its own data, and (1, 2), sharded over the second dimension; the same seeds on both
meshes = {shape: init_device_mesh("cpu", shape, mesh_dim_names=("replicate", "shard")) for shape in ((2, 1), (1, 2))}
for shape, mesh2d in meshes.items():
    hybrid = shard(plain_model(), mesh2d)
    Hh = hessop.hessian(hybrid, loss, mine)
    at = Hh.split.index
    product = Hh.apply(torch.from_numpy(Hh.split.scatter(v[:, :2]))).numpy()
    rh = hessop.eigsh(Hh, k=3, seed=5, certify=False, check_symmetric=False)  # the products are what is checked
    th = hessop.trace(Hh, max_matvecs=20, seed=6)
    record.setdefault("hsdp", []).append({
        "shape": list(shape), "rows": Hh.split.rows, "split_ranks": Hh.split.comm.size, "ranks": Hh.comm.size,
        "index": at.tolist(), "product_error": float(np.abs(product - exact[at, :2]).max() / np.abs(exact).max()),
        "eigenvalues": rh.eigenvalues.tolist(), "converged": bool(np.all(rh.converged)),
        "trace": [th.estimate, th.stderr]})
differs = plain_model()  # replicas built from different weights (fully_shard does not synchronise them)
with torch.no_grad():
    differs[0].bias.add_(rank)
try:
    hessop.hessian(shard(differs, meshes[2, 1]), loss, mine)
except Exception as exc:  # every rank raises
    record["hsdp_replicas"] = f"{type(exc).__name__}: {exc}"
with open(f"{sys.argv[1]}/rank{rank}.json", "w") as fh:
    json.dump(record, fh)
dist.barrier()
# last, a fault: rank 1 fails inside a product, while rank 0 waits in FSDP's collectives; torchrun
# must end the job with rank 1's message (the test requires a non-zero exit status and no hang)
passes = 0
gradient = H.backend._gradient


def failing():
    global passes
    passes += 1
    if rank == 1 and passes == 3:
        raise ValueError("rank 1 lost its shard in a product")
    return gradient()


H.backend._gradient = failing
hessop.eigsh(H, k=2, seed=7)
