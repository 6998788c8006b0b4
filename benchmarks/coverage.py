"""Coverage of the error bars: how often ``estimate ± c·stderr`` holds the exact value, over seeds.

One run, one markdown table (``python benchmarks/coverage.py``, a few minutes on one core):
for every operator (three prescribed spectra and the Hessian of a small trained torch MLP, all
dense float64 with a random orthogonal basis, n about 100), every estimator (``trace`` with
XTrace, Hutch++ and Hutchinson; ``diagonal`` with XDiag and Hutchinson, pooled over the entries;
the trace and second moment a ``density`` reports) and every budget, it runs ``--seeds`` seeds
and counts

* ``calibrated``: the share of results that claim a calibrated interval (``result.calibrated``);
* ``±2σ`` and ``±3σ``: the share of calibrated results whose interval covers the truth (the
  promise: 93-97% and at least 99%);
* ``±2σ uncal.``: the same over the results flagged uncalibrated (no promise is made there).

With ``--write`` the table replaces the block between the coverage markers of ``docs/numerics.md``.
Code without a ``calibrated`` field (an older hessop) counts every result as calibrated.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hessop.solvers.density import density  # noqa: E402
from hessop.solvers.diagonal import diagonal  # noqa: E402
from hessop.solvers.trace import trace  # noqa: E402
from hessop.testing import SpectralOperator, low_rank_spectrum, nn_like_spectrum  # noqa: E402

BEGIN, END = "<!-- coverage table: begin -->", "<!-- coverage table: end -->"


def spectra(n: int) -> dict[str, np.ndarray]:
    """The prescribed spectra: NN-like, low rank plus noise, flat."""
    g = np.random.default_rng(11)
    return {
        "nn-like": nn_like_spectrum(n, num_outliers=5, seed=2),
        "low-rank+noise": low_rank_spectrum(n, rank=5, top=10.0) + 0.05 * g.exponential(1.0, n),
        "flat": g.uniform(0.5, 1.5, n),
    }


def mlp_hessian(seed: int = 0) -> np.ndarray:
    """The dense float64 Hessian of a small tanh MLP (5-12-3, 111 parameters) trained on synthetic data."""
    import torch

    torch.manual_seed(seed)
    X = torch.randn(64, 5, dtype=torch.float64)
    y = (X[:, 0] + X[:, 1] ** 2 > 1).long() + (X[:, 2] > 0.5).long()
    model = torch.nn.Sequential(torch.nn.Linear(5, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3)).double()
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    params = [p.detach() for p in model.parameters()]
    shapes = [p.shape for p in params]
    flat = torch.cat([p.reshape(-1) for p in params])

    def loss(w):
        out, i = [], 0
        for s in shapes:
            k = int(np.prod(s))
            out.append(w[i:i + k].reshape(s))
            i += k
        h = torch.tanh(X @ out[0].T + out[1])
        return torch.nn.functional.cross_entropy(h @ out[2].T + out[3], y)

    H = torch.autograd.functional.hessian(loss, flat).numpy()
    return 0.5 * (H + H.T)


def operators(n: int) -> dict[str, np.ndarray]:
    ops = {name: SpectralOperator(lam, seed=1).to_dense() for name, lam in spectra(n).items()}
    ops["mlp"] = mlp_hessian()
    return ops


def _calibrated(r) -> bool:
    return bool(getattr(r, "calibrated", True))


def trace_runs(A, method, budget, seeds, rtol=None):
    exact = float(np.trace(A))
    for s in range(seeds):
        r = trace(A, method=method, max_matvecs=budget, seed=s, check_symmetric=False, rtol=rtol)
        yield np.array([r.estimate - exact]), np.array([r.stderr]), _calibrated(r)


def diagonal_runs(A, method, budget, seeds):
    exact = np.diag(A)
    for s in range(seeds):
        r = diagonal(A, method=method, max_matvecs=budget, seed=s, check_symmetric=False)
        yield np.asarray(r.estimate) - exact, np.asarray(r.stderr), _calibrated(r)


_DENSITIES: dict = {}


def density_runs(A, order, probes, seeds):
    n = A.shape[0]
    exact = float(np.trace(np.linalg.matrix_power(A, order))) / n
    for s in range(seeds):
        key = (id(A), probes, s)  # one SLQ run serves both moments
        if key not in _DENSITIES:
            _DENSITIES[key] = density(A, num_probes=probes, num_steps=6, seed=s, check_symmetric=False)
        rho = _DENSITIES[key]
        mean, err = rho.moments((order,))
        cal = getattr(rho, "calibrated", True)
        yield np.array([mean[0] - exact]), np.array([err[0]]), bool(cal)


ESTIMATORS = {
    "trace xtrace": (lambda A, b, s: trace_runs(A, "xtrace", b, s), (8, 24, 60)),
    "trace xtrace rtol=0.01": (lambda A, b, s: trace_runs(A, "xtrace", b, s, rtol=0.01), (400,)),
    "trace hutch++": (lambda A, b, s: trace_runs(A, "hutch++", b, s), (8, 48, 72)),
    "trace hutch++ rtol=0.01": (lambda A, b, s: trace_runs(A, "hutch++", b, s, rtol=0.01), (400,)),
    "trace hutch++ rtol=6e-4": (lambda A, b, s: trace_runs(A, "hutch++", b, s, rtol=6e-4), (3000,)),
    "trace xtrace rtol=6e-4": (lambda A, b, s: trace_runs(A, "xtrace", b, s, rtol=6e-4), (3000,)),
    "trace hutchinson rtol=0.03": (lambda A, b, s: trace_runs(A, "hutchinson", b, s, rtol=0.03), (3000,)),
    "trace hutchinson": (lambda A, b, s: trace_runs(A, "hutchinson", b, s), (4, 60, 120)),
    "diagonal xdiag": (lambda A, b, s: diagonal_runs(A, "xdiag", b, s), (8, 24, 60)),
    "diagonal hutchinson": (lambda A, b, s: diagonal_runs(A, "hutchinson", b, s), (4, 12, 60)),
    "density tr(A)/n": (lambda A, b, s: density_runs(A, 1, b, s), (4, 60)),
    "density tr(A²)/n": (lambda A, b, s: density_runs(A, 2, b, s), (4, 60)),
}
"""Name: (runs(A, budget, seeds) yielding (errors, stderrs, calibrated), budgets: products, or probes for SLQ)."""


def coverage(runs) -> dict:
    """Counts over a stream of (errors, stderrs, calibrated): calibrated share and hits at 2σ and 3σ."""
    out = {"runs": 0, "cal": 0, "cal_n": 0, "cal2": 0, "cal3": 0, "unc_n": 0, "unc2": 0, "exact": 0}
    for err, se, cal in runs:
        err, se = np.abs(err), np.asarray(se)
        slack = 1e-9 * (1.0 + np.abs(err).max())  # an exact entry with a zero stderr is covered
        out["runs"] += 1
        out["exact"] += int(np.all(se == 0) and np.all(err <= slack))  # a sketch that spans the space
        if cal:
            out["cal"] += 1
            out["cal_n"] += err.size
            out["cal2"] += int(np.sum(err <= 2 * se + slack))
            out["cal3"] += int(np.sum(err <= 3 * se + slack))
        else:
            out["unc_n"] += err.size
            out["unc2"] += int(np.sum(err <= 2 * se + slack))
    return out


def _pct(a, b) -> str:
    return f"{100 * a / b:.1f}" if b else "-"


def table(ops, seeds: int, only=None) -> tuple[list[str], list[tuple]]:
    lines = ["| operator | estimator | budget | calibrated % | ±2σ % | ±3σ % | ±2σ % uncal. |",
             "|---|---|---|---|---|---|---|"]
    rows = []
    for name, A in ops.items():
        for est, (runs, budgets) in ESTIMATORS.items():
            if only and not any(o in est for o in only):
                continue
            for b in budgets:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    c = coverage(runs(A, b, seeds))
                unit = " probes" if est.startswith("density") else ""
                exact = f" (exact in {_pct(c['exact'], c['runs'])}%)" if c["exact"] else ""
                row = (name, est, f"{b}{unit}{exact}", _pct(c["cal"], c["runs"]), _pct(c["cal2"], c["cal_n"]),
                       _pct(c["cal3"], c["cal_n"]), _pct(c["unc2"], c["unc_n"]))
                rows.append((name, est, b, c))
                lines.append("| " + " | ".join(row) + " |")
                print(lines[-1], flush=True)
    return lines, rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seeds", type=int, default=300)
    p.add_argument("--only", nargs="*", help="estimators whose name contains one of these words")
    p.add_argument("--write", action="store_true", help="put the table into docs/numerics.md")
    p.add_argument("--nn400", action="store_true",
                   help="only the NN-like spectrum of n = 400 of issue 19 (adaptive rows: --only rtol)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    ops = {"nn-like 400": SpectralOperator(nn_like_spectrum(400, seed=0), seed=1).to_dense()} if args.nn400 \
        else operators(args.n)
    print(f"{args.seeds} seeds; n = {', '.join(f'{k} {v.shape[0]}' for k, v in ops.items())}\n", flush=True)
    lines, rows = table(ops, args.seeds, args.only)
    bad, noisy = [], []
    for o, e, b, c in rows:
        if not c["cal_n"]:
            continue
        c2, c3 = c["cal2"] / c["cal_n"], c["cal3"] / c["cal_n"]
        # binomial noise of a share over the seeds (entries of one diagonal are not independent draws)
        sd2, sd3 = math.sqrt(0.95 * 0.05 / c["cal"]), math.sqrt(0.99 * 0.01 / c["cal"])
        if not (0.93 <= c2 <= 0.97 and c3 >= 0.99):
            inside = 0.93 - 2 * sd2 <= c2 <= 0.97 + 2 * sd2 and c3 >= 0.99 - 2 * sd3
            if c["exact"] < c["runs"]:  # an exact answer has a zero error bar: no band applies
                (noisy if inside else bad).append((o, e, b))
    print(f"\ncalibrated rows outside 93-97% / >= 99%: within two binomial standard deviations {noisy or 'none'}; "
          f"beyond them {bad or 'none'}")
    print(f"{time.perf_counter() - t0:.0f} s")
    if args.write and not args.nn400:
        doc = ROOT / "docs" / "numerics.md"
        text = doc.read_text()
        head, rest = text.split(BEGIN)
        _, tail = rest.split(END)
        block = (f"\n`python benchmarks/coverage.py` ({args.seeds} seeds, n = {args.n}; MLP n = "
                 f"{ops['mlp'].shape[0]}):\n\n" + "\n".join(lines) + "\n")
        doc.write_text(head + BEGIN + block + END + tail)


if __name__ == "__main__":
    main()
