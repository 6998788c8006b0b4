"""CIFAR ResNets: sizes of the paper, and switches that remove exactly BatchNorm or the skips they name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hessop.models.resnet import BasicBlock, resnet, resnet20, resnet32, resnet38


def count(model: nn.Module, kind) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("make, blocks, params",
                         [(resnet20, 3, 269_722), (resnet32, 5, 464_154), (resnet38, 6, 561_370)])
def test_depths_have_the_papers_blocks_and_parameters(make, blocks, params):
    model = make()
    # He et al. (2016): 6n + 2 layers, 0.27 M parameters for ResNet20 with option-A shortcuts
    assert sum(p.numel() for p in model.parameters()) == params
    assert [len(s) for s in model.stages] == [blocks] * 3
    assert count(model, nn.Conv2d) == 1 + 2 * 3 * blocks
    assert count(model, nn.BatchNorm2d) == 1 + 2 * 3 * blocks


def test_module_names_are_stem_stages_and_head():
    tops = {name.split(".")[0] for name, _ in resnet(8).named_parameters()}
    assert tops == {"stem", "stage1", "stage2", "stage3", "head"}


def test_output_shape_and_widths():
    model = resnet(14, num_classes=7, width=8, in_channels=1)
    out = model(torch.randn(3, 1, 16, 16))
    assert out.shape == (3, 7)
    assert model.head.fc.in_features == 32


def test_batchnorm_off_everywhere_removes_every_batchnorm_and_adds_conv_biases():
    model = resnet(20, batchnorm=False)
    assert count(model, nn.BatchNorm2d) == 0
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()


def test_batchnorm_per_stage_removes_it_only_in_that_stage():
    model = resnet(20, batchnorm=(True, False, True))
    assert count(model.stage2, nn.BatchNorm2d) == 0
    assert count(model.stage1, nn.BatchNorm2d) == count(model.stage3, nn.BatchNorm2d) == 6
    assert count(model.stem, nn.BatchNorm2d) == 1
    assert all(m.bias is not None for m in model.stage2.modules() if isinstance(m, nn.Conv2d))
    assert all(m.bias is None for m in model.stage1.modules() if isinstance(m, nn.Conv2d))


def plain_path(block: BasicBlock, x: torch.Tensor) -> torch.Tensor:
    return block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))


def option_a(x: torch.Tensor, planes: int, stride: int) -> torch.Tensor:
    x = x[:, :, ::stride, ::stride]
    extra = planes - x.shape[1]
    zeros = x.new_zeros(x.shape[0], extra // 2, *x.shape[2:])
    return torch.cat([zeros, x, x.new_zeros(x.shape[0], extra - extra // 2, *x.shape[2:])], dim=1)


@pytest.mark.parametrize("residual", [True, False, (True, False, True), (False, True, False)])
def test_each_block_adds_its_skip_exactly_when_its_stage_keeps_it(residual):
    torch.manual_seed(0)
    model = resnet(14, residual=residual).eval()
    flags = (residual,) * 3 if isinstance(residual, bool) else residual
    seen = []

    def hook(block, inputs, output):
        seen.append((block, inputs[0].detach(), output.detach()))

    blocks = [(s, b) for s, stage in enumerate(model.stages) for b in stage]
    handles = [b.register_forward_hook(hook) for _, b in blocks]
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 16))
    for h in handles:
        h.remove()
    assert len(seen) == len(blocks) == 6
    for (stage, _), (block, x, out) in zip(blocks, seen):
        with torch.no_grad():
            plain = F.relu(plain_path(block, x))
            skip = option_a(x, block.conv2.out_channels, block.stride)
            with_skip = F.relu(plain_path(block, x) + skip)
        expected, other = (with_skip, plain) if flags[stage] else (plain, with_skip)
        torch.testing.assert_close(out, expected)
        assert not torch.allclose(out, other), "the skip must change the block's output"


def test_removing_residuals_keeps_the_same_parameters():
    # Option-A shortcuts have no parameters: both variants' Hessians act on one space.
    a = [(n, p.shape) for n, p in resnet(20).named_parameters()]
    b = [(n, p.shape) for n, p in resnet(20, residual=False).named_parameters()]
    assert a == b


def test_stage_restriction_selects_exactly_that_stage():
    import hessop

    torch.manual_seed(0)
    model = resnet(8, width=4, in_channels=1).eval()
    data = (torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    H = hessop.hessian(model, nn.CrossEntropyLoss(), data)
    assert H.restrict("stage2").shape[0] == sum(p.numel() for p in model.stage2.parameters())
    assert sum(H.restrict(s).shape[0] for s in ("stem", "stage1", "stage2", "stage3", "head")) == H.shape[0]


@pytest.mark.parametrize("kwargs", [{"depth": 21}, {"depth": 2}, {"width": 0}, {"batchnorm": (True, False)},
                                    {"residual": "yes"}])
def test_bad_arguments_raise_value_errors(kwargs):
    with pytest.raises(ValueError):
        resnet(**kwargs)
