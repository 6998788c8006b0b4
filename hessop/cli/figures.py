"""The report's figures, drawn from the steps' saved numbers (so a resumed run redraws them all).

Figures are built on :class:`matplotlib.figure.Figure` directly, without
pyplot, so they never open a window nor touch global state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps, rc_context
from matplotlib.figure import Figure

STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "savefig.dpi": 160,
    "savefig.bbox": "tight",
}
COLORS = ("#1f4e79", "#c0392b", "#27864a", "#8e44ad", "#d68910", "#5d6d7e")
MAX_CURVES = 8
"""At most this many block densities in one panel (the ones with the largest trace)."""


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path)
    return path


def eigenvalues(res: dict, path: Path) -> Path:
    """Top eigenvalues against their index (their residuals are in the report's table)."""
    with rc_context(STYLE):
        fig = Figure(figsize=(4.2, 3.0))
        ax = fig.add_subplot()
        vals = np.asarray(res["eigenvalues"])
        idx = np.arange(1, len(vals) + 1)
        ax.plot(idx, vals, "o-", color=COLORS[0], ms=4, lw=0.8)
        if np.all(vals > 0):
            ax.set_yscale("log")
        ax.set_xticks(idx)
        ax.set_xlabel("index $i$")
        ax.set_ylabel(r"eigenvalue $\lambda_i$")
        ax.set_title(f"Top {len(vals)} Hessian eigenvalues")
        return _save(fig, path)


def density(res: dict, path: Path, top: list[float] | None = None) -> Path:
    """The SLQ spectral density on a log scale, with the top eigenvalues marked."""
    with rc_context(STYLE):
        fig = Figure(figsize=(5.0, 3.2))
        ax = fig.add_subplot()
        _density_line(ax, res, COLORS[0], None)
        if top:
            for lam in top:
                ax.axvline(lam, color=COLORS[1], lw=0.6, alpha=0.6, ymax=0.12)
            ax.plot([], [], color=COLORS[1], lw=0.8, label="top eigenvalues (Lanczos)")
            ax.legend(loc="upper right", frameon=False)
        ax.set_xlabel(r"eigenvalue $\lambda$")
        ax.set_ylabel(r"density $\phi(\lambda)$")
        ax.set_title("Hessian spectral density (stochastic Lanczos quadrature)")
        return _save(fig, path)


def _density_line(ax, res: dict, color: str, label: str | None) -> None:
    grid, values = np.asarray(res["grid"]), np.asarray(res["values"])
    floor = values.max() * 1e-7  # below this the smoothed density is numerical dust: leave a gap, not a floor
    ax.semilogy(grid, np.where(values > floor, values, np.nan), color=color, lw=1.2, label=label)


def landscape_1d(res: dict, path: Path) -> Path:
    """The loss along each top eigenvector (solid) and its quadratic model (dashed)."""
    with rc_context(STYLE):
        fig = Figure(figsize=(4.6, 3.2))
        ax = fig.add_subplot()
        for color, curve in zip(COLORS, res["curves"]):
            a = np.asarray(curve["alphas"])
            lam, slope = curve["eigenvalue"], curve["slope"]
            ax.plot(a, curve["losses"], color=color, lw=1.5, label=rf"${curve['direction'][0]}_{curve['direction'][1:]}$, $\lambda$ = {lam:.3g}")
            ax.plot(a, res["center_loss"] + slope * a + 0.5 * lam * a**2, color=color, lw=1.0, ls="--")
        ax.plot([], [], color="0.4", ls="--", lw=1.0, label="quadratic model")
        ax.set_xlabel(r"step $\alpha$ along the eigenvector")
        ax.set_ylabel(r"loss $L(\theta + \alpha v)$")
        ax.set_title("Loss along the top Hessian eigenvectors")
        ax.legend(frameon=False)
        return _save(fig, path)


def landscape_2d(res: dict, path: Path) -> Path:
    """The loss on the plane of the top two eigenvectors: filled contours and a surface."""
    with rc_context(STYLE):
        fig = Figure(figsize=(8.4, 3.4))
        a, b = np.asarray(res["alphas"]), np.asarray(res["betas"])
        Z = np.asarray(res["losses"])
        A, B = np.meshgrid(a, b, indexing="ij")
        ax = fig.add_subplot(1, 2, 1)
        levels = np.linspace(Z.min(), np.percentile(Z, 98), 25)
        cs = ax.contourf(A, B, Z, levels=levels, cmap="viridis", extend="max")
        ax.contour(A, B, Z, levels=levels[::3], colors="white", linewidths=0.4, alpha=0.6)
        ax.plot(0, 0, marker="*", color="white", ms=9, mec="black", mew=0.5)
        fig.colorbar(cs, ax=ax, label="loss")
        ax.set_xlabel(r"$\alpha$ along $v_1$" + f" ($\\lambda_1$ = {res['eigenvalues'][0]:.3g})")
        ax.set_ylabel(r"$\beta$ along $v_2$" + f" ($\\lambda_2$ = {res['eigenvalues'][1]:.3g})")
        ax.set_aspect("equal")
        ax.grid(False)
        ax.set_title("Loss contours")
        ax3 = fig.add_subplot(1, 2, 2, projection="3d")
        ax3.plot_surface(A, B, Z, cmap="viridis", linewidth=0, antialiased=True, rcount=60, ccount=60)
        ax3.set_xlabel(r"$\alpha$")
        ax3.set_ylabel(r"$\beta$")
        ax3.set_zlabel("loss")
        ax3.view_init(elev=28, azim=-60)
        ax3.set_title("Loss surface")
        return _save(fig, path)


def layerwise(res: dict, path: Path) -> Path:
    """Per-block top eigenvalue and trace (bars), and per-block densities against the full one."""
    with rc_context(STYLE):
        rows = res["rows"]
        fig = Figure(figsize=(9.0, max(3.4, 1.2 + 0.28 * len(rows))))
        names = [r["block"] for r in rows]
        y = np.arange(len(rows))
        ax = fig.add_subplot(1, 2, 1)
        top = np.array([r["top_eigenvalue"] for r in rows], dtype=float)
        tr = np.array([r["trace"] for r in rows], dtype=float)
        err = np.array([r.get("trace_stderr", 0.0) for r in rows], dtype=float)
        ax.barh(y - 0.2, top, height=0.4, color=COLORS[0], label=r"top eigenvalue $\lambda_1$")
        ax.barh(y + 0.2, tr, height=0.4, xerr=err, color=COLORS[2], label="trace (± stderr)", capsize=2)
        if np.all(top > 0) and np.all(tr > 0):
            ax.set_xscale("log")
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        ax.set_xlabel("value")
        ax.set_title("Curvature of each block")
        ax.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
        ax2 = fig.add_subplot(1, 2, 2)
        _density_line(ax2, res["full_density"], "black", "full Hessian")
        shown = sorted((r for r in rows if r["block"] in res["densities"]), key=lambda r: -r["trace"])[:MAX_CURVES]
        palette = colormaps["tab10"].colors
        for color, row in zip(palette, sorted(shown, key=rows.index)):
            _density_line(ax2, res["densities"][row["block"]], color, row["block"])
        ax2.set_xlabel(r"eigenvalue $\lambda$")
        ax2.set_ylabel(r"density $\phi(\lambda)$")
        more = f" ({len(shown)} of {len(rows)}: largest traces)" if len(shown) < len(rows) else ""
        ax2.set_title("Density of each diagonal block" + more)
        ax2.legend(frameon=False)
        return _save(fig, path)


DRAW = {
    "eigenvalues": eigenvalues,
    "density": density,
    "landscape_1d": landscape_1d,
    "landscape_2d": landscape_2d,
    "layerwise": layerwise,
}
"""Which figure each step has (the trace is a number, it has none)."""
