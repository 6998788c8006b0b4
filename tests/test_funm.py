"""hessop.funm against f(A)v from the exact eigendecomposition of prescribed spectra."""

from __future__ import annotations

import numpy as np
import pytest

from hessop.solvers.funm import funm
from hessop.testing import (
    InterruptingOperator,
    SpectralOperator,
    clustered_spectrum,
    geometric_spectrum,
    low_rank_spectrum,
)

FUNCTIONS = {"sqrt": np.sqrt, "log": np.log, "exp": np.exp, "inv": lambda t: 1.0 / t}


def exact(A, v, f):
    Q = A.eigenvectors()
    return Q @ (f(A.eigenvalues) * (Q.T @ v))


def test_sqrt_of_a_large_spectrum_is_accurate_and_its_error_estimate_is_not_optimistic():
    lam = np.sort(30.0 * np.random.default_rng(0).uniform(0, 1, 1500) ** 3) + 1e-2
    A = SpectralOperator(lam, seed=1, implicit=True)
    b = np.random.default_rng(2).standard_normal(1500)
    x = exact(A, b, np.sqrt)
    r = funm(A, b, np.sqrt, rtol=1e-7)
    err = np.linalg.norm(r.x - x)
    assert r.converged and r.stopped == "converged" and r.num_steps < 1500
    assert err <= 1e-6 * np.linalg.norm(x)
    assert r.error >= 0.1 * err and r.relative_error <= 1e-7
    assert r.num_matvecs == r.num_steps + 2  # one product a step, and the symmetry probe


def test_error_estimate_covers_the_true_error_over_many_spectra():
    """The estimate is at least the true error in at least 95% of cases (benchmarks/funm_estimate.py: 480 cases)."""
    g = np.random.default_rng(3)
    spectra = [geometric_spectrum(150, ratio=0.95) + 1e-3, clustered_spectrum(150, seed=4),
               10 ** g.uniform(-3, 1, 150), g.uniform(0, 1, 150) ** 4 * 50 + 1e-4]
    covered, total = 0, 0
    for s, lam in enumerate(spectra):
        A = SpectralOperator(lam, seed=s, implicit=True)
        v = g.standard_normal(150)
        for name, f in FUNCTIONS.items():
            for rtol in (1e-4, 1e-9):
                r = funm(A, v, name, rtol=rtol, check_symmetric=False)
                covered += r.error >= np.linalg.norm(r.x - exact(A, v, f))
                total += 1
    assert covered >= 0.95 * total, (covered, total)


def test_invariant_krylov_space_is_exact_and_stops_early():
    A = SpectralOperator(low_rank_spectrum(200, rank=6) + 0.5, seed=5, implicit=True)
    v = np.random.default_rng(6).standard_normal(200)
    r = funm(A, v, "log", rtol=1e-12)
    assert r.stopped == "exhausted" and r.converged and r.num_steps <= 8
    np.testing.assert_allclose(r.x, exact(A, v, np.log), atol=1e-12 * np.linalg.norm(v))


def test_callable_budget_interrupt_and_refusals():
    A = SpectralOperator(np.linspace(-1.0, 3.0, 120), seed=7)
    v = np.random.default_rng(8).standard_normal(120)
    f = lambda t: np.exp(-t)  # noqa: E731
    r = funm(A, v, f, rtol=1e-10)
    assert r.converged and np.linalg.norm(r.x - exact(A, v, f)) <= max(r.error, 1e-12)
    r = funm(A, v, "inv", rtol=1e-12, max_matvecs=10)
    assert not r.converged and r.stopped == "budget" and r.num_matvecs <= 10
    with pytest.raises(ValueError, match="positive semidefinite"):
        funm(A, v, "sqrt")
    with pytest.raises(ValueError, match="unknown function"):
        funm(A, v, "cosh")
    with pytest.raises(ValueError, match="shape"):
        funm(A, v[:-1], "exp")


    r = funm(InterruptingOperator(np.linspace(1.0, 3.0, 120), seed=7, interrupt_at=12), v, "sqrt")
    assert r.stopped == "interrupt" and not r.converged and r.num_steps == 10  # product 1 was the probe


def test_torch_native():
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as xp

    lam = np.linspace(0.1, 4.0, 100)
    A = SpectralOperator(lam, seed=9, xp=xp, device="cpu")
    v = np.random.default_rng(10).standard_normal(100)
    r = funm(A, torch.asarray(v), "exp", rtol=1e-10)
    assert isinstance(r.x, torch.Tensor) and r.converged
    np.testing.assert_allclose(r.x.numpy(), exact(SpectralOperator(lam, seed=9), v, np.exp), atol=1e-8)
