"""hessop.eigsh against exact spectra: every method, every end, three array namespaces."""

import array_api_compat
import array_api_compat.torch  # noqa: F401  (registers the torch namespace)
import array_api_strict
import numpy as np
import pytest
import scipy.sparse
import torch
from scipy.sparse.linalg import aslinearoperator

from hessop._array import to_numpy
from hessop.solvers.eigsh import eigsh
from hessop.testing import (
    SpectralOperator,
    clustered_spectrum,
    extreme_eigenvalues,
    geometric_spectrum,
    indefinite_spectrum,
    low_rank_spectrum,
    nn_like_spectrum,
    student_t_spectrum,
)

K = 4
TOL = 1e-6
SPECTRA = {
    "nn_like": nn_like_spectrum(300, num_outliers=6, seed=1),
    "student_t": student_t_spectrum(240, seed=2),
    "geometric": geometric_spectrum(200, ratio=0.93),
    "clustered": clustered_spectrum(240, centers=(-1.0, 2.0, 5.0), width=1e-2, seed=3),
    "low_rank": low_rank_spectrum(200, rank=6),
    "indefinite": indefinite_spectrum(200, seed=4),
}
# Ends whose wanted eigenvalues a Krylov method can resolve. Left out on purpose:
# the bottom of student_t (a 120-fold zero: one Krylov space holds one copy) and
# of geometric (0.93^i piles 150 eigenvalues within 1e-5 of zero).
ENDS = {
    "nn_like": ("LA", "SA", "LM", "BE"),
    "student_t": ("LA", "LM"),
    "geometric": ("LA", "LM"),
    "clustered": ("LA", "SA", "LM", "BE"),
    "low_rank": ("LA", "SA", "LM", "BE"),
    "indefinite": ("LA", "SA", "LM", "BE"),
}
CASES = [(name, which) for name in SPECTRA for which in ENDS[name]]


def check_pairs(A, eigs, r, k, which, tol, *, wanted_exact=True):
    """The properties every result must have, against the dense matrix."""
    D, scale = A.to_dense(), np.abs(eigs).max()
    X = to_numpy(r.eigenvectors)
    rounding = 1e-11 if X.dtype == np.float64 else 1e-5
    # no residual claims more accuracy than the vectors' precision can hold
    assert np.all(r.residual_norms >= np.finfo(X.dtype).eps)
    X = np.asarray(X, dtype=np.float64)
    assert X.shape == (len(eigs), k) and r.eigenvalues.shape == (k,)
    np.testing.assert_allclose(X.T @ X, np.eye(k), atol=rounding)
    true_res = np.linalg.norm(D @ X - X * r.eigenvalues, axis=0)
    # reported residuals are the true ones (relative to max(|λ|, ||A||_est) <= ||A||), up to rounding
    assert np.all(true_res / scale <= r.residual_norms + rounding)
    assert np.all(r.residual_norms[r.converged] <= r.tol)
    # every Ritz value is within its residual of an eigenvalue (Weyl / Krylov-Bogoliubov)
    gap = np.min(np.abs(r.eigenvalues[:, None] - eigs[None, :]), axis=1)
    assert np.all(gap <= true_res + 1e-12 * scale)
    if wanted_exact:
        assert r.all_converged, (r.stopped, r.residual_norms)
        np.testing.assert_allclose(r.eigenvalues, extreme_eigenvalues(eigs, k, which), atol=tol * scale)


@pytest.mark.parametrize("method", ["thick-restart", "lanczos", "block"])
@pytest.mark.parametrize("name,which", CASES)
def test_krylov_methods_find_the_wanted_eigenpairs(method, name, which):
    eigs = SPECTRA[name]
    A = SpectralOperator(eigs, seed=7)
    r = eigsh(A, k=K, which=which, method=method, tol=TOL, seed=1)
    assert r.method == method and r.which == which
    check_pairs(A, eigs, r, K, which, TOL)


@pytest.mark.parametrize("name,which", [("nn_like", "LM"), ("nn_like", "LA"), ("low_rank", "LA"),
                                        ("-low_rank", "SA"), ("student_t", "LM")])
def test_power_iteration_is_an_honest_baseline(name, which):
    eigs = -SPECTRA[name[1:]][::-1] if name.startswith("-") else SPECTRA[name]
    A = SpectralOperator(eigs, seed=7)
    r = eigsh(A, k=3, which=which, method="power", tol=TOL, seed=1, max_matvecs=4000)
    check_pairs(A, eigs, r, 3, which, TOL, wanted_exact=False)
    # it stops on the eigenvalue's relative change, so the eigenvalues are good ...
    scale = np.abs(eigs).max()
    np.testing.assert_allclose(r.eigenvalues, extreme_eigenvalues(eigs, 3, which), atol=1e-4 * scale)
    # ... while the residuals are only about the square root of tol, and say so
    assert r.stopped == "settled"
    assert np.all(r.converged == (r.residual_norms <= TOL))


NAMESPACES = {
    "numpy": {},
    "array_api_strict": {"xp": array_api_strict},
    "torch": {"xp": array_api_compat.torch, "device": torch.device("cpu")},
}


@pytest.mark.parametrize("method,which", [("thick-restart", "LA"), ("thick-restart", "BE"), ("lanczos", "SA"),
                                          ("block", "LA"), ("power", "LM")])
@pytest.mark.parametrize("ns", NAMESPACES)
def test_namespaces_give_native_eigenvectors_and_the_same_answer(ns, method, which):
    eigs = SPECTRA["nn_like"]
    A = SpectralOperator(eigs, seed=3, **NAMESPACES[ns])
    r = eigsh(A, k=K, which=which, method=method, tol=TOL, seed=2, max_matvecs=3000)
    assert array_api_compat.array_namespace(r.eigenvectors) == NAMESPACES[ns].get("xp", array_api_compat.numpy)
    check_pairs(A, eigs, r, K, which, TOL, wanted_exact=method != "power")
    ref = eigsh(SpectralOperator(eigs, seed=3), k=K, which=which, method=method, tol=TOL, seed=2, max_matvecs=3000)
    np.testing.assert_allclose(r.eigenvalues, ref.eigenvalues, rtol=1e-10)
    assert r.num_matvecs == ref.num_matvecs  # same seed, same probes, same path in every framework


def test_float32_operator_keeps_float32_vectors_and_clamps_tol():
    eigs = nn_like_spectrum(300, num_outliers=6, seed=1)
    A = SpectralOperator(eigs, seed=3, xp=array_api_compat.torch, device=torch.device("cpu"), dtype=torch.float32)
    with pytest.warns(RuntimeWarning, match="float32"):
        r = eigsh(A, k=K, tol=1e-9)
    assert r.tol == pytest.approx(100 * np.finfo(np.float32).eps)
    assert r.eigenvectors.dtype == torch.float32 and r.eigenvalues.dtype == np.float64
    check_pairs(A, eigs, r, K, "LA", r.tol)


def test_scipy_operators_and_sparse_matrices():
    eigs = indefinite_spectrum(150, seed=0)
    D = SpectralOperator(eigs, seed=1).to_dense()
    r = eigsh(aslinearoperator(D), k=5, which="SA")
    np.testing.assert_allclose(r.eigenvalues, eigs[:5], atol=1e-6 * np.abs(eigs).max())
    assert isinstance(r.eigenvectors, np.ndarray)
    n = 300  # 1-D Laplacian, known spectrum 2 - 2 cos(pi j / (n + 1))
    L = scipy.sparse.diags([-np.ones(n - 1), 2 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1], format="csr")
    lap = np.sort(2 - 2 * np.cos(np.pi * np.arange(1, n + 1) / (n + 1)))
    r = eigsh(L, k=3, which="LA", tol=1e-8)
    np.testing.assert_allclose(r.eigenvalues, lap[::-1][:3], atol=1e-7)


def test_small_problems_use_a_full_depth_space_and_are_exact():
    eigs = indefinite_spectrum(12, seed=5)
    A = SpectralOperator(eigs, seed=0)
    for method in ("thick-restart", "lanczos", "block"):
        r = eigsh(A, k=11, which="BE", method=method)
        np.testing.assert_allclose(np.sort(r.eigenvalues), np.sort(extreme_eigenvalues(eigs, 11, "BE")), atol=1e-12)
        assert r.all_converged


def test_callback_stop_and_interrupt_return_partial_results():
    eigs = clustered_spectrum(300, width=1e-2, seed=0)
    A = SpectralOperator(eigs, seed=2)
    seen = []

    def stop_early(state):
        seen.append(state)
        return "stop" if state.num_matvecs >= 30 else None

    r = eigsh(A, k=K, callback=stop_early, tol=1e-10)
    assert r.stopped == "callback" and not r.all_converged and 30 <= r.num_matvecs < 40
    assert seen[-1].eigenvalues.shape == (K,) and seen[-1].method == "thick-restart"
    check_pairs(A, eigs, r, K, "LA", 1e-10, wanted_exact=False)

    calls = []

    class Interrupting(SpectralOperator):
        def apply(self, V):
            calls.append(1)
            if len(calls) == 25:
                raise KeyboardInterrupt
            return super().apply(V)

    B = Interrupting(eigs, seed=2)
    for method in ("thick-restart", "lanczos", "block", "power"):
        calls.clear()
        r = eigsh(B, k=K, method=method, tol=1e-10)
        assert r.stopped == "interrupt" and not r.all_converged
        if method != "power":
            check_pairs(A, eigs, r, K, "LA", 1e-10, wanted_exact=False)


def test_budget_exhaustion_is_flagged():
    eigs = clustered_spectrum(300, width=1e-2, seed=0)
    A = SpectralOperator(eigs, seed=2)
    for method in ("thick-restart", "lanczos", "block", "power"):
        r = eigsh(A, k=K, method=method, tol=1e-10, max_matvecs=40)
        assert r.stopped == "budget" and r.num_matvecs <= 40 and not r.all_converged, method


def test_bad_arguments_raise_clear_errors():
    A = SpectralOperator(indefinite_spectrum(20), seed=0)
    with pytest.raises(ValueError, match="k must be"):
        eigsh(A, k=20)
    with pytest.raises(ValueError, match="'thick-restart', 'lanczos', 'block', 'power'"):
        eigsh(A, k=2, method="arnoldi")
    with pytest.raises(ValueError, match="'LA', 'SA', 'LM', 'BE'"):
        eigsh(A, k=2, which="LR")
    with pytest.raises(ValueError, match="max_matvecs"):
        eigsh(A, k=2, max_matvecs=0)
    with pytest.raises(ValueError, match="power"):
        eigsh(A, k=2, method="power", which="BE")
    with pytest.raises(ValueError, match="not symmetric"):
        eigsh(np.triu(np.ones((20, 20))), k=2)
    M = A.to_dense()
    M[3, 3] = np.nan
    with pytest.raises(FloatingPointError):
        eigsh(M, k=2, check_symmetric=False)


def test_hessian_of_a_torch_model_matches_its_dense_spectrum():
    import hessop

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    x, y = torch.randn(64, 5, dtype=torch.float64), torch.randint(0, 3, (64,))
    H = hessop.hessian(model, torch.nn.functional.cross_entropy, (x, y))
    eigs = np.linalg.eigvalsh(np.asarray(H.to_dense(), dtype=np.float64))
    r = eigsh(H, k=3, which="BE", tol=1e-8)
    assert isinstance(r.eigenvectors, torch.Tensor) and r.all_converged
    np.testing.assert_allclose(r.eigenvalues, extreme_eigenvalues(eigs, 3, "BE"), atol=1e-7 * np.abs(eigs).max())


@pytest.mark.parametrize("method", ["thick-restart", "lanczos", "block"])
def test_every_copy_of_a_repeated_top_eigenvalue_is_found(method):
    eigs = np.sort(np.concatenate([[5.0, 5.0, 5.0, 4.0], np.linspace(-1.0, 3.0, 196)]))
    A = SpectralOperator(eigs, seed=1)
    r = eigsh(A, k=4, method=method, tol=1e-8)
    np.testing.assert_allclose(r.eigenvalues, [5.0, 5.0, 5.0, 4.0], atol=1e-7)
    check_pairs(A, eigs, r, 4, "LA", 1e-8)


def test_start_vector_progress_bar_and_seed():
    eigs = SPECTRA["indefinite"]
    A = SpectralOperator(eigs, seed=0)
    top = A.eigenvectors()[:, -1]
    r = eigsh(A, k=1, v0=top, tol=1e-8, progress=True)  # an exact eigenvector: breakdown at step 1
    np.testing.assert_allclose(r.eigenvalues, eigs[-1:], atol=1e-10)
    a, b = eigsh(A, k=3, seed=5), eigsh(A, k=3, seed=5)
    assert a.num_matvecs == b.num_matvecs and np.array_equal(a.eigenvalues, b.eigenvalues)
    block = eigsh(A, k=3, method="block", v0=np.ones((200, 2)), block_size=3)
    np.testing.assert_allclose(block.eigenvalues, eigs[::-1][:3], atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_operator_keeps_vectors_on_the_gpu():
    eigs = SPECTRA["nn_like"]
    A = SpectralOperator(eigs, seed=3, xp=array_api_compat.torch, device=torch.device("cuda"))
    r = eigsh(A, k=K, tol=TOL)
    assert r.eigenvectors.device.type == "cuda"
    np.testing.assert_allclose(r.eigenvalues, extreme_eigenvalues(eigs, K, "LA"), atol=TOL * eigs.max())


def test_bad_tolerance_is_refused_before_any_product():
    A = SpectralOperator(indefinite_spectrum(20), seed=0)
    for tol in (0.0, -1e-3, float("nan")):
        with pytest.raises(ValueError, match="tol"):
            eigsh(A, k=2, tol=tol)
    assert A.num_matvecs == 0


def test_float32_network_hessian_default_tol_is_met_by_the_true_residuals():
    # The float32 floor (100 eps) is honest: the reported residuals of a float32 network
    # Hessian, checked against its dense float64 twin, are what they claim and meet tol.
    import copy

    from hessop import hessian
    from hessop.models.small import MLP, random_batches

    torch.manual_seed(0)
    model = MLP(8, 3, hidden=(16, 16))
    batches = random_batches((8,), [64, 64], num_classes=3, seed=1)
    H = hessian(model, torch.nn.CrossEntropyLoss(), batches, hvp="double-backward")
    r = eigsh(H, k=6)
    assert r.tol == pytest.approx(100 * np.finfo(np.float32).eps) and r.all_converged
    H64 = hessian(copy.deepcopy(model).double(), torch.nn.CrossEntropyLoss(),
                  [(x.double(), y) for x, y in batches], hvp="double-backward")
    D = H64.to_dense()
    eigs = np.linalg.eigvalsh(D)
    X = to_numpy(r.eigenvectors).astype(np.float64)
    scale = np.abs(eigs).max()
    true_res = np.linalg.norm(D @ X - X * r.eigenvalues, axis=0) / scale
    assert np.all(true_res <= r.tol)
    assert np.all(true_res <= 2 * r.residual_norms)
    np.testing.assert_allclose(r.eigenvalues, eigs[::-1][:6], atol=r.tol * scale)


def test_projected_eigenproblems_run_on_one_blas_thread(monkeypatch):
    # numpy's OpenBLAS threads eigh from order ~32 on; its spinning workers then slow the next product
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from hessop.solvers import _small

    controller = threadpoolctl.ThreadpoolController()
    seen, real = [], np.linalg.eigh

    def spy(H):
        seen.append(max(lib["num_threads"] for lib in controller.info() if lib["user_api"] == "blas"))
        return real(H)

    monkeypatch.setattr(_small.np.linalg, "eigh", spy)
    eigs = nn_like_spectrum(120, num_outliers=6, seed=1)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        r = eigsh(SpectralOperator(eigs, seed=3), k=K)
    check_pairs(SpectralOperator(eigs, seed=3), eigs, r, K, "LA", TOL)
    assert seen and set(seen) == {1}
