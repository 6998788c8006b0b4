"""Inputs that once gave the PyTorch backend a silent wrong answer or an error that did not say what happened."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev
from torch.utils.data import DataLoader, TensorDataset

import hessop
from hessop.factory import hessian as make_operator
from hessop.models.small import MLP, random_batches


def _dense(model, loss, batches, weights=None):
    """The float64 Hessian of ``Σ_b w_b loss_b / Σ_b w_b`` over all parameters (w_b: samples by default)."""
    named = dict(model.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad]
    shapes = [named[n].shape for n in names]
    fixed = {**{n: p.detach() for n, p in named.items()}, **dict(model.named_buffers())}
    weights = [len(y) for _, y in batches] if weights is None else weights

    def full(flat):
        parts = dict(zip(names, (q.reshape(s) for q, s in zip(torch.split(flat, [s.numel() for s in shapes]), shapes))))
        return sum(w * loss(functional_call(model, {**fixed, **parts}, (x.double(),)), y)
                   for w, (x, y) in zip(weights, batches)) / sum(weights)

    return jacrev(jacrev(full))(torch.cat([named[n].detach().reshape(-1) for n in names])).numpy()


def test_target_that_would_broadcast_is_refused():
    """MSE of 8 outputs against a (1, 3) target broadcasts; weighing that batch by 1 sample was silently wrong."""
    torch.manual_seed(0)
    model = MLP(4, 3, (5,)).double().eval()
    x = torch.randn(8, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"batch 1: the input has 8 samples .* target has 1 \(shape \(1, 3\)\)"):
        make_operator(model, nn.MSELoss(), [(x[:2], torch.randn(2, 3)), (x, torch.randn(1, 3))])
    with pytest.raises(ValueError, match="weight_fn"):
        make_operator(model, nn.MSELoss(), (x, torch.randn(1, 3)))
    # one target row per input is exact against the dense Hessian of the mean over all 10 samples
    data = [(x[:2], torch.randn(2, 3, dtype=torch.float64)), (x, torch.randn(8, 3, dtype=torch.float64))]
    H = make_operator(model, nn.MSELoss(), data)
    np.testing.assert_allclose(H.to_dense(), _dense(model, nn.MSELoss(), data), atol=1e-12)


class _FrozenIntFirst(nn.Module):
    """A frozen integer parameter registered before the float64 weights (e.g. a step counter)."""

    def __init__(self):
        super().__init__()
        self.step = nn.Parameter(torch.tensor([3]), requires_grad=False)
        self.fc1, self.fc2 = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x.to(self.fc1.weight.dtype))))


def test_data_takes_the_dtype_of_the_differentiated_floating_parameters():
    """The data was cast to int64, the first parameter's dtype: a Hessian of truncated inputs, silently."""
    torch.manual_seed(0)
    model = _FrozenIntFirst().double().eval()
    with torch.no_grad():
        model.step.copy_(torch.tensor([3]))
    data = random_batches((4,), [5, 3], seed=1)  # float32 inputs in (-3, 3): int64 would truncate them
    H = make_operator(model, nn.CrossEntropyLoss(), data)
    assert H.dtype == np.float64
    expected = _dense(model, nn.CrossEntropyLoss(), data)
    np.testing.assert_allclose(H.to_dense(), expected, atol=1e-12 * np.abs(expected).max())


def _dropout_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 3)).double().train()


@pytest.mark.parametrize("form", ["loader", "list"])
def test_product_that_is_not_repeatable_is_refused(form):
    """Train-mode dropout with check_determinism=False: each product drew a new mask and eigsh said converged."""
    batches = random_batches((8,), [6, 6], seed=1)
    data = DataLoader(TensorDataset(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])),
                      batch_size=6) if form == "loader" else batches
    H = make_operator(_dropout_model(), nn.CrossEntropyLoss(), data, check_determinism=False)
    with pytest.raises(RuntimeError, match="product is not repeatable.*random matrix.*model.eval"):
        hessop.eigsh(H, k=2)
    with pytest.raises(RuntimeError, match="not repeatable"):
        H.apply(torch.ones(H.shape[0], dtype=torch.float64))
    # the same model in eval mode is a fixed matrix, and the check lets it through
    model = _dropout_model().eval()
    E = make_operator(model, nn.CrossEntropyLoss(), data)
    np.testing.assert_allclose(E.to_dense(), _dense(model, nn.CrossEntropyLoss(), batches), atol=1e-12)


def test_nan_in_the_first_batch_is_named():
    """It was 'RuntimeError: atol must be greater than or equal to zero, but got -nan'."""
    torch.manual_seed(0)
    model = MLP(8, 3, (6,)).double().eval()
    data = random_batches((8,), [5, 3], seed=1)
    data[0][0][2, 1] = float("nan")
    with pytest.raises(FloatingPointError, match=r"data holds NaN.*the input of batch 0 has 1 of its 40 entries"):
        make_operator(model, nn.CrossEntropyLoss(), data)
    two = nn.Bilinear(8, 8, 3).double().eval()
    x = torch.randn(4, 8)
    z = x.clone()
    z[1] = float("inf")
    with pytest.raises(FloatingPointError, match=r"the input\[1\] of batch 0 has 8 of its 32"):
        make_operator(two, nn.MSELoss(), ((x, z), torch.randn(4, 3)))


def test_nan_in_a_weight_is_named():
    torch.manual_seed(0)
    model = MLP(8, 3, (6,)).double().eval()
    with torch.no_grad():
        model.fc2.weight[0, :2] = float("nan")
    with pytest.raises(FloatingPointError, match=r"weights hold NaN.*parameter 'fc2.weight' has 2 of its 18"):
        make_operator(model, nn.CrossEntropyLoss(), random_batches((8,), [5], seed=1))


def test_nan_loss_from_finite_data_and_weights_says_so():
    torch.manual_seed(0)
    model = MLP(8, 3, (6,)).double().eval()
    with pytest.raises(FloatingPointError, match=r"loss of the first batch is -inf although its data"):
        make_operator(model, lambda out, y: torch.log(out * 0).mean(), random_batches((8,), [5], seed=1))


@pytest.mark.parametrize("solver", ["eigsh", "trace", "density", "scipy", "again"])
def test_nan_written_into_a_weight_after_construction_is_named(solver):
    """It was reported as a product that is not repeatable (dropout in train mode): NaN never equals NaN."""
    import scipy.sparse.linalg

    torch.manual_seed(0)
    model = MLP(8, 3, (6,)).double().eval()
    H = make_operator(model, nn.CrossEntropyLoss(), random_batches((8,), [6, 5], seed=1))
    if solver == "again":  # after the first product too (its check has passed, the kept graphs are stale)
        H.apply(torch.ones(H.shape[0], dtype=torch.float64))
    with torch.no_grad():
        model[2].weight[1, 3] = float("nan")
    run = {"eigsh": lambda: hessop.eigsh(H, k=2), "trace": lambda: hessop.trace(H, max_matvecs=8),
           "density": lambda: hessop.density(H, num_steps=5),
           "scipy": lambda: scipy.sparse.linalg.eigsh(H, k=2, which="LA"),
           "again": lambda: H.apply(torch.ones(H.shape[0], dtype=torch.float64))}[solver]
    with pytest.raises(FloatingPointError, match=r"NaN.*parameter 'fc2\.weight'") as info:
        run()
    assert "repeatable" not in str(info.value)


class _TakesTheDict(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.Linear(4, 2)

    def forward(self, inputs):
        return self.a(inputs["x1"]) + self.b(inputs["x2"])


def test_a_model_that_takes_the_dict_itself_is_told_how_to_pass_it():
    torch.manual_seed(0)
    model = _TakesTheDict().double()
    inputs = {"x1": torch.randn(5, 3), "x2": torch.randn(5, 4)}
    y = torch.randint(0, 2, (5,))
    with pytest.raises(TypeError, match=r"model\(\*\*inputs\).*\(\(inputs,\), y\)"):
        make_operator(model, nn.CrossEntropyLoss(), (inputs, y))
    H = make_operator(model, nn.CrossEntropyLoss(), ((inputs,), y))  # the advice works
    assert H.shape == (sum(p.numel() for p in model.parameters()),) * 2
