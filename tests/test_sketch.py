"""Eigenvalue sketches against exact spectra."""

import numpy as np
import pytest
from test_density import dense
from test_trace import NAMESPACES

from hessop.solvers.sketch import sketch
from hessop.testing import geometric_spectrum, indefinite_spectrum, low_rank_spectrum, nn_like_spectrum


@pytest.mark.parametrize("name", NAMESPACES)
@pytest.mark.parametrize("kind", ["rademacher", "nystrom"])
def test_exact_at_full_size_with_refinement(name, kind):
    lam = geometric_spectrum(60, 0.8) if kind == "nystrom" else nn_like_spectrum(60, num_outliers=3)
    A, _ = dense(lam, seed=1, name=name)
    s = sketch(A, d=60, method=kind, refine=True)
    np.testing.assert_allclose(s.eigenvalues, lam[::-1], atol=1e-9 * np.abs(lam).max())
    assert s.refined and s.num_matvecs == 2 + 60 + 60 and s.method == kind
    assert np.all(np.diff(s.eigenvalues) <= 0)  # descending


def test_rademacher_trace_is_unbiased_within_its_stderr():
    lam = nn_like_spectrum(200, seed=3)
    A, _ = dense(lam, seed=2)
    runs = [sketch(A, d=20, seed=s, check_symmetric=False) for s in range(30)]
    tr = np.array([r.trace for r in runs])
    reported = np.sqrt(np.mean([r.trace_stderr**2 for r in runs]))
    assert abs(tr.mean() - lam.sum()) < 4 * tr.std(ddof=1) / np.sqrt(30)
    assert 0.5 < tr.std(ddof=1) / reported < 2.0
    for r in runs[:3]:  # the trace of the sketch is the trace of its eigenvalues
        assert np.sum(r.eigenvalues) == pytest.approx(r.trace)


def test_rademacher_top_eigenvalues_within_frobenius_over_root_d():
    lam = indefinite_spectrum(300, seed=1)
    lam[:3], lam[-3:] = [-40.0, -30.0, -25.0], [20.0, 35.0, 50.0]
    A, _ = dense(lam, seed=4)
    s = sketch(A, d=100, seed=2)
    bound = np.linalg.norm(lam) / np.sqrt(100)  # Swartworth & Woodruff: additive error O(||A||_F / sqrt(d))
    assert abs(s.eigenvalues[0] - 50.0) < bound and abs(s.eigenvalues[-1] + 40.0) < bound
    s2 = sketch(A, d=100, seed=2, refine=True)  # Ritz values are much sharper
    assert abs(s2.eigenvalues[0] - 50.0) < 0.1 * bound and abs(s2.eigenvalues[-1] + 40.0) < 0.1 * bound


def test_nystrom_recovers_a_low_rank_psd_operator():
    lam = low_rank_spectrum(200, rank=6)
    A, _ = dense(lam, seed=3)
    s = sketch(A, d=15, method="nystrom")
    np.testing.assert_allclose(s.eigenvalues[:6], lam[::-1][:6], rtol=1e-8)
    np.testing.assert_allclose(s.eigenvalues[6:], 0.0, atol=1e-8)
    assert s.trace == pytest.approx(lam.sum(), rel=1e-8) and np.isnan(s.trace_stderr) and s.num_matvecs == 17
    top = sketch(dense(geometric_spectrum(200, 0.7), seed=1)[0], d=40, method="nystrom").eigenvalues
    np.testing.assert_allclose(top[:5], 0.7 ** np.arange(5), rtol=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(d=0), "between 1 and n"),
    (dict(d=31), "between 1 and n"),
    (dict(d=2.5), "between 1 and n"),
    (dict(method="gaussian"), "unknown method"),
    (dict(method="nystrom", d=10), "positive semi-definite"),
])
def test_bad_input(kwargs, match):
    A, _ = dense(indefinite_spectrum(30), seed=1)
    with pytest.raises(ValueError, match=match):
        sketch(A, **kwargs)
