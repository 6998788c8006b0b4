"""hessop against PyHessian, curvlinops, hessian-eigenthings and scipy ARPACK, on identical models and data.

For every model (:mod:`benchmarks._problems`) each installed tool builds its own
Hessian of the same float32 model, loss and batch, then runs the same tasks:
one Hessian-vector product, the top-1 and top-20 eigenvalues, the trace and the
spectral density. Accuracy is measured against the dense float64 Hessian where it
is affordable; HVPs, wall time (median of interleaved repeats) and peak memory
as documented in :mod:`benchmarks._tools`.

Run ``python -m benchmarks compare`` (or ``python -m benchmarks.compare``) from
the repository root with the benchmark environment's Python.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np
import scipy.stats

from . import _problems
from ._adapters import DENSITY_STEPS, TOOLS, TRACE_BUDGET, Missing
from ._tools import Case, interleaved, markdown_table, rel_err, top_err

PROBLEMS: dict[str, Callable] = {
    "mlp-digits": _problems.mlp_digits,
    "two-layer": _problems.two_layer,
    "cnn-bn": _problems.cnn_bn,
    "resnet20": _problems.resnet20,
}
DENSE_LIMIT = 16000
"""Largest model whose dense float64 Hessian is built for ground truth."""

TASK_ORDER = ["hvp", "top1", "top1:power", "top20", "trace:xtrace", "trace:hutch++", "trace:hutchinson", "density"]


def _w1(out: dict, eigenvalues: np.ndarray) -> float:
    """1-Wasserstein distance between a tool's spectral measure and the exact eigenvalues."""
    if "nodes" in out:
        w = np.clip(out["weights"], 0, None)
        return float(scipy.stats.wasserstein_distance(out["nodes"], eigenvalues, w / w.sum()))
    d = np.clip(out["density"], 0, None)
    return float(scipy.stats.wasserstein_distance(out["grid"], eigenvalues, d / d.sum()))


def accuracy(task: str, out: dict, problem, reference: dict) -> str:
    """The task's error against ground truth (or against the reference run when there is none)."""
    exact = problem.eigenvalues is not None
    if task.startswith("top"):
        k = len(out["eigenvalues"])
        if exact:
            return f"{top_err(out['eigenvalues'], problem.eigenvalues[:k]):.1e}"
        ref = reference.get(f"top{k}")
        return f"{top_err(out['eigenvalues'], ref):.1e} (vs ARPACK)" if ref is not None else "—"
    if task.startswith("trace"):
        est = out["trace"]
        se = out.get("stderr")
        val = f"{est:.4g}" + (f" ± {se:.2g}" if se is not None and np.isfinite(se) else "")
        return f"{rel_err(est, problem.trace):.1e} ({val})" if exact else val
    if task == "density" and exact:
        width = problem.eigenvalues[0] - problem.eigenvalues[-1]
        return f"{_w1(out, problem.eigenvalues) / width:.1e}"
    return "—"


def run_problem(name: str, repeats: int, ks=(1, 20), log=print) -> dict:
    """Build every tool on one problem, run the tasks interleaved, and return the table rows."""
    problem = PROBLEMS[name]()
    log(f"{problem.name}: {problem.description}; n = {problem.num_params}")
    if problem.num_params <= DENSE_LIMIT:
        _problems.with_truth(problem, log)
    cases, setup, missing = [], {}, []
    for tool, make in TOOLS.items():
        start = time.perf_counter()
        try:
            tasks = make(problem, ks)
        except Missing as exc:
            missing.append(f"{tool} (`{exc}` not installed)")
            continue
        setup[tool] = time.perf_counter() - start
        cases += [Case(tool, task, fn) for task, fn in tasks.items()]
    cases.sort(key=lambda c: TASK_ORDER.index(c.task) if c.task in TASK_ORDER else 99)
    interleaved(cases, repeats, log)
    reference = {}
    if problem.eigenvalues is None:
        for c in cases:
            if c.tool.startswith("scipy") and c.runs:
                reference[c.task] = np.sort(c.value["eigenvalues"])[::-1]
    base = {c.task: c.seconds for c in cases if c.tool == "hessop" and c.runs}
    rows = []
    for c in cases:
        if c.error is not None:
            rows.append([c.task, c.tool, f"failed: {c.error}", "", "", "", ""])
            continue
        label = c.tool + (" (ARPACK)" if c.tool == "curvlinops" and c.task.startswith("top") else "")
        ratio = c.seconds / base[c.task] if c.task in base else float("nan")
        rows.append([c.task, label, accuracy(c.task, c.value, problem, reference), c.hvps,
                     f"{c.seconds:.3g}", f"{ratio:.2f}" if np.isfinite(ratio) else "—", f"{c.peak_mib:.0f}"])
    return {"problem": problem, "rows": rows, "setup": setup, "missing": missing}


HEADER = ["task", "tool", "error", "HVPs", "time (s)", "time / hessop", "peak RSS growth (MiB)"]


def report(results: list[dict], repeats: int, command: str, versions: dict) -> str:
    """The markdown of the whole comparison."""
    out = [f"Command: `{command}` ({repeats} interleaved repeat(s), medians). Versions: "
           + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", "",
           "Errors: top-k is the largest relative error of the k largest eigenvalues; trace is the relative "
           f"error (estimate ± the tool's standard error where it gives one), all with {TRACE_BUDGET} HVPs except "
           "PyHessian, which stops itself (its default `maxIter=100, tol=1e-3`); density is the 1-Wasserstein "
           "distance between the tool's spectral measure (one probe, "
           f"{DENSITY_STEPS} Lanczos steps) and the exact eigenvalues, divided by the spectral width. Top-k uses "
           "each tool's default tolerance: hessop thick-restart Lanczos (relative residual 1e-6, raised to the "
           "float32 floor 1.2e-4), ARPACK `which='LA'` with `tol=0`, PyHessian power iteration (`tol=1e-3` on "
           "the change of the eigenvalue), hessian-eigenthings Lanczos with its default `2k` steps and no restart "
           "(`top1:power` is its deflated power iteration). Time ratios are against hessop on the same task.", ""]
    for res in results:
        p = res["problem"]
        truth = (f"ground truth: dense float64 Hessian ({p.truth_seconds:.0f} s to build and diagonalise)"
                 if p.eigenvalues is not None else "no dense ground truth at this size: top-k errors are against "
                 "ARPACK on hessop's operator, traces are shown with their standard errors")
        out += [f"### {p.name} — n = {p.num_params:,}", "", f"{p.description}; {truth}.", ""]
        out.append("Operator construction (s): " + ", ".join(f"{t} {s:.2f}" for t, s in res["setup"].items())
                   + ("; not installed: " + ", ".join(res["missing"]) if res["missing"] else "") + ".")
        out += ["", markdown_table(HEADER, res["rows"]), ""]
    return "\n".join(out)


def main(argv=None, log=print) -> str:
    from ._tools import versions

    ap = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(PROBLEMS), choices=list(PROBLEMS))
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats on the small models")
    args = ap.parse_args(argv)
    results = []
    for name in args.models:
        reps = 1 if name == "resnet20" else args.repeats
        results.append(run_problem(name, reps, ks=(1, 5) if name == "resnet20" else (1, 20), log=log))
    cmd = "python -m benchmarks compare" + (f" --models {' '.join(args.models)}" if args.models != list(PROBLEMS)
                                            else "")
    return report(results, args.repeats, cmd, versions())


if __name__ == "__main__":
    print(main())
