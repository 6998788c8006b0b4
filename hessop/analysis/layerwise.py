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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from .._renamed import renamed
from .._warnings import warn
from ..solvers.density import SCALES, spectral_distance
from .blocks import block_groups, resolve_blocks
from .results import LayerwiseRow
from .spectrum import BlockSpectrum, block_spectrum, density_from_dict, density_to_dict

__all__ = ["layerwise", "LayerwiseResult", "LayerwiseRow", "spectral_distances", "block_groups"]



@dataclass(frozen=True)
class LayerwiseResult:
    """Per-block curvature and its distance to the whole network's.

    Attributes
    ----------
    rows : list of LayerwiseRow
        One per block: ``block``, ``num_params``, ``top_eigenvalue``, ``eigenvalues``
        (top ``k``), ``converged``, ``trace``, ``trace_stderr``,
        ``wasserstein_to_full``, ``jensen_shannon_to_full`` (+ ``ggn_top_eigenvalue``,
        ``ggn_trace``, ``ggn_trace_stderr`` when a GGN operator was given).
    full : LayerwiseRow
        The same quantities for the whole network (``block="full"``, no distances).
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

    rows: list[LayerwiseRow]
    full: LayerwiseRow
    densities: dict = field(repr=False)
    full_density: Any = field(repr=False)
    scale: str = "none"
    num_matvecs: int = 0
    partial: bool = False

    def to_dict(self) -> dict:
        """JSON-ready rows and full-network numbers, densities with their quadrature rules."""
        return {
            "rows": [r.to_dict() for r in self.rows],
            "full": self.full.to_dict(),
            "scale": self.scale,
            "num_matvecs": int(self.num_matvecs),
            "partial": self.partial,
            "densities": {k: density_to_dict(v) for k, v in self.densities.items()},
            "full_density": density_to_dict(self.full_density) if self.full_density is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict) -> LayerwiseResult:
        """The result back from :meth:`to_dict` (e.g. a saved report step, to draw it again)."""
        return cls([LayerwiseRow.from_dict(r) for r in d["rows"]], LayerwiseRow.from_dict(d["full"]),
                   {k: density_from_dict(v) for k, v in d.get("densities", {}).items()},
                   density_from_dict(d["full_density"]) if d.get("full_density") else None,
                   d.get("scale", "none"), int(d.get("num_matvecs", 0)), bool(d.get("partial", False)))

    def to_markdown(self) -> str:
        """A Markdown table of the rows, with the full network last."""
        ggn = any(r.ggn_trace is not None for r in self.rows)
        head = ["block", "params", "top eigenvalue", "trace ± stderr", "W1 to full", "JS to full"]
        head += ["GGN top eigenvalue", "GGN trace"] if ggn else []
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in [*self.rows, dataclasses.replace(self.full, block="**full network**")]:
            cells = [str(r.block), f"{r.num_params:,}", _fmt(r.top_eigenvalue),
                     f"{_fmt(r.trace)} ± {_fmt(r.trace_stderr)}",
                     _fmt(r.wasserstein_to_full), _fmt(r.jensen_shannon_to_full)]
            if ggn:
                cells += [_fmt(r.ggn_top_eigenvalue), _fmt(r.ggn_trace)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot(self, axes=None, log: bool = True, title: str | None = None):
        """Bars of top eigenvalue and trace per block, and the densities against the full one."""
        from .plots import plot_layerwise

        return plot_layerwise(self, axes, log=log, title=title)


def _fmt(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def spectral_distances(rho_a: Any, rho_b: Any, scale: str = "none") -> tuple[float, float]:
    """Deprecated: the pair ``(spectral_distance(a, b, metric="wasserstein", scale=...),
    spectral_distance(a, b, metric="jensen-shannon", scale=...))``; call ``spectral_distance`` once per metric."""
    warn("spectral_distances(a, b, scale) is spectral_distance(a, b, metric, scale=scale), one metric a call",
         DeprecationWarning)
    return (spectral_distance(rho_a, rho_b, metric="wasserstein", scale=scale),
            spectral_distance(rho_a, rho_b, metric="jensen-shannon", scale=scale))


def _row(name: str, b: BlockSpectrum, g: BlockSpectrum | None = None, **distances: float) -> LayerwiseRow:
    ggn = {} if g is None else {"ggn_top_eigenvalue": g.eigenvalues[0], "ggn_trace": g.trace,
                                "ggn_trace_stderr": g.trace_stderr}
    return LayerwiseRow(name, b.num_params, b.eigenvalues[0], b.eigenvalues, b.converged, b.trace, b.trace_stderr,
                        **distances, **ggn)


@renamed(groups="blocks", trace_matvecs="trace_max_matvecs")
def layerwise(
    H: Any,
    *,
    blocks: None | str | Mapping[str, Any] | Sequence[str] = None,
    k: int = 1,
    trace_max_matvecs: int = 60,
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
    blocks : None, "modules", "stages", list of patterns or {name: pattern(s)}
        The blocks (see :func:`hessop.analysis.blocks.resolve_blocks`).
    k : int
        Top eigenvalues per block (thick-restart Lanczos; blocks of at most
        :data:`~hessop.analysis.spectrum.DENSE_BELOW` parameters are solved exactly
        from their dense matrix).
    trace_max_matvecs : int
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

    ``groups=`` (for ``blocks``) and ``trace_matvecs=`` (for ``trace_max_matvecs``) are deprecated
    names that still work, with a ``DeprecationWarning``.

    Returns
    -------
    LayerwiseResult
        Marked ``partial`` if interrupted with Ctrl-C (the blocks done so far are kept).
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}; got {scale!r}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    if ggn is not None and tuple(ggn.shape) != tuple(H.shape):
        raise ValueError(f"the GGN operator has shape {tuple(ggn.shape)} but the Hessian {tuple(H.shape)}; "
                         "build both from the same model, parameters and data")
    chosen = resolve_blocks(H, blocks)
    budgets = dict(k=k, trace_max_matvecs=trace_max_matvecs, density_steps=density_steps, num_probes=num_probes,
                   seed=seed)
    whole = block_spectrum(H, **budgets)
    full_rho, spent, g = whole.density, whole.num_matvecs, None
    if ggn is not None:
        g = block_spectrum(ggn, **budgets, with_density=False)
        spent += g.num_matvecs
    full = _row("full", whole, g)
    rows, densities, partial = [], {}, False
    try:
        for name, params in tqdm(chosen.items(), disable=not progress, desc="layer-wise", unit="block"):
            b = block_spectrum(H.restrict(*params), **budgets)
            spent += b.num_matvecs
            w1 = spectral_distance(b.density, full_rho, metric="wasserstein", scale=scale)
            js = spectral_distance(b.density, full_rho, metric="jensen-shannon", scale=scale)
            g = None
            if ggn is not None:
                g = block_spectrum(ggn.restrict(*params), **budgets, with_density=False)
                spent += g.num_matvecs
            rows.append(_row(name, b, g, wasserstein_to_full=w1, jensen_shannon_to_full=js))
            densities[name] = b.density
    except KeyboardInterrupt:
        partial = True
    return LayerwiseResult(rows, full, densities, full_rho, scale, spent, partial)
