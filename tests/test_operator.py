"""HessianOperator over the PyTorch backend: scipy interop, native path, structure and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as sla
import torch
from torch import nn

from hessop.factory import hessian
from hessop.models.small import MLP, SmallCNN, random_batches
from hessop.operator import HessianOperator


@pytest.fixture(scope="module")
def problem():
    """A float64 CNN with BatchNorm (eval mode) on unequal batches, its operator and dense Hessian."""
    torch.manual_seed(0)
    model = SmallCNN(1, 3, channels=3).double().eval()
    data = random_batches((1, 5, 5), [6, 4, 5], seed=4)
    H = hessian(model, nn.CrossEntropyLoss(), data)
    return model, data, H, H.to_dense()


def test_is_a_symmetric_scipy_operator(problem):
    _, _, H, dense = problem
    assert isinstance(H, sla.LinearOperator) and isinstance(H, HessianOperator)
    assert H.dtype == np.float64 and H.shape == (dense.shape[0],) * 2
    np.testing.assert_allclose(dense, dense.T, atol=1e-14)
    assert H.T is H and H.H is H
    assert "hessian" in repr(H) and "TorchBackend" in repr(H)


def test_host_path_shapes_and_count(problem):
    _, _, H, dense = problem
    n = H.shape[0]
    gen = np.random.default_rng(0)
    v, V = gen.standard_normal(n), gen.standard_normal((n, 3))
    before = H.num_matvecs
    Hv = H @ v
    assert isinstance(Hv, np.ndarray) and Hv.shape == (n,)
    np.testing.assert_allclose(Hv, dense @ v, atol=1e-12)
    np.testing.assert_allclose(H @ v[:, None], (dense @ v)[:, None], atol=1e-12)
    np.testing.assert_allclose(H @ V, dense @ V, atol=1e-12)
    np.testing.assert_allclose(H.rmatvec(v), dense @ v, atol=1e-12)
    np.testing.assert_allclose(H.matvec(v.astype(np.float32)), dense @ v.astype(np.float32), atol=1e-12)
    assert H.num_matvecs - before == 1 + 1 + 3 + 1 + 1


def test_native_path_stays_native(problem):
    _, _, H, dense = problem
    V = torch.randn(H.shape[0], 2, dtype=torch.float64)
    HV = H.apply(V)
    assert isinstance(HV, torch.Tensor) and HV.dtype == torch.float64 and HV.device == V.device
    assert H.xp.__name__.endswith("torch") and H.native_dtype == torch.float64 and H.device == torch.device("cpu")
    np.testing.assert_allclose(HV.numpy(), dense @ V.numpy(), atol=1e-12)


def test_scipy_eigsh_lobpcg_and_cg_agree_with_dense(problem):
    _, _, H, dense = problem
    exact = np.linalg.eigvalsh(dense)
    v0 = np.random.default_rng(0).standard_normal(H.shape[0])  # ARPACK's own start vector is unseeded
    top = sla.eigsh(H, k=4, which="LA", return_eigenvectors=False, tol=1e-10, v0=v0)
    np.testing.assert_allclose(np.sort(top), exact[-4:], rtol=1e-7, atol=1e-12)
    bottom = sla.eigsh(H, k=2, which="SA", return_eigenvectors=False, tol=1e-10, v0=v0)
    np.testing.assert_allclose(np.sort(bottom), exact[:2], rtol=1e-6, atol=1e-10)

    X0 = np.random.default_rng(1).standard_normal((H.shape[0], 3))
    vals, _ = sla.lobpcg(H, X0, largest=True, tol=1e-9, maxiter=500)
    np.testing.assert_allclose(np.sort(vals), exact[-3:], rtol=1e-5)

    shift = 1.0 - exact[0]  # make it positive definite for cg
    A = H + shift * sla.aslinearoperator(np.eye(H.shape[0]))
    b = np.random.default_rng(2).standard_normal(H.shape[0])
    x, info = sla.cg(A, b, rtol=1e-10, maxiter=2000)
    assert info == 0
    np.testing.assert_allclose(x, np.linalg.solve(dense + shift * np.eye(H.shape[0]), b), rtol=1e-6, atol=1e-8)


def test_blocks_and_restrict_are_dense_sub_blocks(problem):
    _, _, H, dense = problem
    blocks = H.blocks
    assert list(blocks) == ["conv1", "bn1", "conv2", "bn2", "fc"]
    for name in ("bn1", "fc"):
        s = blocks[name]
        sub = H.restrict(name)
        assert sub.parameter_names == [f"{name}.weight", f"{name}.bias"]
        np.testing.assert_allclose(sub.to_dense(), dense[s, s], atol=1e-13)
    both = H.restrict("conv1", r"bn\d\.bias")
    bn1, bn2 = blocks["bn1"].stop, blocks["bn2"].stop
    index = np.r_[blocks["conv1"], bn1 - 3 : bn1, bn2 - 3 : bn2]
    np.testing.assert_allclose(both.to_dense(), dense[np.ix_(index, index)], atol=1e-13)


def test_loss_gradient_and_parameters(problem):
    model, data, H, _ = problem
    assert H.loss() == pytest.approx(
        sum(nn.functional.cross_entropy(model(x.double()), y) * len(y) for x, y in data).item() / 15, rel=1e-12
    )
    flat = H.parameters()
    assert flat.shape == (H.shape[0],)
    torch.testing.assert_close(flat, torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert H.loss_at(flat) == pytest.approx(H.loss(), rel=1e-14)
    assert H.gradient().shape == (H.shape[0],)


def test_curvature_kinds_add_up(problem):
    model, data, H, dense = problem
    G = hessian(model, nn.CrossEntropyLoss(), data, curvature="ggn")
    R = hessian(model, nn.CrossEntropyLoss(), data, curvature="residual")
    assert (G.curvature, R.curvature) == ("ggn", "residual")
    V = np.random.default_rng(3).standard_normal((H.shape[0], 2))
    np.testing.assert_allclose(G @ V + R @ V, dense @ V, atol=1e-12)


def test_float32_operator_gives_scipy_a_float32_dtype():
    torch.manual_seed(0)
    H = hessian(MLP(6, 3, (8,)).eval(), nn.CrossEntropyLoss(), random_batches((6,), [5, 3]))
    assert H.dtype == np.float32 and H.native_dtype == torch.float32
    assert (H @ np.ones(H.shape[0])).dtype == np.float32
    vals = sla.eigsh(H, k=2, which="LA", return_eigenvectors=False)
    assert vals.dtype == np.float32


# -- bad input at the operator's boundary ---------------------------------------------------------


def test_wrong_length_dtype_and_device(problem):
    _, _, H, _ = problem
    n = H.shape[0]
    with pytest.raises(ValueError, match=rf"expected a vector of shape \({n},\) or a block \({n}, k\); got shape"):
        H.apply(torch.ones(n + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="expected a vector of shape"):
        H.apply(torch.ones(n, 2, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="does not match the operator's torch.float64; cast it first"):
        H.apply(torch.ones(n, dtype=torch.float32))
    with pytest.raises(ValueError, match="is on device meta but the operator is on cpu; move it first"):
        H.apply(torch.ones(n, dtype=torch.float64, device="meta"))
    with pytest.raises(ValueError, match="dimension mismatch"):
        H @ np.ones(n - 1)
    with pytest.raises(TypeError, match="the Hessian operator is real"):
        H.matvec(np.ones(n, dtype=complex))


def test_restrict_and_to_dense_refusals(problem):
    _, _, H, _ = problem
    with pytest.raises(ValueError, match=r"\['layer9'\] match no parameter; parameters are named like"):
        H.restrict("fc", "layer9")
    with pytest.raises(ValueError, match="restrict needs at least one parameter name"):
        H.restrict()
    with pytest.raises(ValueError, match=f"pass max_size={H.shape[0]} if you mean it"):
        H.to_dense(max_size=10)
