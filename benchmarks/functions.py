"""Functions of the operator: solves against scipy, the funm error estimate, SLQ log-det coverage.

    python benchmarks/functions.py solve      # products and time to rtol: hessop.solve vs scipy cg / minres
    python benchmarks/functions.py funm       # how often funm's error estimate is below the true error
    python benchmarks/functions.py logdet     # ±2σ / ±3σ coverage of logdet over 300 seeds; error per product

Prints markdown tables (copied into docs/numerics.md, "Functions of the operator"). One thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import scipy.sparse.linalg as sla  # noqa: E402

from hessop.solvers.funm import funm  # noqa: E402
from hessop.solvers.solve import solve  # noqa: E402
from hessop.solvers.trace_function import logdet  # noqa: E402
from hessop.testing import SpectralOperator, clustered_spectrum, geometric_spectrum, nn_like_spectrum  # noqa: E402


def cubic(n: int, seed: int = 0) -> np.ndarray:
    """Eigenvalues in (0, 30] crowding towards zero (the tests' SPD spectrum)."""
    return np.sort(30.0 * np.random.default_rng(seed).uniform(0, 1, n) ** 3)


def bench_solve(n: int = 1500, damping: float = 1e-2, rtol: float = 1e-7) -> None:
    indefinite = cubic(n)
    indefinite[:40] = -np.random.default_rng(1).uniform(0.1, 5.0, 40)
    cases = {"SPD (cubic)": cubic(n), "40 negative": np.sort(indefinite),
             "NN-like (|λ|)": np.abs(nn_like_spectrum(n, seed=3))}
    print(f"n = {n}, damping = {damping}, rtol = {rtol}; products include hessop's symmetry probe (2) and its "
          "final true residual (1)\n")
    print("| spectrum | method | hessop products | hessop s | hessop true residual | scipy products | scipy s "
          "| scipy true residual |")
    print("|---|---|---|---|---|---|---|---|")
    b = np.random.default_rng(5).standard_normal(n)
    for name, lam in cases.items():
        A = SpectralOperator(lam, seed=1, implicit=True)
        for method, ref in (("cg", sla.cg), ("minres", sla.minres), ("auto", None)):
            t = time.perf_counter()
            r = solve(A, b, damping=damping, method=method, rtol=rtol)
            th = time.perf_counter() - t
            flag = "" if r.converged else " (not converged)"
            row = f"| {name} | {method} | {r.num_matvecs} | {th:.2f} | {r.residual:.1e}{flag} |"
            if ref is None:
                print(row + " - | - | - |")
                continue
            calls = [0]

            def mv(v, A=A, calls=calls):
                calls[0] += 1
                return A @ v + damping * v

            L = sla.LinearOperator(A.shape, matvec=mv, dtype=np.float64)
            # scipy's minres stops on its own estimate relative to ||A|| ||x||, far above the residual
            # asked for: tighten its rtol tenfold until the true residual gets there (the row shows which)
            for asked in [rtol * 10.0**-j for j in range(8 if ref is sla.minres else 1)]:
                calls[0] = 0
                t = time.perf_counter()
                x, info = ref(L, b, rtol=asked, maxiter=10 * n)
                ts = time.perf_counter() - t
                res = np.linalg.norm(b - A @ x - damping * x) / np.linalg.norm(b)
                if res <= rtol:
                    break
            note = ("" if info == 0 else f" (info {info})") + (f" at rtol={asked:.0e}" if asked != rtol else "")
            print(row + f" {calls[0]} | {ts:.2f} | {res:.1e}{note} |")


def bench_curvlinops(n: int = 1500, damping: float = 1e-2, rtol: float = 1e-7) -> None:
    """curvlinops' ``CGInverseLinearOperator`` runs GPyTorch's ``linear_cg``: the same system, counted products."""
    try:
        import torch
        from linear_operator.utils.linear_cg import linear_cg
    except ImportError:
        print("\ncurvlinops / linear_operator not installed (benchmarks/setup_env.sh): skipped")
        return
    print("\ncurvlinops' CG (GPyTorch `linear_cg`, as `CGInverseLinearOperator` calls it), tolerance "
          f"{rtol:g}, at most 15,000 iterations:\n")
    print("| spectrum | products | true residual |")
    print("|---|---|---|")
    b = np.random.default_rng(5).standard_normal(n)
    for name, lam in {"SPD (cubic)": cubic(n), "NN-like (|λ|)": np.abs(nn_like_spectrum(n, seed=3))}.items():
        A = SpectralOperator(lam, seed=1, implicit=True)
        calls = [0]

        def mm(X, A=A, calls=calls):
            calls[0] += X.shape[1]
            return torch.from_numpy(A @ X.numpy() + damping * X.numpy())

        x = linear_cg(mm, torch.from_numpy(b)[:, None], tolerance=rtol, max_iter=15000).numpy()[:, 0]
        res = np.linalg.norm(b - A @ x - damping * x) / np.linalg.norm(b)
        print(f"| {name} | {calls[0]} | {res:.1e} |")


def bench_funm(n: int = 300, seeds: int = 60) -> None:
    functions = {"sqrt": np.sqrt, "log": np.log, "exp(-t)": lambda t: np.exp(-t), "inv": lambda t: 1.0 / t}
    below, total, ratios = 0, 0, []
    for s in range(seeds):
        g = np.random.default_rng(s)
        kind = s % 5
        lam = [np.abs(nn_like_spectrum(n, seed=s)) + 10 ** g.uniform(-4, -1),
               geometric_spectrum(n, ratio=g.uniform(0.9, 0.99)) + 1e-3, clustered_spectrum(n, seed=s),
               10 ** g.uniform(-3, 1, n), g.uniform(0, 1, n) ** 4 * 50 + 10 ** g.uniform(-5, -1)][kind]
        A = SpectralOperator(lam, seed=s, implicit=True)
        Q = A.eigenvectors()
        v = g.standard_normal(n)
        c = Q.T @ v
        for fn in functions.values():
            for rtol in (1e-4, 1e-8):
                r = funm(A, v, fn, rtol=rtol, check_symmetric=False)
                err = np.linalg.norm(r.x - Q @ (fn(A.eigenvalues) * c))
                total += 1
                below += r.error < err
                ratios.append(r.error / max(err, 1e-300))
    q = np.quantile(ratios, [0.1, 0.5])
    print(f"{total} cases (n = {n}; {seeds} spectra of 5 families x sqrt/log/exp(-t)/inv x rtol 1e-4/1e-8): "
          f"estimate below the true error in {below}; estimate/true error: 10th percentile {q[0]:.3g}, "
          f"median {q[1]:.3g}")


def bench_logdet(n: int = 200, seeds: int = 300, damping: float = 1e-2) -> None:
    g = np.random.default_rng(11)
    cases = {"NN-like (|λ|)": np.abs(nn_like_spectrum(n, num_outliers=5, seed=2)),
             "exponential": np.sort(g.exponential(1.0, n)), "cubic": cubic(n)}
    print(f"n = {n}, damping = {damping}, 60 probes, {seeds} seeds\n")
    print("| spectrum | deflate | ±2σ covers | ±3σ covers | mean products | mean abs error / truth | mean stderr |")
    print("|---|---|---|---|---|---|---|")
    for name, lam in cases.items():
        A = SpectralOperator(lam, seed=3)
        truth = float(np.sum(np.log(lam + damping)))
        for k in (0, 5):
            z, prods, errs, ses = [], [], [], []
            for s in range(seeds):
                r = logdet(A, damping=damping, deflate=k, seed=s, check_symmetric=False)
                z.append((r.estimate - truth) / r.stderr)
                prods.append(r.num_matvecs)
                errs.append(abs(r.estimate - truth))
                ses.append(r.stderr)
            z = np.abs(np.array(z))
            print(f"| {name} | {k} | {np.mean(z <= 2):.1%} | {np.mean(z <= 3):.1%} | {np.mean(prods):.0f} | "
                  f"{np.mean(errs) / abs(truth):.2e} | {np.mean(ses):.3g} |")
    print("\nError per product (NN-like, n = 1500, damping 1e-2, one seed per row):\n")
    print("| probes | deflate | products | abs error | stderr |")
    print("|---|---|---|---|---|")
    lam = np.abs(nn_like_spectrum(1500, seed=3))
    A = SpectralOperator(lam, seed=1, implicit=True)
    truth = float(np.sum(np.log(lam + damping)))
    for probes in (10, 30, 60, 120):
        for k in (0, 10):
            r = logdet(A, damping=damping, deflate=k, num_probes=probes, seed=probes)
            print(f"| {probes} | {k} | {r.num_matvecs} | {abs(r.estimate - truth):.3g} | {r.stderr:.3g} |")


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore", RuntimeWarning)  # uncalibrated few-probe rows are asked for on purpose
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["solve", "funm", "logdet"])
    parser.add_argument("--seeds", type=int, default=None)
    args = parser.parse_args()
    if args.what == "solve":
        bench_solve()
        bench_curvlinops()
    elif args.what == "funm":
        bench_funm(seeds=args.seeds or 60)
    else:
        bench_logdet(seeds=args.seeds or 300)
