"""tr f(A) and log det by stochastic Lanczos quadrature, against exact sums over prescribed spectra."""

from __future__ import annotations

import numpy as np
import pytest

import hessop
from hessop.solvers.trace_function import logdet, trace_function
from hessop.testing import InterruptingOperator, SpectralOperator, low_rank_spectrum, nn_like_spectrum


def test_logdet_with_damping_is_within_three_standard_errors():
    lam = np.abs(nn_like_spectrum(1500, seed=3))
    A = SpectralOperator(lam, seed=1, implicit=True)
    truth = np.sum(np.log(lam + 1e-2))
    r = logdet(A, damping=1e-2)
    assert r.method == "slq" and r.calibrated and r.converged and r.num_probes == 60
    assert abs(r.estimate - truth) <= 3 * r.stderr
    assert r.stderr <= 1e-3 * abs(truth)  # a useful error bar, not a vacuous one


def test_standard_error_coverage_over_seeds():
    """Cheap version of benchmarks/functions.py coverage (300 seeds): ±2σ must cover most of 20 seeds."""
    lam = np.sort(np.random.default_rng(0).exponential(1.0, 120))
    A = SpectralOperator(lam, seed=2)
    truth = np.sum(np.log(lam + 0.05))
    runs = [logdet(A, damping=0.05, seed=s, check_symmetric=False) for s in range(20)]
    z = np.array([(r.estimate - truth) / r.stderr for r in runs])
    assert np.mean(np.abs(z) <= 2) >= 0.8, z  # 95% promised: 16 of 20 fails with probability 1.6%
    assert np.std(z) <= 1.5  # the error bar is not far too small


def test_deflation_adds_the_top_eigenvalues_exactly_and_shrinks_the_error_bar():
    lam = low_rank_spectrum(400, rank=6, top=100.0) + np.random.default_rng(4).uniform(0.1, 1.0, 400)
    A = SpectralOperator(lam, seed=5, implicit=True)
    f = lambda t: t**2  # noqa: E731
    truth = np.sum(lam**2)
    plain = trace_function(A, f)
    deflated = trace_function(A, f, deflate=6)
    for r in (plain, deflated):
        assert abs(r.estimate - truth) <= 3 * r.stderr
    assert deflated.stderr <= 0.05 * plain.stderr
    assert deflated.num_matvecs > 6  # the eigensolver's products are counted


def test_trace_dispatches_on_f_and_refuses_what_it_cannot_do():
    lam = np.linspace(0.5, 2.0, 100)
    A = SpectralOperator(lam, seed=6)
    r = hessop.trace(A, f="sqrt", rtol=1e-3)
    assert r.method == "slq" and r.converged and r.stderr <= 1e-3 * abs(r.estimate)
    assert abs(r.estimate - np.sum(np.sqrt(lam))) <= 3 * r.stderr
    with pytest.warns(RuntimeWarning, match="standard error rests on"):
        r = hessop.trace(A, f="inv", max_matvecs=300)
    assert r.num_matvecs <= 300 + 2 and not r.calibrated
    with pytest.raises(ValueError, match="positive"):
        logdet(SpectralOperator(np.linspace(-1.0, 1.0, 50), seed=0))
    with pytest.raises(ValueError, match="num_probes"):
        logdet(A, num_probes=1)


def test_interrupt_keeps_the_finished_probes():

    lam = np.linspace(0.5, 2.0, 100)
    with pytest.warns(RuntimeWarning, match="standard error rests on"):
        r = logdet(InterruptingOperator(lam, seed=7, interrupt_at=200))
    assert not r.converged and 2 <= r.num_probes < 60 and abs(r.estimate - np.sum(np.log(lam))) <= 5 * r.stderr


@pytest.mark.filterwarnings("ignore:trace of log")
@pytest.mark.parametrize("size", [2, 3])
def test_probe_parallel_ranks_return_the_single_process_result(size):
    from test_trace import run_ranks

    A = SpectralOperator(np.linspace(0.5, 2.0, 80), seed=8)
    one = logdet(A, num_probes=7, deflate=2)
    results, _ = run_ranks(size, lambda c: logdet(A, num_probes=7, deflate=2, comm=c))
    for r in results:
        np.testing.assert_allclose(r.samples, one.samples, rtol=1e-12)
        assert r.estimate == pytest.approx(one.estimate, rel=1e-12)
    # the probes' products once, the symmetry probe and the deflation's eigsh on every rank
    assert len({r.num_matvecs for r in results}) == 1 and results[0].num_matvecs > one.num_matvecs
