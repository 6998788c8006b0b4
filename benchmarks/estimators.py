"""Stochastic estimators: products needed for 1% trace error, and SLQ density error at 90 steps.

One run, one markdown table (``python benchmarks/estimators.py``):

* Hutchinson, Hutch++ and XTrace on a neural-network-like spectrum (n = 1000, a dense
  operator with a random orthogonal basis): for budgets on a fixed grid, the median
  relative error over seeds; the table gives the smallest budget from which the median
  error stays at most 1% (goal: XTrace needs at most a third of Hutchinson's products).
* SLQ with 4 probes x 90 steps on the same spectrum: 1-Wasserstein distance to the
  exact eigenvalue distribution over the spectral width, median over seeds (goal < 1%).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hessop.solvers.density import density, spectral_distance  # noqa: E402
from hessop.solvers.trace import trace  # noqa: E402
from hessop.testing import nn_like_spectrum  # noqa: E402

GRID = [8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096]


def dense_operator(lam: np.ndarray, seed: int) -> np.ndarray:
    """``Q diag(lam) Qᵀ`` with ``Q`` from the QR of a Gaussian matrix (dense, so off-diagonals are generic)."""
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((lam.size, lam.size)))
    A = (Q * lam) @ Q.T
    return 0.5 * (A + A.T)


def median_errors(A, exact: float, method: str, seeds: int) -> dict[int, tuple[float, float]]:
    """For every budget on the grid: (median relative error, median reported relative stderr) over seeds."""
    out = {}
    if method == "hutchinson":  # probe i is the same whatever the budget: one run gives every prefix
        runs = [trace(A, method=method, max_matvecs=GRID[-1], seed=s, check_symmetric=False).samples
                for s in range(seeds)]
        for m in GRID:
            est = np.array([x[:m].mean() for x in runs])
            se = np.array([x[:m].std(ddof=1) / np.sqrt(m) for x in runs])
            out[m] = float(np.median(np.abs(est - exact))) / abs(exact), float(np.median(se)) / abs(exact)
        return out
    for m in GRID:
        runs = [trace(A, method=method, max_matvecs=m, seed=s, check_symmetric=False) for s in range(seeds)]
        out[m] = (float(np.median([abs(r.estimate - exact) for r in runs])) / abs(exact),
                  float(np.median([r.stderr for r in runs])) / abs(exact))
        if out[m][0] <= 0.002:  # well past the target: larger budgets are not needed
            break
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--target", type=float, default=0.01)
    args = p.parse_args(argv)

    lam = nn_like_spectrum(args.n, seed=0)
    A = dense_operator(lam, seed=1)
    exact = float(lam.sum())
    rows, needed = [], {}
    for method in ("hutchinson", "hutch++", "xtrace"):
        errs = median_errors(A, exact, method, args.seeds)
        done = sorted(errs)  # the smallest budget from which the median error stays within the target
        hit = next((m for i, m in enumerate(done) if all(errs[j][0] <= args.target for j in done[i:])), None)
        needed[method] = hit
        err, se = errs[hit] if hit else (errs[max(errs)][0], errs[max(errs)][1])
        rows.append((method, f"{hit}" if hit else f"> {GRID[-1]}", f"{100 * err:.2f}%", f"{100 * se:.2f}%"))

    print(f"Trace of an NN-like spectrum (n = {args.n}, tr = {exact:.2f}), {args.seeds} seeds, "
          f"target median relative error {100 * args.target:g}%; budgets on the grid {GRID[0]}..{GRID[-1]}\n")
    print("| method | matvecs to reach the target | median rel. error there | median reported rel. stderr |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if needed["hutchinson"] and needed["xtrace"]:
        ratio = needed["xtrace"] / needed["hutchinson"]
        print(f"\nXTrace / Hutchinson products: {ratio:.3f} (goal <= 1/3: {'met' if ratio <= 1 / 3 else 'NOT met'})")

    width = lam.max() - lam.min()
    dists = [spectral_distance(density(A, num_probes=4, num_steps=90, seed=s, check_symmetric=False), lam) / width
             for s in range(args.seeds)]
    med = float(np.median(dists))
    print("\n| SLQ (4 probes x 90 steps = 360 matvecs) | median W1 / spectral width | worst over seeds |")
    print("|---|---|---|")
    print(f"| n = {args.n} | {100 * med:.3f}% | {100 * max(dists):.3f}% |")
    print(f"\nSLQ goal W1 / width < 1%: {'met' if med < 0.01 else 'NOT met'}")


if __name__ == "__main__":
    main()
