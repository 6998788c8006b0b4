"""solve, funm and logdet on a data-parallel Hessian over MPI: every rank ends with the one-process result."""

from __future__ import annotations

import numpy as np
import pytest
from test_distributed import needs_mpi, run_ranks

pytest.importorskip("torch")


@needs_mpi
@pytest.mark.mpi
@pytest.mark.filterwarnings("ignore")
def test_data_parallel_ranks_agree_with_one_process(tmp_path):
    one = run_ranks(1, "functions.py", tmp_path)[0]
    ranks = run_ranks(2, "functions.py", tmp_path)
    D = np.array(one["dense"])
    b = np.random.default_rng(2).standard_normal(D.shape[0])
    x = np.linalg.solve(D + 1e-3 * np.eye(len(b)), b)
    assert one["converged"] and one["method"] == "cg+minres"  # H + 1e-3 I is indefinite here
    np.testing.assert_allclose(one["x"], x, rtol=0, atol=1e-6 * np.linalg.norm(x))
    for r in ranks:
        assert r["converged"] and r["method"] == one["method"]
        # rounding of the sums over shards moves a tight (rtol 1e-9) indefinite solve by a few iterations
        assert abs(r["matvecs"] - one["matvecs"]) <= max(2, 0.05 * one["matvecs"]), (r["matvecs"], one["matvecs"])
        np.testing.assert_allclose(r["x"], ranks[0]["x"], rtol=0, atol=0)  # the ranks agree bitwise
        np.testing.assert_allclose(r["x"], x, rtol=0, atol=1e-6 * np.linalg.norm(x))
        np.testing.assert_allclose(r["funm"], one["funm"], rtol=0, atol=1e-7 * np.linalg.norm(one["funm"]))
        assert r["logdet"] == pytest.approx(one["logdet"], rel=1e-8)
