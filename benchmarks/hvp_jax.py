"""JAX Hessian-vector products as multiples of a JAX gradient pass, compile time apart.

``measure_jax(...)`` returns one row per product kind; ``python benchmarks/hvp_jax.py``
prints them as a markdown table. Every product runs over the same data (``num_batches``
batches of ``batch_size``) through a :class:`hessop.HessianOperator`, so the cost of the
sum over batches is included and equal for all rows.

Rows
----
gradient
    ``H.gradient()``: one forward and backward pass per batch (the baseline, ratio 1).
hvp (jvp)
    forward-over-reverse, ``jax.jvp`` of ``jax.grad``, recomputing the gradient's primal.
hvp (linearize)
    ``jax.linearize`` of the gradient cached per batch (``hvp="linearize"``): later
    products skip the primal pass, at the price of keeping every batch's linearisation.
hvp block of k (per vector)
    ``jax.vmap`` over ``k`` columns, time divided by ``k``.
ggn-vector
    ``Jᵀ ∇²ℓ J v`` (``curvature="ggn"``).

``seconds`` is the median steady-state time of one call after a warm-up;
``compile_seconds`` is the first call's time minus that median (tracing, XLA
compilation and, for linearize, building the cache).

The process is pinned to one core (``--all-cores`` to lift it), as the PyTorch
benchmarks run on one intra-op thread: XLA's CPU runtime spreads work over every
core it may use whatever ``OMP_NUM_THREADS`` or its own thread flags say, and on
two cores that moved the linearised product from 1.92-1.99x a gradient to
1.29-1.35x (the gradient and the product parallelise differently).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _mlp(in_features: int, width: int, depth: int, classes: int, dtype, seed: int):
    import jax
    import jax.numpy as jnp

    widths = [in_features] + [width] * depth + [classes]
    g = np.random.default_rng(seed)
    params = OrderedDict()
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        params[f"fc{i}.weight"] = jnp.asarray(g.standard_normal((b, a)) / np.sqrt(a), dtype)
        params[f"fc{i}.bias"] = jnp.zeros(b, dtype)
    layers = len(widths) - 1

    def apply(p, x):
        for i in range(1, layers + 1):
            x = x @ p[f"fc{i}.weight"].T + p[f"fc{i}.bias"]
            if i < layers:
                x = jnp.tanh(x)
        return x

    def cross_entropy(out, y):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out), y[:, None], axis=1))

    return params, apply, cross_entropy


def _time(fns: list[Callable[[], Any]], repeats: int) -> list[tuple[float, float]]:
    """(median steady-state seconds, first-call overhead seconds) of each function.

    Every function is called once (warm-up: tracing and compilation), then the
    repeats are interleaved (all functions, then all again ...) so background load
    on a shared machine falls on every row alike. JAX's asynchronous results are
    waited for inside the timed region.
    """
    import jax

    def once(fn):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        return time.perf_counter() - start

    first = [once(fn) for fn in fns]
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            times[i].append(once(fn))
    steady = [statistics.median(t) for t in times]
    return [(s, max(0.0, f - s)) for s, f in zip(steady, first)]


def measure_jax(
    in_features: int = 64,
    width: int = 256,
    depth: int = 3,
    classes: int = 10,
    batch_size: int = 256,
    num_batches: int = 4,
    block: int = 8,
    dtype: str = "float32",
    repeats: int = 9,
    seed: int = 0,
) -> list[dict]:
    """Time JAX products on a tanh MLP classifier; one dict per row (see the module docstring).

    Each row has ``framework``, ``model``, ``n``, ``data``, ``product``, ``seconds``,
    ``ratio`` (to the gradient pass) and ``compile_seconds``.
    """
    import jax
    import jax.numpy as jnp

    from hessop.factory import hessian

    if dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)  # a benchmark script may; the library never does
    jdtype = jnp.dtype(dtype)
    params, apply, loss = _mlp(in_features, width, depth, classes, jdtype, seed)
    g = np.random.default_rng(seed + 1)
    data = [(g.standard_normal((batch_size, in_features)).astype(dtype), g.integers(0, classes, batch_size))
            for _ in range(num_batches)]

    H = hessian(loss, params, data, model_fn=apply, hvp="forward-over-reverse")
    n = H.shape[0]
    v = H.xp.asarray(g.standard_normal(n), dtype=H.native_dtype)
    V = H.xp.asarray(g.standard_normal((n, block)), dtype=H.native_dtype)
    cases = [
        ("gradient", H.gradient, 1),
        ("hvp (jvp)", lambda: H.apply(v), 1),
    ]
    H_lin = hessian(loss, params, data, model_fn=apply, hvp="linearize")
    cases.append(("hvp (linearize)", lambda: H_lin.apply(v), 1))
    cases.append((f"hvp block of {block} (per vector)", lambda: H.apply(V), block))
    G = hessian(loss, params, data, curvature="ggn", model_fn=apply)
    cases.append(("ggn-vector", lambda: G.apply(v), 1))

    rows = []
    model = f"mlp {in_features}-{width}x{depth}-{classes} {dtype}"
    timings = _time([fn for _, fn, _ in cases], repeats)
    base = timings[0][0]
    for (name, _, per), (seconds, compile_seconds) in zip(cases, timings):
        seconds /= per
        rows.append(dict(framework="jax", model=model, n=n, data=f"{num_batches}x{batch_size}", product=name,
                         seconds=seconds, ratio=seconds / base, compile_seconds=compile_seconds))
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    lines = ["| model | n | data | product | time / call | × gradient | compile (s) |",
             "|---|---:|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['n']} | {r['data']} | {r['product']} | {r['seconds'] * 1e3:.2f} ms "
                     f"| {r['ratio']:.2f} | {r['compile_seconds']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-batches", type=int, default=4)
    parser.add_argument("--block", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--all-cores", action="store_true", help="let XLA use every core (module docstring)")
    args = parser.parse_args(argv)
    if not args.all_cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # before JAX starts its threads
    rows = measure_jax(width=args.width, depth=args.depth, batch_size=args.batch_size, num_batches=args.num_batches,
                       block=args.block, dtype=args.dtype, repeats=args.repeats)
    print(table(rows))


if __name__ == "__main__":
    main()
