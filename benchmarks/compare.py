"""hessop against PyHessian, curvlinops, hessian-eigenthings and scipy ARPACK, on identical models and data.

For every model (:mod:`benchmarks._problems`) each installed tool builds its own
Hessian of the same float32 model, loss and batch, then runs the same tasks:
one Hessian-vector product, the top-1 and top-20 eigenvalues, the trace and the
spectral density. Accuracy is measured against the dense float64 Hessian where it
is affordable; HVPs, wall time (fastest of interleaved repeats, one thread) and peak memory
as documented in :mod:`benchmarks._tools`.

Run ``python -m benchmarks compare`` (or ``python -m benchmarks.compare``) from
the repository root with the benchmark environment's Python.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np

from . import _problems
from ._adapters import DENSITY_STEPS, TOOLS, TRACE_BUDGET, Missing
from ._tools import Case, interleaved, markdown_table, rel_err, threads, top_err

PROBLEMS: dict[str, Callable] = {
    "mlp-digits": _problems.mlp_digits,
    "cnn-bn": _problems.cnn_bn,
    "two-layer": _problems.two_layer,
    "resnet20": _problems.resnet20,
    "gpt-char": _problems.gpt_char,
}
DENSE_LIMIT = 16000
"""Largest model whose dense float64 Hessian is built for ground truth."""

TASK_ORDER = ["hvp", "top1", "top1:power", "top20", "trace:xtrace", "trace:hutch++", "trace:hutchinson", "density"]


def _w1(out: dict, eigenvalues: np.ndarray) -> float:
    """1-Wasserstein distance between a tool's spectral measure and the exact eigenvalues."""
    from scipy.stats import wasserstein_distance  # here: importing scipy.stats takes half a second

    if "nodes" in out:
        w = np.clip(out["weights"], 0, None)
        return float(wasserstein_distance(out["nodes"], eigenvalues, w / w.sum()))
    d = np.clip(out["density"], 0, None)
    return float(wasserstein_distance(out["grid"], eigenvalues, d / d.sum()))


def accuracy(task: str, out: dict, problem, reference: dict) -> tuple[str, float]:
    """The task's error against ground truth (or the reference run when there is none): text and number."""
    exact = problem.eigenvalues is not None
    nan = float("nan")
    if task.startswith("top"):
        k = len(out["eigenvalues"])
        if exact:
            e = top_err(out["eigenvalues"], problem.eigenvalues[:k])
            return f"{e:.1e}", e
        ref = reference.get(f"top{k}")
        if ref is None:
            return "—", nan
        e = top_err(out["eigenvalues"], ref)
        return f"{e:.1e} (vs ARPACK)", e
    if task.startswith("trace"):
        est, se = out["trace"], out.get("stderr")
        val = f"{est:.4g}" + (f" ± {se:.2g}" if se is not None and np.isfinite(se) else "")
        if not exact:
            return val, nan
        e = rel_err(est, problem.trace)
        return f"{e:.1e} ({val})", e
    if task == "density" and exact:
        e = _w1(out, problem.eigenvalues) / (problem.eigenvalues[0] - problem.eigenvalues[-1])
        return f"{e:.1e}", e
    return "—", nan


def behind(cases: list[Case], errors: dict) -> list[str]:
    """Where another tool beat hessop on the same task.

    Faster counts only at no worse accuracy (error within 2x of hessop's), more accurate only for no
    more HVPs. Trace rows all make the same number of products with estimators of the same kind, so
    each error is one random draw and the difference between two draws is chance: for them only the
    time is compared, at equal products.
    """
    mine = {c.task: c for c in cases if c.tool == "hessop" and c.runs}
    out = []
    for c in cases:
        h = mine.get(c.task.split(":")[0] if c.task == "top1:power" else c.task)
        if c.tool == "hessop" or h is None or not c.runs:
            continue
        ec, eh = errors.get(id(c), float("nan")), errors.get(id(h), float("nan"))
        if c.task.startswith("trace"):
            if c.hvps == h.hvps and c.seconds < 0.8 * h.seconds:
                out.append(f"{c.task}: {c.tool} {h.seconds / c.seconds:.1f}x faster at the same {c.hvps} HVPs")
            continue
        comparable = not (np.isfinite(ec) and np.isfinite(eh)) or ec <= 2 * eh
        if c.seconds < 0.8 * h.seconds and comparable:
            out.append(f"{c.task}: {c.tool} {h.seconds / c.seconds:.1f}x faster"
                       + (f" (error {ec:.1e} vs {eh:.1e})" if np.isfinite(ec) else ""))
        elif np.isfinite(ec) and np.isfinite(eh) and ec < eh / 10 and c.hvps <= h.hvps:
            out.append(f"{c.task}: {c.tool} more accurate ({ec:.1e} vs {eh:.1e}) with {c.hvps} HVPs vs {h.hvps}")
    return out


LARGE_TASKS = ("hvp", "top1", "top1:power", "trace:hutchinson")
"""The tasks run on ResNet20, where each product costs a second or more on 2 CPU cores."""

GPT_TASKS = ("hvp", "top1", "top1:power", "trace:hutch++")
"""The tasks run on the character-level GPT: one product, the top eigenvalue, Hutch++'s trace."""


def _math_attention(fn: Callable) -> Callable:
    """``fn`` run under ``sdpa_kernel(SDPBackend.MATH)``: the attention kernel with a second derivative."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run(*args, **kwargs):
        with sdpa_kernel(SDPBackend.MATH):
            return fn(*args, **kwargs)

    return run


def _needs_help(tool: str, problem) -> bool:
    """Whether ``tool`` gets the math attention kernel from the benchmark (every tool but hessop's own products)."""
    return problem.math_attention and tool not in ("hessop", "scipy ARPACK on hessop")


def _bare_failure(make: Callable, problem) -> str | None:
    """The error of one product of the tool built and run as a user would, without the math kernel (None: it ran)."""
    from ._tools import Counter

    try:
        make(problem, (1,))["hvp"](Counter())
    except Exception as exc:  # noqa: BLE001 - any failure is what is reported
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:120]
    return None


def run_problem(name: str, repeats: int, ks=(1, 20), log=print, tasks=None, long: float = 60.0,
                num_threads: int | None = 1) -> dict:
    """Build every tool on one problem, run the tasks interleaved, and return the table rows."""
    problem = PROBLEMS[name]()
    log(f"{problem.name}: {problem.description}; n = {problem.num_params}")
    if problem.num_params <= DENSE_LIMIT:
        _problems.with_truth(problem, log)
    cases, setup, missing, bare = [], {}, [], {}
    for tool, make in TOOLS.items():
        helped = _needs_help(tool, problem)
        start = time.perf_counter()
        try:
            made = (_math_attention(make) if helped else make)(problem, ks)
        except Missing as exc:
            missing.append(f"{tool} (`{exc}` not installed)")
            continue
        setup[tool] = time.perf_counter() - start
        if helped:
            bare[tool] = _bare_failure(make, problem)
        cases += [Case(tool, task, _math_attention(fn) if helped else fn) for task, fn in made.items()
                  if tasks is None or task in tasks]
    cases.sort(key=lambda c: TASK_ORDER.index(c.task) if c.task in TASK_ORDER else 99)
    with threads(num_threads):  # the dense ground truth above used every core
        interleaved(cases, repeats, log, long=long)
    reference = {}
    if problem.eigenvalues is None:
        for c in cases:
            if c.tool.startswith("scipy") and c.runs:
                reference[c.task] = np.sort(c.value["eigenvalues"])[::-1]
    base = {c.task: c.seconds for c in cases if c.tool == "hessop" and c.runs}
    rows, errors = [], {}
    for c in cases:
        if c.error is not None:
            rows.append([c.task, c.tool, f"failed: {c.error}", "", "", "", ""])
            continue
        label = c.tool + (" (ARPACK)" if c.tool == "curvlinops" and c.task.startswith("top") else "")
        ratio = c.seconds / base[c.task] if c.task in base else float("nan")
        text, errors[id(c)] = accuracy(c.task, c.value, problem, reference)
        rows.append([c.task, label, text, c.hvps,
                     f"{c.seconds:.3g}", f"{ratio:.2f}" if np.isfinite(ratio) else "—", f"{c.peak_mib:.0f}"])
    return {"problem": problem, "rows": rows, "setup": setup, "missing": missing,
            "behind": behind(cases, errors), "bare": bare}


HEADER = ["task", "tool", "error", "HVPs", "time (s)", "time / hessop", "peak RSS growth (MiB)"]


NOTES = (
    "Errors: top-k is the largest relative error of the k largest eigenvalues; trace is the relative error "
    f"(estimate ± the tool's standard error where it gives one), all with {TRACE_BUDGET} HVPs (PyHessian with "
    f"`maxIter={TRACE_BUDGET}, tol=-inf`: its default `tol=1e-3` stops after as few as 2 products, at a larger "
    "error, which made its rows incomparable); each trace error is a single random draw; density is the "
    "1-Wasserstein distance between the "
    f"tool's spectral measure (one probe, {DENSITY_STEPS} Lanczos steps) and the exact eigenvalues, divided by the "
    "spectral width. Top-k uses each tool's default tolerance: hessop thick-restart Lanczos (relative residual "
    "1e-6, raised to the float32 floor 100 ε = 1.2e-5; its count includes a 2-product symmetry probe), ARPACK "
    "`which='LA'` with `tol=0`, PyHessian power iteration (`tol=1e-3` on the change of the eigenvalue), "
    "hessian-eigenthings Lanczos with its default `2k` steps and no restart (`top1:power` is its deflated power "
    "iteration). curvlinops has no eigensolver of its own: its rows run ARPACK on `to_scipy()`. PyHessian 0.1's "
    "density calls `torch.eig`, removed from PyTorch 2, so the benchmark supplies it from `torch.linalg.eigh`. "
    "hessop runs with `hvp=\"double-backward\"` (the algorithm the others use); its default `hvp=\"auto\"` "
    "takes the same for vectors over a kept graph and times the block strategies once per operator, a "
    "one-off cost that is not in these tables. Time ratios are against hessop on the same task; a case "
    "whose first run took over a minute is not repeated. On ResNet20 only one product, the top eigenvalue and "
    "Hutchinson's trace are run, and a case whose first run took over 10 s is not repeated; on the "
    "character-level GPT one product, the top eigenvalue and Hutch++'s trace.")


def model_block(res: dict, repeats: int, versions: dict) -> str:
    """The markdown of one model's comparison, with the command and versions that produced it."""
    p = res["problem"]
    truth = (f"ground truth: dense float64 Hessian ({p.truth_seconds:.0f} s to build and diagonalise)"
             if p.eigenvalues is not None else "no dense ground truth at this size: top-k errors are against "
             "ARPACK on hessop's operator, traces are shown with their standard errors")
    out = [f"### {p.name} — n = {p.num_params:,}", "",
           f"`python -m benchmarks compare {res['key']} --repeats {repeats}` ({res['repeats']} interleaved "
           f"repeat(s), fastest, {res['threads']} intra-op thread{'' if res['threads'] == 1 else 's'}; "
           f"{res['seconds']:.0f} s; 1-minute load average {res['load'][0]:.1f} before, "
           f"{res['load'][1]:.1f} after). {p.description}; {truth}.", ""]
    out.append("Operator construction (s): " + ", ".join(f"{t} {s:.2f}" for t, s in res["setup"].items())
               + ("; not installed: " + ", ".join(res["missing"]) if res["missing"] else "") + ".")
    if res.get("bare"):
        out.append("")
        out.append("The model calls `F.scaled_dot_product_attention`; hessop picks an attention kernel with second "
                   "derivatives itself, the other tools run inside `sdpa_kernel(SDPBackend.MATH)` here. Built and "
                   "run as a user would, without it, one product: " + "; ".join(
                       f"{t} {'ran' if e is None else 'failed (' + e + ')'}" for t, e in res["bare"].items()) + ".")
    lag = res["behind"]
    out += ["", markdown_table(HEADER, res["rows"]), "",
            "**Where hessop is behind here:** " + ("; ".join(lag) if lag else "nowhere in this table") + ".", "",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", ""]
    return "\n".join(out)


def main(argv=None, log=print, on_block=None) -> dict[str, str]:
    """Run the comparison; return ``{model: markdown block}`` (also passed to ``on_block`` as each model ends)."""
    from ._tools import versions

    ap = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(PROBLEMS), choices=list(PROBLEMS))
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats on the small models")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads while timing (0: leave as is)")
    args = ap.parse_args(argv)
    v = versions()
    blocks = {}
    for name in args.models:
        start, load = time.perf_counter(), os.getloadavg()[0]
        large, gpt = name == "resnet20", name == "gpt-char"
        res = run_problem(name, args.repeats, ks=(1,) if large or gpt else (1, 20), log=log,
                          tasks=LARGE_TASKS if large else GPT_TASKS if gpt else None, long=10.0 if large else 60.0,
                          num_threads=args.threads)
        res.update(key=name, repeats=args.repeats, threads=args.threads or "default",
                   seconds=time.perf_counter() - start,
                   load=(load, os.getloadavg()[0]))
        blocks[name] = model_block(res, args.repeats, v)
        if on_block is not None:
            on_block(name, blocks[name])
    return blocks


if __name__ == "__main__":
    print("\n".join(main().values()))
