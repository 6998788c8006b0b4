"""Launched by tests/test_split.py: the solvers on an operator whose vectors are split over the ranks.

``python split.py OUTDIR results [quick]``: every solver (``quick``: eigsh, XTrace and SLQ) on a
:class:`~hessop.testing.SplitSpectralOperator` (uneven rows on 3 or more ranks); each rank writes
``OUTDIR/rank<r>.json`` with what it got.
``python split.py OUTDIR faults``: ranks that disagree on a solver's arguments, on the operator's
size or on its rows must all raise (caught and recorded); then the last rank fails inside a
product, which must end the job.
"""

import json
import sys

import numpy as np

import hessop
from hessop.distributed import world
from hessop.testing import SplitSpectralOperator, nn_like_spectrum

outdir, mode = sys.argv[1], sys.argv[2]
quick = len(sys.argv) > 3  # eigsh, trace and density only (4 ranks on a 2-core machine)
comm = world()
r, p = comm.rank, comm.size
n = 90
lam = nn_like_spectrum(n, num_outliers=6, null_fraction=0.3, seed=1)
rows = None
if p >= 3:  # rank 0 holds 7 rows, the others share the rest
    base, extra = divmod(n - 7, p - 1)
    rows = 7 if r == 0 else base + (r - 1 < extra)
A = SplitSpectralOperator(lam, comm, seed=3, rows=rows)
record = {"rank": r, "rows": A.split.rows, "offset": A.split.offset}

if mode == "results":
    for method in ("thick-restart", "block") if quick else ("thick-restart", "lanczos", "block"):
        res = hessop.eigsh(A, k=4, method=method, seed=5)
        X = A.split.gather(res.eigenvectors)
        record[method] = {"eigenvalues": res.eigenvalues.tolist(), "converged": res.converged.tolist(),
                          "num_matvecs": res.num_matvecs, "local_rows": int(res.eigenvectors.shape[0]),
                          "overlap": np.abs(np.sum(X * A.eigenvectors()[:, ::-1][:, :4], axis=0)).tolist()}
    if not quick:
        record["power"] = hessop.eigsh(A, k=2, method="power", seed=5, tol=1e-8).eigenvalues.tolist()
    for method in ("xtrace",) if quick else ("xtrace", "hutch++", "hutchinson"):
        t = hessop.trace(A, method=method, max_matvecs=40, seed=2)
        record["trace_" + method] = [t.estimate, t.stderr]
    rho = hessop.density(A, num_probes=2, num_steps=15, seed=4)
    record["density"] = {"nodes": rho.nodes.tolist(), "weights": rho.weights.tolist()}
    for method in () if quick else ("xdiag", "hutchinson"):
        d = hessop.diagonal(A, method=method, max_matvecs=30, seed=6)
        record["diagonal_" + method] = A.split.gather(d.estimate).tolist()
    for kind in () if quick else ("nystrom", "rademacher"):
        s = hessop.sketch(A, d=12, kind=kind, seed=7, refine=True)
        record["sketch_" + kind] = s.eigenvalues[:6].tolist()
    if not quick:  # the solves and matrix functions (issue 22) on split vectors, b given whole on every rank
        b = np.random.default_rng(8).standard_normal(n)
        x = hessop.solve(A, b, damping=1.0, rtol=1e-10)
        record["solve"] = A.split.gather(x.x).tolist()
        record["funm"] = A.split.gather(hessop.funm(A, b, "exp", rtol=1e-10).x).tolist()
        record["logdet"] = hessop.logdet(A, damping=1.0, num_probes=6, deflate=4, seed=9).estimate
    try:
        A @ np.ones(n)
    except TypeError as exc:
        record["host"] = str(exc)
else:
    try:
        hessop.eigsh(A, k=3 + r, seed=1)
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        record["args"] = [type(exc).__name__, str(exc)]
    try:  # the last rank builds a larger operator: mismatched layouts
        SplitSpectralOperator(nn_like_spectrum(n + (r == p - 1), seed=1), comm, seed=3)
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        record["layout"] = [type(exc).__name__, str(exc)]
    try:  # rows that do not add up to n
        SplitSpectralOperator(lam, comm, seed=3, rows=n // p + 1)
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        record["bad_rows"] = [type(exc).__name__, str(exc)]
    with open(f"{outdir}/rank{r}.json", "w") as fh:
        json.dump(record, fh)
    count = 0

    def failing(V, _apply=A.apply):
        global count
        count += 1
        if r == p - 1 and count == 5:
            raise ValueError(f"rank {r} lost its shard in product 5")
        return _apply(V)

    A.apply = failing
    hessop.eigsh(A, k=3, seed=1, check_symmetric=False)
with open(f"{outdir}/rank{r}.json", "w") as fh:
    json.dump(record, fh)
