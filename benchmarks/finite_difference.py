"""Error of ``hvp="finite-difference"`` against exact products, in float32 and float64.

    python benchmarks/finite_difference.py            # the table in docs/transformers.md (about 20 s)

For each model and dtype: the relative error ``‖Hv_fd − Hv‖ / ‖Hv‖`` over 10 Gaussian vectors, ``Hv`` by
``hvp="double-backward"`` in the same dtype (median and largest), the error the first product measured
(``H.product_error``) and the step it chose over the parameters' default (``h / h₀``). The float64 models
whose loss casts the logits to float32 first ("float32 inside") are the case the measurement is for.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from hessop.factory import hessian  # noqa: E402
from hessop.models.small import MLP, SmallCNN, random_batches  # noqa: E402


class TinyGPT(nn.Module):
    """Embedding, one causal self-attention block (SDPA) with an MLP, a vocabulary head: (B, T) -> (B, T, V)."""

    def __init__(self, vocab=16, d=16, heads=2, t=12):
        super().__init__()
        self.heads = heads
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(t, d)
        self.ln1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln2, self.fc, self.out = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        b, t = ids.shape
        h = self.tok(ids) + self.pos(torch.arange(t, device=ids.device))
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in self.qkv(self.ln1(h)).chunk(3, -1))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1)
        h = h + self.proj(a)
        h = h + self.out(F.gelu(self.fc(self.ln2(h))))
        return self.head(h)


def cases(dtype):
    torch.manual_seed(0)
    yield "MLP 8-32-3, cross-entropy", MLP(8, 3, (32,)).to(dtype).eval(), random_batches((8,), [32, 32], seed=1), \
        nn.CrossEntropyLoss()
    torch.manual_seed(0)
    yield "SmallCNN, cross-entropy", SmallCNN(1, 3, channels=4).to(dtype).eval(), \
        random_batches((1, 8, 8), [16, 16], seed=2), nn.CrossEntropyLoss()
    torch.manual_seed(0)
    yield "MLP 4-16-2, MSE", MLP(4, 2, (16,)).to(dtype).eval(), \
        random_batches((4,), [20], num_classes=None, out_features=2, seed=3), nn.MSELoss()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 16, (4, 12), generator=g)
    yield "tiny GPT (SDPA), token cross-entropy", TinyGPT().to(dtype).eval(), [(ids[:, :-1], ids[:, 1:])], \
        nn.CrossEntropyLoss()
    if dtype == torch.float64:
        torch.manual_seed(0)
        yield "MLP 8-32-3, cross-entropy in float32 inside", MLP(8, 3, (32,)).to(dtype).eval(), \
            random_batches((8,), [32, 32], seed=1), _float32_inside
        torch.manual_seed(0)
        yield "tiny GPT (SDPA), token cross-entropy in float32 inside", TinyGPT().to(dtype).eval(), \
            [(ids[:, :-1], ids[:, 1:])], _float32_inside


def _float32_inside(out, y):
    return F.cross_entropy(out.float().reshape(-1, out.shape[-1]), y.reshape(-1))


def main() -> None:
    warnings.simplefilter("ignore", RuntimeWarning)  # the warning of large errors: the table shows them
    print("| model | n | dtype | median relative error | largest | estimate (`product_error`) | h / h₀ |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for dtype in (torch.float32, torch.float64):
        for name, model, data, loss in cases(dtype):
            exact = hessian(model, loss, data, hvp="double-backward")
            approx = hessian(model, loss, data, hvp="finite-difference")
            errors = []
            for seed in range(10):
                v = torch.randn(exact.shape[0], dtype=dtype, generator=torch.Generator().manual_seed(seed))
                a, b = exact.apply(v).double(), approx.apply(v).double()
                errors.append(float((a - b).norm() / a.norm()))
            step = approx.backend.products.finite_difference.factor
            print(f"| {name} | {exact.shape[0]} | {str(dtype)[6:]} | {np.median(errors):.1e} | {max(errors):.1e} "
                  f"| {approx.product_error:.1e} | {step:g} |", flush=True)


if __name__ == "__main__":
    main()
