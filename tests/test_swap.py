"""Swap frameworks, keep the numbers: a PyTorch MLP and its JAX twin give the same spectra.

Probes are drawn on the host from the seed (``hessop._array``), so the same seed
gives the same probes in both frameworks and the stochastic estimates agree to
rounding, not merely within their standard errors.
"""

from collections import OrderedDict

import numpy as np
import pytest

pytestmark = pytest.mark.xdist_group("jax")  # one worker compiles each eager JAX operation once (tests/conftest.py)
torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
pytest.importorskip("hessop.backends.torch")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

from hessop.factory import hessian  # noqa: E402
from hessop.models.small import MLP  # noqa: E402
from hessop.solvers.density import density  # noqa: E402
from hessop.solvers.eigsh import eigsh  # noqa: E402
from hessop.solvers.trace import trace  # noqa: E402

G = np.random.default_rng(7)
X = G.standard_normal((20, 4))
LABELS = G.integers(0, 3, 20)
BATCHES = [(X[:12], LABELS[:12]), (X[12:], LABELS[12:])]


def jax_apply(p, x):
    """The JAX twin of ``MLP(4, 3, hidden=(5,))``: the same names, the same ``x Wᵀ + b``."""
    h = jnp.tanh(x @ p["fc1.weight"].T + p["fc1.bias"])
    return h @ p["fc2.weight"].T + p["fc2.bias"]


def cross_entropy(out, y):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out), y[:, None], axis=1))


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    model = MLP(4, 3, hidden=(5,)).double()  # the contract suite's shape: JAX reuses the solvers' compiled ops
    torch_batches = [(torch.as_tensor(x), torch.as_tensor(y)) for x, y in BATCHES]
    H_torch = hessian(model, torch.nn.CrossEntropyLoss(), torch_batches)
    params = OrderedDict((name, jnp.asarray(p.detach().numpy())) for name, p in model.named_parameters())
    H_jax = hessian(cross_entropy, params, BATCHES, model_fn=jax_apply)
    return H_torch, H_jax


def test_same_operator(pair):
    H_torch, H_jax = pair
    assert H_torch.parameter_names == H_jax.parameter_names
    assert H_torch.blocks == H_jax.blocks
    assert H_torch.loss() == pytest.approx(H_jax.loss(), rel=1e-13)
    D = H_torch.to_dense()
    np.testing.assert_allclose(H_jax.to_dense(), D, atol=1e-13 * np.abs(D).max())


def test_same_top_eigenvalues(pair):
    res = [eigsh(H, k=3, which="LA", tol=1e-8) for H in pair]
    assert all(r.all_converged for r in res)
    np.testing.assert_allclose(res[0].eigenvalues, res[1].eigenvalues, rtol=1e-9)
    exact = np.linalg.eigvalsh(pair[0].to_dense())[::-1][:3]
    np.testing.assert_allclose(res[0].eigenvalues, exact, rtol=1e-8)


def test_same_trace_from_the_same_probes(pair):
    t_torch, t_jax = (trace(H, method="hutchinson", max_matvecs=16, seed=11) for H in pair)
    np.testing.assert_allclose(t_torch.samples, t_jax.samples, rtol=1e-10)  # the same probes, sample by sample
    assert t_torch.estimate == pytest.approx(t_jax.estimate, rel=1e-10)
    assert t_torch.stderr == pytest.approx(t_jax.stderr, rel=1e-8)
    other = trace(pair[1], method="hutchinson", max_matvecs=16, seed=12)
    assert abs(other.estimate - t_jax.estimate) > 1e-6 * abs(t_jax.estimate)  # another seed, other probes


def test_same_density(pair):
    grid = np.linspace(-0.5, 3.0, 200)
    d_torch, d_jax = (density(H, num_probes=2, num_steps=20, seed=5, sigma=0.05, grid=grid) for H in pair)
    np.testing.assert_allclose(d_torch.nodes, d_jax.nodes, atol=1e-8)
    np.testing.assert_allclose(d_torch.weights, d_jax.weights, atol=1e-8)
    np.testing.assert_allclose(d_torch.values, d_jax.values, atol=1e-8 * d_torch.values.max())
