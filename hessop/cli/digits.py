"""The demo's problem: scikit-learn's handwritten digits and a small tanh MLP trained on them.

The digits (1797 images of 8x8 pixels, 10 classes) ship inside scikit-learn,
so the demo needs no download. Training is seeded and runs on the CPU in a few
seconds; the Hessian is then taken over the whole training split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..models.small import MLP


@dataclass(frozen=True)
class DigitsData:
    """Standardised digits, split into training and test tensors."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def batches(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The training split as a list of ``(x, y)`` batches in a fixed order."""
        n = len(self.y_train)
        return [(self.x_train[i : i + batch_size], self.y_train[i : i + batch_size]) for i in range(0, n, batch_size)]


def load_digits_data(num_train: int | None = None, seed: int = 0, dtype: torch.dtype = torch.float32) -> DigitsData:
    """The digits, shuffled with ``seed``, 80% training / 20% test, pixels standardised.

    ``num_train`` caps the training split (a smaller, faster problem).
    """
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    split = int(0.8 * len(y))
    mean, std = x[:split].mean(axis=0), x[:split].std(axis=0) + 1.0  # +1: some border pixels are constant
    x = (x - mean) / std
    stop = split if num_train is None else min(split, num_train)
    as_x = lambda a: torch.as_tensor(a, dtype=dtype)  # noqa: E731
    as_y = lambda a: torch.as_tensor(a, dtype=torch.long)  # noqa: E731
    return DigitsData(as_x(x[:stop]), as_y(y[:stop]), as_x(x[split:]), as_y(y[split:]))


def digits_model(hidden: tuple[int, ...] = (64, 64), seed: int = 0) -> nn.Module:
    """A seeded tanh MLP from 64 pixels to 10 classes, layers named ``fc1``, ``fc2``, ..."""
    torch.manual_seed(seed)
    return MLP(64, 10, hidden=hidden)


def train(
    model: nn.Module,
    data: DigitsData,
    epochs: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Train with Adam and seeded minibatches; returns loss and accuracy on both splits."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    n = len(data.y_train)
    model.train()
    for _ in tqdm(range(epochs), desc="train", unit="epoch", disable=not progress, leave=False):
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            opt.zero_grad()
            loss_fn(model(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
    model.eval()
    return {"epochs": epochs, "batch_size": batch_size, "lr": lr, **evaluate(model, data)}


@torch.no_grad()
def evaluate(model: nn.Module, data: DigitsData) -> dict:
    """Mean cross-entropy and accuracy on the training and test splits."""
    dtype = next(model.parameters()).dtype
    out = {}
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        logits = model(x.to(dtype))
        out[f"{split}_loss"] = float(nn.functional.cross_entropy(logits, y))
        out[f"{split}_accuracy"] = float((logits.argmax(1) == y).double().mean())
    return out
