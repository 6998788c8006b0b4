"""Attention models (SDPA, nn.MultiheadAttention, nn.TransformerEncoder) against dense float64 Hessians."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from hessop.factory import hessian as make_operator

STRATEGIES = ["double-backward", "double-backward-vmap", "forward-over-reverse", "auto"]


class _SDPA(nn.Module):
    """One causal self-attention head pair through F.scaled_dot_product_attention, then a linear read-out."""

    def __init__(self, d=4, heads=2, classes=3):
        super().__init__()
        self.heads = heads
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, classes)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in self.qkv(x).chunk(3, -1))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        return self.out(a).mean(1)


class _MHA(nn.Module):
    def __init__(self, d=4, heads=2, classes=3):
        super().__init__()
        self.attn, self.out = nn.MultiheadAttention(d, heads, batch_first=True), nn.Linear(d, classes)

    def forward(self, x):
        return self.out(self.attn(x, x, x, need_weights=False)[0]).mean(1)


class _Encoder(nn.Module):
    def __init__(self, d=4, heads=2, classes=3):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=6, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.out = nn.Linear(d, classes)

    def forward(self, x):
        return self.out(self.enc(x)).mean(1)


MODELS = {"sdpa": _SDPA, "multihead": _MHA, "encoder": _Encoder}


def _case(name):
    torch.manual_seed(0)
    model = MODELS[name]().double().eval()  # eval: the fast paths of MultiheadAttention and the encoder
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(b, 5, 4, generator=g), torch.randint(0, 3, (b,), generator=g)) for b in (3, 2)]
    return model, data


def _dense(model, loss, data):
    """The float64 Hessian of the sample mean by plain autograd, through the math attention kernel.

    Not ``torch.func.jacrev`` over ``jacrev``: on the encoder (train or eval mode alike) its second derivatives are
    up to 0.06 away from plain autograd's, and a central difference of float64 gradients sides with autograd
    (to 4e-12), as do all three product strategies.
    """
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    total = sum(len(y) for _, y in data)

    def full(flat):
        parts = torch.split(flat, [s.numel() for s in shapes])
        params = dict(zip(names, (q.reshape(s) for q, s in zip(parts, shapes))))
        return sum(loss(functional_call(model, params, (x.double(),)), y) * len(y) / total for x, y in data)

    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            return torch.autograd.functional.hessian(full, flat0).numpy()
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_attention_hessian_is_exact_with_every_strategy(name, strategy):
    """These failed at the first product ("derivative for ..._flash_attention_for_cpu_backward is not implemented",
    "Trying to use forward AD with ..."), with no action a user could find in the docs."""
    model, data = _case(name)
    loss = nn.CrossEntropyLoss()
    expected = _dense(model, loss, data)
    H = make_operator(model, loss, data, hvp=strategy)
    np.testing.assert_allclose(H.to_dense(), expected, atol=1e-11 * np.abs(expected).max(), rtol=0)
    assert "finite-difference" not in H.backend.chosen.values()
    assert torch.backends.mha.get_fastpath_enabled()  # the user's settings are back after the products
    assert torch.backends.cuda.flash_sdp_enabled()


@pytest.mark.parametrize("name", ["multihead", "encoder"])
def test_attention_ggn_is_exact(name):
    """The GGN's forward-mode Jacobian product went through the eval-mode fast paths, which have no forward rule."""
    model, data = _case(name)
    loss = nn.CrossEntropyLoss()
    G = make_operator(model, loss, data, curvature="ggn").to_dense()
    R = make_operator(model, loss, data, curvature="residual").to_dense()
    np.testing.assert_allclose(G + R, _dense(model, loss, data), atol=1e-11)
    assert np.linalg.eigvalsh(G).min() > -1e-10  # the GGN of cross-entropy is positive semi-definite
