"""Gauss-Newton decomposition of each block's Hessian: ``H_l = G_l + R_l``.

The Hessian of a loss ``ℓ(f(θ))`` splits into the generalised Gauss-Newton
matrix ``G = Jᵀ ∇²ℓ J`` (positive semi-definite for a convex loss) and the
residual ``R = Σ_k ∂ℓ/∂f_k ∇²f_k`` carrying the negative curvature. Sankar et al.
(2021), "A deeper look at the Hessian eigenspectrum of deep neural networks and
its applications to regularization", compare the spectra of ``G_l`` and
``H_l`` layer by layer; Papyan (2019) and Sagun et al. (2017) show the outliers
of ``H`` come from ``G``. This module computes, for each block of parameters,
the top eigenvalues, trace (with standard error) and SLQ density of ``H_l`` and
``G_l`` and, from the same probes, the trace of ``R_l = H_l - G_l``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from .._renamed import renamed
from .._warnings import warn
from ..factory import hessian
from .blocks import resolve_blocks
from .results import GaussNewtonRow
from .spectrum import block_spectrum

__all__ = ["GaussNewtonResult", "GaussNewtonRow", "gauss_newton_decomposition"]


@dataclass(frozen=True)
class GaussNewtonResult:
    """Per-block spectra of the Hessian ``H_l`` and its Gauss-Newton part ``G_l``.

    Attributes
    ----------
    rows : list of GaussNewtonRow
        One per block (and ``"full"`` last): ``block``, ``num_params``,
        ``hessian_eigenvalues``, ``ggn_eigenvalues`` (top ``k``, descending),
        ``hessian_trace``, ``hessian_trace_stderr``, ``ggn_trace``,
        ``ggn_trace_stderr``, ``residual_trace``, ``residual_trace_stderr``,
        ``hessian_negative_mass``, ``ggn_negative_mass`` (mass below minus the
        density's resolution, :meth:`hessop.SpectralDensity.negative_mass`).
    hessian_densities, ggn_densities : dict
        ``{block: SpectralDensity}`` (empty when ``density=False``).
    num_matvecs : int
    partial : bool
        True when interrupted before every block was analysed.
    """

    rows: list[GaussNewtonRow]
    hessian_densities: dict = field(repr=False)
    ggn_densities: dict = field(repr=False)
    num_matvecs: int = 0
    partial: bool = False

    def to_markdown(self) -> str:
        """A Markdown table: per block, top eigenvalue and trace of H_l and G_l, and Tr(R_l)."""
        head = ["block", "params", "λ_max(H_l)", "λ_max(G_l)", "Tr(H_l)", "Tr(G_l)", "Tr(H_l - G_l)"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            lines.append("| " + " | ".join([
                r.block, f"{r.num_params:,}", f"{r.hessian_eigenvalues[0]:.4g}", f"{r.ggn_eigenvalues[0]:.4g}",
                f"{r.hessian_trace:.4g} ± {r.hessian_trace_stderr:.2g}",
                f"{r.ggn_trace:.4g} ± {r.ggn_trace_stderr:.2g}",
                f"{r.residual_trace:.4g} ± {r.residual_trace_stderr:.2g}"]) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready rows."""
        return {"rows": [r.to_dict() for r in self.rows], "num_matvecs": self.num_matvecs, "partial": self.partial}

    def plot(self, blocks: Sequence[str] | None = None, log: bool = True):
        """One panel per block: the densities of ``H_l`` and ``G_l`` overlaid. Returns the axes."""
        import matplotlib.pyplot as plt

        from .plots import plot_density, style

        names = list(blocks) if blocks is not None else list(self.hessian_densities)
        if not names:
            raise ValueError("no densities to plot; run gauss_newton_decomposition with density=True")
        cols = min(3, len(names))
        rows = math.ceil(len(names) / cols)
        with style():
            fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), layout="tight", squeeze=False)
        for ax, name in zip(axes.ravel(), names):
            plot_density(self.hessian_densities[name], ax, label="Hessian $H_l$", log=log, title=name)
            plot_density(self.ggn_densities[name], ax, label="Gauss-Newton $G_l$", log=log, title=name)
        for ax in axes.ravel()[len(names):]:
            ax.set_visible(False)
        return axes


def _measure(name: str, H: Any, G: Any, k: int, trace_max_matvecs: int, density_steps: int, num_probes: int, seed: int,
             with_density: bool) -> tuple[GaussNewtonRow, dict, int]:
    # Hutchinson with the same probes for H and G: the differences of the paired samples are
    # unbiased samples of Tr(R) = Tr(H - G), whose spread gives Tr(R) an honest standard error.
    budgets = dict(k=k, trace_max_matvecs=max(2, trace_max_matvecs), density_steps=density_steps, num_probes=num_probes,
                   seed=seed, trace_method="hutchinson", with_density=with_density)
    h, g = block_spectrum(H, **budgets), block_spectrum(G, **budgets)
    diff = h.trace_samples - g.trace_samples
    dens = {tag: b.density for tag, b in (("hessian", h), ("ggn", g)) if b.density is not None}
    row = GaussNewtonRow(
        name, h.num_params,
        h.eigenvalues, h.converged, h.trace, h.trace_stderr,
        g.eigenvalues, g.converged, g.trace, g.trace_stderr,
        float(diff.mean()), 0.0 if h.exact else float(diff.std(ddof=1) / math.sqrt(diff.size)),
        dens["hessian"].negative_mass() if dens else None, dens["ggn"].negative_mass() if dens else None,
    )
    return row, dens, h.num_matvecs + g.num_matvecs


@renamed(trace_matvecs="trace_max_matvecs")
def gauss_newton_decomposition(
    H: Any,
    G: Any,
    *args: Any,
    blocks: None | str | Mapping[str, Any] | Sequence[str] = None,
    k: int = 1,
    trace_max_matvecs: int = 40,
    density: bool = True,
    density_steps: int = 40,
    num_probes: int = 1,
    seed: int = 0,
    progress: bool = False,
    **options: Any,
) -> GaussNewtonResult:
    """Spectra of the Hessian and the Gauss-Newton matrix of each block of parameters (and the whole).

    Parameters
    ----------
    H, G : HessianOperator
        The Hessian and the Gauss-Newton operator of the same model and data, any
        backend: ``hessop.hessian(model, loss_fn, data)`` and
        ``hessop.hessian(model, loss_fn, data, curvature="ggn")``.
        (The old form ``gauss_newton_decomposition(model, loss_fn, data, ...)``,
        which built both, still works and is deprecated.)
    blocks : None, "modules", "stages", list of patterns or {name: pattern(s)}
        The blocks (see :func:`hessop.analysis.blocks.resolve_blocks`).
    k : int
        Top eigenvalues of ``H_l`` and ``G_l``.
    trace_max_matvecs : int
        Hutchinson probes per trace; ``H_l`` and ``G_l`` use the same probes so
        that ``Tr(H_l - G_l)`` has a standard error.
    density : bool
        Also compute SLQ densities (``density_steps`` Lanczos steps, ``num_probes`` probes).
    seed : int
    progress : bool
        Show a progress bar over the blocks.

    Returns
    -------
    GaussNewtonResult
        Rows per block then ``"full"``; ``partial`` if interrupted with Ctrl-C.
    """
    if not hasattr(H, "restrict") or not hasattr(G, "restrict"):  # the deprecated (model, loss_fn, data) form
        if len(args) != 1:
            raise TypeError("gauss_newton_decomposition takes the Hessian and the Gauss-Newton operators: "
                            "gauss_newton_decomposition(H, G, blocks=...)")
        warn("gauss_newton_decomposition(model, loss_fn, data) is deprecated: build the operators and pass "
             "gauss_newton_decomposition(H, G), H = hessop.hessian(model, loss_fn, data) and "
             "G = hessop.hessian(model, loss_fn, data, curvature='ggn')", DeprecationWarning)

        model, loss_fn, data = H, G, args[0]
        H = hessian(model, loss_fn, data, curvature="hessian", **options)
        G = hessian(model, loss_fn, data, curvature="ggn", **options)
    elif args or options:
        raise TypeError(f"gauss_newton_decomposition(H, G, ...): unexpected arguments "
                        f"{list(options) or list(args)}; pass the options by name (blocks=, k=, ...)")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    if tuple(G.shape) != tuple(H.shape):
        raise ValueError(f"the Gauss-Newton operator has shape {tuple(G.shape)} but the Hessian {tuple(H.shape)}; "
                         "build both from the same model, parameters and data")
    chosen = resolve_blocks(H, blocks)
    args = (k, trace_max_matvecs, density_steps, num_probes, seed, density)
    rows, hd, gd, spent, partial = [], {}, {}, 0, False
    try:
        todo = [*chosen.items(), ("full", None)]
        for name, params in tqdm(todo, disable=not progress, desc="Gauss-Newton", unit="block"):
            Hb, Gb = (H, G) if params is None else (H.restrict(*params), G.restrict(*params))
            row, dens, cost = _measure(name, Hb, Gb, *args)
            rows.append(row)
            spent += cost
            if dens:
                hd[name], gd[name] = dens["hessian"], dens["ggn"]
    except KeyboardInterrupt:
        partial = True
    return GaussNewtonResult(rows, hd, gd, spent, partial)
