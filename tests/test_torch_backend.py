"""The PyTorch backend against dense float64 Hessians, GGNs and their difference, built by torch.func."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev
from torch.utils.data import DataLoader, TensorDataset

from hessop.backends.torch import TorchBackend
from hessop.factory import hessian as make_operator
from hessop.models.small import MLP, SmallCNN, random_batches

SIZES = [5, 7, 3]  # unequal batches: a mean over all samples is not a mean of batch means
STRATEGIES = ["double-backward", "double-backward-vmap", "forward-over-reverse"]


def _mlp() -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    return MLP(8, 3, (12,)).double().eval(), random_batches((8,), SIZES, seed=1)


def _cnn() -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    model = SmallCNN(1, 3, channels=3).double()
    with torch.no_grad():  # non-trivial running statistics, so eval-mode BatchNorm is not the identity
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return model.eval(), random_batches((1, 5, 5), SIZES, seed=2)


def _regression() -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    return MLP(4, 2, (10,)).double().eval(), random_batches((4,), SIZES, num_classes=None, out_features=2, seed=3)


def _flat_fn(model: nn.Module, names: list[str] | None = None):
    """``out(flat, x)``: the model with the named parameters (default: all) taken from a flat vector."""
    named = dict(model.named_parameters())
    names = list(named) if names is None else names
    shapes = [named[n].shape for n in names]
    fixed = {**{n: p.detach() for n, p in named.items()}, **dict(model.named_buffers())}
    flat0 = torch.cat([named[n].detach().reshape(-1) for n in names])

    def out(flat, x):
        parts = torch.split(flat, [int(np.prod(s)) for s in shapes])
        params = {n: q.reshape(s) for n, q, s in zip(names, parts, shapes)}
        return functional_call(model, {**fixed, **params}, (x.double(),))

    return out, flat0


def _target(y):
    return y.double() if y.is_floating_point() else y


def dense_hessian(model, loss, batches, names=None) -> np.ndarray:
    """The float64 Hessian of the loss over all batches (sample-weighted for mean losses)."""
    out, flat0 = _flat_fn(model, names)
    mean = loss.reduction == "mean"
    total = sum(len(y) for _, y in batches)

    def full(flat):
        return sum(loss(out(flat, x), _target(y)) * (len(y) / total if mean else 1) for x, y in batches)

    return jacrev(jacrev(full))(flat0).numpy()  # reverse over reverse: much faster than jacfwd here


def dense_ggn(model, loss, batches) -> np.ndarray:
    """``Σ_b w_b J_bᵀ H_out J_b`` built from explicit Jacobians and output Hessians."""
    out, flat0 = _flat_fn(model)
    mean = loss.reduction == "mean"
    total = sum(len(y) for _, y in batches)
    G = 0
    for x, y in batches:
        o = out(flat0, x)
        J = jacrev(out)(flat0, x).reshape(o.numel(), -1)
        H_out = hessian(lambda t, y=y: loss(t, _target(y)))(o).reshape(o.numel(), o.numel())
        G = G + (len(y) / total if mean else 1) * (J.T @ H_out @ J)
    return G.numpy()


CASES = {
    "mlp-ce-mean": (_mlp, lambda: nn.CrossEntropyLoss()),
    "mlp-ce-sum": (_mlp, lambda: nn.CrossEntropyLoss(reduction="sum")),
    "cnn-ce-mean": (_cnn, lambda: nn.CrossEntropyLoss()),
    "mlp-mse-mean": (_regression, lambda: nn.MSELoss()),
    "mlp-mse-sum": (_regression, lambda: nn.MSELoss(reduction="sum")),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_hessian_matches_dense(case, strategy):
    make, make_loss = CASES[case]
    model, data = make()
    loss = make_loss()
    H = make_operator(model, loss, data, hvp=strategy)
    expected = dense_hessian(model, loss, data)
    np.testing.assert_allclose(H.to_dense(), expected, atol=1e-12 * np.abs(expected).max(), rtol=0)
    assert H.backend.chosen == {"block": strategy}


@pytest.mark.parametrize("case", ["mlp-ce-mean", "cnn-ce-mean"])
@pytest.mark.parametrize("graph_cache", [True, False])
def test_double_backward_blocks_are_a_column_loop_matching_dense(case, graph_cache, monkeypatch):
    """hvp="double-backward" multiplies a block column by column over one first-order graph (faster on CPU than
    is_grads_batched, the "double-backward-vmap" strategy); both, and the former name, equal the dense product."""
    from hessop.backends.torch.hvp import FirstOrderGraph

    make, make_loss = CASES[case]
    model, data = make()
    loss = make_loss()
    expected = dense_hessian(model, loss, data)
    V = torch.randn(expected.shape[0], 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    loops = []
    hvp_loop = FirstOrderGraph.hvp_loop
    monkeypatch.setattr(FirstOrderGraph, "hvp_loop", lambda self, *a, **k: loops.append(1) or hvp_loop(self, *a, **k))
    products = {}
    for strategy in ("double-backward", "double-backward-vmap", "double-backward-loop"):
        H = make_operator(model, loss, data, hvp=strategy, graph_cache=graph_cache)
        before = len(loops)
        products[strategy] = H.apply(V)
        # one loop per batch, and without kept graphs batch 0 once more: the first product checks that it is
        # repeatable (over a kept graph by a second forward pass)
        assert len(loops) - before == (0 if strategy.endswith("vmap") else len(data) + (not graph_cache))
        assert H.backend.chosen == {"block": "double-backward-vmap" if strategy.endswith("vmap")
                                    else "double-backward"}
    scale = np.abs(expected).max()
    for block in products.values():
        np.testing.assert_allclose(block.numpy(), expected @ V.numpy(), atol=1e-12 * scale * 5, rtol=0)
    torch.testing.assert_close(products["double-backward-loop"], products["double-backward"], rtol=0, atol=0)


@pytest.mark.parametrize("case", ["mlp-ce-mean", "cnn-ce-mean", "mlp-mse-mean", "mlp-mse-sum"])
def test_ggn_and_residual_match_dense(case):
    make, make_loss = CASES[case]
    model, data = make()
    loss = make_loss()
    G = make_operator(model, loss, data, curvature="ggn").to_dense()
    R = make_operator(model, loss, data, curvature="residual").to_dense()
    expected_g = dense_ggn(model, loss, data)
    expected_h = dense_hessian(model, loss, data)
    scale = np.abs(expected_h).max()
    np.testing.assert_allclose(G, expected_g, atol=1e-12 * scale, rtol=0)
    np.testing.assert_allclose(R, expected_h - expected_g, atol=1e-12 * scale, rtol=0)
    assert np.linalg.eigvalsh(G).min() > -1e-12 * scale  # the GGN of a convex loss is PSD
    assert np.abs(R).max() > 1e-3 * scale  # and the residual is not trivially zero here


@pytest.mark.parametrize("strategy", [*STRATEGIES, "auto"])
@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_matmat_equals_stacked_matvecs(strategy, curvature):
    model, data = _cnn()
    H = make_operator(model, nn.CrossEntropyLoss(), data, hvp=strategy, curvature=curvature)
    V = torch.randn(H.shape[0], 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    block = H.apply(V)
    stacked = torch.stack([H.apply(V[:, j].contiguous()) for j in range(4)], dim=1)
    torch.testing.assert_close(block, stacked, rtol=1e-12, atol=1e-14)
    assert H.num_matvecs == 8
    torch.testing.assert_close(H.apply(V.T.contiguous().T), block, rtol=1e-12, atol=1e-14)  # column-major input
    assert set(H.backend.chosen) == ({"vector", "block"} if curvature == "hessian" else set())


def test_auto_picks_a_strategy_per_shape_and_agrees():
    model, data = _mlp()
    loss = nn.CrossEntropyLoss()
    auto = make_operator(model, loss, data)
    v = torch.randn(auto.shape[0], dtype=torch.float64)
    ref = make_operator(model, loss, data, hvp="double-backward").apply(v)
    torch.testing.assert_close(auto.apply(v), ref, rtol=1e-12, atol=1e-14)
    assert auto.backend.chosen["vector"] in ("double-backward", "forward-over-reverse")


def test_data_forms_agree():
    """A DataLoader, a list of batches and one batch give the same operator on the same samples."""
    model, batches = _mlp()
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    loss = nn.CrossEntropyLoss()
    loader = DataLoader(TensorDataset(x, y), batch_size=4)  # batches of 4, 4, 4, 3
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    results = [make_operator(model, loss, d).apply(v) for d in (batches, loader, (x, y), [x, y])]
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=1e-12, atol=1e-14)
    assert make_operator(model, loss, loader).backend.local_count == 15


def test_single_batch_graph_cache_follows_parameter_updates():
    model, batches = _mlp()
    loss = nn.CrossEntropyLoss()
    H = make_operator(model, loss, batches[0], hvp="double-backward")
    v = torch.randn(H.shape[0], dtype=torch.float64)
    first = H.apply(v)
    torch.testing.assert_close(H.apply(v), first, rtol=0, atol=0)  # served from the kept graph
    with torch.no_grad():
        model.fc1.weight.mul_(1.5)  # an optimiser step, in place
    fresh = make_operator(model, loss, [batches[0]], hvp="forward-over-reverse").apply(v)
    torch.testing.assert_close(H.apply(v), fresh, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(fresh, first)


@pytest.mark.parametrize("patterns", [("fc2",), ("fc1.bias", "fc2.weight"), (r"fc\d\.bias",)])
def test_restrict_is_the_dense_sub_block(patterns):
    model, data = _mlp()
    loss = nn.CrossEntropyLoss()
    H = make_operator(model, loss, data)
    sub = H.restrict(*patterns)
    names = sub.parameter_names
    full = dense_hessian(model, loss, data)
    offsets = np.cumsum([0, *H.backend.param_sizes])
    index = np.concatenate(
        [np.arange(offsets[i], offsets[i + 1]) for i, n in enumerate(H.parameter_names) if n in names]
    )
    np.testing.assert_allclose(sub.to_dense(), full[np.ix_(index, index)], atol=1e-12 * np.abs(full).max(), rtol=0)
    np.testing.assert_allclose(sub.to_dense(), dense_hessian(model, loss, data, names), atol=1e-13, rtol=0)
    assert sub.shape == (index.size, index.size)


def test_blocks_group_each_modules_weight_and_bias():
    model, data = _cnn()
    H = make_operator(model, nn.CrossEntropyLoss(), data)
    blocks = H.blocks
    assert list(blocks) == ["conv1", "bn1", "conv2", "bn2", "fc"]
    sizes = {name: sum(p.numel() for p in module.parameters()) for name, module in model.named_children()}
    assert {k: s.stop - s.start for k, s in blocks.items()} == {k: v for k, v in sizes.items() if v}
    assert blocks["fc"].stop == H.shape[0]


def test_params_option_selects_by_tensor_or_name():
    model, data = _mlp()
    loss = nn.CrossEntropyLoss()
    by_tensor = TorchBackend(model, loss, data, params=[model.fc2.weight, model.fc1.bias])
    by_name = TorchBackend(model, loss, data, params=["fc1.bias", "fc2.weight"])
    assert by_tensor.param_names == ["fc2.weight", "fc1.bias"]  # the order given
    assert by_name.param_names == ["fc1.bias", "fc2.weight"]
    with pytest.raises(ValueError, match="'fc1.bias' is given twice"):
        TorchBackend(model, loss, data, params=["fc1.bias", model.fc1.bias])
    model.fc1.weight.requires_grad_(False)
    try:
        assert "fc1.weight" not in TorchBackend(model, loss, data).param_names
    finally:
        model.fc1.weight.requires_grad_(True)


def test_params_out_of_model_order_keep_the_order_given():
    """A vector built in the user's order was read in the model's: the operator was a permuted Hessian."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    data = random_batches((4,), [6, 5], seed=3)
    loss = nn.CrossEntropyLoss()
    given = [model[2].bias, model[0].weight, model[2].weight]
    H = make_operator(model, loss, data, params=given)
    assert H.parameter_names == ["2.bias", "0.weight", "2.weight"]
    assert list(H.blocks) == ["2", "0", "2#23"]  # 2's two parameters are not adjacent in the flat vector
    names = dict((id(p), n) for n, p in model.named_parameters())

    def total(*ps):
        state = {**dict(model.named_parameters()), **{names[id(p)]: q for p, q in zip(given, ps)}}
        return sum(loss(functional_call(model, state, (x.double(),)), y) * len(y) for x, y in data) / 11

    blocks = torch.autograd.functional.hessian(total, tuple(p.detach() for p in given))
    dense = torch.cat([torch.cat([b.reshape(p.numel(), q.numel()) for b, q in zip(row, given)], 1)
                       for row, p in zip(blocks, given)]).numpy()
    np.testing.assert_allclose(H.to_dense(), dense, atol=1e-12)
    grads = torch.autograd.grad(total(*given), given)
    torch.testing.assert_close(H.gradient(), torch.cat([g.reshape(-1) for g in grads]))
    torch.testing.assert_close(H.parameters(), torch.cat([p.detach().reshape(-1) for p in given]))
    assert H.loss_at(H.parameters()) == pytest.approx(H.loss(), rel=1e-14)
    sub = H.restrict("0.weight", "2.bias")  # the operator's order, the user's
    assert sub.parameter_names == ["2.bias", "0.weight"]
    np.testing.assert_allclose(sub.to_dense(), dense[:23, :23], atol=1e-12)


def test_loss_gradient_and_loss_at_match_autograd():
    model, data = _regression()
    loss = nn.MSELoss()
    H = make_operator(model, loss, data)
    total = sum(len(y) for _, y in data)
    model.zero_grad()
    expected = sum(loss(model(x.double()), y.double()) * len(y) / total for x, y in data)
    expected.backward()
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert H.loss() == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(H.gradient(), grad, rtol=1e-12, atol=1e-14)
    flat = H.parameters()
    assert H.loss_at(flat) == pytest.approx(expected.item(), rel=1e-12)
    # central differences of the loss along d: slope gᵀd and curvature dᵀHd, errors O(t²)
    d = torch.randn(flat.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    d /= d.norm()
    t = 1e-4
    up, mid, down = H.loss_at(flat + t * d), H.loss(), H.loss_at(flat - t * d)
    assert (up - down) / (2 * t) == pytest.approx((grad @ d).item(), rel=1e-6)
    assert (up - 2 * mid + down) / t**2 == pytest.approx((d @ H.apply(d)).item(), rel=1e-5)
    assert torch.equal(H.parameters(), flat)  # loss_at leaves the model alone


def test_float32_model_matches_float64_truth():
    model, data = _cnn()
    expected = dense_hessian(model, nn.CrossEntropyLoss(), data)
    H = make_operator(model.float(), nn.CrossEntropyLoss(), data)
    assert H.native_dtype == torch.float32 and H.dtype == np.float32
    np.testing.assert_allclose(H.to_dense(), expected, atol=1e-5 * np.abs(expected).max(), rtol=0)


def test_bfloat16_model_uses_float32_vectors():
    model, data = _mlp()
    expected = dense_hessian(model, nn.CrossEntropyLoss(), data)
    H = make_operator(model.bfloat16(), nn.CrossEntropyLoss(), data, hvp="double-backward")
    assert H.native_dtype == torch.float32
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(0))
    Hv = H.apply(v)
    assert Hv.dtype == torch.float32
    err = np.linalg.norm(Hv.numpy() - expected @ v.double().numpy()) / np.linalg.norm(expected @ v.double().numpy())
    assert err < 0.1  # bfloat16 keeps ~3 significant digits


# -- bad input ------------------------------------------------------------------------------------


def test_no_trainable_parameters():
    model, data = _mlp()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        make_operator(model, nn.CrossEntropyLoss(), data)


def test_loss_not_a_scalar():
    model, data = _mlp()
    with pytest.raises(ValueError, match="reduces with 'none'; it must return a scalar"):
        make_operator(model, nn.CrossEntropyLoss(reduction="none"), data)
    with pytest.raises(ValueError, match="must return a scalar but returned \\(5,\\)"):
        make_operator(model, lambda out, y: out.sum(1), data)


@pytest.mark.parametrize("data", [[], "loader", [(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long))]])
def test_empty_data(data):
    model, _ = _mlp()
    if data == "loader":
        data = DataLoader(TensorDataset(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(ValueError, match="holds no samples"):
        make_operator(model, nn.CrossEntropyLoss(), data)


def test_nan_names_the_batch():
    model, data = _mlp()
    data = [data[0], data[1], (data[2][0] * float("nan"), data[2][1])]
    H = make_operator(model, nn.CrossEntropyLoss(), data)
    with pytest.raises(FloatingPointError, match="of batch 2 is NaN"):
        H.apply(torch.ones(H.shape[0], dtype=torch.float64))
    with pytest.raises(FloatingPointError, match="loss of batch 2"):
        H.loss()


def test_parameters_not_of_the_model():
    model, data = _mlp()
    with pytest.raises(ValueError, match="not a parameter of the model"):
        make_operator(model, nn.CrossEntropyLoss(), data, params=[model.fc1.weight.detach().clone()])
    with pytest.raises(ValueError, match="'fc9.weight' is not a parameter"):
        make_operator(model, nn.CrossEntropyLoss(), data, params=["fc9.weight"])


def test_bad_options_and_data():
    model, data = _mlp()
    loss = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match="unknown hvp strategy"):
        make_operator(model, loss, data, hvp="magic")
    with pytest.raises(ValueError, match="contradicts the loss's own reduction"):
        make_operator(model, loss, data, reduction="sum")
    with pytest.raises(TypeError, match=r"batch 1 is a Tensor; each batch must be an \(x, y\) pair.*or a dict"):
        make_operator(model, loss, [data[0], data[1][0]])


class _Reiterable:
    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def test_data_that_changes_size_between_products():
    model, data = _mlp()
    source = _Reiterable(list(data))
    H = make_operator(model, nn.CrossEntropyLoss(), source)
    source.batches.pop()
    with pytest.raises(RuntimeError, match=r"held 12 loss terms \(samples or tokens\) in this pass but 15"):
        H.apply(torch.ones(H.shape[0], dtype=torch.float64))


def test_train_mode_is_refused_with_its_cause():
    model, data = _cnn()
    model.train()
    with pytest.raises(RuntimeError, match=r"train mode.*BatchNorm \(bn1, bn2\).*model.eval\(\)"):
        make_operator(model, nn.CrossEntropyLoss(), data)
    dropout = nn.Sequential(nn.Linear(8, 6), nn.Dropout(0.5), nn.Linear(6, 3)).double()
    with pytest.raises(RuntimeError, match=r"dropout \(1\) draws a new random mask"):
        make_operator(dropout, nn.CrossEntropyLoss(), _mlp()[1])
    before = model.bn1.running_mean.clone()
    H = make_operator(model, nn.CrossEntropyLoss(), data, check_determinism=False)  # allowed knowingly
    H.apply(torch.ones(H.shape[0], dtype=torch.float64))
    torch.testing.assert_close(model.bn1.running_mean, before, rtol=0, atol=0)  # products leave the model alone


class _Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3).double()

    def forward(self, x):
        return self.fc(x + torch.randn_like(x))


def test_random_forward_is_detected():
    with pytest.raises(RuntimeError, match="two forward passes over the first batch gave different outputs"):
        make_operator(_Noisy().eval(), nn.CrossEntropyLoss(), _mlp()[1])
    make_operator(_Noisy().eval(), nn.CrossEntropyLoss(), _mlp()[1], check_determinism=False)


class _Augmented(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.randn_like(self.x[i]), self.y[i]


def test_shuffling_and_augmenting_loaders_are_detected():
    model, batches = _mlp()
    x = torch.cat([b[0] for b in batches])
    y = torch.arange(15) % 3
    loss = nn.CrossEntropyLoss()
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match=r"shuffle=True"):
        make_operator(model, loss, DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True))
    with pytest.raises(RuntimeError, match="random augmentation"):
        make_operator(model, loss, DataLoader(_Augmented(x, y), batch_size=5))
    make_operator(model, loss, DataLoader(_Augmented(x, y), batch_size=5), check_determinism=False)


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 3), nn.Linear(2, 3)

    def forward(self, x, z):
        return torch.tanh(self.a(x)) + self.b(z)


class _Stream(torch.utils.data.IterableDataset):
    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def test_models_with_several_inputs_and_iterable_datasets():
    torch.manual_seed(0)
    model = _TwoInputs().double().eval()
    z = torch.randn(15, 2)
    batches = [((x, z[i : i + len(y)]), y) for (x, y), i in zip(random_batches((8,), SIZES, seed=1), (0, 5, 12))]
    loss = nn.CrossEntropyLoss()
    H = make_operator(model, loss, batches)

    def full(flat):
        w = dict(zip(["a.weight", "a.bias", "b.weight", "b.bias"], torch.split(flat, [24, 3, 6, 3])))
        total = 0
        for (x, zz), y in batches:
            out = torch.tanh(x.double() @ w["a.weight"].reshape(3, 8).T + w["a.bias"])
            out = out + zz.double() @ w["b.weight"].reshape(3, 2).T + w["b.bias"]
            total = total + loss(out, y) * len(y) / 15
        return total

    expected = jacrev(jacrev(full))(H.parameters()).numpy()
    np.testing.assert_allclose(H.to_dense(), expected, atol=1e-13)
    stream = DataLoader(_Stream(batches), batch_size=None)  # batches pass through unchanged
    S = make_operator(model, loss, stream)
    assert S.backend.local_count == 15
    np.testing.assert_allclose(S.to_dense(), expected, atol=1e-13)


def test_progress_bar_does_not_change_the_product(capsys):
    model, data = _mlp()
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    quiet = make_operator(model, nn.CrossEntropyLoss(), data, hvp="double-backward").apply(v)
    loud = make_operator(model, nn.CrossEntropyLoss(), data, hvp="double-backward", progress=True).apply(v)
    torch.testing.assert_close(loud, quiet, rtol=0, atol=0)
    assert capsys.readouterr().out == ""  # tqdm writes to stderr only


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_products_stay_on_the_device_and_match_cpu():
    model, data = _cnn()
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    expected = make_operator(model, nn.CrossEntropyLoss(), data).apply(v)
    H = make_operator(model.cuda(), nn.CrossEntropyLoss(), data)  # CPU batches move to the model's device
    assert H.device.type == "cuda"
    Hv = H.apply(v.cuda())
    assert Hv.device.type == "cuda"
    torch.testing.assert_close(Hv.cpu(), expected, rtol=1e-10, atol=1e-12)


# -- first-order graphs kept across products, several batches ------------------------------------------


@pytest.mark.parametrize("case", ["mlp-ce-mean", "cnn-ce-mean", "mlp-mse-sum"])
@pytest.mark.parametrize("strategy", ["double-backward", "double-backward-vmap"])
def test_graph_cache_over_several_batches_matches_dense_and_uncached(case, strategy):
    make, make_loss = CASES[case]
    model, data = make()
    loss = make_loss()
    expected = dense_hessian(model, loss, data)
    V = torch.randn(expected.shape[0], 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kept = make_operator(model, loss, data, hvp=strategy, graph_cache=True)
    none = make_operator(model, loss, data, hvp=strategy, graph_cache=False)
    everything = [(H.apply(V[:, 0]), H.apply(V), H.apply(V)) for H in (kept, none)]
    assert sorted(kept.backend.products.graphs.graphs) == [0, 1, 2] and not none.backend.products.graphs.graphs
    for cached, uncached in zip(*everything):
        torch.testing.assert_close(cached, uncached, rtol=0, atol=0)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(everything[0][1].numpy(), expected @ V.numpy(), atol=1e-12 * scale * 4, rtol=0)
    np.testing.assert_allclose(kept.to_dense(), expected, atol=1e-12 * scale, rtol=0)


def test_graph_cache_budget_keeps_only_what_fits():
    model, data = _cnn()
    loss = nn.CrossEntropyLoss()
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    full = make_operator(model, loss, data, hvp="double-backward", graph_cache=True)
    reference = full.apply(v)
    sizes = full.backend.products.graphs.used
    assert sizes > 0
    for budget, kept in [(0, []), (sizes, [0, 1, 2])]:
        H = make_operator(model, loss, data, hvp="double-backward", graph_cache_bytes=budget)
        for _ in range(2):
            torch.testing.assert_close(H.apply(v), reference, rtol=0, atol=0)
        assert sorted(H.backend.products.graphs.graphs) == kept
    partial = make_operator(model, loss, data, hvp="double-backward", graph_cache_bytes=sizes - 1)
    torch.testing.assert_close(partial.apply(v), reference, rtol=0, atol=0)
    torch.testing.assert_close(partial.apply(v), reference, rtol=0, atol=0)
    assert 1 <= len(partial.backend.products.graphs.graphs) < 3 and partial.backend.products.graphs.too_big
    auto = make_operator(model, loss, data, hvp="double-backward")  # the default budget, far above this model
    torch.testing.assert_close(auto.apply(v), reference, rtol=0, atol=0)
    graphs = auto.backend.products.graphs
    assert sorted(graphs.graphs) == [0, 1, 2] and 0 < graphs.budget <= 2 << 30


@pytest.mark.parametrize("case", ["mlp-ce-mean", "cnn-ce-mean"])
def test_graph_cache_follows_an_optimizer_step_over_several_batches(case):
    make, make_loss = CASES[case]
    model, data = make()
    loss = make_loss()
    H = make_operator(model, loss, data, hvp="double-backward")
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    before = H.apply(v)
    assert len(H.backend.products.graphs.graphs) == 3
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    optimizer.zero_grad()
    sum(loss(model(x.double()), _target(y)) for x, y in data).backward()
    optimizer.step()  # in place, as in training
    after = H.apply(v)
    expected = dense_hessian(model, loss, data)
    np.testing.assert_allclose(after.numpy(), expected @ v.numpy(), atol=1e-12 * np.abs(expected).max() * 10, rtol=0)
    assert not torch.allclose(after, before)
    if case == "cnn-ce-mean":  # a buffer changed in place invalidates too
        with torch.no_grad():
            model.bn1.running_var.mul_(2.0)
        fresh = make_operator(model, loss, data, hvp="double-backward", graph_cache=False).apply(v)
        torch.testing.assert_close(H.apply(v), fresh, rtol=0, atol=0)


def test_graph_cache_options_are_checked():
    model, data = _mlp()
    for bad in [dict(graph_cache="yes"), dict(graph_cache_bytes=-1)]:
        with pytest.raises(ValueError, match="graph_cache"):
            TorchBackend(model, nn.CrossEntropyLoss(), data, **bad)
