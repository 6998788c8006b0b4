"""Finite-difference products know their error: measured at the first product, reported, and floored at.

On a float64 model whose loss runs in float32 inside, the step chosen from the parameters' epsilon gave
products 4.6e-4 away from exact ones where the docs promised 1e-10, and solvers reported residuals of 1e-16.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hessop
from hessop.factory import hessian as make_operator
from hessop.models.small import MLP, random_batches


def _float32_inside(out, y):
    return F.cross_entropy(out.float(), y)


def _errors(model, loss, data, seeds=4):
    exact = make_operator(model, loss, data, hvp="double-backward")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        approx = make_operator(model, loss, data, hvp="finite-difference")
        assert approx.product_error is None  # not measured before the first product
        V = torch.randn(exact.shape[0], seeds, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        errors = [float((approx.apply(V[:, j]) - exact.apply(V[:, j])).norm() / exact.apply(V[:, j]).norm())
                  for j in range(seeds)]
    assert exact.product_error == 0.0
    warned = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert all(w.filename == __file__ for w in warned), [w.filename for w in warned]  # raised 5 calls deep
    return approx, np.array(errors), [str(w.message) for w in warned]


def _model():
    torch.manual_seed(0)
    return MLP(8, 3, (12,)).double().eval(), random_batches((8,), [7, 5], seed=1)


def test_the_estimate_is_within_10x_of_the_error_when_the_loss_runs_in_float32_inside():
    model, data = _model()
    H, errors, warned = _errors(model, _float32_inside, data)
    assert errors.min() > 1e-7  # float32 inside: far from float64's 1e-10
    assert errors.max() / 10 <= H.product_error <= errors.min() * 10, (H.product_error, errors)
    assert any("accurate to about" in w and "product_error" in w for w in warned)


def test_the_estimate_is_within_10x_of_the_error_in_float64_without_a_warning():
    model, data = _model()
    H, errors, warned = _errors(model, nn.CrossEntropyLoss(), data)
    assert errors.max() < 1e-8
    assert errors.max() / 10 <= H.product_error <= errors.min() * 10, (H.product_error, errors)
    assert not warned


def test_solvers_report_no_residual_below_the_products_error():
    model, data = _model()
    with pytest.warns(RuntimeWarning, match="accurate to about"):
        H = make_operator(model, _float32_inside, data, hvp="finite-difference")
        results = [hessop.eigsh(H, k=2, tol=1e-6, method=method, max_matvecs=60)
                   for method in ("thick-restart", "lanczos", "block")]
    assert H.product_error > 1e-6  # before the floor: 2e-10 reported, and converged at tol=1e-6
    for result in results:
        assert (result.residual_norms >= H.product_error).all() and not result.converged.any(), result.method


def test_the_step_and_error_are_measured_again_after_the_model_changed(monkeypatch):
    """The step measured at the first product was kept for good, so after an optimizer's step the error estimate
    (the solvers' residual floor) described the old weights."""
    from hessop.backends.torch import finite_difference

    ladders = []
    measure = finite_difference.ladder
    monkeypatch.setattr(finite_difference, "ladder", lambda *args: ladders.append(1) or measure(*args))
    model, data = _model()
    H = make_operator(model, _float32_inside, data, hvp="finite-difference")
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the float32 loss: the products' error is above the solvers' tolerance
        H.apply(v)
        H.apply(v)
        assert len(ladders) == 1  # the same weights: the same measurement
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        for p in model.parameters():
            p.grad = -2 * p.detach().clone()  # a step to 3x the weights
        optimizer.step()
        got = H.apply(v)
    assert len(ladders) == 2  # measured again, at the new weights
    exact = make_operator(model, _float32_inside, data, hvp="double-backward").apply(v)
    error = float((got - exact).norm() / exact.norm())
    assert H.product_error / 10 <= error <= H.product_error * 10, (H.product_error, error)
