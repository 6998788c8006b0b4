"""Figures for curvature analyses, in one consistent, paper-ready style: the library's and the report's.

Every function takes an optional matplotlib ``ax`` (a new figure is made when it
is omitted), returns the axes it drew on, and draws with the same fonts, sizes
and colours (:func:`style`). Inputs are result objects (a ``SpectralDensity``,
a :class:`Landscape`, :class:`TrackRecord` s, a :class:`LayerwiseResult`), so
this module imports no framework. The ``hessop`` command's report draws its
figures with these functions too (:mod:`hessop.cli.figures` only lays them out).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .._array import to_host
from .._warnings import warn
from .results import TrackRecord

__all__ = ["style", "plot_eigenvalues", "plot_density", "plot_landscape", "plot_track", "plot_layerwise", "savefig"]

COLORS = ("#1f4e79", "#c0392b", "#2e8b57", "#d68910", "#6c3483", "#117a65", "#7f8c8d", "#a04000")
"""The cycle every figure uses: dark blue, red, green, amber, purple, teal, grey, brown."""

_RC = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8.5,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.6,
    "figure.dpi": 110,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "legend.frameon": False,
}


@contextlib.contextmanager
def style():
    """Context manager applying the package's plot style (fonts, spines, grid, colour cycle)."""
    import matplotlib as mpl
    from cycler import cycler

    with mpl.rc_context({**_RC, "axes.prop_cycle": cycler(color=COLORS)}):
        yield


def _axes(ax, projection: str | None = None, figsize=(4.8, 3.4)):
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax
    with style():
        fig = plt.figure(figsize=figsize, layout="tight")
        return fig.add_subplot(111, projection=projection)


def _finish(ax, title: str | None = None):
    if title:
        ax.set_title(title)
    return ax


def _host(a: Any) -> np.ndarray:
    return np.asarray(to_host(a), dtype=np.float64)


def _gapped(values: np.ndarray, depth: float = 1e-7) -> np.ndarray:
    """A smoothed density for a log axis: below ``depth`` of its peak it is numerical dust, left as a gap."""
    return np.where(values > values.max() * depth, values, np.nan)


def plot_eigenvalues(eigenvalues: Sequence[float], ax=None, *, title: str | None = None):
    """Top eigenvalues against their index, on a log scale when all are positive."""
    ax = _axes(ax, figsize=(4.2, 3.0))
    vals = _host(list(eigenvalues))
    idx = np.arange(1, vals.size + 1)
    with style():
        ax.plot(idx, vals, "o-", color=COLORS[0], markersize=4, linewidth=0.8)
        if np.all(vals > 0):
            ax.set_yscale("log")
        ax.set_xticks(idx)
        ax.set_xlabel("index $i$")
        ax.set_ylabel(r"eigenvalue $\lambda_i$")
    return _finish(ax, title if title is not None else f"Top {vals.size} Hessian eigenvalues")


def plot_density(
    rho: Any,
    ax=None,
    *,
    eigenvalues: Sequence[float] | None = None,
    label: str | None = None,
    log: bool = True,
    floor: float = 1e-8,
    color: str | None = None,
    title: str | None = "Hessian eigenvalue density",
):
    """Spectral density on a log scale, outliers marked, negative mass in the legend.

    The style of Ghorbani et al. (2019), "An investigation into neural net
    optimization via Hessian eigenvalue density", and Yao et al. (2020), PyHessian.

    Parameters
    ----------
    rho : SpectralDensity
        The density; its legend entry gives :meth:`SpectralDensity.negative_mass`
        (the mass below minus its resolution ``sigma``).
    eigenvalues : sequence of float, optional
        Extreme eigenvalues (e.g. from ``eigsh``) drawn as marked outliers.
    log : bool
        Logarithmic density axis (values below ``floor`` are clipped to it).
    """
    ax = _axes(ax)
    with style():
        grid, values = _host(rho.grid), _host(rho.values)
        text = label or "density"
        text += f"\nnegative mass {rho.negative_mass():.1%} ($\\lambda < -{rho.sigma:.2g}$)"
        shown = np.maximum(values, floor) if log else values
        (line,) = ax.plot(grid, shown, color=color, label=text)
        ax.fill_between(grid, floor if log else 0.0, shown, color=line.get_color(), alpha=0.15, linewidth=0)
        if log:
            ax.set_yscale("log")
            low, high = ax.get_ylim()
            ax.set_ylim(max(floor, min(low, shown.min() / 2)), max(high, 100 * shown.max()))  # room for the legend
        if eigenvalues is not None and len(eigenvalues):
            ev = _host(list(eigenvalues))
            # outliers as a rug on the eigenvalue axis, clear of the curve and the legend
            ax.plot(ev, np.full(ev.shape, 0.03), "^", color=COLORS[1], markersize=6, clip_on=False,
                    transform=ax.get_xaxis_transform(),
                    label=f"top eigenvalue{'s' if ev.size > 1 else ''} (max {ev.max():.3g})")
            for e in ev:
                ax.axvline(e, color=COLORS[1], linewidth=0.7, linestyle=":")
        ax.axvline(0.0, color="0.4", linewidth=0.6)
        ax.set_xlabel("eigenvalue $\\lambda$")
        ax.set_ylabel("density (log scale)" if log else "density")
        ax.legend(loc="upper right")
    return _finish(ax, title)


def negative_mass(rho: Any) -> tuple[float, float]:
    """Deprecated: ``(rho.negative_mass(), rho.sigma)``; the one definition is :meth:`SpectralDensity.negative_mass`."""
    warn("hessop.analysis.plots.negative_mass is deprecated: use rho.negative_mass() (mass below -rho.sigma)",
         DeprecationWarning)
    return float(rho.negative_mass()), float(rho.sigma)


def plot_landscape(landscape: Any, ax=None, *, kind: str | None = None, title: str | None = None,
                   eigenvalue: float | None = None, slope: float = 0.0, color: str | None = None):
    """A loss landscape: a curve (1-D), a 3-D surface or a filled contour (2-D).

    As in Li et al. (2018), "Visualizing the loss landscape of neural nets", and
    Yao et al. (2020), PyHessian, Figs. 1-2. The centre (the trained parameters) is marked.
    A line along an eigenvector given its ``eigenvalue`` (and the gradient's ``slope``
    along it) also shows, dashed, the quadratic model ``L₀ + slope·α + ½ λ α²``.
    """
    two_d = np.ndim(landscape.losses) == 2
    kind = kind or ("surface" if two_d else "line")
    if kind not in ("line", "surface", "contour"):
        raise ValueError(f"kind must be 'line', 'surface' or 'contour'; got {kind!r}")
    if two_d == (kind == "line"):
        raise ValueError(f"a {'2-D' if two_d else '1-D'} landscape cannot be drawn as kind={kind!r}; "
                         f"use {'surface or contour' if two_d else 'line'}")
    labels = list(getattr(landscape, "labels", ("direction 1", "direction 2")))
    ax = _axes(ax, projection="3d" if kind == "surface" else None,
               figsize=(5.0, 4.0) if kind == "surface" else (4.8, 3.4))
    a = np.asarray(landscape.alphas)
    losses = np.asarray(landscape.losses, dtype=np.float64)
    with style():
        if kind == "line":
            text = f"along {labels[0]}" + ("" if eigenvalue is None else f", $\\lambda$ = {eigenvalue:.3g}")
            (line,) = ax.plot(a, losses, marker="o", markersize=2.5, color=color, label=text)
            handles = ax.get_legend_handles_labels()[1]
            if eigenvalue is not None:
                model = landscape.center_loss + slope * a + 0.5 * eigenvalue * a**2
                ax.plot(a, model, color=line.get_color(), linewidth=1.0, linestyle="--",
                        label=None if "quadratic model" in handles else "quadratic model")
            first = "trained parameters" not in handles
            ax.plot([0.0], [landscape.center_loss], "*", color=COLORS[1], markersize=10, zorder=5,
                    label="trained parameters" if first else None)
            ax.set_xlabel(f"step $\\alpha$ along {labels[0]}" if first else "step $\\alpha$")
            ax.set_ylabel("loss")
            ax.legend(loc="upper center")
        else:
            b = np.asarray(landscape.betas)
            A, B = np.meshgrid(a, b, indexing="ij")
            if kind == "surface":
                from matplotlib.ticker import MaxNLocator

                ax.plot_surface(A, B, losses, cmap="viridis", linewidth=0, antialiased=True, alpha=0.95)
                for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
                    axis.set_major_locator(MaxNLocator(5))
                ax.set_zlabel("loss", labelpad=6)
            else:
                levels = np.linspace(np.nanmin(losses), np.nanpercentile(losses, 98), 25)
                cs = ax.contourf(A, B, losses, levels=levels, cmap="viridis", extend="max")
                ax.contour(A, B, losses, levels=levels[::2], colors="white", linewidths=0.4, alpha=0.6)
                ax.figure.colorbar(cs, ax=ax, label="loss")
                ax.plot([0.0], [0.0], "*", color=COLORS[1], markersize=10)
                ax.set_aspect("equal", adjustable="box")
                ax.grid(False)
            ax.set_xlabel(f"$\\alpha$ ({labels[0]})")
            ax.set_ylabel(f"$\\beta$ ({labels[1]})")
    return _finish(ax, title)


def plot_track(records: Iterable[Any], axes=None, *, unit: str | None = None, title: str | None = None):
    """Evolution of the top eigenvalues and the trace (with a ±2 stderr band) through training.

    Parameters
    ----------
    records : iterable of TrackRecord (or their dicts)
        As written by :class:`~hessop.analysis.tracking.CurvatureTracker`.
    axes : pair of matplotlib axes, optional
        Where to draw the eigenvalues and the trace; a 1 x 2 figure when omitted.

    Returns
    -------
    list of axes
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    records = [r if isinstance(r, TrackRecord) else TrackRecord.from_dict(r) for r in records]
    if not records:
        raise ValueError("no tracking records to plot; run the tracker first or check the JSONL path")
    unit = unit or records[0].unit
    x = np.array([r.step for r in records], dtype=np.float64)
    nan = lambda v: np.nan if v is None else v  # noqa: E731
    with style():
        if axes is None:
            fig, axes = plt.subplots(1, 2, figsize=(8.6, 3.3), layout="tight")
        ax_eig, ax_tr = axes
        tops = [r.top_eigenvalues or [] for r in records]
        k = max((len(t) for t in tops), default=0)
        for i in range(k):
            y = np.array([sorted(t, reverse=True)[i] if len(t) > i else np.nan for t in tops], dtype=np.float64)
            ax_eig.plot(x, y, marker="o", markersize=3, label=f"$\\lambda_{{{i + 1}}}$")
        ax_eig.set_xlabel(unit)
        ax_eig.set_ylabel("top eigenvalue")
        if k:
            ax_eig.legend(loc="best")
        if any(r.trace is not None for r in records):
            tr = np.array([nan(r.trace) for r in records], dtype=np.float64)
            se = np.array([nan(r.trace_stderr) for r in records], dtype=np.float64)
            ax_tr.plot(x, tr, marker="o", markersize=3, color=COLORS[2], label="trace")
            ax_tr.fill_between(x, tr - 2 * se, tr + 2 * se, color=COLORS[2], alpha=0.2, linewidth=0, label="±2 stderr")
            ax_tr.legend(loc="best")
        ax_tr.set_xlabel(unit)
        ax_tr.set_ylabel("Hessian trace")
        for ax in (ax_eig, ax_tr):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if title:
            ax_eig.figure.suptitle(title)
    return [ax_eig, ax_tr]


MAX_CURVES = 8
"""At most this many block densities in one panel of :func:`plot_layerwise` (those with the largest trace)."""


def plot_layerwise(result: Any, axes=None, *, log: bool = True, title: str | None = None):
    """Per-block top eigenvalue and trace (bars) and the blocks' densities against the full network's.

    Parameters
    ----------
    result : LayerwiseResult
        The output of :func:`hessop.analysis.layerwise.layerwise`.
    axes : pair of matplotlib axes, optional
        A 1 x 2 figure when omitted.
    log : bool
        Logarithmic value and density axes.
    """
    import matplotlib.pyplot as plt

    rows = list(result.rows)
    names = [r.block for r in rows]
    with style():
        if axes is None:
            fig, axes = plt.subplots(1, 2, figsize=(9.0, max(3.4, 1.2 + 0.28 * len(rows))), layout="tight")
        ax_bar, ax_rho = axes
        y = np.arange(len(rows))
        top = np.array([r.top_eigenvalue for r in rows], dtype=np.float64)
        tr = np.array([r.trace for r in rows], dtype=np.float64)
        se = np.array([np.nan if r.trace_stderr is None else r.trace_stderr for r in rows], dtype=np.float64)
        ax_bar.barh(y - 0.2, top, height=0.4, color=COLORS[0], label=r"top eigenvalue $\lambda_1$")
        ax_bar.barh(y + 0.2, tr, height=0.4, xerr=2 * np.nan_to_num(se), color=COLORS[2], label="trace (±2 stderr)",
                    error_kw={"elinewidth": 0.8, "capsize": 2})
        if log and np.all(top > 0) and np.all(tr > 0):
            ax_bar.set_xscale("log")
        ax_bar.set_yticks(y, names)
        ax_bar.invert_yaxis()
        ax_bar.set_xlabel("value")
        ax_bar.set_title("Curvature of each block")
        ax_bar.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
        full = result.full_density
        if full is not None:
            values = _host(full.values)
            ax_rho.plot(_host(full.grid), _gapped(values) if log else values, color="black", linewidth=1.2,
                        label="full network")
        shown = sorted((r for r in rows if result.densities.get(r.block) is not None), key=lambda r: -r.trace)
        shown = sorted(shown[:MAX_CURVES], key=rows.index)
        for i, row in enumerate(shown):  # each block at its own resolution (a small block's SLQ resolves more)
            rho = result.densities[row.block]
            g, v = _host(rho.grid), _host(rho.values)
            ax_rho.plot(g, _gapped(v) if log else v, color=COLORS[(i + 1) % len(COLORS)], linewidth=1.0,
                        label=row.block)
        if log:
            ax_rho.set_yscale("log")
        ax_rho.set_xlabel(r"eigenvalue $\lambda$")
        ax_rho.set_ylabel(r"density $\phi(\lambda)$")
        more = f" ({len(shown)} of {len(rows)}: largest traces)" if len(shown) < len(rows) else ""
        ax_rho.set_title("Density of each diagonal block" + more)
        ax_rho.legend(loc="upper right")
        if title:
            ax_bar.figure.suptitle(title)
    return [ax_bar, ax_rho]


def savefig(fig_or_ax: Any, path: str | os.PathLike, *, dpi: int = 200) -> str:
    """Save a figure (or the figure of an axes / list of axes) tightly cropped; creates the folder."""
    import matplotlib.pyplot as plt

    obj = np.ravel(fig_or_ax)[0] if isinstance(fig_or_ax, (list, tuple, np.ndarray)) else fig_or_ax
    fig = getattr(obj, "figure", obj) if not hasattr(obj, "savefig") else obj
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with style():
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path
