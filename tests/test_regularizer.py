"""Hessian trace regularisation: an unbiased, differentiable trace that training then lowers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from hessop.analysis.regularizer import HessianTraceRegularizer


def tiny(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(64, 4, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return model, x, y


def dense_hessian(model, x, y, names=None):
    params = {k: v.detach() for k, v in model.named_parameters()}
    names = names or list(params)
    sizes = [params[k].numel() for k in names]

    def f(flat):
        parts = dict(params)
        for k, chunk in zip(names, torch.split(flat, sizes)):
            parts[k] = chunk.view_as(params[k])
        return nn.functional.cross_entropy(functional_call(model, parts, (x,)), y)

    flat = torch.cat([params[k].reshape(-1) for k in names])
    return torch.autograd.functional.hessian(f, flat)


@pytest.mark.parametrize("layers, names", [(None, None), (["2"], ["2.weight", "2.bias"]),
                                           ("middle", ["2.weight", "2.bias"])])
def test_trace_estimate_is_unbiased_for_the_chosen_layers(layers, names):
    model, x, y = tiny()
    reg = HessianTraceRegularizer(model, gamma=1.0, every=1, layers=layers, num_probes=100, seed=3)
    loss = nn.functional.cross_entropy(model(x), y)
    est = reg.trace(loss, create_graph=False)
    exact = float(dense_hessian(model, x, y, names).diagonal().sum())
    assert reg.last_stderr > 0
    assert abs(float(est) - exact) < 4 * reg.last_stderr


def test_penalty_is_zero_between_penalised_steps_and_differentiable_on_them():
    model, x, y = tiny()
    reg = HessianTraceRegularizer(model, gamma=0.5, every=3)
    loss = nn.functional.cross_entropy(model(x), y)
    off = reg(loss, step=1)
    assert float(off) == 0.0 and not off.requires_grad
    on = reg(loss, step=3)
    assert on.requires_grad and float(on.detach()) == pytest.approx(0.5 * reg.last_trace)
    grads = torch.autograd.grad(on, list(model.parameters()))
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert math.isnan(reg.last_stderr)  # one probe: no spread to measure


def test_middle_drops_the_first_and_last_quarter_of_the_layers():
    model = nn.Sequential(*[nn.Linear(3, 3) for _ in range(8)])
    assert HessianTraceRegularizer(model, layers="middle").layer_names == ["2", "3", "4", "5"]
    model = nn.Sequential(*[nn.Linear(3, 3) for _ in range(3)])
    assert HessianTraceRegularizer(model, layers="middle").layer_names == ["1"]


def train(gamma, steps=100, seed=0, probes=2):
    model, x, y = tiny(seed)
    reg = HessianTraceRegularizer(model, gamma=gamma, every=1, num_probes=probes, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for step in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        (loss + reg(loss, step)).backward()
        opt.step()
    return float(dense_hessian(model, x, y).diagonal().sum()), float(loss.detach())


def test_training_with_the_penalty_lowers_the_trace():
    plain_trace, plain_loss = train(gamma=0.0)
    htr_trace, htr_loss = train(gamma=0.003)
    assert 0 < htr_trace < 0.9 * plain_trace  # exact dense traces after the same 100 steps
    assert htr_loss < 0.1 and plain_loss < 0.1  # both still fit (chance level is log 3 = 1.1)


@pytest.mark.parametrize("kwargs", [{"gamma": -1.0}, {"every": 0}, {"num_probes": 0}, {"layers": ["nope"]}])
def test_bad_arguments_raise_value_errors(kwargs):
    model, _, _ = tiny()
    with pytest.raises(ValueError):
        HessianTraceRegularizer(model, **kwargs)


def test_a_loss_without_graph_is_refused():
    model, x, y = tiny()
    reg = HessianTraceRegularizer(model, every=1)
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model(x), y)
    with pytest.raises(ValueError, match="autograd graph"):
        reg(loss, 0)
