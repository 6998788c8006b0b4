"""Several independent draws of each tool's trace estimate on one of the comparison's models.

    python benchmarks/trace_draws.py                                   # ResNet20, 4 seeds, 96 products
    python benchmarks/trace_draws.py --problem mlp-digits --seeds 8

One trace of 96 random products is one draw of a random variable; the comparison table shows a
single draw per tool. This script shows the spread between draws next to the standard error each
draw reports, and checks first that hessop's Hessian-vector product equals PyHessian's on the
model, so that a gap between the tools' estimates can be told apart from a gap between their
Hessians. The tools other than hessop appear only when installed (``benchmarks/setup_env.sh``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import _adapters  # noqa: E402
from benchmarks.compare import PROBLEMS  # noqa: E402


def hessop_draws(H, seeds, max_matvecs: int, method: str) -> list[tuple[float, float]]:
    """(estimate, standard error) of ``hessop.trace`` for each seed."""
    from hessop.solvers.trace import trace

    out = []
    for seed in seeds:
        r = trace(H, method=method, max_matvecs=max_matvecs, seed=seed, check_symmetric=False)
        out.append((float(r.estimate), float(r.stderr)))
    return out


def pyhessian_draws(problem, H, seeds, max_matvecs: int) -> tuple[float, list[tuple[float, float]]]:
    """The relative difference of PyHessian's product from hessop's (``H``), and its Hutchinson draws."""
    cls = _adapters._pyhessian()
    ph = cls(problem.model, problem.loss, data=problem.data, cuda=False)
    mod = sys.modules["pyhessian.hessian"]
    v = _adapters._vector(H.shape[0])
    mine = np.asarray(H.apply(v), dtype=np.float64)
    parts = torch.split(v, [p.numel() for p in ph.params])
    theirs = _adapters._flat(mod.hessian_vector_product(ph.gradsH, ph.params,
                                                        [a.reshape(p.shape) for a, p in zip(parts, ph.params)]))
    difference = float(np.linalg.norm(mine - theirs) / np.linalg.norm(theirs))
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        s = ph.trace(maxIter=max_matvecs, tol=float("-inf"))  # exactly max_matvecs products
        out.append((float(np.mean(s)), float(np.std(s, ddof=1) / np.sqrt(len(s)))))
    return difference, out


def summary(draws: list[tuple[float, float]]) -> str:
    """The draws, their mean, their spread, and the root-mean-square of the reported standard errors."""
    est = np.array([d[0] for d in draws])
    se = np.array([d[1] for d in draws])
    text = ", ".join(f"{e:.4g} ± {s:.3g}" for e, s in draws)
    if len(draws) > 1:
        text += (f"\n    mean {est.mean():.4g}, spread between draws {est.std(ddof=1):.3g}, "
                 f"reported standard error {np.sqrt(np.mean(se**2)):.3g}")
    return text


def main(argv=None, log=print) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problem", default="resnet20", choices=list(PROBLEMS))
    ap.add_argument("--seeds", type=int, default=4, help="draws per estimator (seeds 0, 1, ...)")
    ap.add_argument("--max-matvecs", type=int, default=96)
    ap.add_argument("--methods", nargs="*", default=["hutchinson", "xtrace"])
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.max_matvecs < 3:
        ap.error("--seeds must be at least 1 and --max-matvecs at least 3")
    import hessop

    problem = PROBLEMS[args.problem]()
    H = hessop.hessian(problem.model, problem.loss, problem.data)
    seeds = range(args.seeds)
    results = {}
    for method in args.methods:
        results[f"hessop {method}"] = hessop_draws(H, seeds, args.max_matvecs, method)
        log(f"hessop {method}: {summary(results[f'hessop {method}'])}")
    try:
        difference, results["pyhessian hutchinson"] = pyhessian_draws(problem, H, seeds, args.max_matvecs)
    except _adapters.Missing:
        log("PyHessian is not installed: its draws are skipped (benchmarks/setup_env.sh)")
    else:
        results["product difference"] = difference
        log(f"PyHessian's product against hessop's: relative difference {difference:.2g}")
        log(f"pyhessian hutchinson: {summary(results['pyhessian hutchinson'])}")
    return results


if __name__ == "__main__":
    main()
