"""Influence functions against exact influences from the dense float64 Hessian of small torch models."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import hessop  # noqa: E402
from hessop.analysis import influence  # noqa: E402
from hessop.models.small import MLP, random_batches  # noqa: E402

LOSS = nn.CrossEntropyLoss()


def flat_grad(model, x, y, params):
    g = torch.autograd.grad(LOSS(model(x), y), params)
    return torch.cat([t.reshape(-1) for t in g]).double().numpy()


def exact(model, data, test, damping, names=None):
    """``-G (H + λI)⁻¹ g_test`` with the dense Hessian and per-example gradients by a loop."""
    named = dict(model.named_parameters())
    params = [named[k] for k in (names or named)]
    H = hessop.hessian(model, LOSS, data, params=names).to_dense()
    g = flat_grad(model, *test, params)
    G = np.stack([flat_grad(model, x[i:i + 1], y[i:i + 1], params) for x, y in data for i in range(x.shape[0])])
    return -G @ np.linalg.solve(H + damping * np.eye(len(H)), g)


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    model = MLP(4, 3, (6,)).double()
    data = random_batches((4,), [10, 7], seed=1, dtype=torch.float64)
    test = random_batches((4,), [3], seed=2, dtype=torch.float64)[0]
    return model, data, test


@pytest.mark.parametrize("damping", [0.5, 1e-3])
def test_matches_the_dense_hessian(problem, damping):
    """With damping 1e-3 the untrained network's H + λI is indefinite: "auto" must still solve it."""
    model, data, test = problem
    r = influence(model, LOSS, data, test, damping=damping, rtol=1e-10)
    truth = exact(model, data, test, damping)
    assert r.converged and r.influence.shape == (17,)
    np.testing.assert_allclose(r.influence, truth, rtol=0, atol=1e-6 * np.max(np.abs(truth)))
    np.testing.assert_allclose(r.loo_change, -truth / 17, rtol=0, atol=1e-6 * np.max(np.abs(truth)) / 17)
    assert r.test_loss == pytest.approx(float(LOSS(model(test[0]), test[1]).detach()))
    if damping < 0.01:
        H = hessop.hessian(model, LOSS, data).to_dense()
        assert np.linalg.eigvalsh(H)[0] + damping < 0 and "minres" in r.solve.method


def test_a_parameter_subset_and_an_unconverged_solve_warns(problem):
    model, data, test = problem
    r = influence(model, LOSS, data, test, damping=0.1, params=["fc2.weight", "fc2.bias"], rtol=1e-10)
    truth = exact(model, data, test, 0.1, names=["fc2.weight", "fc2.bias"])
    np.testing.assert_allclose(r.influence, truth, rtol=0, atol=1e-6 * np.max(np.abs(truth)))
    with pytest.warns(RuntimeWarning, match="did not converge"):
        r = influence(model, LOSS, data, test, damping=1e-3, rtol=1e-12, max_matvecs=8)
    assert not r.converged
