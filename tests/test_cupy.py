"""CuPy operators and the DLPack bridge.

The framework-free logic (device names, shape/dtype/device checks, the callable
and matrix operators) runs here with numpy and scipy standing in for CuPy and
cupyx: the code paths are the same, only the namespace differs. The GPU tests
need CuPy and a CUDA device and are skipped otherwise.
"""

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg

from hessop._array import device_key, same_device
from hessop.cupy import from_cupy, to_cupy
from hessop.operator import CallableOperator, as_operator
from hessop.solvers.eigsh import eigsh
from hessop.solvers.trace import trace
from hessop.testing import SpectralOperator, indefinite_spectrum

NP = pytest.importorskip("array_api_compat").array_namespace(np.zeros(1))


def _has_cuda() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no cupy, or a cupy without a driver
        return False


def gpu(test):
    """Mark a test as needing CuPy and a CUDA device, and skip it (with that reason) without them."""
    return pytest.mark.gpu(pytest.mark.skipif(not _has_cuda(), reason="needs CuPy and a CUDA device")(test))


def _symmetric(n=30, seed=0):
    A = np.random.default_rng(seed).standard_normal((n, n))
    return A + A.T


def test_device_key_understands_every_framework():
    torch = pytest.importorskip("torch")
    assert device_key(torch.device("cuda", 1)) == ("cuda", 1)
    assert device_key(torch.device("cuda")) == ("cuda", 0)
    assert device_key(torch.device("cpu")) == ("cpu", 0)
    assert device_key("cuda:2") == device_key("gpu:2") == device_key(2) == ("cuda", 2)
    assert device_key("cpu") == ("cpu", 0)
    jax = pytest.importorskip("jax")
    assert device_key(jax.devices("cpu")[0]) == ("cpu", 0)
    assert same_device(torch.device("cuda", 1), "cuda:1") and not same_device("cuda:0", "cuda:1")
    with pytest.raises(ValueError, match="cannot interpret device"):
        device_key("tpu-ish:x")


def test_callable_operator_runs_the_generic_solvers():
    op = SpectralOperator(indefinite_spectrum(40), seed=1)
    A = op.to_dense()
    C = CallableOperator(lambda V: A @ V, 40, "float64", xp=NP)
    assert C.device == "cpu" and C.native_dtype == np.float64 and C.shape == (40, 40)
    res = eigsh(C, k=3, which="LA", tol=1e-10)
    np.testing.assert_allclose(res.eigenvalues, op.eigenvalues[::-1][:3], rtol=1e-9)
    t = trace(C, max_matvecs=20, seed=0)
    assert 0 < t.stderr and abs(t.estimate - op.eigenvalues.sum()) <= 4 * t.stderr
    vals = scipy.sparse.linalg.eigsh(C, k=2, which="SA")[0]  # and it is a scipy LinearOperator too
    np.testing.assert_allclose(np.sort(vals), op.eigenvalues[:2], rtol=1e-9)
    before = C.num_matvecs
    C.apply(np.ones((40, 3)))
    assert C.num_matvecs == before + 3


def test_dense_and_sparse_matrices_as_operators():
    A = _symmetric(25)
    S = scipy.sparse.csr_matrix(np.where(np.abs(A) > 1.0, A, 0.0))
    V = np.random.default_rng(1).standard_normal((25, 4))
    for M, dense in ((A, A), (S, S.toarray())):
        op = as_operator(M)
        np.testing.assert_allclose(op.apply(V), dense @ V, atol=1e-12)
        np.testing.assert_allclose(op.apply(V[:, 0]), dense @ V[:, 0], atol=1e-12)
        np.testing.assert_allclose(op @ V[:, 1], dense @ V[:, 1], atol=1e-12)
    A32 = as_operator(A.astype(np.float32))
    assert A32.dtype == np.float32 and A32.native_dtype == np.float32


def test_bad_input_messages():
    C = CallableOperator(lambda V: V, 5, np.float64, xp=NP)
    with pytest.raises(ValueError, match=r"shape \(5,\) or a block"):
        C.apply(np.ones(4))
    with pytest.raises(TypeError, match="dtype float32 does not match"):
        C.apply(np.ones(5, np.float32))
    with pytest.raises(ValueError, match="returned shape"):
        CallableOperator(lambda V: V[:2], 5, np.float64, xp=NP).apply(np.ones(5))
    with pytest.raises(TypeError, match="real float"):
        CallableOperator(lambda V: V, 5, np.int64, xp=NP)
    with pytest.raises(ValueError, match="positive integer"):
        CallableOperator(lambda V: V, 0, np.float64, xp=NP)
    with pytest.raises(TypeError, match="callable"):
        CallableOperator(np.eye(5), 5, np.float64, xp=NP)
    with pytest.raises(ValueError, match="square matrix"):
        as_operator(np.ones((3, 4)))


def test_device_mismatch_is_refused():
    C = CallableOperator(lambda V: V, 5, np.float64, xp=NP, device="cuda:0")  # says it lives on a GPU
    with pytest.raises(ValueError, match="on device cpu but the operator is on cuda:0"):
        C.apply(np.ones(5))


def test_to_cupy_refuses_operators_off_the_gpu():
    pytest.importorskip("jax")
    import jax.numpy as jnp

    from hessop.factory import hessian

    H = hessian(lambda w, x: jnp.mean((x @ w) ** 2), jnp.ones(3, jnp.float32), np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="needs an operator on a CUDA device.*cpu"):
        to_cupy(H)
    with pytest.raises(ValueError, match="CUDA device"):
        from_cupy(np.ones(3), H)
    with pytest.raises(TypeError, match="needs a hessop operator"):
        to_cupy(np.eye(3))


# -- on a GPU ------------------------------------------------------------------------------
@gpu
def test_cupy_dense_and_sparse_run_the_solvers_on_the_gpu():  # pragma: no cover - needs CUDA
    import cupy
    import cupyx.scipy.sparse

    A = _symmetric(60)
    exact = np.linalg.eigvalsh(A)
    for M in (cupy.asarray(A), cupyx.scipy.sparse.csr_matrix(cupy.asarray(A))):
        res = eigsh(as_operator(M), k=3, which="LA", tol=1e-10)
        assert isinstance(res.eigenvectors, cupy.ndarray)
        np.testing.assert_allclose(res.eigenvalues, exact[::-1][:3], rtol=1e-8)


@gpu
@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_to_cupy_runs_cupyx_eigsh_on_a_network_hessian(framework):  # pragma: no cover - needs CUDA
    import cupy
    import cupyx.scipy.sparse.linalg as csl

    H = _gpu_operator(framework)
    D = H.to_dense()
    C = to_cupy(H)
    x = cupy.asarray(np.random.default_rng(0).standard_normal(H.shape[0]))
    np.testing.assert_allclose(cupy.asnumpy(C.matvec(x)), D @ cupy.asnumpy(x), atol=1e-10)
    vals, vecs = csl.eigsh(C, k=3, which="LA")
    np.testing.assert_allclose(np.sort(cupy.asnumpy(vals)), np.linalg.eigvalsh(D)[-3:], rtol=1e-8)
    top = from_cupy(vecs[:, -1], H)
    assert type(top) is type(H.parameters())
    with cupy.cuda.Device(cupy.cuda.runtime.getDeviceCount() - 1):
        if cupy.cuda.runtime.getDeviceCount() > 1:
            with pytest.raises(ValueError, match="on GPU"):
                C.matvec(cupy.ones(H.shape[0]))


def _gpu_operator(framework):  # pragma: no cover - needs CUDA
    from hessop.factory import hessian

    g = np.random.default_rng(3)
    x, y = g.standard_normal((16, 5)), g.standard_normal((16, 2))
    if framework == "torch":
        torch = pytest.importorskip("torch")
        model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double().cuda()
        return hessian(model, torch.nn.MSELoss(), (torch.as_tensor(x).cuda(), torch.as_tensor(y).cuda()))
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    gpus = [d for d in jax.devices() if d.platform != "cpu"]
    if not gpus:
        pytest.skip("JAX has no GPU device here")
    w = jax.device_put(jnp.asarray(g.standard_normal((5, 2))), gpus[0])
    return hessian(lambda w, b: jnp.mean((jnp.tanh(b[0] @ w) - b[1]) ** 2), w, (x, y))
