"""The Lanczos process against dense ground truth, in numpy, array_api_strict and torch."""

import array_api_compat
import array_api_compat.torch  # noqa: F401  (registers the torch namespace)
import array_api_strict
import numpy as np
import pytest
import scipy.linalg
import torch

from hessop._array import to_numpy
from hessop.solvers._linear_map import as_linear_map
from hessop.solvers.lanczos import lanczos
from hessop.testing import (
    SpectralOperator,
    indefinite_spectrum,
    low_rank_spectrum,
    nn_like_spectrum,
    student_t_spectrum,
)

NAMESPACES = {
    "numpy": {},
    "array_api_strict": {"xp": array_api_strict},
    "torch": {"xp": array_api_compat.torch, "device": torch.device("cpu")},
}
SPECTRA = {
    "low_rank": lambda n: low_rank_spectrum(n, rank=5),
    "nn_like": lambda n: nn_like_spectrum(n, seed=1),
    "student_t": lambda n: student_t_spectrum(n, seed=2),
    "indefinite": lambda n: indefinite_spectrum(n, seed=3),
}


def _ritz_values(d):
    return scipy.linalg.eigh_tridiagonal(d.alpha, d.beta, eigvals_only=True) if d.num_steps > 1 else d.alpha


@pytest.mark.parametrize("ns", NAMESPACES)
@pytest.mark.parametrize("name", SPECTRA)
def test_full_depth_tridiagonal_has_the_exact_spectrum(ns, name):
    n = 120
    eigs = SPECTRA[name](n)
    A = SpectralOperator(eigs, seed=5, **NAMESPACES[ns])
    d = lanczos(as_linear_map(A), n + 10, seed=3)
    assert d.num_steps == n  # stops at exhaustion, never past n
    assert d.residual_norm == 0.0
    scale = np.abs(eigs).max()
    np.testing.assert_allclose(np.sort(_ritz_values(d)), eigs, atol=1e-12 * scale)
    Q = np.asarray(to_numpy(d.basis), dtype=np.float64)
    np.testing.assert_allclose(Q.T @ Q, np.eye(n), atol=1e-12)
    np.testing.assert_allclose(Q.T @ A.to_dense() @ Q, d.tridiagonal(), atol=1e-11 * scale)
    if name in ("low_rank", "nn_like", "student_t"):  # big null spaces: breakdown is normal
        assert d.breakdowns > 0 and np.any(d.beta == 0.0)


def test_breakdown_restarts_and_counts():
    eigs = low_rank_spectrum(60, rank=4)
    lm = as_linear_map(SpectralOperator(eigs, seed=1))
    d = lanczos(lm, 20)
    # the Krylov space of a start vector is 5-dimensional (4 eigenvalues + the null space)
    assert d.beta[4] == 0.0 and np.all(d.beta[:4] > 0)
    assert d.breakdowns == 15  # every later step starts a fresh vector in the null space
    np.testing.assert_allclose(np.sort(_ritz_values(d))[-4:], eigs[-4:], rtol=1e-12)
    assert lm.num_matvecs == 2 + 20  # symmetry probe + one product per step


def test_partial_decomposition_satisfies_the_lanczos_relation():
    eigs = nn_like_spectrum(200, seed=4)
    A = SpectralOperator(eigs, seed=2)
    lm = as_linear_map(A)
    d = lanczos(lm, 30, v0=np.ones(200))
    Q = to_numpy(d.basis)
    D = A.to_dense()
    R = D @ Q - Q @ d.tridiagonal()
    # A Q - Q T = r e_mᵀ with ||r|| = residual_norm
    np.testing.assert_allclose(R[:, :-1], 0.0, atol=1e-11 * eigs.max())
    np.testing.assert_allclose(np.linalg.norm(R[:, -1]), d.residual_norm, rtol=1e-8)
    np.testing.assert_allclose(Q[:, 0], np.ones(200) / np.sqrt(200), atol=1e-14)


def test_without_reorthogonalisation_matches_early_steps_and_keeps_no_basis():
    A = SpectralOperator(indefinite_spectrum(150, seed=1), seed=3)
    full = lanczos(as_linear_map(A), 8, seed=7)
    cheap = lanczos(as_linear_map(A), 8, seed=7, reorthogonalize=False, store_basis=False)
    assert cheap.basis is None
    np.testing.assert_allclose(cheap.alpha, full.alpha, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cheap.beta, full.beta, rtol=1e-10)
    kept = lanczos(as_linear_map(A), 8, seed=7, reorthogonalize=False, store_basis=True)
    assert kept.basis.shape == (150, 8)


def test_float32_vectors_stay_float32_with_float64_recurrence():
    eigs = nn_like_spectrum(200, seed=0)
    A = SpectralOperator(eigs, seed=1, xp=array_api_compat.torch, device=torch.device("cpu"), dtype=torch.float32)
    d = lanczos(as_linear_map(A), 200)
    assert d.basis.dtype == torch.float32 and d.alpha.dtype == np.float64
    err = np.abs(np.sort(_ritz_values(d)) - eigs).max() / eigs.max()
    assert err < 1e-5  # float32 arithmetic; the dropped couplings stay below eps^(2/3)


@pytest.mark.xdist_group("jax")  # one worker compiles each eager JAX operation once (tests/conftest.py)
def test_jax_arrays_are_written_functionally():
    jnp = pytest.importorskip("jax.numpy")
    eigs = indefinite_spectrum(8, seed=2)
    M = jnp.asarray(SpectralOperator(eigs, seed=0).to_dense())
    d = lanczos(as_linear_map(M), 8)
    np.testing.assert_allclose(np.sort(_ritz_values(d)), eigs, atol=1e-5)  # jax defaults to float32


def test_bad_inputs_raise_clear_errors():
    lm = as_linear_map(SpectralOperator(indefinite_spectrum(30), seed=0))
    with pytest.raises(ValueError, match="num_steps"):
        lanczos(lm, 0)
    with pytest.raises(ValueError, match="zero"):
        lanczos(lm, 5, v0=np.zeros(30))
    with pytest.raises(ValueError, match="shape"):
        lanczos(lm, 5, v0=np.ones(31))

    calls = []

    def product(V):
        calls.append(1)
        return V * (np.nan if len(calls) == 3 else 1.0)

    from hessop.solvers._linear_map import LinearMap

    bad = LinearMap(product, 30, lm.xp, lm.dtype, "cpu")
    with pytest.raises(FloatingPointError, match="step 3"):
        lanczos(bad, 10)


def test_takes_any_operator_like_every_other_solver():
    import scipy.sparse

    import hessop

    eigs = indefinite_spectrum(40, seed=1)
    A = SpectralOperator(eigs, seed=2)
    for op in (A, A.to_dense(), scipy.sparse.csr_matrix(A.to_dense()), torch.from_numpy(A.to_dense())):
        d = hessop.lanczos(op, 40, seed=0)
        np.testing.assert_allclose(np.sort(_ritz_values(d)), eigs, atol=1e-10)
    assert isinstance(hessop.lanczos(torch.from_numpy(A.to_dense()), 3).basis, torch.Tensor)
