"""Per-rank memory of a split (FSDP2) Hessian against the unsplit one: a product, eigsh's basis, time.

    python benchmarks/split_memory.py                                  # unsplit, one process
    python -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/split_memory.py
    python benchmarks/split_memory.py --layers 1 --tokens 32           # a quicker look
    python benchmarks/split_memory.py --paper                          # the on-paper table per rank

The model is :class:`hessop.models.gpt.GPT` at GPT-2 small's width (768, 12 heads, 50,257 tokens,
head tied to the token embedding) with ``--layers`` blocks, float32, eval mode; the data is
``--batch`` sequences of ``--tokens`` random token ids with their next tokens, the mean token
cross-entropy. Under torchrun every block and then the root are sharded with ``fully_shard`` on a
1-D gloo mesh and each rank holds its share of the sequences; without it the model is whole and
hessop's default product (``hvp="auto"``, exact) and its finite difference (``hvp="finite-difference"``,
the strategy the split operator uses) are both measured.

Rows, per rank (``peak``: the process's peak resident memory during one call above what it held
before, :class:`benchmarks._tools.PeakRSS`; ``held before``: the resident memory before the call,
model, data and the Python runtime; ``time``: the fastest of ``--repeats`` calls):

gradient
    one backward pass of this rank's loss (the unit everything is compared with).
product
    ``H.apply(v)``: a vector of this rank's length.
eigsh basis
    ``hessop.eigsh(H, k=1, ncv=--ncv, max_matvecs=--ncv, certify=False, check_symmetric=False)``:
    the peak of a run that fills the basis, minus nothing (so it holds the products' peak too);
    ``basis`` is the basis itself, ``ncv`` vectors of this rank's rows (computed).

``--paper`` prints, without running anything, the memory per rank of float32 models of 124M, 1.3B,
7B and 70B parameters split over 1, 8 and 64 ranks: model and gradient (4 + 4 bytes a parameter,
both sharded by FSDP2), a product's three vectors (12 bytes), eigsh's default basis (``ncv = 20``
vectors, 80 bytes) and SLQ's (90 Lanczos vectors with full reorthogonalisation, 360 bytes), all
divided by the ranks; activations (set by the batch, not the parameters) come on top. It also says
how many 80 GB GPUs each model needs for eigsh and for SLQ.

The numbers and the command that produced them are recorded in docs/distributed.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import hessop  # noqa: E402
from benchmarks._tools import PeakRSS, markdown_table, rss_bytes, trim_heap  # noqa: E402
from hessop.models.gpt import GPT, GPTConfig  # noqa: E402

MIB = 2**20


def problem(layers: int, batch: int, tokens: int, rank: int, world: int):
    full = GPTConfig.gpt2_small()
    config = GPTConfig(full.vocab_size, full.block_size, layers, full.n_head, full.n_embd, tie_head=True)
    model = GPT(config, seed=0).eval()
    ids = torch.randint(0, config.vocab_size, (batch, tokens + 1), generator=torch.Generator().manual_seed(0))
    mine = ids[rank::world]
    return model, [(mine[:, :-1], mine[:, 1:])], nn.CrossEntropyLoss()


def measure(call, repeats: int) -> tuple[float, float, float]:
    """Peak RSS growth of one call (MiB), the fastest of ``repeats`` calls (s), and the RSS held before it (MiB)."""
    gc.collect()
    call()  # first call: one-off work (strategy choice, FSDP's lazy init)
    gc.collect()
    trim_heap()
    held = rss_bytes() / MIB
    with PeakRSS() as mem:
        start = time.perf_counter()
        call()
        seconds = time.perf_counter() - start
    for _ in range(repeats - 1):
        start = time.perf_counter()
        call()
        seconds = min(seconds, time.perf_counter() - start)
    return mem.peak / MIB, seconds, held


PAPER = {"model + gradient": 8, "product vectors": 12, "eigsh basis (20)": 80, "SLQ basis (90)": 360}
"""Bytes per parameter of each part, float32 (see the module docstring)."""


def paper_table(gpu_gb: float = 80.0) -> str:
    rows = []
    for label, n in (("124M", 124e6), ("1.3B", 1.3e9), ("7B", 7e9), ("70B", 70e9)):
        for ranks in (1, 8, 64):
            parts = [n * b / ranks / 1e9 for b in PAPER.values()]
            rows.append([label, str(ranks), *(f"{x:,.1f}" for x in parts),
                         f"{parts[0] + parts[1] + parts[2]:,.1f}", f"{parts[0] + parts[1] + parts[3]:,.1f}"])
    table = markdown_table(["parameters", "ranks", *(f"{k} GB" for k in PAPER), "eigsh total GB", "SLQ total GB"],
                           rows)
    need = []
    for label, n in (("124M", 124e6), ("1.3B", 1.3e9), ("7B", 7e9), ("70B", 70e9)):
        gpus = []
        for total in (8 + 12 + 80, 8 + 12 + 360):
            p = 1
            while n * total / p / 1e9 > 0.8 * gpu_gb:  # a fifth of each GPU left for activations
                p *= 2
            gpus.append(str(p))
        need.append([label, *gpus])
    return table + "\n\n" + markdown_table(["parameters", f"{gpu_gb:.0f} GB GPUs for eigsh", "for SLQ"], need)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--ncv", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--paper", action="store_true", help="print the on-paper table and stop")
    args = parser.parse_args()
    if args.paper:
        print(paper_table())
        return
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    split = "LOCAL_RANK" in os.environ
    rank = 0
    if split:
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        dist.init_process_group("gloo")
        rank = dist.get_rank()
    model, data, loss = problem(args.layers, args.batch, args.tokens, rank, world)
    n = sum(p.numel() for p in model.parameters())
    if split:
        mesh = init_device_mesh("cpu", (world,))
        for block in model.blocks if hasattr(model, "blocks") else []:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
    x, y = data[0]

    def gradient():
        model.zero_grad(set_to_none=True)
        logits = model(x)
        loss(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).backward()
        model.zero_grad(set_to_none=True)

    rows = [["gradient", *measure(gradient, args.repeats)]]
    variants = [("product", {})] if split else [("product (exact, auto)", {}),
                                                ("product (finite difference)", {"hvp": "finite-difference"})]
    for label, options in variants:
        H = hessop.hessian(model, loss, data, **options)
        local = H.rows
        v = torch.randn(local, generator=torch.Generator().manual_seed(1))
        rows.append([label, *measure(lambda: H.apply(v), args.repeats)])  # noqa: B023 - called at once
    peak_eigsh = measure(lambda: hessop.eigsh(H, k=1, ncv=args.ncv, max_matvecs=args.ncv, certify=False,
                                                       check_symmetric=False), 1)
    rows.append([f"eigsh basis (ncv={args.ncv})", *peak_eigsh])
    basis = args.ncv * local * 4 / MIB
    unit = rows[0][1]
    table = markdown_table(["rank " + str(rank), "peak MiB", "x gradient peak", "seconds", "held before MiB",
                            "held + peak MiB"],
                           [[r[0], f"{r[1]:.0f}", f"{r[1] / unit:.2f}", f"{r[2]:.2f}", f"{r[3]:.0f}",
                             f"{r[1] + r[3]:.0f}"] for r in rows])
    print(f"rank {rank} of {world}{' (FSDP2)' if split else ''}: n = {n:,} parameters, this rank's rows "
          f"{local:,}, basis {basis:.0f} MiB\n{table}", flush=True)
    if split:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
