"""The graph cache's default budget leaves room for a product's own working memory, which grows with the model."""

import torch
from torch import nn

import hessop
from hessop.backends.torch import graphs as torch_graphs
from hessop.models.small import MLP, random_batches


def _operator(**options):
    torch.manual_seed(0)
    model = MLP(8, 3, (64, 64)).double().eval()
    return hessop.hessian(model, nn.CrossEntropyLoss(), random_batches((8,), [16], seed=1),
                          hvp="double-backward", **options)


def test_default_budget_reserves_a_products_working_memory(monkeypatch):
    kept = _operator(graph_cache=True)
    v = torch.randn(kept.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    reference = kept.apply(v)
    size = kept.backend.products.graphs.used
    params = kept.shape[0] * 8  # float64 parameters, in bytes
    assert size > 0
    reserved = 4 * params + size
    # Free memory where a quarter covers the graph but not once the product's working memory is set aside:
    # the graph is recomputed at each product (a budget of free / 4 alone kept it).
    for free, keeps in [(4 * size + 2 * params, False), (4 * size + reserved, True)]:
        monkeypatch.setattr(torch_graphs, "_host_available", lambda free=free: free)
        H = _operator()
        for _ in range(2):
            torch.testing.assert_close(H.apply(v), reference, rtol=0, atol=0)
        assert H.backend.products.graphs.budget == min(torch_graphs.DEFAULT_CAP, (free - reserved) // 4)
        assert bool(H.backend.products.graphs.graphs) == keeps
    monkeypatch.setattr(torch_graphs, "_host_available", lambda: reserved // 2)  # less free than the reserve
    H = _operator()
    torch.testing.assert_close(H.apply(v), reference, rtol=0, atol=0)
    assert H.backend.products.graphs.budget == 0 and not H.backend.products.graphs.graphs


def test_graphs_kept_while_timing_are_dropped_when_auto_picks_a_strategy_without_them(monkeypatch):
    from hessop.backends.torch import strategy

    chosen = strategy.choose  # auto's own choice runs (timing keeps the first graph); then forward-over-reverse wins
    monkeypatch.setattr(strategy, "choose", lambda *a: (chosen(*a), "forward-over-reverse")[1])
    torch.manual_seed(0)
    model = MLP(8, 3, (16,)).double().eval()
    data = random_batches((8,), [16, 16], seed=1)
    H = hessop.hessian(model, nn.CrossEntropyLoss(), data)  # hvp="auto", the default cache
    exact = hessop.hessian(model, nn.CrossEntropyLoss(), data, hvp="double-backward", graph_cache=False)
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(H.apply(v), exact.apply(v), rtol=1e-12, atol=1e-12)
    assert H.backend.chosen == {"vector": "forward-over-reverse"}
    graphs = H.backend.products.graphs
    assert not graphs.graphs and graphs.used == 0  # the timing's graph is not held
    H.apply(v)
    assert not H.backend.products.graphs.graphs
