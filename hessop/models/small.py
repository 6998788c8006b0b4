"""Tiny PyTorch models with named layers, and seeded synthetic data to go with them.

They are small enough that their dense Hessian (a few hundred parameters) is
cheap, which makes them the ground truth of the test-suite, and their layer
names (``fc1``, ``conv1``, ``bn1`` ...) make :attr:`HessianOperator.blocks`
readable.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn


class MLP(nn.Sequential):
    """A fully connected network ``fc1 -> act1 -> ... -> fcL``.

    Parameters
    ----------
    in_features, out_features : int
        Input and output widths.
    hidden : sequence of int
        Widths of the hidden layers.
    activation : type of nn.Module
        Activation after each hidden layer (default ``nn.Tanh``, smooth, so
        the Hessian has no kinks).
    """

    def __init__(
        self,
        in_features: int = 8,
        out_features: int = 3,
        hidden: Sequence[int] = (16,),
        activation: type[nn.Module] = nn.Tanh,
    ):
        widths = [in_features, *hidden, out_features]
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            layers[f"fc{i}"] = nn.Linear(a, b)
            if i < len(widths) - 1:
                layers[f"act{i}"] = activation()
        super().__init__(layers)


class SmallCNN(nn.Module):
    """Two 3x3 convolutions with BatchNorm, global average pooling and a linear head.

    ``conv1 -> bn1 -> act -> conv2 -> bn2 -> act -> mean over space -> fc``.
    Use it in eval mode for a well-defined Hessian (BatchNorm then uses its
    running statistics).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 3,
        channels: int = 4,
        activation: type[nn.Module] = nn.Tanh,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act = activation()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(-2, -1)))


def random_batches(
    input_shape: Sequence[int],
    batch_sizes: Sequence[int],
    num_classes: int | None = 3,
    out_features: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Seeded synthetic ``(x, y)`` batches of the given sizes.

    ``x`` is standard normal of shape ``(b, *input_shape)``. Targets are class
    indices in ``[0, num_classes)`` for classification, or standard normal of
    shape ``(b, out_features)`` for regression when ``out_features`` is given.
    """
    if num_classes is None and out_features is None:
        raise ValueError("random_batches needs num_classes (classification) or out_features (regression)")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for b in batch_sizes:
        x = torch.randn((b, *input_shape), generator=gen, dtype=dtype)
        if out_features is not None:
            y = torch.randn((b, out_features), generator=gen, dtype=dtype)
        else:
            y = torch.randint(0, cast(int, num_classes), (b,), generator=gen)
        out.append((x, y))
    return out
