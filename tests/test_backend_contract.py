"""One contract every backend passes, checked against its own framework's dense float64 Hessian.

The network is the same small classifier in each framework (tanh MLP 4 -> 5 -> 3,
cross-entropy, two unequal batches), written out with explicit weights so the
ground truth (``jax.hessian`` / ``torch.func.hessian`` of the loss of the flat
parameter vector) does not go through the backend under test. A new backend
joins by adding one ``make_*`` function to ``BUILDERS``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from hessop.factory import hessian

SIZES = OrderedDict([("fc1.weight", (5, 4)), ("fc1.bias", (5,)), ("fc2.weight", (3, 5)), ("fc2.bias", (3,))])
N = sum(int(np.prod(s)) for s in SIZES.values())
_G = np.random.default_rng(42)
WEIGHTS = OrderedDict((k, _G.standard_normal(s)) for k, s in SIZES.items())
X = _G.standard_normal((12, 4))
LABELS = _G.integers(0, 3, 12)
BATCHES = [(X[:7], LABELS[:7]), (X[7:], LABELS[7:])]


@dataclass
class Case:
    """A backend's operators over the contract network, and its own dense ground truth."""

    H: Any  # float64 Hessian
    dense: np.ndarray
    is_native: Callable[[Any], bool]
    make: Callable[..., Any]  # make(curvature=..., dtype=...) -> operator


def make_jax() -> Case:
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from array_api_compat import is_jax_array

    def apply(p, x):
        return jnp.tanh(x @ p["fc1.weight"].T + p["fc1.bias"]) @ p["fc2.weight"].T + p["fc2.bias"]

    def cross_entropy(out, y):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out), y[:, None], axis=1))

    def params(dtype):
        return OrderedDict((k, jnp.asarray(v, dtype)) for k, v in WEIGHTS.items())

    def make(curvature="hessian", dtype=jnp.float64):
        return hessian(cross_entropy, params(dtype), BATCHES, curvature=curvature, model_fn=apply)

    offsets = np.cumsum([0] + [int(np.prod(s)) for s in SIZES.values()])

    @jax.jit
    def dense(flat):
        def loss(flat):
            p = {k: flat[a:b].reshape(s) for (k, s), a, b in zip(SIZES.items(), offsets[:-1], offsets[1:])}
            return cross_entropy(apply(p, X), LABELS)

        return jax.hessian(loss)(flat)

    flat = np.concatenate([v.ravel() for v in WEIGHTS.values()])
    return Case(make(), np.asarray(dense(flat)), is_jax_array, make)


def make_torch() -> Case:
    torch = pytest.importorskip("torch")
    pytest.importorskip("hessop.backends.torch")
    from array_api_compat import is_torch_array

    from hessop.models.small import MLP

    def make(curvature="hessian", dtype=torch.float64):
        model = MLP(4, 3, hidden=(5,)).to(dtype)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(torch.as_tensor(WEIGHTS[name]))
        data = [(torch.as_tensor(x, dtype=dtype), torch.as_tensor(y)) for x, y in BATCHES]
        return hessian(model, torch.nn.CrossEntropyLoss(), data, curvature=curvature)

    def loss(flat):
        p, start = {}, 0
        for k, s in SIZES.items():
            size = int(np.prod(s))
            p[k], start = flat[start:start + size].reshape(s), start + size
        out = torch.tanh(torch.as_tensor(X) @ p["fc1.weight"].T + p["fc1.bias"]) @ p["fc2.weight"].T + p["fc2.bias"]
        return torch.nn.functional.cross_entropy(out, torch.as_tensor(LABELS))

    flat = torch.as_tensor(np.concatenate([v.ravel() for v in WEIGHTS.values()]))
    dense = torch.func.hessian(loss)(flat).numpy()
    return Case(make(), dense, is_torch_array, make)


BUILDERS = {"jax": make_jax, "torch": make_torch}
GROUPS = {"jax": pytest.mark.xdist_group("jax")}  # one worker compiles each eager JAX operation once (conftest)


@pytest.fixture(scope="module", params=[pytest.param(name, marks=GROUPS.get(name, ())) for name in BUILDERS])
def case(request) -> Case:
    return BUILDERS[request.param]()


def host(x) -> np.ndarray:
    from hessop._array import to_numpy

    return np.asarray(to_numpy(x), dtype=np.float64)


def test_shape_dtype_and_native_arrays(case):
    H = case.H
    assert H.shape == (N, N) and H.dtype == np.float64
    v = H.xp.ones(N, dtype=H.native_dtype, device=H.device)
    before = H.num_matvecs
    out = H.apply(v)
    assert case.is_native(out) and out.shape == (N,) and out.dtype == H.native_dtype
    assert H.num_matvecs == before + 1
    assert (H @ np.ones(N)).dtype == np.float64


def test_dense_matches_framework_ground_truth(case):
    D = case.H.to_dense()
    np.testing.assert_allclose(D, case.dense, atol=1e-12 * np.abs(case.dense).max())
    np.testing.assert_allclose(D, D.T, atol=1e-13 * np.abs(D).max())
    assert case.H.H is case.H  # scipy's adjoint is the operator itself


def test_matmat_equals_stacked_matvecs(case):
    H = case.H
    V = np.random.default_rng(0).standard_normal((N, 3))
    native = H.xp.asarray(V, device=H.device)
    block = host(H.apply(native))
    columns = np.stack([host(H.apply(native[:, j])) for j in range(3)], axis=1)
    np.testing.assert_allclose(block, columns, atol=1e-13 * np.abs(block).max())
    np.testing.assert_allclose(H.matmat(V), case.dense @ V, atol=1e-11)


def test_blocks_and_restrict(case):
    H = case.H
    assert H.parameter_names == list(SIZES)
    assert H.blocks == {"fc1": slice(0, 25), "fc2": slice(25, N)}
    np.testing.assert_allclose(H.restrict("fc2").to_dense(), case.dense[25:, 25:], atol=1e-12)
    idx = np.r_[20:25, 40:43]  # both biases
    np.testing.assert_allclose(H.restrict(r"fc\d\.bias").to_dense(), case.dense[np.ix_(idx, idx)], atol=1e-12)


def test_gauss_newton_split(case):
    G, R = case.make(curvature="ggn").to_dense(), case.make(curvature="residual").to_dense()
    np.testing.assert_allclose(G + R, case.dense, atol=1e-12)
    assert np.linalg.eigvalsh(G).min() > -1e-12  # cross-entropy is convex in the outputs


def test_solvers_match_dense(case):
    from hessop.solvers.eigsh import eigsh
    from hessop.solvers.trace import trace

    exact = np.linalg.eigvalsh(case.dense)
    res = eigsh(case.H, k=3, which="LA", tol=1e-8)
    assert res.all_converged
    np.testing.assert_allclose(res.eigenvalues, exact[::-1][:3], rtol=1e-7)
    X = host(res.eigenvectors)
    np.testing.assert_allclose(case.dense @ X, X * res.eigenvalues, atol=1e-6 * exact.max())
    import scipy.sparse.linalg

    np.testing.assert_allclose(np.sort(scipy.sparse.linalg.eigsh(case.H, k=3, which="LA")[0]), exact[-3:], rtol=1e-8)
    t = trace(case.H, max_matvecs=24, seed=3)
    assert t.stderr > 0
    assert abs(t.estimate - np.trace(case.dense)) <= 4 * t.stderr


def test_float32(case):
    H32 = case.make(dtype=_float32(case))
    assert H32.dtype == np.float32
    np.testing.assert_allclose(H32.to_dense(), case.dense, atol=1e-5 * np.abs(case.dense).max())


def _float32(case):
    return case.H.xp.float32
