"""PyTorch Hessian-vector products as multiples of a plain gradient pass, on the same model and data.

    python benchmarks/hvp.py                    # MLP and conv net with BatchNorm, CPU
    python benchmarks/hvp.py --repeats 5 --models mlp

For each model, every row runs over the same data (``--num-batches`` batches of
``--batch-size``) and ``ratio`` is its time over the *gradient* row's:

gradient
    plain PyTorch: ``torch.autograd.grad`` of each batch's loss, summed (the baseline).
hvp <strategy>
    ``hessop.hessian(..., hvp=strategy).apply(v)``, one vector, all batches.
hvp double-backward, no graph cache
    ``graph_cache=False``: every product redoes each batch's forward pass and first backward pass
    (the other hvp rows keep each batch's first-order graph where the strategy allows it).
hvp auto
    the strategy ``hvp="auto"`` picked (timed on the first batch), in brackets.
block of k <strategy> (per vector)
    ``H.apply(V)`` with ``k`` columns, time divided by ``k``.
ggn-vector
    ``curvature="ggn"``: ``Jᵀ ∇²ℓ J v``.
PyHessian hvp
    ``pyhessian.hessian(..., dataloader=data).dataloader_hv_product(v)``, its full-data product
    (double backward per batch, the same weighting by batch size), if PyHessian is installed in
    the running Python (see benchmarks/README.md), else "not installed".
single batch ...
    one batch only, against a one-batch gradient pass: hessop's double backward with and without
    the kept first-order graph, and PyHessian's ``hessian_vector_product`` on its kept graph.

Repeats are interleaved (all rows, then all rows again) so background load on a shared machine
falls on every row alike, and the fastest repeat is kept. JAX rows come from ``benchmarks/hvp_jax.py``
(``measure_jax``) when JAX is importable, against JAX's own gradient pass.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from hessop.factory import hessian  # noqa: E402
from hessop.models.small import MLP, SmallCNN, random_batches  # noqa: E402

STRATEGIES = ("double-backward", "double-backward-vmap", "forward-over-reverse")


def models(names: list[str], batch_size: int, num_batches: int, seed: int = 0):
    """``(label, model, data)`` for each requested model, float32, eval mode, seeded."""
    torch.manual_seed(seed)
    sizes = [batch_size] * num_batches
    out = []
    if "mlp" in names:  # the same shape as the JAX rows of benchmarks/hvp_jax.py
        out.append(("mlp 64-256x3-10", MLP(64, 10, (256, 256, 256)).eval(), random_batches((64,), sizes, 10, seed=1)))
    if "cnn" in names:
        model = SmallCNN(3, 10, channels=32, activation=nn.ReLU).eval()
        out.append(("cnn-bn 3x16x16 c32", model, random_batches((3, 16, 16), sizes, 10, seed=2)))
    return out


def _time(fns: list[Callable[[], Any]], repeats: int) -> list[float]:
    """Fastest of ``repeats`` calls of each function after one warm-up, repeats interleaved across functions.

    On a shared machine other processes only ever add time, so the minimum is the
    least noisy estimate of a call's own cost.
    """
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - start)
    return [min(t) for t in times]


def _gradient_pass(model: nn.Module, loss: nn.Module, data) -> Callable[[], Any]:
    params = [p for p in model.parameters() if p.requires_grad]

    def run():
        total = [torch.zeros_like(p) for p in params]
        for x, y in data:
            for t, g in zip(total, torch.autograd.grad(loss(model(x), y), params)):
                t.add_(g, alpha=len(y))
        return total

    return run


def _pyhessian(model: nn.Module, loss: nn.Module, data, v: torch.Tensor):
    """PyHessian's full-data and single-batch products, or None when it is not installed."""
    try:
        from pyhessian import hessian as PyHessian
        from pyhessian.utils import hessian_vector_product
    except ImportError:
        return None
    params = [p for p in model.parameters() if p.requires_grad]
    vs = [t.reshape(p.shape) for t, p in zip(torch.split(v, [p.numel() for p in params]), params)]
    full = PyHessian(model, loss, dataloader=data, cuda=False)
    single = PyHessian(model, loss, data=data[0], cuda=False)
    return (lambda: full.dataloader_hv_product(vs),
            lambda: hessian_vector_product(single.gradsH, single.params, vs))


def measure_torch(names: list[str], batch_size: int, num_batches: int, block: int, repeats: int) -> list[dict]:
    """One dict per row: framework, model, n, data, product, seconds, ratio (to its gradient row)."""
    rows = []
    for label, model, data in models(names, batch_size, num_batches):
        loss = nn.CrossEntropyLoss()
        ops = {s: hessian(model, loss, data, hvp=s) for s in STRATEGIES}
        auto = hessian(model, loss, data)
        n = auto.shape[0]
        gen = torch.Generator().manual_seed(0)
        v, V = torch.randn(n, generator=gen), torch.randn(n, block, generator=gen)
        auto.apply(v), auto.apply(V)  # let auto choose, outside the timings
        cases: list[tuple[str, Callable[[], Any], int]] = [("gradient", _gradient_pass(model, loss, data), 1)]
        cases += [(f"hvp {s}", (lambda H=H: H.apply(v)), 1) for s, H in ops.items()]
        uncached = hessian(model, loss, data, hvp="double-backward", graph_cache=False)
        cases.append(("hvp double-backward, no graph cache", lambda: uncached.apply(v), 1))
        cases.append((f"hvp auto [{auto.backend.chosen['vector']}]", lambda: auto.apply(v), 1))
        cases += [(f"block of {block} {s} (per vector)", (lambda H=H: H.apply(V)), block) for s, H in ops.items()]
        cases.append((f"block of {block} auto [{auto.backend.chosen['block']}] (per vector)",
                      lambda: auto.apply(V), block))
        ggn = hessian(model, loss, data, curvature="ggn")
        cases.append(("ggn-vector", lambda: ggn.apply(v), 1))
        py = _pyhessian(model, loss, data, v)
        if py is not None:
            cases.append(("PyHessian hvp", py[0], 1))
        timings = _time([fn for _, fn, _ in cases], repeats)
        base = timings[0]
        shape = f"{num_batches}x{batch_size}"
        for (name, _, per), seconds in zip(cases, timings):
            rows.append(dict(framework="torch", model=label, n=n, data=shape, product=name,
                             seconds=seconds / per, ratio=seconds / per / base))
        if py is None:
            rows.append(dict(framework="torch", model=label, n=n, data=shape, product="PyHessian hvp: not installed",
                             seconds=float("nan"), ratio=float("nan")))
        rows += _single_batch(label, model, loss, data[0], v, py, repeats)
    return rows


def _single_batch(label, model, loss, batch, v, py, repeats) -> list[dict]:
    kept = hessian(model, loss, [batch], hvp="double-backward")
    fresh = hessian(model, loss, [batch], hvp="double-backward", graph_cache=False)
    cases = [("single batch: gradient", _gradient_pass(model, loss, [batch])),
             ("single batch: hvp double-backward, graph kept", lambda: kept.apply(v)),
             ("single batch: hvp double-backward, graph rebuilt", lambda: fresh.apply(v))]
    if py is not None:
        cases.append(("single batch: PyHessian hvp (graph kept)", py[1]))
    timings = _time([fn for _, fn in cases], repeats)
    return [dict(framework="torch", model=label, n=kept.shape[0], data=f"1x{len(batch[1])}", product=name,
                 seconds=s, ratio=s / timings[0]) for (name, _), s in zip(cases, timings)]


def measure_jax_rows(batch_size: int, num_batches: int, block: int, repeats: int) -> list[dict]:
    """The JAX rows from benchmarks/hvp_jax.py, or none if JAX or that script is unavailable."""
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from hvp_jax import measure_jax
    except ImportError:
        return []
    return measure_jax(batch_size=batch_size, num_batches=num_batches, block=block, repeats=repeats)


def table(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    lines = ["| framework | model | n | data | product | time / vector | × gradient |",
             "|---|---|---:|---|---|---:|---:|"]
    for r in rows:
        ms = "" if r["seconds"] != r["seconds"] else f"{r['seconds'] * 1e3:.2f} ms"
        ratio = "" if r["ratio"] != r["ratio"] else f"{r['ratio']:.2f}"
        lines.append(f"| {r['framework']} | {r['model']} | {r['n']} | {r['data']} | {r['product']} | {ms} | {ratio} |")
    return "\n".join(lines)


def verdict(rows: list[dict]) -> str:
    """Whether the goals hold: full-data HVP <= 2x a gradient pass, and faster than PyHessian's."""
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows if r["framework"] == "torch"):
        mine = [r for r in rows if r["model"] == model and r["product"].startswith("hvp auto")]
        py = [r for r in rows if r["model"] == model and r["product"] == "PyHessian hvp"]
        if not mine:
            continue
        m = mine[0]
        text = f"{model}: hvp auto = {m['ratio']:.2f}x gradient ({'met' if m['ratio'] <= 2.0 else 'NOT met'} <= 2.0x)"
        blocks = [r for r in rows if r["model"] == model and r["product"].startswith("block of")]
        if blocks:
            best = min(blocks, key=lambda r: r["ratio"])
            text += f"; best block product {best['ratio']:.2f}x per vector ({best['product']})"
        if py:
            faster = m["seconds"] < py[0]["seconds"]
            text += f"; PyHessian {py[0]['ratio']:.2f}x ({'faster' if faster else 'NOT faster'} than PyHessian)"
        lines.append(f"- {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-batches", type=int, default=4)
    parser.add_argument("--block", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-jax", action="store_true", help="skip the JAX rows")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure_torch(args.models, args.batch_size, args.num_batches, args.block, args.repeats)
    if not args.no_jax:
        rows += measure_jax_rows(args.batch_size, args.num_batches, args.block, args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(table(rows))
    print()
    print(verdict(rows))


if __name__ == "__main__":
    main()
