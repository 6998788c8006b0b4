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
nodes and weights; Jensen-Shannon (base 2, in ``[0, 1]``) on the two densities
smoothed with the same Gaussian kernel over a common grid
(:func:`hessop.solvers.density.spectral_distance`).
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from .._array import to_numpy

__all__ = ["layerwise", "LayerwiseResult", "BlockSpectrum", "block_groups", "block_spectrum", "spectral_distances"]

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


def _scaled(rho: Any, scale: str) -> Any:
    """The density with its eigenvalue axis divided by its largest ``|λ|`` (``scale="top"``)."""
    if scale == "none":
        return rho
    top = float(np.max(np.abs(rho.nodes[rho.weights > 0]), initial=0.0))
    if top == 0.0:
        return rho
    return dataclasses.replace(rho, nodes=rho.nodes / top, sigma=rho.sigma / top, grid=rho.grid / top,
                               values=rho.values * top)


def spectral_distances(rho_a: Any, rho_b: Any, scale: str = "none") -> tuple[float, float]:
    """Wasserstein-1 and Jensen-Shannon distances between two spectral densities.

    Both are probability measures (SLQ weights sum to one per probe), so blocks of
    different sizes compare by the distribution of their eigenvalues;
    ``scale="top"`` first divides each one's eigenvalues by its largest ``|λ|``.
    See :func:`hessop.solvers.density.spectral_distance`.
    """
    from ..solvers.density import spectral_distance

    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}; got {scale!r}")
    a, b = _scaled(rho_a, scale), _scaled(rho_b, scale)
    return spectral_distance(a, b, "wasserstein"), spectral_distance(a, b, "jensen-shannon")


DENSE_BELOW = 64
"""Blocks with at most this many parameters are analysed exactly, from the dense block (n products)."""


@dataclass(frozen=True)
class BlockSpectrum:
    """Top eigenvalues, trace and density of one operator, with their quality.

    ``exact`` blocks (at most :data:`DENSE_BELOW` parameters) come from the dense
    matrix: all eigenvalues, the exact trace (``trace_stderr`` 0) and the exact
    density; others from thick-restart Lanczos, a stochastic trace estimator and SLQ.
    """

    num_params: int
    eigenvalues: list
    residual_norms: list
    converged: bool
    trace: float
    trace_stderr: float
    trace_samples: np.ndarray = field(repr=False)
    density: Any = field(repr=False)
    num_matvecs: int
    exact: bool

    def row(self) -> dict:
        """The JSON-ready numbers of a table row."""
        return {"num_params": self.num_params, "top_eigenvalue": self.eigenvalues[0], "eigenvalues": self.eigenvalues,
                "converged": self.converged, "trace": self.trace, "trace_stderr": self.trace_stderr}


def block_spectrum(H: Any, k: int = 1, trace_matvecs: int = 60, density_steps: int = 60, num_probes: int = 2,
                   seed: int = 0, trace_method: str = "xtrace", with_density: bool = True,
                   with_trace: bool = True) -> BlockSpectrum:
    """The top ``k`` eigenvalues, the trace (with stderr) and optionally the SLQ density of ``H``.

    The building block of the layer-wise, Gauss-Newton and tracking analyses;
    ``with_trace=False`` skips the trace estimate (NaN, no products spent).
    """
    from ..solvers.density import SpectralDensity, density
    from ..solvers.eigsh import eigsh
    from ..solvers.trace import trace

    n = int(H.shape[0])
    if n <= DENSE_BELOW:
        dense = np.asarray(H.to_dense(), dtype=np.float64)
        lam = np.linalg.eigvalsh(0.5 * (dense + dense.T))[::-1]
        tr = float(np.trace(dense))
        rho = SpectralDensity.from_eigenvalues(lam) if with_density else None
        return BlockSpectrum(n, [float(v) for v in lam[:k]], [0.0] * min(k, n), True, tr, 0.0, np.array([tr]),
                             rho, n, True)
    eig = eigsh(H, k=min(k, n - 1), seed=seed)
    order = np.argsort(-np.asarray(eig.eigenvalues, dtype=np.float64))
    spent = int(eig.num_matvecs)
    tr, stderr, samples = math.nan, math.nan, np.empty(0)
    if with_trace:
        est = trace(H, method=trace_method, num_matvecs=max(4, trace_matvecs), seed=seed)
        tr, stderr, samples = float(est.estimate), float(est.stderr), np.asarray(est.samples, dtype=np.float64)
        spent += int(est.num_matvecs)
    rho = None
    if with_density:
        rho = density(H, num_steps=density_steps, num_probes=num_probes, seed=seed)
        spent += int(rho.num_matvecs)
    return BlockSpectrum(n, [float(eig.eigenvalues[i]) for i in order],
                         [float(eig.residual_norms[i]) for i in order], bool(np.all(eig.converged)),
                         tr, stderr, samples, rho, spent, False)


def _ggn_row(g: BlockSpectrum) -> dict:
    return {"ggn_top_eigenvalue": g.eigenvalues[0], "ggn_trace": g.trace, "ggn_trace_stderr": g.trace_stderr}


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
        Top eigenvalues per block (thick-restart Lanczos; blocks of at most
        :data:`DENSE_BELOW` parameters are solved exactly from their dense matrix).
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
    budgets = dict(k=k, trace_matvecs=trace_matvecs, density_steps=density_steps, num_probes=num_probes, seed=seed)
    whole = block_spectrum(H, **budgets)
    full, full_rho, spent = {"block": "full", **whole.row()}, whole.density, whole.num_matvecs
    if ggn is not None:
        g = block_spectrum(ggn, **budgets, with_density=False)
        full.update(_ggn_row(g))
        spent += g.num_matvecs
    rows, densities, partial = [], {}, False
    try:
        for name, params in tqdm(blocks.items(), disable=not progress, desc="layer-wise", unit="block"):
            b = block_spectrum(H.restrict(*params), **budgets)
            spent += b.num_matvecs
            w1, js = spectral_distances(b.density, full_rho, scale)
            row = {"block": name, **b.row(), "wasserstein_to_full": w1, "jensen_shannon_to_full": js}
            if ggn is not None:
                g = block_spectrum(ggn.restrict(*params), **budgets, with_density=False)
                row.update(_ggn_row(g))
                spent += g.num_matvecs
            rows.append(row)
            densities[name] = b.density
    except KeyboardInterrupt:
        partial = True
    return LayerwiseResult(rows, full, densities, full_rho, scale, spent, partial)
