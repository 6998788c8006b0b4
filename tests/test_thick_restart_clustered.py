"""Thick restart on clustered ends: no more products than plain Lanczos, give or take a little.

NN-like Hessian spectra are lopsided: well separated outliers at the top, a dense
cluster at the bottom. A restart that kept only the Ritz vectors near the wanted
bottom threw the outliers away in every cycle; the 6 smallest of the spectrum
below took 947 products against plain Lanczos' 57.
"""

import numpy as np
import pytest

from hessop.solvers.eigsh import eigsh
from hessop.solvers.thick_restart import _keep, _kept, default_ncv
from hessop.testing import SpectralOperator, extreme_eigenvalues, nn_like_spectrum

N = 400
SPECTRA = {
    "nn_like": nn_like_spectrum(N, seed=1),  # 60 % exact zeros, 8 small negatives, 10 outliers up to 100
    "nn_like_no_null": nn_like_spectrum(N, null_fraction=0.0, seed=1),  # the bulk piles up near zero instead
}


def accurate(A, r, k, which):
    """Converged, and each eigenvalue within its own residual bound of the prescribed one."""
    eigs = A.eigenvalues
    assert r.stopped == "converged" and r.all_converged
    scale = np.maximum(np.abs(r.eigenvalues), np.abs(eigs).max())
    err = np.abs(r.eigenvalues - extreme_eigenvalues(eigs, k, which))
    assert np.all(err <= r.residual_norms * scale + 1e-12), (err, r.residual_norms * scale)


@pytest.mark.parametrize("name", SPECTRA)
@pytest.mark.parametrize("which, k", [("SA", 1), ("SA", 6), ("BE", 6)])
def test_clustered_end_costs_about_what_plain_lanczos_costs(name, which, k):
    # Before keeping both ends (and the larger default basis) these took 3.8-20x
    # the products of plain Lanczos for "SA" and 1.7-2x for "BE".
    A = SpectralOperator(SPECTRA[name], seed=2)
    restarted = eigsh(A, k=k, which=which, method="thick-restart")
    plain = eigsh(A, k=k, which=which, method="lanczos")
    accurate(A, restarted, k, which)
    accurate(A, plain, k, which)
    assert restarted.num_matvecs <= 1.5 * plain.num_matvecs, (restarted.num_matvecs, plain.num_matvecs)


@pytest.mark.parametrize("name", SPECTRA)
@pytest.mark.parametrize("k", [1, 6, 20])
def test_the_well_separated_top_stays_as_cheap_as_plain_lanczos(name, k):
    A = SpectralOperator(SPECTRA[name], seed=2)
    restarted = eigsh(A, k=k, which="LA", method="thick-restart")
    plain = eigsh(A, k=k, which="LA", method="lanczos")
    accurate(A, restarted, k, "LA")
    assert restarted.num_matvecs <= plain.num_matvecs + 3


def test_ten_smallest_within_a_budget_the_old_restart_never_met():
    # 10 smallest without an exact null space (tight near zero): 4000 products
    # (the default budget spent, not converged) before; 434 after, against 192
    # for plain Lanczos, whose memory grows with every product.
    A = SpectralOperator(SPECTRA["nn_like_no_null"], seed=2)
    r = eigsh(A, k=10, which="SA", max_matvecs=1000)
    accurate(A, r, 10, "SA")


@pytest.mark.parametrize("which", ["SA", "LA"])
def test_restart_keeps_the_far_ends_converged_pairs_in_place_of_neighbours(which):
    m, k = 10, 2
    theta = np.arange(m, dtype=float)
    far = np.zeros(m, dtype=bool)
    if which == "SA":
        far[[7, 8, 9, 5]] = True  # 7..9 run inward from the top; 5 is cut off by 6
        expect = [0, 1, 2, 7, 8, 9]
    else:
        far[[0, 1, 2, 4]] = True
        expect = [0, 1, 2, 7, 8, 9]
    assert _keep(k, m) == 6
    np.testing.assert_array_equal(_kept(theta, far, k, which), expect)
    # nothing converged at the far end: the k wanted and their nearest neighbours
    nearest = np.arange(6) if which == "SA" else np.arange(4, 10)
    np.testing.assert_array_equal(_kept(theta, np.zeros(m, dtype=bool), k, which), nearest)
    # never more of the far end than the room left after the wanted
    np.testing.assert_array_equal(_kept(theta, np.ones(m, dtype=bool), k, which),
                                  [0, 1, 6, 7, 8, 9] if which == "SA" else [0, 1, 2, 3, 8, 9])


def test_clustered_ends_get_the_larger_default_basis():
    assert default_ncv(6, "LA") == default_ncv(6, "LM") == 20
    assert default_ncv(6, "SA") == default_ncv(6, "BE") == 40
    assert default_ncv(20, "LA") == 41 and default_ncv(20, "SA") == 60


@pytest.mark.parametrize("which, k", [("SA", 6), ("BE", 6)])
def test_block_lanczos_keeps_both_ends_too(which, k):
    # Block restarts kept only the wanted end: the 6 smallest spent the default
    # budget of 4000 products unconverged; keeping the far end's converged pairs: 177.
    A = SpectralOperator(SPECTRA["nn_like"], seed=2)
    r = eigsh(A, k=k, which=which, method="block", max_matvecs=1000)
    accurate(A, r, k, which)
