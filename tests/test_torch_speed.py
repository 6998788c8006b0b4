"""The fast paths of the PyTorch backend: products over kept graphs, a lean ``auto``, compiled products.

Each fast path is checked against dense float64 Hessians (and, for the kept graphs, after every way a
model can change under the operator), and for doing less work than the general path: a product over
kept graphs does not read the model's state through the general path; ``auto`` times at most once for
vectors and once for blocks, whatever the block widths.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_torch_backend import SIZES, _cnn, _mlp, dense_hessian
from torch import nn

from hessop.backends.torch import strategy as torch_strategy
from hessop.backends.torch.functional import FunctionalModel
from hessop.factory import hessian as make_operator


def _apply(H, v: torch.Tensor) -> np.ndarray:
    return H.apply(v).numpy()


def test_kept_products_skip_the_general_path_and_stay_exact(monkeypatch):
    model, data = _mlp()
    loss = nn.CrossEntropyLoss()
    H = make_operator(model, loss, data)
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    H.apply(v)  # the first product: chooses, keeps the graphs, checks repeatability
    general = []
    fixed = FunctionalModel.fixed
    monkeypatch.setattr(FunctionalModel, "fixed", lambda self: general.append(1) or fixed(self))
    scale = None
    for _ in range(3):
        expected = dense_hessian(model, loss, data) @ v.numpy()
        scale = scale or np.abs(expected).max()
        np.testing.assert_allclose(_apply(H, v), expected, atol=1e-12 * scale, rtol=0)
    assert general == []  # every later product ran over the kept graphs alone

    changes = [
        lambda: model.fc1.weight.mul_(1.5),  # in place: a new version
        lambda: setattr(model.fc1, "weight", nn.Parameter(model.fc1.weight.detach() * 0.5)),  # a new parameter
        lambda: setattr(model.fc1.bias, "data", model.fc1.bias.detach() + 0.25),  # new data, the same object
        lambda: setattr(model, "fc2", nn.Linear(12, 3).double()),  # a replaced module
        lambda: model.add_module("squash", nn.Tanh()),  # a module added: no entry replaced, one more
        lambda: setattr(model, "act1", nn.Softplus()),  # a parameterless module replaced: no tensor changes
    ]
    for change in changes:
        with torch.no_grad():
            change()
        expected = dense_hessian(model, loss, data) @ v.numpy()
        np.testing.assert_allclose(_apply(H, v), expected, atol=1e-12 * np.abs(expected).max(), rtol=0)


def test_kept_products_find_a_nonfinite_batch():
    model, data = _mlp()
    H = make_operator(model, nn.CrossEntropyLoss(), data)
    v = torch.ones(H.shape[0], dtype=torch.float64)
    H.apply(v)
    assert H.backend.products.kept is not None
    bad = v.clone()
    bad[0] = float("nan")
    with pytest.raises(FloatingPointError, match="batch 0"):
        H.apply(bad)


def _calls(monkeypatch, module, name: str, record=lambda *args: 1) -> list:
    """A list that gets ``record(*args)`` at each call of ``module.name``, which still runs."""
    calls, original = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *args: calls.append(record(*args)) or original(*args))
    return calls


def test_auto_times_once_for_vectors_and_once_for_blocks(monkeypatch):
    """With kept graphs a vector needs no timing; blocks are timed once, whatever their widths."""
    model, data = _cnn()
    loss = nn.CrossEntropyLoss()
    timed = _calls(monkeypatch, torch_strategy, "fastest", lambda run, names, device: list(names))
    H = make_operator(model, loss, data)
    expected = dense_hessian(model, loss, data)
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=gen)
    for _ in range(2):  # the first product, then one over the kept graphs (convolutions' strided products)
        np.testing.assert_allclose(_apply(H, v), expected @ v.numpy(), atol=1e-12 * np.abs(expected).max(), rtol=0)
    assert H.backend.products.kept is not None
    np.testing.assert_allclose(_apply(H, v[::1].clone()[:, None].expand(-1, 2)[:, 1]),  # a strided vector
                               expected @ v.numpy(), atol=1e-12 * np.abs(expected).max(), rtol=0)
    assert timed == [] and H.backend.chosen == {"vector": "double-backward"}
    for k in (2, 3, 6, 16):
        V = torch.randn(H.shape[0], k, dtype=torch.float64, generator=gen)
        np.testing.assert_allclose(_apply(H, V), expected @ V.numpy(), atol=1e-12 * np.abs(expected).max() * k,
                                   rtol=0)
    assert timed == [["double-backward", "double-backward-vmap"]]  # one round, over the kept graph's two ways
    assert set(H.backend.chosen) == {"vector", "block"}


def test_auto_without_kept_graphs_times_the_exact_strategies_once(monkeypatch):
    model, data = _mlp()
    loss = nn.CrossEntropyLoss()
    timed = _calls(monkeypatch, torch_strategy, "fastest", lambda run, names, device: list(names))
    H = make_operator(model, loss, data, graph_cache=False)
    gen = torch.Generator().manual_seed(2)
    expected = dense_hessian(model, loss, data)
    for x in (torch.randn(H.shape[0], dtype=torch.float64, generator=gen),
              torch.randn(H.shape[0], 2, dtype=torch.float64, generator=gen),
              torch.randn(H.shape[0], 5, dtype=torch.float64, generator=gen)):
        np.testing.assert_allclose(_apply(H, x), expected @ x.numpy(), atol=1e-11 * np.abs(expected).max(), rtol=0)
    assert timed == [["double-backward", "forward-over-reverse"],
                     ["double-backward", "double-backward-vmap", "forward-over-reverse"]]
    assert H.backend.products.kept is None  # nothing is kept, so every product takes the general path


@pytest.mark.parametrize("bad", [dict(compile=1), dict(compile=True, hvp="double-backward"),
                                 dict(compile=True, curvature="ggn")])
def test_compile_refuses_what_it_cannot_do(bad):
    model, data = _mlp()
    with pytest.raises((TypeError, ValueError), match="compile"):
        make_operator(model, nn.CrossEntropyLoss(), data, **bad)


def test_compile_failure_is_one_sentence(monkeypatch):
    def broken(fn, **kwargs):
        def run(*args, **kw):
            raise OSError("no C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    model, data = _mlp()
    H = make_operator(model, nn.CrossEntropyLoss(), data, compile=True)
    with pytest.raises(RuntimeError, match=r"could not compile .* no C\+\+ compiler found.*compile=False"):
        H.apply(torch.ones(H.shape[0], dtype=torch.float64))


def test_a_wrong_compiled_product_is_refused(monkeypatch):
    """The first product compares the compiled product with the eager one."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: lambda *a: tuple(1.01 * t for t in fn(*a)))
    model, data = _mlp()
    H = make_operator(model, nn.CrossEntropyLoss(), data, compile=True)
    with pytest.raises(RuntimeError, match="compiled Hessian-vector product of batch 0 differs"):
        H.apply(torch.ones(H.shape[0], dtype=torch.float64))


@pytest.mark.slow
@pytest.mark.xdist_group("inductor")  # one worker: the later tests find the kernels compiled
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_compiled_products_equal_eager_and_dense(mode):
    """torch.compile's product, a vector and a block, against the eager product and the dense float64 Hessian.

    In eval mode over a list the compiled function is the linearised tangent pass, one compilation
    for the batches of one shape; in train mode it is the whole forward-over-reverse product.
    """
    from hessop.models.small import random_batches

    torch.manual_seed(0)
    model, data = _mlp()
    if mode == "eval":  # two shapes (each shape compiles once: seconds on the CPU) and a second batch of the first
        data = data[:2] + random_batches((8,), [SIZES[0]], seed=7)
    else:
        model, data = model.train(), data[:1]
    loss = nn.CrossEntropyLoss()
    H = make_operator(model, loss, data, compile=True)
    eager = make_operator(model, loss, data, hvp="forward-over-reverse")
    expected = dense_hessian(model, loss, data)
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=gen)
    V = torch.randn(H.shape[0], 3, dtype=torch.float64, generator=gen)
    scale = np.abs(expected).max()
    for x in (v, V):
        out = _apply(H, x)
        np.testing.assert_allclose(out, expected @ x.numpy(), atol=1e-12 * scale * 3, rtol=0)
        np.testing.assert_allclose(out, _apply(eager, x), atol=1e-13 * scale * 3, rtol=0)
    assert H.backend.chosen == {"vector": "compiled", "block": "compiled"}
    compiled = H.backend.products.linearized.compiled
    expected = (2, True) if mode == "eval" else (0, False)
    assert (len(compiled), H.backend.products.compiled is None) == expected


def test_first_product_over_a_kept_graph_builds_one_graph(monkeypatch):
    """Repeatability is checked by a second forward pass, not by a second first-order graph and product."""
    from hessop.backends.torch import hvp as torch_hvp

    built = _calls(monkeypatch, torch_hvp.FirstOrderGraph, "__init__")
    model, data = _mlp()
    loss = nn.CrossEntropyLoss()
    H = make_operator(model, loss, data)
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    expected = dense_hessian(model, loss, data) @ v.numpy()
    np.testing.assert_allclose(_apply(H, v), expected, atol=1e-12 * np.abs(expected).max(), rtol=0)
    assert len(built) == len(data)  # one graph per batch, kept


@pytest.mark.parametrize("case", ["cnn", "regression"])
def test_linearized_products_match_dense_and_are_kept_until_the_model_changes(case, monkeypatch):
    from test_torch_backend import _regression

    from hessop.backends.torch import linearized as torch_linearized

    built = _calls(monkeypatch, torch_linearized, "_linearized_gradient")
    model, data = _cnn() if case == "cnn" else _regression()
    loss = nn.CrossEntropyLoss() if case == "cnn" else nn.MSELoss()
    H = make_operator(model, loss, data, hvp="linearize")
    gen = torch.Generator().manual_seed(5)
    for step in range(1 if case == "cnn" else 2):  # the regression model also checks a new linearisation
        expected = dense_hessian(model, loss, data)
        scale = np.abs(expected).max()
        for x in (torch.randn(H.shape[0], dtype=torch.float64, generator=gen),
                  torch.randn(H.shape[0], 3, dtype=torch.float64, generator=gen)):
            np.testing.assert_allclose(_apply(H, x), expected @ x.numpy(), atol=1e-12 * scale * 3, rtol=0)
        assert len(built) == len(data) * (step + 1)  # once per batch, until the parameters change
        with torch.no_grad():
            next(model.parameters()).mul_(1.25)
    assert H.backend.chosen == {"vector": "linearize", "block": "linearize"}


def test_linearisations_are_kept_only_within_the_graph_cache_budget(monkeypatch):
    """``hvp="linearize"`` keeps a batch's constants only while they fit ``graph_cache_bytes``."""
    from hessop.backends.torch import linearized as torch_linearized

    built = _calls(monkeypatch, torch_linearized, "_linearized_gradient")
    model, data = _mlp()
    loss = nn.CrossEntropyLoss()
    expected = dense_hessian(model, loss, data)
    v = torch.randn(expected.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    for budget, kept in ((0, 0), (None, len(data))):
        built.clear()
        H = make_operator(model, loss, data, hvp="linearize", graph_cache_bytes=budget)
        for _ in range(2):
            np.testing.assert_allclose(_apply(H, v), expected @ v.numpy(), atol=1e-12 * np.abs(expected).max(), rtol=0)
        assert len(H.backend.products.linearized.fns) == kept
        assert len(built) == 2 * len(data) - kept  # the batches not kept are linearised at every product


@pytest.mark.slow
@pytest.mark.xdist_group("inductor")  # one worker: the later tests find the kernels compiled
def test_compile_falls_back_to_the_whole_product_beyond_the_budget():
    """A batch whose linearisation does not fit the budget gets the whole product compiled; both exact."""
    from hessop.backends.torch.data import target_of
    from hessop.backends.torch.linearized import _linearized_gradient
    from hessop.models.small import random_batches

    model, data = _mlp()
    data = data[:1] + random_batches((8,), [SIZES[0]], seed=7)  # shapes whose products the tests above compiled
    loss = nn.CrossEntropyLoss()
    probe = make_operator(model, loss, data).backend
    params = tuple(probe.functional.current())
    x, y = data[0][0].double(), data[0][1]  # as the backend casts the batch to the model's dtype
    first = _linearized_gradient(probe.functional.closures(x, y)[2], params, target_of(x, y)).nbytes(params)
    H = make_operator(model, loss, data, compile=True, graph_cache_bytes=first)  # room for the first batch only
    expected = dense_hessian(model, loss, data)
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    for _ in range(2):
        np.testing.assert_allclose(_apply(H, v), expected @ v.numpy(), atol=1e-12 * np.abs(expected).max() * 3, rtol=0)
    assert list(H.backend.products.linearized.fns) == [0] and H.backend.products.compiled is not None


def test_auto_takes_the_leanest_of_near_ties_where_memory_is_measured():
    """On a GPU the timing round records peak memory: a strategy within 10% of the fastest and leaner wins."""
    pick = torch_strategy.pick
    times = {"double-backward": 1.0, "forward-over-reverse": 0.97, "double-backward-vmap": 2.0}
    peaks = {"double-backward": 2 << 30, "forward-over-reverse": 5 << 30, "double-backward-vmap": 1 << 30}
    assert pick(times, peaks) == "double-backward"  # within 10% of the fastest, and 2.5x leaner
    assert pick(times, {}) == "forward-over-reverse"  # the CPU: no peak, the fastest
    assert pick({**times, "double-backward": 1.2}, peaks) == "forward-over-reverse"  # not a tie: time decides
