"""The per-call cost of a product, the cost of ``auto``'s first product, and compiled products.

    python benchmarks/speed.py                                  # overhead and first product, this tree
    python benchmarks/speed.py --before c39e68b                 # the same, side by side with an older commit
    python benchmarks/speed.py --compile --models mlp cnn resnet20 gpt
    python benchmarks/speed.py --no-overhead --top20                 # products for the top 20 of the digits MLP

One intra-op thread throughout (``torch.set_num_threads(1)``).

Overhead (digits MLP 64-32-10, 2,410 parameters, all 1,797 digits as one batch)
    ``H.apply(v)`` against PyHessian's ``hessian_vector_product`` on its own kept graph (or, when
    PyHessian is not installed, the call it makes: ``torch.autograd.grad(grads, params,
    grad_outputs=v, retain_graph=True)`` on a kept graph), ``--calls`` calls each, interleaved in
    random order, medians of wall time (and the ratio of medians of CPU time, ``time.process_time``,
    which moves less with other processes' load); ``fixed`` is the difference, hessop's own per-call work.
First product
    a fresh ``hessop.hessian(model, loss, data)`` (``hvp="auto"``): its first ``H.apply(v)`` (the
    choice of strategy, the kept graph, the repeatability check) over the median steady product, timed
    after the baseline's first call has paid torch's own one-time costs in the process (the first
    ``torch.autograd.grad`` with ``grad_outputs`` imports sympy, about 4 s here); and the first product of
    a second operator on the same model, built after the timings (the operator's own cost, without the
    first uses of torch's kernels in the process).
Compiled (``--compile``)
    per model: a gradient pass (``torch.autograd.grad`` of each batch's loss), ``H.apply(v)`` with
    ``hvp="auto"`` (kept graphs), with ``graph_cache=False`` (every product redoes each batch's forward
    pass), with ``hvp="linearize"``, with ``compile=True`` (over a list in eval mode: the linearised
    tangent pass compiled) and with ``compile=True, graph_cache=False`` (nothing kept: the whole
    forward-over-reverse product compiled, as for a DataLoader or a training model); fastest of ``--repeats``
    interleaved repeats,
    ``x grad`` the ratio to the gradient row; compile time (the first compiled product, which also runs the eager
    check) and linearize time (the first linearized product) reported apart. Inductor caches what it
    compiled on disk (``/tmp/torchinductor_$USER``): a second run compiles faster than the first.

``--before REV`` extracts commit ``REV`` of this repository (``git archive``) into a temporary folder
and measures the overhead and first product there in a subprocess, then here, and prints both.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if not os.environ.get("HESSOP_SPEED_TREE"):
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402


def digits_mlp():
    """The MLP 64-32-10 (tanh) on all 1,797 digits, float32, eval mode, seeded: 2,410 parameters."""
    from sklearn.datasets import load_digits

    from hessop.models.small import MLP

    X, y = load_digits(return_X_y=True)
    torch.manual_seed(0)
    return MLP(64, 10, (32,)).eval(), (torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y))


def _pyhessian_product(model: nn.Module, loss: nn.Module, batch, v: torch.Tensor) -> tuple[str, Callable]:
    params = [p for p in model.parameters() if p.requires_grad]
    vs = [t.reshape(p.shape) for t, p in zip(torch.split(v, [p.numel() for p in params]), params)]
    try:
        from pyhessian import hessian as PyHessian
        from pyhessian.utils import hessian_vector_product
    except ImportError:
        x, y = batch
        grads = torch.autograd.grad(loss(model(x), y), params, create_graph=True)
        return ("autograd.grad on a kept graph (PyHessian's call; PyHessian not installed)",
                lambda: torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True))
    ph = PyHessian(model, loss, data=batch, cuda=False)
    return "PyHessian hessian_vector_product", lambda: hessian_vector_product(ph.gradsH, ph.params, vs)


def overhead(calls: int) -> dict:
    """hessop's product against PyHessian's on the digits MLP, and auto's first product (module docstring)."""
    import hessop

    model, batch = digits_mlp()
    loss = nn.CrossEntropyLoss()
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(0))
    label, baseline = _pyhessian_product(model, loss, batch, v)
    baseline()  # torch's one-time costs (the first grad_outputs call imports sympy, seconds) fall here
    H = hessop.hessian(model, loss, batch)
    start = time.perf_counter()
    H.apply(v)
    first = time.perf_counter() - start
    cases = {"hessop": lambda: H.apply(v), "baseline": baseline}
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    order = list(cases)
    rng = random.Random(0)
    for _ in range(calls):
        rng.shuffle(order)
        for k in order:
            t, c = time.perf_counter(), time.process_time()
            cases[k]()
            times[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    med = {k: statistics.median(t) for k, t in times.items()}
    cpu_ratio = statistics.median(cpu["hessop"]) / statistics.median(cpu["baseline"])
    again = hessop.hessian(model, loss, batch)  # a second operator: its first product without torch's first uses
    start = time.perf_counter()
    again.apply(v)
    second = time.perf_counter() - start
    return dict(n=H.shape[0], calls=calls, baseline=label, hessop_s=med["hessop"], baseline_s=med["baseline"],
                ratio=med["hessop"] / med["baseline"], cpu_ratio=cpu_ratio, fixed_s=med["hessop"] - med["baseline"],
                first_s=first, first_over_steady=first / med["hessop"], second_first_over_steady=second / med["hessop"])


# -- compiled products ---------------------------------------------------------------------------

def models(names: list[str]) -> list[tuple[str, nn.Module, list]]:
    """``(label, model, batches)`` of the benchmark models, float32, eval mode, seeded."""
    from hessop.models.small import MLP, SmallCNN, random_batches

    out = []
    if "mlp" in names:
        model, batch = digits_mlp()
        out.append(("digits MLP 64-32-10, 1x1797", model, [batch]))
    if "mlp256" in names:  # the model of benchmarks/hvp_jax.py, where JAX's jitted linearize takes 1.63x
        torch.manual_seed(0)
        out.append(("MLP 64-256x3-10 (tanh), 4x256", MLP(64, 10, (256, 256, 256)).eval(),
                    random_batches((64,), [256] * 4, 10, seed=1)))
    if "cnn" in names:
        torch.manual_seed(0)
        model = SmallCNN(3, 10, channels=32, activation=nn.ReLU).eval()
        out.append(("conv net + BatchNorm 3x16x16 c32, 4x256", model, random_batches((3, 16, 16), [256] * 4, 10,
                                                                                  seed=2)))
    if "resnet20" in names:
        from hessop.models.resnet import resnet20

        torch.manual_seed(3)
        (x, y), = random_batches((3, 32, 32), [16], num_classes=10, seed=3)
        out.append(("ResNet20, 1x16 32x32", resnet20(num_classes=10).eval(), [(x, y)]))
    if "gpt" in names:
        from hessop.models.gpt import GPT, GPTConfig

        idx = torch.randint(0, 65, (8, 65), generator=torch.Generator().manual_seed(0))
        out.append(("GPT char (2 layers, 64 wide), 1x8x64 tokens", GPT(GPTConfig.char(65)).eval(),
                    [(idx[:, :-1], idx[:, 1:])]))
    return out


def gradient_pass(model: nn.Module, loss: nn.Module, data: list) -> Callable[[], Any]:
    params = [p for p in model.parameters() if p.requires_grad]

    def run():
        total = [torch.zeros_like(p) for p in params]
        for x, y in data:
            out = model(x)
            for t, g in zip(total, torch.autograd.grad(loss(out.reshape(-1, out.shape[-1]), y.reshape(-1)), params)):
                t.add_(g, alpha=y.numel())
        return total

    return run


def compiled(names: list[str], repeats: int, log: Callable[[str], None]) -> list[dict]:
    """One row per model: gradient, eager and compiled products, compile time (module docstring)."""
    import hessop

    rows = []
    for label, model, data in models(names):
        loss = nn.CrossEntropyLoss()
        ops = {"eager, kept graphs": hessop.hessian(model, loss, data),
               "eager, no graph cache": hessop.hessian(model, loss, data, graph_cache=False),
               "linearized": hessop.hessian(model, loss, data, hvp="linearize"),
               "compiled": hessop.hessian(model, loss, data, compile=True),
               # nothing kept (graph_cache=False): the whole product compiled, as for a DataLoader
               "compiled, whole product": hessop.hessian(model, loss, data, compile=True, graph_cache=False)}
        v = torch.randn(ops["compiled"].shape[0], generator=torch.Generator().manual_seed(0))
        firsts = {}
        for name, H in ops.items():
            start = time.perf_counter()
            H.apply(v)
            firsts[name] = time.perf_counter() - start
            log(f"{label}: first product {name} {firsts[name]:.2f} s")
        err = float((ops["compiled"].apply(v) - ops["eager, kept graphs"].apply(v)).norm()
                    / ops["eager, kept graphs"].apply(v).norm())
        cases = {"gradient": gradient_pass(model, loss, data), **{k: (lambda H=H: H.apply(v)) for k, H in ops.items()}}
        best = {k: float("inf") for k in cases}
        for _ in range(repeats):
            for k, fn in cases.items():
                t = time.perf_counter()
                fn()
                best[k] = min(best[k], time.perf_counter() - t)
        g = best["gradient"]
        rows.append(dict(model=label, n=ops["compiled"].shape[0], gradient_s=g,
                         **{f"{k}_s": best[k] for k in ops}, **{f"{k}_x": best[k] / g for k in ops},
                         compile_s=firsts["compiled"], whole_compile_s=firsts["compiled, whole product"],
                         linearize_s=firsts["linearized"],
                         first_eager_over_steady=firsts["eager, kept graphs"]
                         / best["eager, kept graphs"], compiled_vs_eager_rel=err))
    return rows


def top20(seeds: tuple[int, ...] = (0, 1, 2)) -> list[dict]:
    """Products for the top 20 of the digits MLP (trained 300 Adam steps) at float32's floor, per seed.

    ``hessop.eigsh(H, k=20)`` certified and with ``certify=False``, and ARPACK (``scipy.sparse.linalg.eigsh``)
    on the same operator at the same ``tol`` (relative to each eigenvalue, where hessop's is relative to
    ``||H||``: ARPACK is asked for at least as much), its start vector from the same seed.
    """
    import numpy as np
    import scipy.sparse.linalg as sla

    import hessop
    from benchmarks._problems import train

    model, (x, y) = digits_mlp()
    train(model, x, y, steps=300)
    H = hessop.hessian(model, nn.CrossEntropyLoss(), [(x, y)])
    rows = []
    for seed in seeds:
        certified = hessop.eigsh(H, k=20, seed=seed)
        plain = hessop.eigsh(H, k=20, seed=seed, certify=False)
        count = [0]

        def matvec(v):
            count[0] += 1
            return H.matvec(v)

        op = sla.LinearOperator(H.shape, matvec=matvec, dtype=H.dtype)
        v0 = np.random.default_rng(seed).standard_normal(H.shape[0])
        sla.eigsh(op, k=20, which="LA", tol=certified.tol, v0=v0, return_eigenvectors=False)
        rows.append(dict(seed=seed, certified=certified.num_matvecs, uncertified=plain.num_matvecs, arpack=count[0],
                         tol=certified.tol, converged=certified.all_converged))
    return rows


def top20_table(rows: list[dict]) -> str:
    lines = ["| seed | hessop certified | hessop certify=False | ARPACK | tol | converged |",
             "|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {r['seed']} | {r['certified']} | {r['uncertified']} | {r['arpack']} | {r['tol']:.1e} "
              f"| {r['converged']} |" for r in rows]
    return "\n".join(lines)


# -- reporting -----------------------------------------------------------------------------------

def overhead_table(results: dict[str, dict]) -> str:
    lines = ["| tree | hessop H.apply(v) | baseline | ratio | ratio (CPU time) | fixed per call | first product | "
             "first / steady | "
             "second operator's first / steady |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for tree, r in results.items():
        lines.append(f"| {tree} | {r['hessop_s'] * 1e3:.3f} ms | {r['baseline_s'] * 1e3:.3f} ms | {r['ratio']:.3f} | "
                     f"{r['cpu_ratio']:.3f} | "
                     f"{r['fixed_s'] * 1e3:+.3f} ms | {r['first_s'] * 1e3:.1f} ms | {r['first_over_steady']:.1f} | "
                     f"{r['second_first_over_steady']:.1f} |")
    baseline = next(iter(results.values()))["baseline"]
    return "\n".join(lines) + f"\n\nbaseline: {baseline}"


def compiled_table(rows: list[dict]) -> str:
    lines = ["| model | n | gradient | eager, kept graphs | eager, no graph cache | linearized | compiled | "
             "compiled, whole product | linearize time | compile time | whole-product compile time | "
             "compiled vs eager (rel.) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cell = lambda k: f"{r[k + '_s'] * 1e3:.2f} ms ({r[k + '_x']:.2f}x)"  # noqa: E731
        lines.append(f"| {r['model']} | {r['n']} | {r['gradient_s'] * 1e3:.2f} ms | {cell('eager, kept graphs')} | "
                     f"{cell('eager, no graph cache')} | {cell('linearized')} | {cell('compiled')} | "
                     f"{cell('compiled, whole product')} | {r['linearize_s']:.1f} s | {r['compile_s']:.1f} s | "
                     f"{r['whole_compile_s']:.1f} s | {r['compiled_vs_eager_rel']:.1e} |")
    return "\n".join(lines)


def _before(rev: str, calls: int) -> dict:
    """The overhead measured on commit ``rev`` of this repository, in a subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "hessop"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        path = tmp + os.pathsep + os.environ.get("PYTHONPATH", "")
        env = {**os.environ, "HESSOP_SPEED_TREE": tmp, "PYTHONPATH": path}
        out = subprocess.run([sys.executable, __file__, "--json", "--calls", str(calls)], env=env, check=True,
                             capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--before", help="a commit to measure side by side (overhead and first product)")
    parser.add_argument("--compile", action="store_true", help="measure compiled products too (minutes)")
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn", "resnet20", "gpt"],
                        choices=["mlp", "mlp256", "cnn", "resnet20", "gpt"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the overhead as one JSON line only")
    parser.add_argument("--no-overhead", action="store_true")
    parser.add_argument("--top20", action="store_true", help="products for the top 20 of the trained digits MLP")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.json:
        print(json.dumps(overhead(args.calls)))
        return
    print(f"torch {torch.__version__}, 1 thread\n")
    if not args.no_overhead:
        results = {}
        if args.before:
            results[f"before ({args.before})"] = _before(args.before, args.calls)
        results["this tree"] = overhead(args.calls)
        print(overhead_table(results), "\n", flush=True)
    if args.compile:
        rows = compiled(args.models, args.repeats, lambda s: print(s, file=sys.stderr, flush=True))
        print(compiled_table(rows))
    if args.top20:
        print(top20_table(top20()))


if __name__ == "__main__":
    main()
