"""Figures for curvature analyses, in one consistent, paper-ready style.

Every function takes an optional matplotlib ``ax`` (a new figure is made when it
is omitted), returns the axes it drew on, and draws with the same fonts, sizes
and colours (:func:`style`). Inputs are duck-typed result objects (a
``SpectralDensity`` with ``grid``/``values``, a :class:`Landscape`, tracking
records, a :class:`LayerwiseResult`), so this module imports no framework.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["style", "plot_density", "plot_landscape", "plot_track", "plot_layerwise", "savefig", "negative_mass"]

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
    from .._array import to_numpy

    return np.asarray(to_numpy(a) if not isinstance(a, (list, tuple, float, int)) else a, dtype=np.float64)


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
        Anything with ``grid`` and ``values`` (and optionally ``negative_mass()``).
    eigenvalues : sequence of float, optional
        Extreme eigenvalues (e.g. from ``eigsh``) drawn as marked outliers.
    log : bool
        Logarithmic density axis (values below ``floor`` are clipped to it).
    """
    ax = _axes(ax)
    with style():
        grid, values = _host(rho.grid), _host(rho.values)
        text = label or "density"
        neg, tol = negative_mass(rho)
        if neg is not None:
            text += f"\nnegative mass {neg:.1%}" + (f" ($\\lambda < -{tol:.2g}$)" if tol > 0 else "")
        shown = np.maximum(values, floor) if log else values
        (line,) = ax.plot(grid, shown, color=color, label=text)
        ax.fill_between(grid, floor if log else 0.0, shown, color=line.get_color(), alpha=0.15, linewidth=0)
        if log:
            ax.set_yscale("log")
            low, high = ax.get_ylim()
            ax.set_ylim(max(floor, min(low, shown.min() / 2)), max(high, 3 * shown.max()))
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


def negative_mass(rho: Any) -> tuple[float | None, float]:
    """The density's mass below ``-tol`` and ``tol``: its resolution ``sigma`` when it has one.

    SLQ cannot tell eigenvalues within its resolution of zero apart, and a
    Hessian's large null space puts quadrature nodes on both sides of zero, so
    mass closer to zero than the kernel width ``sigma`` is not counted as negative.
    """
    sigma = float(getattr(rho, "sigma", 0.0) or 0.0)
    fn = getattr(rho, "negative_mass", None)
    if callable(fn):
        return (float(fn(sigma)) if sigma > 0 else float(fn())), sigma
    if hasattr(rho, "nodes") and hasattr(rho, "weights"):
        nodes, weights = _host(rho.nodes).ravel(), _host(rho.weights).ravel()
        return float(weights[nodes < -sigma].sum() / max(weights.sum(), np.finfo(float).tiny)), sigma
    return None, sigma


def plot_landscape(landscape: Any, ax=None, *, kind: str | None = None, title: str | None = None):
    """A loss landscape: a curve (1-D), a 3-D surface or a filled contour (2-D).

    As in Li et al. (2018), "Visualizing the loss landscape of neural nets", and
    Yao et al. (2020), PyHessian, Figs. 1-2. The centre (the trained parameters) is marked.
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
            ax.plot(a, losses, marker="o", markersize=2.5, label=f"along {labels[0]}")
            first = "trained parameters" not in ax.get_legend_handles_labels()[1]
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
                cs = ax.contourf(A, B, losses, levels=30, cmap="viridis")
                ax.contour(A, B, losses, levels=12, colors="white", linewidths=0.4, alpha=0.6)
                ax.figure.colorbar(cs, ax=ax, label="loss")
                ax.plot([0.0], [0.0], "*", color=COLORS[1], markersize=10)
                ax.set_aspect("equal", adjustable="box")
                ax.grid(False)
            ax.set_xlabel(f"$\\alpha$ ({labels[0]})")
            ax.set_ylabel(f"$\\beta$ ({labels[1]})")
    return _finish(ax, title)


def plot_track(records: Iterable[Mapping[str, Any]], axes=None, *, unit: str | None = None, title: str | None = None):
    """Evolution of the top eigenvalues and the trace (with a ±2 stderr band) through training.

    Parameters
    ----------
    records : iterable of dict
        Tracking records as written by :class:`~hessop.analysis.tracking.CurvatureTracker`.
    axes : pair of matplotlib axes, optional
        Where to draw the eigenvalues and the trace; a 1 x 2 figure when omitted.

    Returns
    -------
    list of axes
    """
    import matplotlib.pyplot as plt

    records = list(records)
    if not records:
        raise ValueError("no tracking records to plot; run the tracker first or check the JSONL path")
    unit = unit or records[0].get("unit", "step")
    x = np.array([r[unit] for r in records], dtype=np.float64)
    with style():
        if axes is None:
            fig, axes = plt.subplots(1, 2, figsize=(8.6, 3.3), layout="tight")
        ax_eig, ax_tr = axes
        tops = [r.get("top_eigenvalues") or [] for r in records]
        k = max((len(t) for t in tops), default=0)
        for i in range(k):
            y = np.array([sorted(t, reverse=True)[i] if len(t) > i else np.nan for t in tops], dtype=np.float64)
            ax_eig.plot(x, y, marker="o", markersize=3, label=f"$\\lambda_{{{i + 1}}}$")
        ax_eig.set_xlabel(unit)
        ax_eig.set_ylabel("top eigenvalue")
        if k:
            ax_eig.legend(loc="best")
        if any(r.get("trace") is not None for r in records):
            tr = np.array([np.nan if r.get("trace") is None else r["trace"] for r in records], dtype=np.float64)
            se = np.array([np.nan if r.get("trace_stderr") is None else r["trace_stderr"] for r in records],
                          dtype=np.float64)
            ax_tr.plot(x, tr, marker="o", markersize=3, color=COLORS[2], label="trace")
            ax_tr.fill_between(x, tr - 2 * se, tr + 2 * se, color=COLORS[2], alpha=0.2, linewidth=0, label="±2 stderr")
            ax_tr.legend(loc="best")
        ax_tr.set_xlabel(unit)
        ax_tr.set_ylabel("Hessian trace")
        from matplotlib.ticker import MaxNLocator

        for ax in (ax_eig, ax_tr):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if title:
            ax_eig.figure.suptitle(title)
    return [ax_eig, ax_tr]


def plot_layerwise(result: Any, axes=None, *, log: bool = True, title: str | None = None):
    """Per-block top eigenvalue and trace (bars) and each block's density against the full network's.

    Parameters
    ----------
    result : LayerwiseResult
        The output of :func:`hessop.analysis.layerwise.layerwise`.
    axes : pair of matplotlib axes, optional
        A 1 x 2 figure when omitted.
    """
    import matplotlib.pyplot as plt

    rows = list(result.rows)
    names = [r["block"] for r in rows]
    with style():
        if axes is None:
            fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.6), layout="tight")
        ax_bar, ax_rho = axes
        pos = np.arange(len(rows))
        width = 0.4
        top = np.array([r["top_eigenvalue"] for r in rows], dtype=np.float64)
        tr = np.array([r["trace"] for r in rows], dtype=np.float64)
        se = np.array([r.get("trace_stderr", np.nan) for r in rows], dtype=np.float64)
        ax_bar.bar(pos - width / 2, top, width, color=COLORS[0], label="top eigenvalue")
        ax_bar.bar(pos + width / 2, tr, width, yerr=2 * np.nan_to_num(se), color=COLORS[3], label="trace (±2 stderr)",
                   error_kw={"elinewidth": 0.8, "capsize": 2})
        ax_bar.set_xticks(pos, names, rotation=45 if len(rows) > 4 else 0, ha="right" if len(rows) > 4 else "center")
        ax_bar.set_ylabel("value")
        if log and np.all(top > 0) and np.all(tr > 0):
            ax_bar.set_yscale("log")
        ax_bar.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2)
        full = getattr(result, "full_density", None)
        if full is not None:
            plot_density(full, ax_rho, label="full network", color="black", log=log, title=None)
        for i, name in enumerate(names):
            rho = result.densities.get(name)
            if rho is None:
                continue
            if full is not None and hasattr(rho, "evaluate"):
                # the full network's grid and kernel width: the curves compare as the JS distance does
                g = _host(full.grid)
                v = rho.evaluate(g, max(full.sigma, rho.sigma))
            else:
                g, v = _host(rho.grid), _host(rho.values)
            ax_rho.plot(g, np.maximum(v, 1e-8) if log else v, color=COLORS[(i + 1) % len(COLORS)],
                        linewidth=1.0, label=name)
        ax_rho.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), ncol=1 if len(names) < 12 else 2)
        ax_rho.set_title("densities (each a probability measure)")
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
