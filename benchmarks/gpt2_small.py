"""GPT-2 small on this machine: one Hessian-vector product against one gradient pass, and the top eigenvalue.

    python benchmarks/gpt2_small.py                   # 124M parameters, batch 4 x 128 tokens (7 min at load 2-3)
    python benchmarks/gpt2_small.py --layers 2 --no-eigsh      # a quick look at a smaller depth

The model is :meth:`hessop.models.gpt.GPTConfig.gpt2_small` (12 layers, width 768, 50,257 tokens,
head tied to the token embedding; 124,439,808 parameters) at its GPT-2 initialisation, float32,
eval mode, on one batch of random token ids with their next tokens as targets, and the mean
token cross-entropy (``nn.CrossEntropyLoss()`` on ``(B, T, V)`` logits).

Rows (each its own operator, built and measured one after the other in this one process):

gradient
    plain PyTorch: ``torch.autograd.grad`` of the loss in every parameter (the baseline).
hvp <strategy>, graph cache off
    ``hessop.hessian(..., hvp=strategy, graph_cache=False).apply(v)``: every product is a
    complete one (forward, first backward with ``create_graph``, second backward).
hvp double-backward, graph kept
    ``hvp="double-backward"`` with the default graph cache: the batch's first-order graph is kept
    (when it fits the budget) and a product is one backward pass through it.
hvp default
    ``hessop.hessian(model, loss, data)`` as a user gets it: ``hvp="auto"`` (the strategy it chose in
    brackets) and the default graph cache, which keeps the batch's first-order graph when it fits its
    budget; a product then costs one backward pass through the kept graph.

Each row makes a first call and a memory-measuring call when it is built; ``time`` is then the
fastest of ``--repeats`` interleaved rounds (every row once, then every row again), so that drifts
of the shared machine's load fall on every row alike. The first product of an operator also chooses
the strategy (``auto`` runs each exact one twice) and checks that a product is repeatable by
computing it twice: the ``first call`` columns. The gradient's first call does no one-off work and
counts among its timings.
``peak`` is the process's peak resident memory during one call above the memory held before it
(the kernel's ``VmHWM``, :class:`benchmarks._tools.PeakRSS`); ``held`` is what stays between calls
(the vector ``v`` and a kept graph); ``peak + held`` is what a product needs on top of the model
and data, the number compared with the gradient's peak.

The top eigenvalue is ``hessop.eigsh(H, k=1, tol=1e-3, ncv=8, certify=False, max_matvecs=60)`` on
the double-backward operator with its kept graph; its residual is re-measured with one more product,
``||H x - λ x|| / |λ|``. At this size the solver's basis is the memory that counts: ``ncv`` vectors
of 498 MB (the default ``ncv=20`` holds 10 GB), and certification from a fresh vector
(``--certify``) about doubles the products (33 against 61 on a 3.4M-parameter GPT-2-shaped model,
``tol=1e-3``, ``ncv=8``).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import hessop  # noqa: E402
from benchmarks._tools import PeakRSS, markdown_table, rss_bytes, threads, trim_heap  # noqa: E402
from hessop.models.gpt import GPT, GPTConfig  # noqa: E402

MIB = 2**20


def problem(layers: int, batch: int, tokens: int, seed: int = 0):
    """GPT-2 small (``layers`` of its 12 blocks), one batch of random ids and next tokens, the loss."""
    full = GPTConfig.gpt2_small()
    config = GPTConfig(full.vocab_size, full.block_size, layers, full.n_head, full.n_embd, tie_head=True)
    model = GPT(config, seed=seed).eval()
    ids = torch.randint(0, config.vocab_size, (batch, tokens + 1), generator=torch.Generator().manual_seed(seed))
    return model, [(ids[:, :-1], ids[:, 1:])], nn.CrossEntropyLoss()


def measure(call) -> dict:
    """The first call's time and peak RSS growth, and a second call's peak (timing rounds come later)."""
    gc.collect()
    with PeakRSS() as first_mem:
        start = time.perf_counter()
        call()
        first = time.perf_counter() - start
    gc.collect()
    with PeakRSS() as mem:
        call()
    return {"first": first, "first_peak": first_mem.peak, "peak": mem.peak, "call": call, "times": []}


def gradient_row(model, data, loss) -> dict:
    x, y = data[0]
    params = [p for p in model.parameters() if p.requires_grad]

    def call():
        with torch.enable_grad():
            logits = model(x)
            return torch.autograd.grad(loss(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)), params)

    row = {"row": "gradient", **measure(call), "held": 0}
    row["times"].append(row["first"])  # no one-off work in a gradient's first call
    return row


def hvp_row(label: str, model, data, loss, **options) -> tuple[dict, object]:
    gc.collect()
    trim_heap()
    before = rss_bytes()
    H = hessop.hessian(model, loss, data, **options)
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(1))
    out = measure(lambda: H.apply(v))
    gc.collect()
    trim_heap()
    held = max(rss_bytes() - before, 0)
    chosen = H.backend.chosen.get("vector", "")
    row = {"row": label + (f" [{chosen}]" if options.get("hvp", "auto") == "auto" else ""), **out,
           "held": held, "kept": H.backend.products.graphs.used}
    return row, H


def timing_rounds(rows: list[dict], repeats: int) -> None:
    """``repeats`` rounds of one call of every row in turn (interleaved: load drifts fall on all rows alike)."""
    for _ in range(repeats):
        for row in rows:
            start = time.perf_counter()
            row["call"]()
            row["times"].append(time.perf_counter() - start)
    for row in rows:
        row["seconds"] = min(row["times"])


def top_eigenvalue(H, tol: float, ncv: int, certify: bool, max_matvecs: int) -> dict:
    start = time.perf_counter()
    before = H.num_matvecs

    def report(state) -> None:
        print(f"  eigsh: {H.num_matvecs - before} products, {time.perf_counter() - start:.0f} s", flush=True)

    r = hessop.eigsh(H, k=1, tol=tol, ncv=ncv, certify=certify, max_matvecs=max_matvecs, callback=report)
    seconds = time.perf_counter() - start
    lam = float(r.eigenvalues[0])
    x = r.eigenvectors[:, 0]
    hx = H.apply(x)
    measured = float(torch.linalg.vector_norm(hx - lam * x) / abs(lam) / torch.linalg.vector_norm(x))
    return {"eigenvalue": lam, "residual": float(r.residual_norms[0]), "measured": measured,
            "converged": bool(r.converged[0]), "matvecs": r.num_matvecs, "seconds": seconds,
            "stopped": r.stopped, "products": H.num_matvecs - before}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds after each row's first and "
                    "memory-measuring calls")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads (0: leave as is)")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--ncv", type=int, default=8, help="eigsh's basis size: ncv vectors of 4 n bytes (498 MB each)")
    ap.add_argument("--certify", action="store_true", help="confirm the eigenvalue from a fresh vector (about 2x "
                    "the products)")
    ap.add_argument("--max-matvecs", type=int, default=60, help="eigsh's budget of products")
    ap.add_argument("--no-eigsh", action="store_true")
    ap.add_argument("--strategies", nargs="*", default=["double-backward"],
                    help="rows of complete products (graph cache off); forward-over-reverse is another choice")
    args = ap.parse_args(argv)
    began, load = time.perf_counter(), os.getloadavg()[0]
    model, data, loss = problem(args.layers, args.batch, args.tokens)
    n = sum(p.numel() for p in model.parameters())
    base = rss_bytes()
    rows = []
    with threads(args.threads):
        rows.append(gradient_row(model, data, loss))
        print({k: v for k, v in rows[-1].items() if k != "call"}, flush=True)
        operators = []
        for name in args.strategies:
            row, H = hvp_row(f"hvp {name}, graph cache off", model, data, loss, hvp=name, graph_cache=False)
            rows.append(row)
            operators.append(H)
            print({k: v for k, v in row.items() if k != "call"}, flush=True)
        row, H = hvp_row("hvp double-backward, graph kept", model, data, loss, hvp="double-backward")
        rows.append(row)
        operators.append(H)
        print({k: v for k, v in row.items() if k != "call"}, flush=True)
        row, H = hvp_row("hvp default", model, data, loss)
        rows.append(row)
        print({k: v for k, v in row.items() if k != "call"}, flush=True)
        timing_rounds(rows, args.repeats)
        print([(r["row"], [round(t, 2) for t in r["times"]]) for r in rows], flush=True)
        H = operators[-1]  # double backward on the kept graph: the fastest product and the least memory
        del operators, row
        for r in rows:
            r.pop("call")
        gc.collect()
        top = None if args.no_eigsh else top_eigenvalue(H, args.tol, args.ncv, args.certify, args.max_matvecs)
    g = rows[0]
    table = [[r["row"], f"{r['first']:.1f}", f"{r['first_peak'] / MIB:.0f}", f"{r['seconds']:.2f}",
              f"{r['seconds'] / g['seconds']:.2f}", f"{r['peak'] / MIB:.0f}", f"{r['held'] / MIB:.0f}",
              f"{(r['peak'] + r['held']) / (g['peak'] + g['held']):.2f}"] for r in rows]
    header = ["", "first call (s)", "first call's peak (MiB)", "time (s)", "time / gradient", "peak (MiB)",
              "held (MiB)", "(peak + held) / gradient's"]
    cmd = "python benchmarks/gpt2_small.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    print()
    print(f"`{cmd}`: n = {n:,}, batch {args.batch} x {args.tokens} tokens, float32, "
          f"{args.threads or torch.get_num_threads()} intra-op threads, RSS of model and data {base / MIB:.0f} MiB; "
          f"1-minute load average {load:.1f} before, {os.getloadavg()[0]:.1f} after; "
          f"{time.perf_counter() - began:.0f} s in all.")
    print()
    print(markdown_table(header, table))
    if top is not None:
        print()
        print(f"Top eigenvalue (`hessop.eigsh(H, k=1, tol={args.tol:g}, ncv={args.ncv}, certify={args.certify}, "
              f"max_matvecs={args.max_matvecs})`, hvp=\"double-backward\"): "
              f"{top['eigenvalue']:.6g}, relative "
              f"residual {top['residual']:.1e} (re-measured with one more product: {top['measured']:.1e}), "
              f"converged {top['converged']}, {top['matvecs']} products, {top['seconds']:.0f} s.")
    print(f"torch {torch.__version__}, numpy {np.__version__}, hessop {hessop.__version__}")


if __name__ == "__main__":
    main()
