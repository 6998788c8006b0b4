"""Where hessop's time goes against the same work done by PyHessian and curvlinops, on the comparison's models.

    python benchmarks/overhead.py                          # mlp-digits: HVP and the trace estimators
    python benchmarks/overhead.py --problems resnet20 --tasks hvp --repeats 5
    python benchmarks/overhead.py --threads 1 --hvp double-backward double-backward-vmap

Rows (every case timed alone, repeats interleaved across cases, median of the repeats):

hvp: hessop [strategy]
    ``H.apply(v)``, ``H = hessop.hessian(model, loss, (x, y), hvp=strategy)`` for each ``--hvp``, its
    first-order graph kept.
hvp: hessop's kept graph, backward only
    the one backward pass that product makes, ``torch.autograd.grad`` on hessop's kept graph:
    the difference to the row above is hessop's own per-call work (splitting the vector, the cache
    lookup, the accumulation, the finiteness check).
hvp: PyHessian
    ``hessian_vector_product(gradsH, params, v)`` on its kept graph (the same backward pass).
trace:<method> hessop [strategy]
    ``hessop.trace(H, method, max_matvecs=96, check_symmetric=False)`` against curvlinops'
    ``xtrace``, ``hutchpp_trace`` and ``hutchinson_trace`` with 96 products.

``wall`` is ``time.perf_counter``, ``cpu`` is ``time.process_time`` (every thread of the process):
on a shared machine the CPU time moves less with other processes' load than the wall time.
Other tools appear only when installed (the benchmark environment, ``benchmarks/setup_env.sh``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

TRACE_BUDGET = 96
METHODS = {"xtrace": "xtrace", "hutch++": "hutchpp_trace", "hutchinson": "hutchinson_trace"}


def cases(problem, tasks: list[str], hvps: list[str]) -> list[tuple[str, Callable[[], Any]]]:
    """``(label, call)`` for every task and every installed tool."""
    import hessop
    from hessop.solvers.trace import trace

    ops = {s: hessop.hessian(problem.model, problem.loss, problem.data, hvp=s) for s in hvps}
    H = ops[hvps[0]]
    v = torch.from_numpy(np.random.default_rng(0).standard_normal(H.shape[0]).astype(np.float32))
    out: list[tuple[str, Callable[[], Any]]] = []
    if "hvp" in tasks:
        H.apply(v)  # builds and keeps the first-order graph
        graph = H.backend.products.graphs.graphs.get(0)
        vs = H.backend.functional.split(v)
        out += [(f"hvp: hessop [{s}]", lambda G=G: G.apply(v)) for s, G in ops.items()]
        if graph is not None:
            out.append(("hvp: hessop's kept graph, backward only", lambda: graph.hvp(vs)))
        try:
            from pyhessian import hessian as PyHessian
            from pyhessian.utils import hessian_vector_product
        except ImportError:
            pass
        else:
            problem.model.zero_grad(set_to_none=True)
            ph = PyHessian(problem.model, problem.loss, data=problem.data, cuda=False)
            pv = [t.reshape(p.shape) for t, p in zip(torch.split(v, [p.numel() for p in ph.params]), ph.params)]
            out.append(("hvp: PyHessian", lambda: hessian_vector_product(ph.gradsH, ph.params, pv)))
    try:
        import curvlinops
    except ImportError:
        curvlinops = None
    if curvlinops is not None:
        params = [p for p in problem.model.parameters() if p.requires_grad]
        C = curvlinops.HessianLinearOperator(problem.model, problem.loss, params, [problem.data])
    for method, name in METHODS.items():
        if f"trace:{method}" not in tasks:
            continue
        out += [(f"trace:{method} hessop [{s}]",
                 lambda m=method, G=G: trace(G, method=m, max_matvecs=TRACE_BUDGET, check_symmetric=False))
                for s, G in ops.items()]
        if curvlinops is not None:
            estimator = getattr(curvlinops, name)
            out.append((f"trace:{method} curvlinops", lambda f=estimator: f(C, TRACE_BUDGET)))
    return out


def measure(calls: list[tuple[str, Callable[[], Any]]], repeats: int) -> list[tuple[str, float, float]]:
    """``(label, median wall seconds, median CPU seconds)``: one warm-up each, then interleaved repeats."""
    for _, fn in calls:
        fn()
    wall: list[list[float]] = [[] for _ in calls]
    cpu: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for i, (_, fn) in enumerate(calls):
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall[i].append(time.perf_counter() - w)
            cpu[i].append(time.process_time() - c)
    return [(label, statistics.median(w), statistics.median(c)) for (label, _), w, c in zip(calls, wall, cpu)]


def main(argv: list[str] | None = None) -> None:
    from benchmarks import _problems

    problems = {"mlp-digits": _problems.mlp_digits, "cnn-bn": _problems.cnn_bn, "resnet20": _problems.resnet20}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=["mlp-digits"], choices=list(problems))
    parser.add_argument("--tasks", nargs="+", default=["hvp", *(f"trace:{m}" for m in METHODS)])
    parser.add_argument("--hvp", nargs="+", default=["double-backward"], help="hessop's product strategies")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, hvp={args.hvp}, "
          f"median of {args.repeats} interleaved repeats\n")
    print("| problem | case | wall (s) | cpu (s) |\n|---|---|---:|---:|")
    for name in args.problems:
        problem = problems[name]()
        for label, wall, cpu in measure(cases(problem, args.tasks, args.hvp), args.repeats):
            print(f"| {name} | {label} | {wall:.4g} | {cpu:.4g} |", flush=True)


if __name__ == "__main__":
    main()
