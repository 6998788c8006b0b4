"""Batches whose targets differ in shape beyond the first dimension: each weighs its elements, as torch's mean.

A token loss given as a function over 64 sequences of 16 tokens and 32 of 8 was weighted by sequences,
8% away from the Hessian of the mean over all tokens, without a word.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian

from hessop.factory import hessian as make_operator

V = 5


class _Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(V, 3), nn.Linear(3, V)

    def forward(self, x):
        return self.head(torch.tanh(self.embed(x)))


def _data(shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, V, s, generator=gen), torch.randint(0, V, s, generator=gen)) for s in shapes]


def _element_mean_hessian(model, per_batch_loss, data):
    """The float64 Hessian of the sum over batches of each batch's mean times its elements, over all elements."""
    names = [n for n, _ in model.named_parameters()]
    total = sum(y.numel() for _, y in data)

    def full(*ps):
        out = 0
        for x, y in data:
            out = out + per_batch_loss(functional_call(model, dict(zip(names, ps)), (x,)), y) * y.numel() / total
        return out

    params = tuple(p.detach() for p in model.parameters())
    blocks = hessian(full, argnums=tuple(range(len(params))))(*params)
    return torch.cat([torch.cat([b.reshape(p.numel(), q.numel()) for b, q in zip(row, params)], 1)
                      for row, p in zip(blocks, params)]).numpy()


def _token_loss(out, y):
    return F.cross_entropy(out.reshape(-1, V), y.reshape(-1))


def test_an_opaque_token_loss_over_unequal_lengths_is_the_token_mean_and_warns():
    torch.manual_seed(0)
    model = _Tokens().double()
    data = _data([(8, 6), (4, 3)])  # 48 and 12 tokens: by sequences the second batch weighed 4/12, by tokens 12/60
    with pytest.warns(UserWarning, match="differ in shape beyond the first dimension.*weight_fn") as warned:
        H = make_operator(model, _token_loss, data)
    assert warned[0].filename == __file__  # the user's line, not the backend's, however deep it was raised
    expected = _element_mean_hessian(model, _token_loss, data)
    np.testing.assert_allclose(H.to_dense(), expected, atol=1e-12 * np.abs(expected).max())
    with warnings.catch_warnings():  # a stated weight is not second-guessed
        warnings.simplefilter("error")
        W = make_operator(model, _token_loss, data, weight_fn=lambda b: b[1].numel())
    np.testing.assert_allclose(W.to_dense(), expected, atol=1e-12 * np.abs(expected).max())


def test_a_torch_mean_loss_over_unequal_lengths_is_the_element_mean_without_a_warning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(b, t, 1, generator=gen, dtype=torch.float64),
             torch.randn(b, t, 1, generator=gen, dtype=torch.float64)) for b, t in [(6, 7), (3, 2)]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        H = make_operator(model, nn.MSELoss(), data)
    expected = _element_mean_hessian(model, F.mse_loss, data)
    np.testing.assert_allclose(H.to_dense(), expected, atol=1e-12 * np.abs(expected).max())


def test_equal_shapes_keep_the_sample_count():
    model = _Tokens().double()
    data = _data([(8, 6), (4, 6)])
    H = make_operator(model, _token_loss, data)
    assert H.backend.local_count == 12  # samples, as before: the weights only change where shapes differ
