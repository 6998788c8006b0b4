"""HessianOperator's framework-free logic, on a numpy backend with a known Hessian.

The backend is a sum of per-sample quadratics ``l_i(θ) = ½ θᵀ A_i θ``, so the
mean-loss Hessian is the sample-weighted mean of the ``A_i``: exact ground truth
for normalisation over unequal batches, restriction, blocks and scipy interop.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as sla

from hessop._array import namespace
from hessop.backends.base import Backend
from hessop.operator import HessianOperator

NAMES = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
SIZES = [6, 3, 3, 1]
MODULES = ["fc1", "fc1", "fc2", "fc2"]


class QuadraticBackend(Backend):
    """Per-sample symmetric matrices grouped in batches; loss of a sample is ½ θᵀ A θ."""

    def __init__(self, batches, reduction="mean", names=NAMES, sizes=SIZES, modules=MODULES, theta=None):
        self.batches = batches  # list of arrays (b, n, n)
        self.xp = namespace(np.zeros(1))
        self.device = "cpu"
        self.dtype = np.float64
        self.param_names, self.param_sizes, self.module_names = list(names), list(sizes), list(modules)
        self.curvature = "hessian"
        self.normalize = reduction == "mean"
        self.local_count = float(sum(b.shape[0] for b in batches))
        self.theta = np.arange(1.0, self.n + 1) if theta is None else theta

    def _sum(self):
        return sum(b.sum(axis=0) for b in self.batches)

    def hvp_sum(self, V):
        return self._sum() @ V

    def loss_sum(self):
        return self.loss_at(self.theta)

    def loss_at(self, flat):
        return 0.5 * float(flat @ self._sum() @ flat)

    def grad_sum(self):
        return self._sum() @ self.theta

    def flat_params(self):
        return self.theta

    def restrict(self, names):
        offsets = np.cumsum([0] + self.param_sizes)
        keep = np.concatenate([np.arange(offsets[i], offsets[i + 1])
                               for i, nm in enumerate(self.param_names) if nm in names])
        sub = [b[:, keep][:, :, keep] for b in self.batches]
        chosen = [i for i, nm in enumerate(self.param_names) if nm in names]
        return QuadraticBackend(sub, "mean" if self.normalize else "sum",
                                [self.param_names[i] for i in chosen], [self.param_sizes[i] for i in chosen],
                                [self.module_names[i] for i in chosen], self.theta[keep])


def random_batches(sizes=(3, 5, 1), n=13, seed=0):
    g = np.random.default_rng(seed)
    out = []
    for b in sizes:
        M = g.standard_normal((b, n, n))
        out.append(M + M.transpose(0, 2, 1))
    return out


@pytest.fixture
def batches():
    return random_batches()


def dense_mean(batches):
    return sum(b.sum(axis=0) for b in batches) / sum(b.shape[0] for b in batches)


def test_is_a_scipy_linear_operator_with_explicit_dtype(batches):
    H = HessianOperator(QuadraticBackend(batches))
    assert isinstance(H, sla.LinearOperator)
    assert H.dtype == np.float64 and H.shape == (13, 13)
    assert H.H is H and H.T is H


def test_mean_over_unequal_batches_is_exact(batches):
    H = HessianOperator(QuadraticBackend(batches))
    np.testing.assert_allclose(H.to_dense(), dense_mean(batches), rtol=1e-12, atol=1e-12)


def test_sum_reduction_does_not_normalise(batches):
    H = HessianOperator(QuadraticBackend(batches, reduction="sum"))
    np.testing.assert_allclose(H.to_dense(), sum(b.sum(axis=0) for b in batches), rtol=1e-12)


def test_host_path_shapes_and_matvec_count(batches):
    H = HessianOperator(QuadraticBackend(batches))
    D = dense_mean(batches)
    v, V = np.ones(13), np.ones((13, 4))
    np.testing.assert_allclose(H @ v, D @ v)
    np.testing.assert_allclose(H.matvec(v.reshape(13, 1)).ravel(), D @ v)
    np.testing.assert_allclose(H @ V, D @ V)
    assert H.num_matvecs == 1 + 1 + 4
    np.testing.assert_allclose(H.rmatvec(v), D @ v)


def test_scipy_solvers_run_unchanged(batches):
    H = HessianOperator(QuadraticBackend(batches))
    D = dense_mean(batches)
    top = sla.eigsh(H, k=3, which="LA", return_eigenvectors=False)
    np.testing.assert_allclose(np.sort(top), np.linalg.eigvalsh(D)[-3:], rtol=1e-8)
    spd = HessianOperator(QuadraticBackend([b @ b for b in batches]))  # squares: positive definite
    b = np.linspace(-1, 1, 13)
    x, info = sla.cg(spd, b, rtol=1e-12, maxiter=500)
    assert info == 0
    np.testing.assert_allclose(dense_mean([m @ m for m in batches]) @ x, b, atol=1e-8)


def test_blocks_group_a_modules_tensors_in_order(batches):
    H = HessianOperator(QuadraticBackend(batches))
    assert H.blocks == {"fc1": slice(0, 9), "fc2": slice(9, 13)}
    assert H.parameter_names == NAMES


@pytest.mark.parametrize(
    "patterns, expected",
    [(("fc1",), ["fc1.weight", "fc1.bias"]), (("fc2.bias",), ["fc2.bias"]),
     ((r".*\.weight",), ["fc1.weight", "fc2.weight"])],
)
def test_restrict_selects_by_name_prefix_or_regex(batches, patterns, expected):
    H = HessianOperator(QuadraticBackend(batches))
    sub = H.restrict(*patterns)
    assert sub.parameter_names == expected
    offsets = np.cumsum([0] + SIZES)
    idx = np.concatenate([np.arange(offsets[NAMES.index(n)], offsets[NAMES.index(n) + 1]) for n in expected])
    np.testing.assert_allclose(sub.to_dense(), dense_mean(batches)[np.ix_(idx, idx)], rtol=1e-12)


def test_restrict_names_that_match_nothing(batches):
    H = HessianOperator(QuadraticBackend(batches))
    with pytest.raises(ValueError, match=r"\['conv9'\] match no parameter"):
        H.restrict("fc1", "conv9")
    with pytest.raises(ValueError, match="at least one"):
        H.restrict()


def test_native_vector_checks(batches):
    H = HessianOperator(QuadraticBackend(batches))
    with pytest.raises(ValueError, match=r"shape \(13,\)"):
        H.apply(np.ones(12))
    with pytest.raises(TypeError, match="dtype float32"):
        H.apply(np.ones(13, dtype=np.float32))
    with pytest.raises(TypeError, match="real"):
        H @ np.ones(13, dtype=complex)


def test_to_dense_refuses_large_operators_with_advice(batches):
    H = HessianOperator(QuadraticBackend(batches))
    with pytest.raises(ValueError, match="max_size=13"):
        H.to_dense(max_size=10)


def test_empty_data_is_refused():
    with pytest.raises(ValueError, match="no samples"):
        HessianOperator(QuadraticBackend([np.zeros((0, 13, 13))]))


def test_loss_and_gradient_are_means(batches):
    H = HessianOperator(QuadraticBackend(batches))
    theta = np.arange(1.0, 14.0)
    D = dense_mean(batches)
    assert H.loss() == pytest.approx(0.5 * theta @ D @ theta)
    np.testing.assert_allclose(H.gradient(), D @ theta)
    assert H.loss_at(np.zeros(13)) == 0.0


def test_factory_names_what_it_cannot_dispatch():
    import hessop

    with pytest.raises(TypeError, match="cannot tell the framework of a object"):
        hessop.hessian(object(), None, [])
    with pytest.raises(ValueError, match="unknown curvature 'fisher'"):
        hessop.hessian(object(), None, [], curvature="fisher")
    with pytest.raises(ValueError, match="unknown backend 'mxnet'"):
        hessop.hessian(object(), None, [], backend="mxnet")


def test_every_native_operator_shares_one_base_with_one_set_of_checks():
    import hessop
    from hessop.operator import CallableOperator, NativeOperator
    from hessop.testing import SpectralOperator

    A = SpectralOperator(np.arange(1.0, 6.0), seed=0)
    C = CallableOperator(lambda V: A.to_dense() @ V, 5, np.float64, xp=A.xp)
    for op in (A, C):
        assert isinstance(op, NativeOperator)
        with pytest.raises(ValueError, match=r"shape \(5,\)"):
            op.apply(np.ones(4))
        with pytest.raises(TypeError, match="dtype"):
            op.apply(np.ones(5, dtype=np.float32))
        np.testing.assert_allclose(op @ np.ones(5), A.to_dense() @ np.ones(5))  # the scipy host path
        assert op.num_matvecs == 1 and op.H is op
    np.testing.assert_allclose(hessop.eigsh(C, k=2).eigenvalues, [5.0, 4.0])

    class DuckTyped:  # the native protocol's attributes alone no longer make an operator
        shape, xp, device, native_dtype = (5, 5), A.xp, "cpu", np.float64

        def apply(self, V):
            return V

    with pytest.raises(TypeError, match="CallableOperator"):
        hessop.eigsh(DuckTyped(), k=2)
