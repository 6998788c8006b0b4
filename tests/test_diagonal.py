"""Diagonal estimators against the exact diagonal of prescribed-spectrum operators."""

import numpy as np
import pytest
from test_trace import NAMESPACES, Flaky, operator, run_ranks

from hessop._array import to_numpy
from hessop.solvers.diagonal import diagonal
from hessop.testing import SpectralOperator, low_rank_spectrum, nn_like_spectrum

METHODS = ["hutchinson", "xdiag"]


def exact(A):
    return np.diag(A.to_dense())


@pytest.mark.parametrize("name", NAMESPACES)
@pytest.mark.parametrize("method", METHODS)
def test_estimate_within_its_stderr(name, method):
    lam = nn_like_spectrum(150, seed=1)
    A = operator(lam, name)
    for seed in range(2):
        r = diagonal(A, method=method, max_matvecs=40, seed=seed)
        xp = NAMESPACES[name][0]
        assert type(r.estimate) is (np.ndarray if xp is None else type(xp.asarray([1.0])))  # native, not host
        est, err = to_numpy(r.estimate).astype(float), to_numpy(r.stderr).astype(float)
        assert est.shape == err.shape == (150,) and np.all(err > 0)
        z = (est - exact(A)) / err
        assert np.mean(np.abs(z) > 4) < 0.02  # heavy-ish tails allowed for a few entries
        assert r.num_matvecs == 42 and r.num_probes == (40 if method == "hutchinson" else 20)


@pytest.mark.parametrize("method", METHODS)
def test_stderr_is_honest_over_seeds(method):
    A = operator(nn_like_spectrum(150, seed=4))
    runs = [diagonal(A, method=method, max_matvecs=30, seed=s, check_symmetric=False) for s in range(30)]
    est = np.stack([r.estimate for r in runs])
    reported = np.sqrt(np.mean(np.stack([r.stderr for r in runs]) ** 2, axis=0))
    ratio = est.std(axis=0, ddof=1) / reported
    assert 0.6 < np.median(ratio) < 1.6
    assert np.mean(np.abs(est.mean(axis=0) - exact(A)) / (est.std(axis=0, ddof=1) / np.sqrt(30)) > 4) < 0.02


def test_hutchinson_is_exact_on_a_diagonal_matrix():
    d = np.linspace(-1.0, 3.0, 40)
    r = diagonal(np.diag(d), method="hutchinson", max_matvecs=4)
    np.testing.assert_allclose(r.estimate, d, atol=1e-14)
    np.testing.assert_allclose(r.stderr, 0.0, atol=1e-14)


def test_xdiag_exact_on_low_rank_and_beats_hutchinson():
    A = operator(low_rank_spectrum(150, rank=6))
    r = diagonal(A, method="xdiag", max_matvecs=30)
    np.testing.assert_allclose(r.estimate, exact(A), atol=1e-10)
    B = operator(nn_like_spectrum(150, seed=2))
    err = {m: np.sqrt(np.mean([(diagonal(B, method=m, max_matvecs=60, seed=s).estimate - exact(B)) ** 2
                               for s in range(4)])) for m in METHODS}
    assert err["xdiag"] < err["hutchinson"] / 5


@pytest.mark.parametrize("size", [2, 3])
def test_probe_parallel_matches_serial(size):
    A = operator(nn_like_spectrum(150, seed=5))
    serial = diagonal(A, method="hutchinson", max_matvecs=25, seed=3, block_size=4)
    results, calls = run_ranks(size, lambda c: diagonal(A, method="hutchinson", max_matvecs=25, seed=3, comm=c,
                                                        block_size=3))
    for r in results:
        np.testing.assert_allclose(r.estimate, serial.estimate, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(r.stderr, serial.stderr, rtol=1e-8)
        np.testing.assert_array_equal(r.estimate, results[0].estimate)  # identical on every rank
        assert r.num_probes == 25 and r.num_matvecs == 25 + 2 * size
    assert calls == [1] * size


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(max_matvecs=1), ValueError, ">= 2"),
    (dict(method="xdiag", max_matvecs=3), ValueError, ">= 4"),
    (dict(method="exact"), ValueError, "unknown method"),
    (dict(probe="uniform"), ValueError, "unknown probe"),
    (dict(method="xdiag", comm=object()), ValueError, "hutchinson"),
])
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        diagonal(SpectralOperator(nn_like_spectrum(40)), **{"method": "hutchinson", **kwargs})


@pytest.mark.parametrize("method", METHODS)
def test_nan_raises(method):
    with pytest.raises(FloatingPointError, match="NaN"):
        diagonal(Flaky(nn_like_spectrum(40), fail_at=1), method=method, check_symmetric=False)


def test_interrupt_returns_partial_average():
    A = Flaky(nn_like_spectrum(60), fail_at=3, failure="interrupt")
    r = diagonal(A, method="hutchinson", max_matvecs=40, block_size=4, check_symmetric=False)
    assert not r.converged and r.num_probes == 8 and np.all(np.isfinite(r.stderr))
