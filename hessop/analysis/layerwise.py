"""Layer-wise and stage-wise curvature: each block's Hessian against the whole network's.

For every block ``l`` of parameters (a module, a ResNet stage, or a user-named
group) the diagonal Hessian block ``H_l`` (:meth:`HessianOperator.restrict`) gets
its top eigenvalues, its trace with a standard error and its spectral density,
and the density is compared with the full network's by the Wasserstein-1 and the
Jensen-Shannon distances, as in Sankar et al. (2021), "A deeper look at the
Hessian eigenspectrum of deep neural networks and its applications to
regularization", who found that the middle layers' spectra resemble the whole.

Comparing densities of different sizes
--------------------------------------
A block of ``n_l`` parameters has ``n_l`` eigenvalues and the network ``n``; each
SLQ density is a **probability measure** (its quadrature weights sum to one), so
the distances compare the *distribution* of eigenvalues, not their counts.
Eigenvalues are compared on their own scale by default (``scale="none"``): by
Cauchy interlacing every block's spectrum lies inside the network's range, and
the distances then measure how much of the curvature's magnitude a block
carries. ``scale="top"`` divides each measure by its largest ``|λ|`` first and
compares the *shapes* only. Wasserstein-1 is computed exactly on the quadrature
nodes and weights; Jensen-Shannon (base 2, in ``[0, 1]``) on the Gaussian-broadened
densities over a common grid.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.spatial.distance
import scipy.stats

from .._array import to_numpy

__all__ = ["layerwise", "LayerwiseResult", "block_groups", "spectral_distances"]

SCALES = ("none", "top")


@dataclass(frozen=True)
class LayerwiseResult:
    """Per-block curvature and its distance to the whole network's.

    Attributes
    ----------
    rows : list of dict
        One per block: ``block``, ``num_params``, ``top_eigenvalue``, ``trace``,
        ``trace_stderr``, ``wasserstein_to_full``, ``jensen_shannon_to_full``,
        ``eigenvalues`` (top ``k``), ``converged`` (+ ``ggn_top_eigenvalue``,
        ``ggn_trace``, ``ggn_trace_stderr`` when a GGN operator was given).
    full : dict
        The same quantities for the whole network (distances omitted).
    densities : dict
        ``{block: SpectralDensity}``.
    full_density : SpectralDensity
    scale : str
        How eigenvalues were scaled before comparing densities (module docstring).
    num_matvecs : int
        Products spent over all operators.
    partial : bool
        True when interrupted before every block was analysed.
    """

    rows: list[dict]
    full: dict
    densities: dict = field(repr=False)
    full_density: Any = field(repr=False)
    scale: str = "none"
    num_matvecs: int = 0
    partial: bool = False

    def to_dict(self) -> dict:
        """JSON-ready rows and full-network numbers (densities as grid/values)."""
        def dens(rho):
            return {"grid": _host(rho.grid).tolist(), "values": _host(rho.values).tolist()}

        return {
            "rows": [dict(r) for r in self.rows],
            "full": dict(self.full),
            "scale": self.scale,
            "num_matvecs": self.num_matvecs,
            "partial": self.partial,
            "densities": {k: dens(v) for k, v in self.densities.items()},
            "full_density": dens(self.full_density) if self.full_density is not None else None,
        }

    def to_markdown(self) -> str:
        """A Markdown table of the rows, with the full network last."""
        ggn = any("ggn_trace" in r for r in self.rows)
        head = ["block", "params", "top eigenvalue", "trace ± stderr", "W1 to full", "JS to full"]
        head += ["GGN top eigenvalue", "GGN trace"] if ggn else []
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in [*self.rows, {**self.full, "block": "**full network**"}]:
            cells = [str(r["block"]), f"{r['num_params']:,}", _fmt(r["top_eigenvalue"]),
                     f"{_fmt(r['trace'])} ± {_fmt(r['trace_stderr'])}",
                     _fmt(r.get("wasserstein_to_full")), _fmt(r.get("jensen_shannon_to_full"))]
            if ggn:
                cells += [_fmt(r.get("ggn_top_eigenvalue")), _fmt(r.get("ggn_trace"))]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot(self, axes=None, log: bool = True, title: str | None = None):
        """Bars of top eigenvalue and trace per block, and the densities against the full one."""
        from .plots import plot_layerwise

        return plot_layerwise(self, axes, log=log, title=title)


def _fmt(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def _host(a) -> np.ndarray:
    return np.asarray(to_numpy(a), dtype=np.float64)


def block_groups(H: Any, groups: None | str | Mapping[str, Any] | Sequence[str] = None) -> "OrderedDict[str, tuple[str, ...]]":
    """Resolve ``groups`` to ``{block name: parameter names}`` in model order.

    ``None`` or ``"modules"``: one block per module owning parameters;
    ``"stages"``: one per top-level module (``stem``, ``stage1``..``stage3``,
    ``head`` of a ResNet); a mapping ``{name: pattern or list of patterns}`` or a
    list of patterns: the parameters each pattern selects, with the rule of
    :meth:`HessianOperator.restrict` (exact name, module prefix or regex).
    """
    from ..operator import restrict_names

    names = list(H.parameter_names)
    out: OrderedDict[str, tuple[str, ...]] = OrderedDict()
    if groups is None or groups in ("modules", "stages"):
        modules = getattr(H.backend, "module_names", None) or [n.rpartition(".")[0] or n for n in names]
        for name, module in zip(names, modules):
            key = module.split(".")[0] if groups == "stages" else module
            out.setdefault(key, ())
            out[key] += (name,)
        return out
    if isinstance(groups, str):
        raise ValueError(f"groups={groups!r} is not understood; use None, 'modules', 'stages', a list of "
                         "patterns or a {name: pattern} dict")
    items = groups.items() if isinstance(groups, Mapping) else ((p, p) for p in groups)
    for key, patterns in items:
        patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        chosen = restrict_names(names, *patterns)
        if not chosen:
            raise ValueError(f"block {key!r}: patterns {list(patterns)} match no parameter; parameters are named "
                             f"like {names[:4]}" + (" ..." if len(names) > 4 else ""))
        out[str(key)] = tuple(chosen)
    if not out:
        raise ValueError("groups is empty; name at least one block")
    return out


def _measure(rho: Any, scale: str) -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = _host(rho.nodes).ravel(), _host(rho.weights).ravel()
    weights = np.clip(weights, 0.0, None)
    weights = weights / max(weights.sum(), np.finfo(float).tiny)
    if scale == "top":
        top = np.abs(nodes[weights > 0]).max(initial=0.0)
        nodes = nodes / top if top > 0 else nodes
    return nodes, weights


def spectral_distances(rho_a: Any, rho_b: Any, scale: str = "none", num_points: int = 512,
                       width: float = 0.01) -> tuple[float, float]:
    """Wasserstein-1 and Jensen-Shannon distances between two spectral densities.

    Each density (``nodes``/``weights`` of SLQ) is normalised to a probability
    measure; ``scale="top"`` also divides its eigenvalues by its largest ``|λ|``.
    The Jensen-Shannon distance (base 2) uses both measures broadened by a
    Gaussian of standard deviation ``width`` times the common range.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}; got {scale!r}")
    xa, wa = _measure(rho_a, scale)
    xb, wb = _measure(rho_b, scale)
    w1 = float(scipy.stats.wasserstein_distance(xa, xb, wa, wb))
    lo, hi = min(xa.min(), xb.min()), max(xa.max(), xb.max())
    sigma = width * max(hi - lo, abs(hi), 1e-12)
    grid = np.linspace(lo - 4 * sigma, hi + 4 * sigma, num_points)

    def broadened(x, w):
        return (w[None, :] * np.exp(-0.5 * ((grid[:, None] - x[None, :]) / sigma) ** 2)).sum(axis=1)

    js = float(scipy.spatial.distance.jensenshannon(broadened(xa, wa), broadened(xb, wb), base=2))
    return w1, js


def _analyse(H: Any, k: int, trace_matvecs: int, density_steps: int, num_probes: int, seed: int):
    from ..solvers.density import density
    from ..solvers.eigsh import eigsh
    from ..solvers.trace import trace

    n = int(H.shape[0])
    eig = eigsh(H, k=min(k, n), seed=seed)
    tr = trace(H, num_matvecs=max(4, trace_matvecs), seed=seed)
    rho = density(H, num_steps=density_steps, num_probes=num_probes, seed=seed)
    evs = sorted(map(float, _host(eig.eigenvalues)), reverse=True)
    row = {
        "num_params": n,
        "top_eigenvalue": evs[0],
        "eigenvalues": evs,
        "converged": bool(np.all(eig.converged)),
        "trace": float(tr.estimate),
        "trace_stderr": float(tr.stderr),
    }
    return row, rho, int(eig.num_matvecs) + int(tr.num_matvecs) + int(getattr(rho, "num_matvecs", 0))


def _ggn_numbers(G: Any, k: int, trace_matvecs: int, seed: int):
    from ..solvers.eigsh import eigsh
    from ..solvers.trace import trace

    eig = eigsh(G, k=min(k, int(G.shape[0])), seed=seed)
    tr = trace(G, num_matvecs=max(4, trace_matvecs), seed=seed)
    row = {"ggn_top_eigenvalue": float(_host(eig.eigenvalues).max()), "ggn_trace": float(tr.estimate),
           "ggn_trace_stderr": float(tr.stderr)}
    return row, int(eig.num_matvecs) + int(tr.num_matvecs)


def layerwise(
    H: Any,
    groups: None | str | Mapping[str, Any] | Sequence[str] = None,
    k: int = 1,
    trace_matvecs: int = 60,
    density_steps: int = 60,
    num_probes: int = 2,
    seed: int = 0,
    ggn: Any = None,
    progress: bool = False,
    scale: str = "none",
) -> LayerwiseResult:
    """Top eigenvalues, trace and density of each parameter block, and distances to the full network.

    Parameters
    ----------
    H : HessianOperator
        The full network's Hessian (any backend).
    groups : None, "modules", "stages", list of patterns or {name: pattern(s)}
        The blocks (see :func:`block_groups`).
    k : int
        Top eigenvalues per block (thick-restart Lanczos).
    trace_matvecs : int
        Budget of the trace estimator per block (XTrace, with a standard error).
    density_steps, num_probes : int
        Lanczos steps and probes of each SLQ density.
    seed : int
        Seed of every stochastic estimate.
    ggn : HessianOperator, optional
        The Gauss-Newton operator of the same model and data
        (``hessop.hessian(..., curvature="ggn")``): adds its per-block top
        eigenvalue and trace (the Gauss-Newton decomposition of Sankar et al.).
    progress : bool
        Show a progress bar over the blocks.
    scale : {"none", "top"}
        Eigenvalue scaling before comparing densities (module docstring).

    Returns
    -------
    LayerwiseResult
        Marked ``partial`` if interrupted with Ctrl-C (the blocks done so far are kept).
    """
    from tqdm.auto import tqdm

    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}; got {scale!r}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    if ggn is not None and tuple(ggn.shape) != tuple(H.shape):
        raise ValueError(f"the GGN operator has shape {tuple(ggn.shape)} but the Hessian {tuple(H.shape)}; "
                         "build both from the same model, parameters and data")
    blocks = block_groups(H, groups)
    full, full_rho, spent = _analyse(H, k, trace_matvecs, density_steps, num_probes, seed)
    full["block"] = "full"
    if ggn is not None:
        extra, cost = _ggn_numbers(ggn, k, trace_matvecs, seed)
        full.update(extra)
        spent += cost
    rows, densities, partial = [], {}, False
    try:
        for name, params in tqdm(blocks.items(), disable=not progress, desc="layer-wise", unit="block"):
            row, rho, cost = _analyse(H.restrict(*params), k, trace_matvecs, density_steps, num_probes, seed)
            spent += cost
            w1, js = spectral_distances(rho, full_rho, scale)
            row = {"block": name, **row, "wasserstein_to_full": w1, "jensen_shannon_to_full": js}
            if ggn is not None:
                extra, cost = _ggn_numbers(ggn.restrict(*params), k, trace_matvecs, seed)
                row.update(extra)
                spent += cost
            rows.append(row)
            densities[name] = rho
    except KeyboardInterrupt:
        partial = True
    return LayerwiseResult(rows, full, densities, full_rho, scale, spent, partial)
