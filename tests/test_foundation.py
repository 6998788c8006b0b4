"""The array plumbing, the solver adapter and the prescribed-spectrum operators."""

from __future__ import annotations

import array_api_strict
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as sla

from hessop import testing
from hessop._array import from_numpy, namespace, random_matrix, to_numpy
from hessop.solvers._linear_map import as_linear_map

torch = pytest.importorskip("torch")
import array_api_compat.torch as xtorch  # noqa: E402

NAMESPACES = {
    "numpy": (namespace(np.zeros(1)), None),
    "array_api_strict": (array_api_strict, None),
    "torch": (xtorch, torch.device("cpu")),
}


@pytest.mark.parametrize("name", NAMESPACES)
def test_round_trip_through_every_namespace(name):
    xp, device = NAMESPACES[name]
    a = np.linspace(0, 1, 7)
    x = from_numpy(a, xp, device, xp.float32)
    assert x.dtype == xp.float32
    np.testing.assert_allclose(to_numpy(x), a, rtol=1e-7)


def test_probes_are_seeded_and_have_the_right_law():
    g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
    np.testing.assert_array_equal(random_matrix(g1, (5, 2)), random_matrix(g2, (5, 2)))
    r = random_matrix(np.random.default_rng(0), (1000,), "rademacher")
    assert set(np.unique(r)) == {-1.0, 1.0}
    with pytest.raises(ValueError, match="rademacher"):
        random_matrix(np.random.default_rng(0), (3,), "uniform")


SPECTRA = {
    "nn_like": lambda: testing.nn_like_spectrum(400),
    "student_t": lambda: testing.student_t_spectrum(300, zero_fraction=0.7),
    "geometric": lambda: testing.geometric_spectrum(200, 0.95),
    "clustered": lambda: testing.clustered_spectrum(300),
    "low_rank": lambda: testing.low_rank_spectrum(250, rank=4),
    "indefinite": lambda: testing.indefinite_spectrum(300),
}


@pytest.mark.parametrize("name", SPECTRA)
@pytest.mark.parametrize("implicit", [False, True])
def test_spectral_operator_has_exactly_its_spectrum(name, implicit):
    lam = SPECTRA[name]()
    A = testing.SpectralOperator(lam, seed=2, implicit=implicit)
    D = A.to_dense()
    np.testing.assert_allclose(D, D.T, atol=1e-12)
    np.testing.assert_allclose(np.linalg.eigvalsh(D), np.sort(lam), atol=1e-10)
    Q = A.eigenvectors()
    np.testing.assert_allclose(D @ Q, Q * A.eigenvalues, atol=1e-9)
    np.testing.assert_allclose(A @ np.eye(len(lam))[:, :3], D[:, :3], atol=1e-12)


def test_nn_like_spectrum_has_its_advertised_shape():
    lam = testing.nn_like_spectrum(1000, num_outliers=10, null_fraction=0.6, negative_fraction=0.02)
    assert np.sum(lam == 0) == 600
    assert np.sum(lam < 0) == 20
    assert np.all(lam[-10:] > 5 * lam[-11])


@pytest.mark.parametrize("name", NAMESPACES)
def test_spectral_operator_native_path_in_each_namespace(name):
    xp, device = NAMESPACES[name]
    A = testing.SpectralOperator(testing.geometric_spectrum(30), implicit=True, xp=xp, device=device)
    V = from_numpy(np.eye(30), xp, device, xp.float64)
    np.testing.assert_allclose(to_numpy(A.apply(V)), A.to_dense(), atol=1e-12)


def test_linear_map_wraps_every_kind_of_operator():
    D = testing.SpectralOperator(testing.geometric_spectrum(20)).to_dense()
    kinds = [
        D,
        sp.csr_matrix(D),
        sla.aslinearoperator(D),
        torch.from_numpy(D),
        array_api_strict.asarray(D),
        testing.SpectralOperator(testing.geometric_spectrum(20)),
    ]
    for A in kinds:
        lm = as_linear_map(A)
        assert lm.n == 20 and lm.num_matvecs == 2  # the symmetry probe
        out = to_numpy(lm(lm.asarray(np.eye(20))))
        np.testing.assert_allclose(out, D, atol=1e-12)
        assert lm.num_matvecs == 22


def test_linear_map_refuses_bad_operators():
    with pytest.raises(ValueError, match="square"):
        as_linear_map(np.ones((3, 4)))
    with pytest.raises(ValueError, match="not symmetric"):
        as_linear_map(np.triu(np.ones((5, 5))))
    as_linear_map(np.triu(np.ones((5, 5))), check_symmetric=False)
    with pytest.raises(FloatingPointError, match="NaN"):
        as_linear_map(np.full((4, 4), np.nan))
    with pytest.raises(TypeError, match="cannot use a str"):
        as_linear_map("matrix")
