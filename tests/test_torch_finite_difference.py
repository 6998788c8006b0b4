"""hvp="finite-difference": its error against exact products, and auto's fallback when no exact product runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hessop.factory import hessian as make_operator
from hessop.models.small import MLP, SmallCNN, random_batches


def _relative_errors(model, loss, data, dtype, seeds=4):
    exact = make_operator(model, loss, data, hvp="double-backward")
    approx = make_operator(model, loss, data, hvp="finite-difference")
    V = torch.randn(exact.shape[0], seeds, dtype=dtype, generator=torch.Generator().manual_seed(0))
    a, b = exact.apply(V).double(), approx.apply(V).double()
    stacked = torch.stack([approx.apply(V[:, j].contiguous()).double() for j in range(seeds)], 1)
    torch.testing.assert_close(b, stacked, rtol=0, atol=0)  # a block is its columns, one by one
    return ((a - b).norm(dim=0) / a.norm(dim=0)).numpy()


@pytest.mark.parametrize("dtype, bound", [(torch.float64, 1e-9), (torch.float32, 1e-3)])
def test_error_against_exact_products_is_near_eps_to_the_two_thirds(dtype, bound):
    """The central difference at the step measured at the first product is accurate to ~ε^(2/3): 2e-11-6e-11
    in float64, 1.5e-5-4e-5 in float32 (benchmarks/finite_difference.py); the bounds leave a factor of 10 or more."""
    torch.manual_seed(0)
    mlp = MLP(8, 3, (12,)).to(dtype).eval()
    errors = _relative_errors(mlp, nn.CrossEntropyLoss(), random_batches((8,), [7, 5], seed=1), dtype)
    torch.manual_seed(0)
    cnn = SmallCNN(1, 3, channels=3).to(dtype).eval()
    cnn_data = random_batches((1, 6, 6), [6], seed=2)
    errors = np.concatenate([errors, _relative_errors(cnn, nn.CrossEntropyLoss(), cnn_data, dtype)])
    assert errors.max() < bound
    assert errors.max() > 0  # an approximation, not the exact product under another name


class _FusedAttention(nn.Module):
    """Calls torch's fused CPU attention kernel directly (no second derivative, no forward-mode rule), as
    a custom fused kernel would; ``fused=False`` is the same function through the math kernel."""

    def __init__(self, fused=True):
        super().__init__()
        self.fused = fused
        self.qkv, self.out = nn.Linear(4, 12), nn.Linear(4, 3)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (z.reshape(b, t, 2, -1).transpose(1, 2) for z in self.qkv(x).chunk(3, -1))
        if self.fused:
            a = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, is_causal=True)[0]
        else:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(a.transpose(1, 2).reshape(b, t, d)).mean(1)


def test_auto_falls_back_to_finite_differences_with_a_warning_when_no_exact_product_runs():
    torch.manual_seed(0)
    model = _FusedAttention().double().eval()
    twin = _FusedAttention(fused=False).double().eval()
    twin.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(n, 5, 4, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in (3, 2)]
    loss = nn.CrossEntropyLoss()
    with pytest.raises(RuntimeError, match="derivative for .*flash_attention.* is not implemented"):
        make_operator(model, loss, data, hvp="double-backward").to_dense()
    H = make_operator(model, loss, data)
    with pytest.warns(RuntimeWarning, match=r"no exact Hessian-vector product runs on this model \(double-backward: "
                                            r"derivative for .*using hvp='finite-difference'"):
        dense = H.to_dense()
    assert H.backend.chosen == {"block": "finite-difference"}
    expected = make_operator(twin, loss, data, hvp="double-backward").to_dense()
    np.testing.assert_allclose(dense, expected, atol=1e-9 * np.abs(expected).max())
