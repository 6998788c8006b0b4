"""SLQ spectral densities against exact eigenvalue distributions."""

import numpy as np
import pytest
from test_trace import NAMESPACES, Flaky, run_ranks

from hessop.solvers.density import SpectralDensity, density, spectral_distance
from hessop.testing import indefinite_spectrum, nn_like_spectrum, student_t_spectrum


def dense(lam, seed=0, name="numpy"):
    """``Q diag(lam) Qᵀ`` with ``Q`` from the QR of a Gaussian matrix, as a dense array of namespace ``name``."""
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((lam.size, lam.size)))
    A = (Q * lam) @ Q.T
    A = 0.5 * (A + A.T)
    xp, device = NAMESPACES[name]
    return (A if xp is None else xp.asarray(A, device=device)), Q


@pytest.fixture(scope="module")
def big():
    lam = nn_like_spectrum(1000, seed=1)
    return lam, dense(lam, seed=2)[0]


def test_matches_exact_distribution_at_90_steps(big):
    lam, A = big
    rho = density(A, num_probes=4, num_steps=90, seed=0)
    width = lam.max() - lam.min()
    assert spectral_distance(rho, lam) < 0.01 * width
    assert np.trapezoid(rho.values, rho.grid) == pytest.approx(1.0, abs=1e-4)
    assert rho.nodes.shape == rho.weights.shape == (4, 90) and rho.num_matvecs == 4 * 90 + 2
    np.testing.assert_allclose(rho.weights.sum(axis=1), 1.0, rtol=1e-12)
    assert rho.sigma == pytest.approx((rho.nodes.max() - rho.nodes.min()) / 90)
    assert rho.converged and rho.n == 1000
    # the trace and higher moments are Hutchinson estimates of the same probes
    mean, err = rho.moments((1, 2))
    assert abs(rho.trace_estimate - lam.sum()) <= 4 * rho.trace_stderr
    assert abs(mean[1] - np.mean(lam**2)) <= 4 * err[1]


@pytest.mark.parametrize("name", NAMESPACES)
def test_namespaces(name):
    lam = student_t_spectrum(200, seed=3)
    A, _ = dense(lam, seed=1, name=name)
    rho = density(A, num_probes=3, num_steps=40, seed=1)
    assert spectral_distance(rho, lam) < 0.01 * (lam.max() - lam.min())
    assert np.trapezoid(rho.values, rho.grid) == pytest.approx(1.0, abs=1e-4)
    assert rho.nodes.dtype == rho.weights.dtype == np.float64


def test_full_depth_reproduces_the_probe_measure():
    lam = np.linspace(-2.0, 5.0, 30) + np.random.default_rng(0).uniform(0, 0.1, 30)
    A, Q = dense(lam, seed=4)
    rho = density(A, num_probes=1, num_steps=30, seed=5, check_symmetric=False)
    v = 2.0 * np.random.default_rng([5, 0]).integers(0, 2, 30) - 1.0  # probe 0 of seed 5
    np.testing.assert_allclose(np.sort(rho.nodes[0]), np.sort(lam), atol=1e-10)
    np.testing.assert_allclose(rho.weights[0][np.argsort(rho.nodes[0])], (Q.T @ v)[np.argsort(lam)] ** 2 / 30,
                               atol=1e-10)
    assert rho.cdf(lam.max()) == pytest.approx(1.0) and rho.cdf(lam.min() - 1) == 0.0


def test_negative_mass_and_cdf_on_an_indefinite_spectrum():
    lam = indefinite_spectrum(400, negative_fraction=0.3, seed=2)
    A, _ = dense(lam, seed=3)
    rho = density(A, num_probes=6, num_steps=50)
    assert rho.negative_mass() == pytest.approx(0.3, abs=0.04)
    t = np.linspace(-1.5, 2.5, 50)
    F = rho.cdf(t)
    assert np.all(np.diff(F) >= 0) and F[0] == 0.0 and F[-1] == pytest.approx(1.0)
    assert np.max(np.abs(F - np.searchsorted(lam, t, side="right") / lam.size)) < 0.06


def test_negative_mass_ignores_a_rounding_level_null_space():
    lam = np.concatenate([np.zeros(150), np.linspace(1, 5, 50)])
    A, _ = dense(lam, seed=1)
    assert density(A, num_probes=2, num_steps=40).negative_mass() == 0.0


@pytest.mark.parametrize("size", [2, 3])
def test_probe_parallel_matches_serial(size):
    lam = nn_like_spectrum(200, seed=5)
    A, _ = dense(lam, seed=6)
    serial = density(A, num_probes=5, num_steps=30, seed=2)
    results, calls = run_ranks(size, lambda c: density(A, num_probes=5, num_steps=30, seed=2, comm=c))
    for r in results:
        np.testing.assert_allclose(r.nodes, serial.nodes, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(r.weights, serial.weights, rtol=1e-8, atol=1e-12)
        np.testing.assert_array_equal(r.values, results[0].values)  # identical on every rank
        assert r.num_matvecs == serial.num_matvecs - 2 + 2 * size
    assert calls == [1] * size


def test_spectral_distances():
    lam = student_t_spectrum(300, seed=1)
    A, _ = dense(lam, seed=2)
    rho = density(A, num_probes=4, num_steps=40)
    exact = SpectralDensity.from_eigenvalues(lam)
    assert spectral_distance(rho, rho) == 0.0 and spectral_distance(rho, rho, metric="jensen-shannon") == 0.0
    assert spectral_distance(rho, exact) == pytest.approx(spectral_distance(exact, rho))
    near = spectral_distance(rho, lam, metric="jensen-shannon")
    far = spectral_distance(rho, 2.0 * lam + 1.0, metric="jensen-shannon")
    assert 0.0 < near < 0.15 < far <= 1.0
    assert spectral_distance(rho, lam + 1.0) == pytest.approx(1.0, abs=0.05)  # a shift moves mass by 1
    with pytest.raises(ValueError, match="unknown metric"):
        spectral_distance(rho, lam, metric="kl")


def test_custom_sigma_grid_and_plot():
    import matplotlib

    matplotlib.use("Agg")
    lam = student_t_spectrum(100, seed=2)
    A, _ = dense(lam, seed=1)
    grid = np.linspace(-1, 10, 200)
    rho = density(A, num_probes=2, num_steps=20, sigma=0.3, grid=grid)
    assert rho.sigma == 0.3 and rho.grid is not grid and np.array_equal(rho.grid, grid)
    np.testing.assert_allclose(rho.values, rho.evaluate(grid))
    ax = rho.plot()
    assert ax.get_yscale() == "log" and len(ax.lines) == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_probes=0), "num_probes"),
    (dict(num_steps=0), "num_steps"),
    (dict(sigma=-1.0), "sigma"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        density(np.eye(5), **kwargs)


def test_nan_and_interrupt():
    with pytest.raises(FloatingPointError, match="NaN"):
        density(Flaky(nn_like_spectrum(40), fail_at=5), num_steps=10, check_symmetric=False)
    A = Flaky(nn_like_spectrum(40), fail_at=25, failure="interrupt")
    rho = density(A, num_probes=4, num_steps=10, check_symmetric=False)
    # two probes of 10 steps finished; the third was interrupted at its 5th product
    assert not rho.converged and rho.num_probes == 2 and rho.num_matvecs == 25
