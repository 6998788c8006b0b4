"""Kept products follow the model: a weight changed behind autograd's back is seen by every strategy.

``p.data.add_()`` (hand-written training loops) changes neither a tensor's data pointer nor its
version counter; before the value snapshot, kept first-order graphs and linearisations went on
multiplying by the Hessian at the old weights (86-133% off).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hessop.factory import hessian as make_operator
from hessop.models.small import MLP, SmallCNN, random_batches

STRATEGIES = ["auto", "double-backward", "double-backward-vmap", "forward-over-reverse", "linearize",
              "finite-difference"]


def _assert_follows(model, data, change, **options):
    loss = nn.CrossEntropyLoss()
    H = make_operator(model, loss, data, **options)
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=gen)
    V = torch.randn(H.shape[0], 3, dtype=torch.float64, generator=gen)
    for _ in range(2):  # the second product runs over whatever was kept
        H.apply(v), H.apply(V)
    change(model)
    fresh = make_operator(model, loss, data, hvp="double-backward",
                          check_determinism=options.get("check_determinism", True))
    rtol = 1e-6 if options.get("hvp") == "finite-difference" else 1e-10
    for x in (v, V, v):  # the vector once more: the kept products rebuilt at the new weights
        expected = fresh.apply(x)
        torch.testing.assert_close(H.apply(x), expected, rtol=0, atol=rtol * float(expected.abs().max()))


def _step(model):
    gen = torch.Generator().manual_seed(2)
    for p in model.parameters():
        p.data.add_(0.3 * torch.randn(p.shape, dtype=p.dtype, generator=gen))


def _mlp():
    """test_torch_speed's network and two of its batch shapes: the compiled tests find its kernels compiled."""
    torch.manual_seed(0)
    return MLP(8, 3, (12,)).double().eval(), random_batches((8,), [5, 7], seed=1)


@pytest.mark.parametrize("hvp", STRATEGIES)
def test_every_strategy_sees_weights_changed_through_data(hvp):
    _assert_follows(*_mlp(), _step, hvp=hvp)


@pytest.mark.slow
@pytest.mark.xdist_group("inductor")  # one worker: the later tests find the kernels compiled
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_compiled_products_see_weights_changed_through_data(mode):
    model, data = _mlp()
    _assert_follows(model.train(mode == "train"), data[:1] if mode == "train" else data, _step, compile=True)


def test_a_buffer_changed_through_data_is_seen():
    torch.manual_seed(0)
    cnn = SmallCNN(1, 3, channels=2).double().eval()
    data = random_batches((1, 5, 5), [4, 3], seed=2)

    def rescale(model):
        model.bn1.running_var.data.mul_(3.0)  # BatchNorm's statistics, read in eval mode

    _assert_follows(cnn, data, rescale)


def test_a_mode_change_is_seen():
    """model.train() after products: BatchNorm normalises by batch statistics, a different function."""
    torch.manual_seed(0)
    cnn = SmallCNN(1, 3, channels=2).double().eval()
    _assert_follows(cnn, random_batches((1, 5, 5), [4, 3], seed=2), lambda m: m.train(), check_determinism=False)


def test_the_comparison_without_a_sync_per_tensor_sees_every_change():
    """The comparison GPUs take (one host sync for all tensors), run here on CPU tensors: it agrees with
    torch.equal on every change, NaN and a change of one unit in the last place included."""
    from hessop.backends.torch.functional import same_values

    a, b = torch.arange(6.0, dtype=torch.float64).reshape(2, 3), torch.ones(4, dtype=torch.float64)
    for one_sync in (False, True):
        assert same_values([(a, a.clone()), (b, b.clone())], one_sync)
        one_ulp = b.index_fill(0, torch.tensor([2]), 1 + 2 ** -52)
        for changed in (one_ulp, b * (1 + 2 ** -52), torch.full((4,), float("nan")), torch.ones(5)):
            assert not same_values([(a, a.clone()), (changed, b.clone())], one_sync)
