"""hessop.solve against exact solutions of prescribed spectra and of a network's dense Hessian.

Every test asserts the property that matters to a user: a column marked converged has a true
relative residual (recomputed here in float64 from the returned x) at most rtol.
"""

from __future__ import annotations

import array_api_strict
import numpy as np
import pytest
import scipy.sparse.linalg as sla

from hessop.solvers.solve import solve
from hessop.testing import InterruptingOperator, SpectralOperator

N = 1500
DAMPING = 1e-2


def spd_spectrum(n=N, seed=0):
    """Eigenvalues in (0, 30] crowding towards zero: condition number about 3e3 once damped by 1e-2."""
    return np.sort(30.0 * np.random.default_rng(seed).uniform(0, 1, n) ** 3)


def indefinite_spectrum(n=N, seed=0):
    lam = spd_spectrum(n, seed)
    lam[:40] = -np.random.default_rng(seed + 1).uniform(0.1, 5.0, 40)
    return np.sort(lam)


def operator(lam, seed=1, **kw):
    """An implicit ``Q diag(lam) Qᵀ`` (three Householder reflections): O(n) products, exact eigenvectors."""
    return SpectralOperator(lam, seed=seed, implicit=True, **kw)


def exact(A, b, damping=DAMPING):
    """``(A + damping I)⁻¹ b`` from the known eigendecomposition (pseudo-inverse on a zero eigenvalue)."""
    Q, lam = A.eigenvectors(), A.eigenvalues + damping
    inv = np.divide(1.0, lam, out=np.zeros_like(lam), where=np.abs(lam) > 1e-12)
    return Q @ (inv[:, None] * (Q.T @ b)) if b.ndim == 2 else Q @ (inv * (Q.T @ b))


def true_residual(A, x, b, damping=DAMPING):
    x64 = np.asarray(x, dtype=np.float64)
    return np.linalg.norm(b - (A.to_dense() @ x64 + damping * x64), axis=0) / np.linalg.norm(b, axis=0)


def counting(A, damping):
    calls = [0]

    def mv(v):
        calls[0] += 1
        return A @ v + damping * v

    return sla.LinearOperator(A.shape, matvec=mv, dtype=np.float64), calls


@pytest.fixture(scope="module")
def spd():
    A = operator(spd_spectrum())
    b = np.random.default_rng(5).standard_normal(N)
    return A, b, exact(A, b)


def test_spd_matches_scipy_cg_products_and_the_exact_solution(spd):
    A, b, x = spd
    r = solve(A, b, damping=DAMPING, rtol=1e-7)
    L, calls = counting(A, DAMPING)
    xs, info = sla.cg(L, b, rtol=1e-7, maxiter=10 * N)
    assert info == 0
    assert r.converged and r.method == "cg" and r.negative_curvature is None
    assert r.residual <= 1e-7
    assert np.linalg.norm(r.x - x) / np.linalg.norm(x) <= 1e-6
    assert r.num_matvecs <= 1.05 * calls[0], (r.num_matvecs, calls[0])
    # the reported residual is the true one
    Ax = A @ r.x + DAMPING * r.x
    assert abs(np.linalg.norm(b - Ax) / np.linalg.norm(b) - r.residual) <= 1e-3 * r.residual


def test_indefinite_auto_switches_and_no_method_returns_a_wrong_x_marked_converged():
    A = operator(indefinite_spectrum())
    b = np.random.default_rng(6).standard_normal(N)
    x = exact(A, b)
    auto = solve(A, b, damping=DAMPING, rtol=1e-7)
    assert auto.converged and auto.method == "cg+minres"
    assert np.linalg.norm(auto.x - x) / np.linalg.norm(x) <= 1e-5
    p = auto.negative_curvature
    assert p is not None and abs(np.linalg.norm(p) - 1) < 1e-12
    assert p @ (A @ p) + DAMPING <= 0 and np.isclose(auto.curvature, p @ (A @ p) + DAMPING)
    cg = solve(A, b, damping=DAMPING, method="cg", rtol=1e-7)
    assert not cg.converged and cg.stopped == "curvature" and "positive definite" in cg.message
    for r in (auto, cg, solve(A, b, damping=DAMPING, method="minres", rtol=1e-7)):
        if r.converged:
            assert true_residual(A, r.x, b) <= 1e-7 * 1.01
            assert np.linalg.norm(r.x - x) / np.linalg.norm(x) <= 1e-5


def test_singular_consistent_gives_the_minimum_norm_solution_and_inconsistent_is_not_converged():
    lam = np.concatenate([np.zeros(30), np.linspace(-2.0, -0.5, 10), np.linspace(0.5, 4.0, 60)])
    A = operator(lam, seed=2)
    Q = A.eigenvectors()
    c = np.random.default_rng(0).standard_normal(100)
    c[np.abs(A.eigenvalues) == 0] = 0.0
    b = Q @ c  # in the range of A
    x = exact(A, b, damping=0.0)  # the pseudo-inverse solution, orthogonal to the null space
    for method in ("minres", "auto"):
        r = solve(A, b, method=method, rtol=1e-10)
        assert r.converged and np.linalg.norm(r.x - x) <= 1e-8 * np.linalg.norm(x)
    b_bad = b + Q[:, np.flatnonzero(A.eigenvalues == 0)[0]]  # a null-space component: no solution exists
    r = solve(A, b_bad, method="minres", rtol=1e-10)
    assert not r.converged and r.stopped == "least-squares" and "least-squares" in r.message
    assert true_residual(A, r.x, b_bad, 0.0) == pytest.approx(r.residual, rel=1e-6)
    assert r.residual == pytest.approx(1 / np.linalg.norm(b_bad), rel=1e-4)  # the null part is all that is left


def test_block_columns_equal_separate_solves_at_the_same_products():
    A = operator(indefinite_spectrum(300), seed=3)
    B = np.random.default_rng(7).standard_normal((300, 3))
    B[:, 1] = 0.0
    r = solve(A, B, damping=DAMPING, rtol=1e-8)
    assert r.converged.tolist() == [True, True, True] and r.x.shape == (300, 3)
    assert np.all(r.x[:, 1] == 0) and r.residual[1] == 0
    cost = 2  # the block's symmetry probe
    for j in (0, 2):
        one = solve(A, B[:, j], damping=DAMPING, rtol=1e-8)
        np.testing.assert_allclose(r.x[:, j], one.x, rtol=0, atol=1e-5 * np.linalg.norm(one.x))
        cost += one.num_matvecs - 2
    assert r.num_matvecs <= 1.02 * cost  # batched products round differently: an iteration more or less
    assert np.all(true_residual(A, r.x[:, [0, 2]], B[:, [0, 2]]) <= 1e-8 * 1.01)


def test_warm_start_callback_budget_and_interrupt(spd):
    A, b, x = spd
    warm = solve(A, b, damping=DAMPING, rtol=1e-7, x0=x)
    assert warm.converged and warm.num_matvecs == 2 + 1 + 1  # probe, residual of x0, final check
    seen = []
    r = solve(A, b, damping=DAMPING, callback=lambda s: seen.append(s.num_matvecs) or len(seen) >= 5)
    assert not r.converged and r.stopped == "callback" and len(seen) == 5
    assert r.residual == pytest.approx(true_residual(A, r.x, b)[()], rel=1e-6)
    r = solve(A, b, damping=DAMPING, rtol=1e-7, max_matvecs=50)
    assert not r.converged and r.stopped == "budget" and r.num_matvecs <= 50


    B = InterruptingOperator(A.eigenvalues, seed=1, implicit=True, interrupt_at=20)
    r = solve(B, b, damping=DAMPING)
    assert not r.converged and r.stopped == "interrupt" and "Ctrl-C" in r.message
    assert r.residual == pytest.approx(true_residual(A, r.x, b)[()], rel=1e-6)  # the recurrence's, still exact


def test_float32_rounding_is_never_marked_converged():
    """In float32 the recurrence's residual falls far below what the iterate attains; only the truth counts."""
    lam = np.geomspace(1e-4, 1.0, 400)
    A32 = SpectralOperator(lam, seed=4, dtype=np.float32)
    b = np.random.default_rng(8).standard_normal(400)
    truth = lambda r: np.linalg.norm(b - A32.to_dense() @ np.asarray(r.x, np.float64)) / np.linalg.norm(b)  # noqa: E731
    estimates = []
    r = solve(A32, b.astype(np.float32), rtol=1e-5, callback=lambda s: estimates.append(s.residuals[0]) and False)
    assert min(estimates) <= 1e-5  # the recurrence claimed convergence ...
    assert not r.converged and r.stopped == "stagnated" and truth(r) > 1e-5  # ... the iterate never got there
    assert r.residual == pytest.approx(truth(r), rel=0.1)
    r = solve(A32, b.astype(np.float32), rtol=1e-3)
    assert r.converged and truth(r) <= 1e-3 * 1.01


@pytest.mark.parametrize("name", ["array_api_strict", "torch"])
def test_native_namespaces(name):
    if name == "torch":
        torch = pytest.importorskip("torch")
        import array_api_compat.torch as xp

        kw = {"xp": xp, "device": "cpu"}
        as_native = lambda a: torch.asarray(a)  # noqa: E731
    else:
        kw = {"xp": array_api_strict, "device": None}
        as_native = array_api_strict.asarray
    lam = indefinite_spectrum(200)
    A = SpectralOperator(lam, seed=5, **kw)
    ref = SpectralOperator(lam, seed=5)
    b = np.random.default_rng(9).standard_normal((200, 2))
    r = solve(A, as_native(b), damping=DAMPING, rtol=1e-9)
    assert type(r.x).__module__.split(".")[0] == type(as_native(b)).__module__.split(".")[0]
    np.testing.assert_allclose(np.asarray(r.x), exact(ref, b), atol=1e-7)
    assert r.all_converged


def test_network_hessian_matches_the_dense_solve():
    torch = pytest.importorskip("torch")
    from torch import nn

    from hessop.factory import hessian
    from hessop.models.small import MLP, random_batches

    torch.manual_seed(0)
    H = hessian(MLP(5, 3, (6,)).double(), nn.CrossEntropyLoss(), random_batches((5,), [8, 6], seed=1))
    D = H.to_dense()
    b = np.random.default_rng(10).standard_normal(H.shape[0])
    x = np.linalg.solve(D + 0.1 * np.eye(len(b)), b)
    r = solve(H, b, damping=0.1, rtol=1e-10)
    assert r.converged and np.linalg.norm(np.asarray(r.x) - x) <= 1e-6 * np.linalg.norm(x)


def test_refusals():
    A = operator(spd_spectrum(50))
    with pytest.raises(ValueError, match="shape"):
        solve(A, np.ones(49))
    with pytest.raises(ValueError, match="method"):
        solve(A, np.ones(50), method="gmres")
    with pytest.raises(ValueError, match="NaN"):
        solve(A, np.full(50, np.nan))
    with pytest.raises(ValueError, match="damping"):
        solve(A, np.ones(50), damping=float("inf"))
    with pytest.raises(TypeError):
        solve(A, np.ones(50), 0.1)  # everything but the operator and b is keyword-only
