"""CIFAR-style residual networks with switches for BatchNorm and residual connections.

The networks of He et al. (2016), "Deep residual learning for image recognition",
section 4.2: a 3x3 stem convolution, three stages of ``n`` basic blocks with 16,
32 and 64 channels (times ``width / 16``), global average pooling and a linear
head; depth ``6n + 2`` (ResNet20: n = 3, ResNet32: n = 5, ResNet38: n = 6).

Two switches reproduce the ablations of Yao et al. (2020), "PyHessian: neural
networks through the lens of the Hessian", Tables I-III:

* ``batchnorm=False`` replaces every BatchNorm by the identity and gives the
  convolutions a bias instead (so each convolution keeps an affine shift);
* ``residual=False`` drops the skip connection of every block, leaving a plain
  convolutional network with the same parameters.

Either switch takes a bool for the whole network or a tuple of three bools,
one per stage (the stem follows stage 1's BatchNorm setting).

Shortcuts use **option A** of He et al.: when a block halves the resolution and
doubles the channels, the identity is subsampled and zero-padded. The shortcut
has no parameters, so switching residual connections off changes the function
but not the parameter vector: the Hessians of both variants act on the same
space and can be compared block by block.

Module names are stable and meant for :meth:`hessop.HessianOperator.restrict`:
``stem``, ``stage1``, ``stage2``, ``stage3`` (each holding blocks ``0 .. n-1``
with ``conv1``, ``bn1``, ``conv2``, ``bn2``) and ``head``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock", "ResNet", "resnet", "resnet20", "resnet32", "resnet38"]

NUM_STAGES = 3


def _norm(channels: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an optional (option-A) identity shortcut.

    Parameters
    ----------
    in_planes, planes : int
        Input and output channels.
    stride : int
        Stride of the first convolution (2 at the start of stages 2 and 3).
    batchnorm : bool
        BatchNorm after each convolution; otherwise the convolutions carry a bias.
    residual : bool
        Add the shortcut to the block's output before the last ReLU.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, batchnorm: bool = True, residual: bool = True):
        super().__init__()
        self.residual = residual
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=not batchnorm)
        self.bn1 = _norm(planes, batchnorm)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=not batchnorm)
        self.bn2 = _norm(planes, batchnorm)
        self.stride = stride
        self.pad = planes - in_planes

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Option A: subsample by the stride and zero-pad the new channels (no parameters)."""
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + self.shortcut(x)
        return F.relu(out)


class Stem(nn.Module):
    """The first 3x3 convolution, its normalisation and ReLU."""

    def __init__(self, in_channels: int, planes: int, batchnorm: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, planes, 3, stride=1, padding=1, bias=not batchnorm)
        self.bn = _norm(planes, batchnorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class Head(nn.Module):
    """Global average pooling and the linear classifier."""

    def __init__(self, planes: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ResNet(nn.Module):
    """A CIFAR ResNet of depth ``6n + 2``; see :func:`resnet`."""

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int = 10,
        width: int = 16,
        batchnorm: Sequence[bool] = (True, True, True),
        residual: Sequence[bool] = (True, True, True),
        in_channels: int = 3,
    ):
        super().__init__()
        self.batchnorm = tuple(batchnorm)
        self.residual = tuple(residual)
        planes = [width, 2 * width, 4 * width]
        self.stem = Stem(in_channels, planes[0], self.batchnorm[0])
        in_planes = planes[0]
        for s in range(NUM_STAGES):
            layers = []
            for b in range(blocks_per_stage):
                stride = 2 if (s > 0 and b == 0) else 1
                layers.append(BasicBlock(in_planes, planes[s], stride, self.batchnorm[s], self.residual[s]))
                in_planes = planes[s]
            self.add_module(f"stage{s + 1}", nn.Sequential(*layers))
        self.head = Head(in_planes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def stages(self) -> list[nn.Sequential]:
        """The three stages, in order."""
        return [cast(nn.Sequential, s) for s in (self.stage1, self.stage2, self.stage3)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)


def _per_stage(value: bool | Sequence[bool], name: str) -> tuple[bool, ...]:
    if isinstance(value, bool):
        return (value,) * NUM_STAGES
    values = tuple(value)
    if len(values) != NUM_STAGES or not all(isinstance(v, bool) for v in values):
        raise ValueError(f"{name} must be a bool or a tuple of {NUM_STAGES} bools (one per stage); got {value!r}")
    return values


def resnet(
    depth: int = 20,
    num_classes: int = 10,
    width: int = 16,
    batchnorm: bool | Sequence[bool] = True,
    residual: bool | Sequence[bool] = True,
    in_channels: int = 3,
) -> ResNet:
    """A CIFAR-style ResNet (He et al. 2016) with BatchNorm and residual switches.

    Parameters
    ----------
    depth : int
        ``6n + 2`` for ``n`` blocks per stage: 8, 14, 20, 26, 32, 38, 44, 56, 110, ...
    num_classes : int
        Outputs of the linear head.
    width : int
        Channels of stage 1 (stages 2 and 3 have twice and four times as many); 16 in the paper.
    batchnorm, residual : bool or tuple of 3 bools
        Keep BatchNorm / skip connections in all stages, or per stage
        (Yao et al. 2020, Tables I-III).
    in_channels : int
        Channels of the input images (3 for CIFAR, 1 for grey-scale digits).

    Returns
    -------
    ResNet
        Modules ``stem``, ``stage1``, ``stage2``, ``stage3`` and ``head``, so that
        ``H.restrict("stage2")`` selects a stage.
    """
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 38, 56, ...); got {depth!r}")
    for name, value in (("num_classes", num_classes), ("width", width), ("in_channels", in_channels)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return ResNet(
        (depth - 2) // 6,
        num_classes=num_classes,
        width=width,
        batchnorm=_per_stage(batchnorm, "batchnorm"),
        residual=_per_stage(residual, "residual"),
        in_channels=in_channels,
    )


def resnet20(**kwargs) -> ResNet:
    """ResNet20 (3 blocks per stage, 0.27 M parameters at width 16); see :func:`resnet`."""
    return resnet(20, **kwargs)


def resnet32(**kwargs) -> ResNet:
    """ResNet32 (5 blocks per stage, 0.46 M parameters at width 16); see :func:`resnet`."""
    return resnet(32, **kwargs)


def resnet38(**kwargs) -> ResNet:
    """ResNet38 (6 blocks per stage, 0.56 M parameters at width 16); see :func:`resnet`."""
    return resnet(38, **kwargs)
