"""Loss landscapes against exact parabolas, and filter-normalised directions (Li et al. 2018)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import hessop
from hessop.analysis.landscape import Landscape, filter_normalized_direction, landscape_1d, landscape_2d


def least_squares(seed=0):
    """A linear model at its least-squares minimum: the loss is exactly L* + ½ aᵀ H a."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(40, 5, generator=g, dtype=torch.float64)
    w = torch.randn(5, 1, generator=g, dtype=torch.float64)
    y = X @ w + 0.3 * torch.randn(40, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(5, 1).double()
    A = torch.cat([X, torch.ones(40, 1, dtype=torch.float64)], dim=1)
    sol = torch.linalg.lstsq(A, y).solution[:, 0]
    with torch.no_grad():
        model.weight.copy_(sol[:5][None])
        model.bias.copy_(sol[5:])
    return hessop.hessian(model, nn.MSELoss(), (X, y))


def mlp(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    data = (torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 3, (30,)))
    return model, hessop.hessian(model, nn.CrossEntropyLoss(), data)


def eigpairs(H):
    lam, Q = np.linalg.eigh(H.to_dense())
    return lam, Q


def test_a_quadratic_is_the_exact_parabola_along_each_eigenvector():
    H = least_squares()
    lam, Q = eigpairs(H)
    for i in (0, 5):
        land = landscape_1d(H, Q[:, i], radius=2.0, num_points=9)
        expected = H.loss() + 0.5 * lam[i] * land.alphas**2
        np.testing.assert_allclose(land.losses, expected, rtol=1e-10, atol=1e-12)
    assert land.num_evaluations == 9 and not land.partial


def test_a_quadratic_surface_is_the_exact_paraboloid():
    H = least_squares()
    lam, Q = eigpairs(H)
    land = landscape_2d(H, torch.from_numpy(Q[:, -1]), torch.from_numpy(Q[:, -2]), radius=1.0, num_points=5)
    A, B = np.meshgrid(land.alphas, land.betas, indexing="ij")
    np.testing.assert_allclose(land.losses, H.loss() + 0.5 * (lam[-1] * A**2 + lam[-2] * B**2), rtol=1e-10)
    assert land.losses.shape == (5, 5) and land.ndim == 2


def test_the_centre_is_the_loss_and_the_curvature_is_the_eigenvalue():
    _, H = mlp()
    lam, Q = eigpairs(H)
    h = 1e-3
    land = landscape_1d(H, torch.from_numpy(Q[:, -1]), radius=h, num_points=3)
    assert land.center_loss == H.loss()
    assert land.losses[1] == H.loss_at(H.parameters())
    second_difference = (land.losses[0] - 2 * land.losses[1] + land.losses[2]) / h**2
    assert second_difference == pytest.approx(lam[-1], rel=1e-4)


def test_an_eigsh_column_is_accepted_as_a_direction():
    _, H = mlp()
    v = torch.from_numpy(eigpairs(H)[1][:, -1:])  # (n, 1), as eigenvectors come
    assert landscape_1d(H, v, num_points=3).losses.shape == (3,)
    with pytest.raises(ValueError, match="length"):
        landscape_1d(H, torch.zeros(H.shape[0] + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="radius"):
        landscape_1d(H, v, radius=0.0)


def test_an_interrupted_landscape_keeps_what_it_has(monkeypatch):
    _, H = mlp()
    calls = {"n": 0}
    real = H.loss_at

    def flaky(flat):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(flat)

    monkeypatch.setattr(H, "loss_at", flaky)
    land = landscape_1d(H, filter_normalized_direction(H, seed=0), num_points=7)
    # points 0-2 evaluated, point 3 is the centre (H.loss()), the 4th loss_at call is interrupted
    assert land.partial and land.num_evaluations == 4
    assert np.all(np.isfinite(land.losses[:4])) and np.all(np.isnan(land.losses[4:]))
    json.dumps(land.to_dict())  # NaNs become null


def test_filter_normalised_directions_match_each_filters_norm():
    model, H = mlp()
    d = filter_normalized_direction(model, seed=3)
    assert torch.equal(d, filter_normalized_direction(H, seed=3))  # model and operator agree
    assert not torch.equal(d, filter_normalized_direction(model, seed=4))
    start = 0
    for p in model.parameters():
        seg = d[start:start + p.numel()].view_as(p)
        start += p.numel()
        if p.dim() == 1:
            assert torch.count_nonzero(seg) == 0  # biases ignored, as Li et al. do
        else:
            torch.testing.assert_close(seg.norm(dim=1), p.detach().norm(dim=1))


def test_landscape_plots_and_serialises(tmp_path):
    from hessop.analysis.plots import savefig

    _, H = mlp()
    lam, Q = eigpairs(H)
    one = landscape_1d(H, Q[:, -1], radius=0.5, num_points=5)
    two = landscape_2d(H, Q[:, -1], filter_normalized_direction(H, seed=1), radius=0.5, num_points=3,
                       labels=("top eigenvector", "random"))
    assert isinstance(one, Landscape)
    savefig(one.plot(), tmp_path / "line.png")
    savefig(two.plot(kind="surface"), tmp_path / "surface.png")
    savefig(two.plot(kind="contour"), tmp_path / "contour.png")
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("line.png", "surface.png", "contour.png"))
    with pytest.raises(ValueError, match="kind"):
        one.plot(kind="surface")
    back = json.loads(json.dumps(two.to_dict()))
    assert np.allclose(back["losses"], two.losses) and back["labels"] == ["top eigenvector", "random"]


@pytest.mark.xdist_group("jax")  # one worker compiles each eager JAX operation once (tests/conftest.py)
def test_filter_normalised_directions_read_the_parameter_shapes_of_a_jax_operator():
    """The operator reports every backend's shapes: JAX gets filters and skipped biases, as torch does."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    g = np.random.default_rng(1)
    params = {"l1": {"w": jnp.asarray(g.standard_normal((5, 3)), jnp.float32),
                     "b": jnp.asarray(g.standard_normal(5), jnp.float32)}}

    def loss(p, batch):
        x, y = batch
        return jnp.mean((x @ p["l1"]["w"].T + p["l1"]["b"] - y) ** 2)

    H = hessop.hessian(loss, params, (np.ones((4, 3), np.float32), np.zeros((4, 5), np.float32)))
    assert H.parameter_names == ["l1.b", "l1.w"] and H.parameter_shapes == [(5,), (5, 3)]
    d = np.asarray(filter_normalized_direction(H, seed=0))
    bias, weight = d[:5], d[5:].reshape(5, 3)
    assert np.all(bias == 0.0)  # 1-D parameters are skipped, as Li et al. do
    np.testing.assert_allclose(np.linalg.norm(weight, axis=1), np.linalg.norm(np.asarray(params["l1"]["w"]), axis=1),
                               rtol=1e-5)  # each filter (row) has its weights' norm
