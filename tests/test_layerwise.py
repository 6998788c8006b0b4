"""Layer-wise spectra and the Gauss-Newton split against dense Hessian blocks of tiny networks."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

import hessop
from hessop.analysis.blocks import resolve_blocks
from hessop.analysis.gauss_newton import gauss_newton_decomposition
from hessop.analysis.layerwise import layerwise, spectral_distances
from hessop.analysis.spectrum import DENSE_BELOW
from hessop.solvers.density import SpectralDensity, spectral_distance

BUDGET = dict(trace_max_matvecs=24, density_steps=20, num_probes=2, seed=0)




def network(widths, seed=0, samples=48):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    model = nn.Sequential(*layers[:-1]).double()
    data = (torch.randn(samples, widths[0], dtype=torch.float64), torch.randint(0, widths[-1], (samples,)))
    return model, data


def operator(widths, curvature="hessian", seed=0):
    model, data = network(widths, seed)
    return hessop.hessian(model, nn.CrossEntropyLoss(), data, curvature=curvature)


def dense_block(dense, H, names):
    """The principal submatrix of ``dense`` over the named parameters."""
    offsets = np.cumsum([0] + H.parameter_sizes)
    idx = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i, n in enumerate(H.parameter_names) if n in names])
    return dense[np.ix_(idx, idx)]


def test_block_traces_of_a_partition_sum_to_the_full_trace_exactly():
    H = operator([3, 6, 4, 3])  # 67 parameters: the full one is estimated, every layer (<= 28) is exact
    dense = H.to_dense()
    res = layerwise(H, blocks="modules", **BUDGET)
    assert [r.block for r in res.rows] == ["0", "2", "4"]
    assert sum(r.num_params for r in res.rows) == H.shape[0] > DENSE_BELOW
    assert all(r.trace_stderr == 0.0 for r in res.rows)
    assert sum(r.trace for r in res.rows) == pytest.approx(np.trace(dense), rel=1e-10)
    groups = resolve_blocks(H, "modules")
    for r in res.rows:
        block = dense_block(dense, H, groups[r.block])
        assert r.top_eigenvalue == pytest.approx(np.linalg.eigvalsh(block)[-1], rel=1e-10)
    # the full network's trace is an estimate: honest within its standard error
    assert abs(res.full.trace - np.trace(dense)) < 4 * res.full.trace_stderr
    assert res.full.top_eigenvalue == pytest.approx(np.linalg.eigvalsh(dense)[-1], rel=1e-6)


def test_estimated_block_traces_sum_to_the_full_trace_within_their_stderr():
    H = operator([10, 8, 6, 3])  # 163 parameters; the first layer (88) is estimated
    dense = H.to_dense()
    res = layerwise(H, blocks={"first": "0", "rest": [r"[24]\.weight", r"[24]\.bias"]}, k=2, **BUDGET)
    first, rest = res.rows
    assert first.num_params == 88 and rest.num_params == 75
    assert first.trace_stderr > 0 and rest.trace_stderr > 0
    block = dense_block(dense, H, resolve_blocks(H, ["0"])["0"])
    assert abs(first.trace - np.trace(block)) < 4 * first.trace_stderr
    np.testing.assert_allclose(first.eigenvalues, np.linalg.eigvalsh(block)[::-1][:2], rtol=1e-6)
    total, stderr = first.trace + rest.trace, np.hypot(first.trace_stderr, rest.trace_stderr)
    assert abs(total - np.trace(dense)) < 4 * stderr


def test_groups_resolve_modules_stages_patterns_and_refuse_unknown_names():
    H = operator([3, 4, 3])
    assert resolve_blocks(H, "modules") == {"0": ("0.weight", "0.bias"), "2": ("2.weight", "2.bias")}
    assert list(resolve_blocks(H, "stages")) == ["0", "2"]
    assert resolve_blocks(H, [r".*\.bias"]) == {r".*\.bias": ("0.bias", "2.bias")}
    with pytest.raises(ValueError, match="match no parameter"):
        resolve_blocks(H, {"x": "layer9"})
    with pytest.raises(ValueError, match="not understood"):
        resolve_blocks(H, "layers")


def test_distances_compare_probability_measures_and_top_scaling_removes_magnitude():
    rho = SpectralDensity.from_eigenvalues([0.0, 0.0, 1.0, 3.0])
    doubled = SpectralDensity.from_eigenvalues([0.0, 0.0, 2.0, 6.0])
    repeated = SpectralDensity.from_eigenvalues([0.0] * 4 + [1.0] * 2 + [3.0] * 2)  # twice the size, same law

    def both(a, b, scale="none"):
        return (spectral_distance(a, b, metric="wasserstein", scale=scale),
                spectral_distance(a, b, metric="jensen-shannon", scale=scale))

    assert both(rho, repeated) == pytest.approx((0.0, 0.0), abs=1e-12)
    w1, js = both(rho, doubled)
    assert w1 == pytest.approx(1.0) and js > 0.1  # W1: the mean shift of the eigenvalues, (1 + 3) / 4
    assert both(rho, doubled, scale="top") == pytest.approx((0.0, 0.0), abs=1e-9)
    with pytest.raises(ValueError, match="scale"):
        both(rho, doubled, scale="max")
    with pytest.warns(DeprecationWarning, match="spectral_distance"):  # the old two-metric name still answers
        assert spectral_distances(rho, doubled) == pytest.approx((w1, js))


def test_gauss_newton_rows_and_the_linear_output_layer_has_no_residual():
    H = operator([3, 6, 4, 3])
    G = operator([3, 6, 4, 3], curvature="ggn")
    res = layerwise(H, blocks="modules", ggn=G, **BUDGET)
    head = res.rows[-1]
    # the output layer enters the logits linearly: its block of the residual H - G vanishes
    assert head.ggn_trace == pytest.approx(head.trace, rel=1e-10)
    assert head.ggn_top_eigenvalue == pytest.approx(head.top_eigenvalue, rel=1e-10)
    dense_g = G.to_dense()
    first = dense_block(dense_g, G, ("0.weight", "0.bias"))
    assert res.rows[0].ggn_trace == pytest.approx(np.trace(first), rel=1e-10)
    table = res.to_markdown()
    assert table.count("\n") == 2 + len(res.rows) and "GGN trace" in table
    json.dumps(res.to_dict())


def test_gauss_newton_decomposition_traces_against_dense_matrices(tmp_path):
    from hessop.analysis.plots import savefig

    model, data = network([3, 6, 4, 3])
    H = hessop.hessian(model, nn.CrossEntropyLoss(), data)
    G = hessop.hessian(model, nn.CrossEntropyLoss(), data, curvature="ggn")
    res = gauss_newton_decomposition(H, G, blocks="modules", trace_max_matvecs=30, density_steps=20, num_probes=1)
    dh, dg = H.to_dense(), G.to_dense()
    assert [r.block for r in res.rows] == ["0", "2", "4", "full"]
    full = res.rows[-1]
    residual = np.trace(dh) - np.trace(dg)
    assert full.residual_trace_stderr > 0
    assert abs(full.residual_trace - residual) < 4 * full.residual_trace_stderr
    assert full.ggn_eigenvalues[0] == pytest.approx(np.linalg.eigvalsh(dg)[-1], rel=1e-6)
    first = res.rows[0]
    block = ("0.weight", "0.bias")
    assert first.residual_trace == pytest.approx(np.trace(dense_block(dh, H, block) - dense_block(dg, G, block)))
    assert first.ggn_negative_mass == 0.0  # the GGN of a convex loss is positive semi-definite
    assert "Tr(H_l - G_l)" in res.to_markdown()
    savefig(res.plot(["0", "full"]), tmp_path / "gauss_newton.png")
    assert (tmp_path / "gauss_newton.png").stat().st_size > 1000


def test_negative_mass_ignores_mass_within_the_resolution_of_zero():
    exact = SpectralDensity.from_eigenvalues([-1.0, -1e-9, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0])
    assert (exact.negative_mass(), exact.sigma) == (pytest.approx(1 / 8), exact.sigma)


def test_layerwise_plots_and_keeps_partial_results_on_interrupt(tmp_path, monkeypatch):
    import importlib

    from hessop.analysis.plots import savefig

    module = importlib.import_module("hessop.analysis.layerwise")

    H = operator([3, 6, 4, 3])
    res = layerwise(H, blocks="modules", **BUDGET)
    savefig(res.plot(), tmp_path / "layerwise.png")
    assert (tmp_path / "layerwise.png").stat().st_size > 1000

    real = module.block_spectrum
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # full, block "0", then interrupted on block "2"
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "block_spectrum", flaky)
    part = layerwise(H, blocks="modules", **BUDGET)
    assert part.partial and [r.block for r in part.rows] == ["0"]
    assert dataclasses.asdict(part)["rows"][0]["trace"] == res.rows[0].trace


def test_negative_mass_defaults_to_the_resolution_everywhere():
    """One definition: below -sigma by default, and the Gauss-Newton rows report the same number."""
    rho = SpectralDensity.from_eigenvalues([-0.1, 0.0, 1.0, 2.0, 3.0, 4.0])  # sigma = 4.1 / 5
    assert rho.negative_mass() == 0.0 and rho.negative_mass(0.0) == pytest.approx(1 / 6)
    model, data = network([3, 6, 4, 3])
    H = hessop.hessian(model, nn.CrossEntropyLoss(), data)
    G = hessop.hessian(model, nn.CrossEntropyLoss(), data, curvature="ggn")
    res = gauss_newton_decomposition(H, G, blocks="modules", trace_max_matvecs=8, density_steps=12, num_probes=1)
    for row in res.rows:
        assert row.hessian_negative_mass == res.hessian_densities[row.block].negative_mass()
    with pytest.warns(DeprecationWarning, match="build the operators"):
        old = gauss_newton_decomposition(model, nn.CrossEntropyLoss(), data, blocks="modules", trace_max_matvecs=8,
                                         density_steps=12, num_probes=1)
    # the deprecated (model, loss_fn, data) form builds the same operators (the same numbers up to rounding:
    # hvp="auto" may time a different, equally exact, product strategy)
    assert [r.block for r in old.rows] == [r.block for r in res.rows]
    np.testing.assert_allclose([r.hessian_trace for r in old.rows], [r.hessian_trace for r in res.rows], rtol=1e-10)
    np.testing.assert_allclose([r.ggn_trace for r in old.rows], [r.ggn_trace for r in res.rows], rtol=1e-10)


@pytest.mark.xdist_group("jax")  # one worker compiles each eager JAX operation once (tests/conftest.py)
def test_rows_are_dataclasses_that_serialise_themselves_on_a_jax_operator():
    """Blocks come from the operator on any backend; rows round-trip through JSON; old spellings warn."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    g = np.random.default_rng(2)
    params = {"l1": {"w": jnp.asarray(g.standard_normal((3, 4)), jnp.float32),
                     "b": jnp.asarray(0.1 * g.standard_normal(4), jnp.float32)},
              "l2": {"w": jnp.asarray(g.standard_normal((4, 2)), jnp.float32)}}
    x, y = g.standard_normal((9, 3)).astype(np.float32), g.standard_normal((9, 2)).astype(np.float32)

    def loss(p, batch):
        a, b = batch
        return jnp.mean((jnp.tanh(a @ p["l1"]["w"] + p["l1"]["b"]) @ p["l2"]["w"] - b) ** 2)

    H = hessop.hessian(loss, params, (x, y))
    res = layerwise(H, blocks="modules", **BUDGET)
    dense = H.to_dense().astype(np.float64)
    assert [r.block for r in res.rows] == ["l1", "l2"]
    for r in res.rows:  # both blocks are small: exact
        block = dense_block(dense, H, resolve_blocks(H, "modules")[r.block])
        assert r.trace == pytest.approx(np.trace(block), rel=1e-5)
    doc = json.loads(json.dumps(res.to_dict()))
    back = type(res).from_dict(doc)
    assert back.rows == res.rows and back.full == res.full
    np.testing.assert_allclose(back.full_density.nodes, res.full_density.nodes)
    old_names = {**{k: v for k, v in BUDGET.items() if k != "trace_max_matvecs"},
                 "trace_matvecs": BUDGET["trace_max_matvecs"]}
    with pytest.warns(DeprecationWarning, match="blocks"), pytest.warns(DeprecationWarning, match="trace_max_matvecs"):
        old = layerwise(H, groups="modules", **old_names)
    assert old.rows == res.rows
    with pytest.warns(DeprecationWarning, match=r"row\.trace"):
        assert res.rows[0]["trace"] == res.rows[0].trace
