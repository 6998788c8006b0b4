"""The report's figures: the library's plots (:mod:`hessop.analysis.plots`), laid out from the steps' saved numbers.

Each step's saved JSON is read back into the library's result objects
(``Landscape.from_dict``, ``LayerwiseResult.from_dict``, a ``SpectralDensity``)
and drawn by the same functions a user calls, in the same style, so a resumed
run redraws every figure. Figures are built on :class:`matplotlib.figure.Figure`
directly, without pyplot, so they never open a window nor touch global state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..analysis import plots
from ..analysis.landscape import Landscape
from ..analysis.layerwise import LayerwiseResult
from ..analysis.spectrum import density_from_dict


def _styled(draw: Callable[..., Path]) -> Callable[..., Path]:
    """Draw and save in the library's style (rc settings apply when axes and text are made)."""
    @functools.wraps(draw)
    def styled(*args: Any, **kwargs: Any) -> Path:
        with plots.style():
            return draw(*args, **kwargs)

    return styled


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=160, bbox_inches="tight")
    return path


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="tight")


@_styled
def eigenvalues(res: dict, path: Path) -> Path:
    """Top eigenvalues against their index (their residuals are in the report's table)."""
    fig = _figure(4.2, 3.0)
    plots.plot_eigenvalues(res["eigenvalues"], fig.add_subplot())
    return _save(fig, path)


@_styled
def density(res: dict, path: Path, top: list[float] | None = None) -> Path:
    """The SLQ spectral density on a log scale, the top eigenvalues marked, the negative mass in the legend."""
    fig = _figure(5.0, 3.2)
    plots.plot_density(density_from_dict(res), fig.add_subplot(), eigenvalues=top, label="SLQ density",
                       title="Hessian spectral density (stochastic Lanczos quadrature)")
    return _save(fig, path)


@_styled
def landscape_1d(res: dict, path: Path) -> Path:
    """The loss along each top eigenvector (solid) and its quadratic model (dashed)."""
    fig = _figure(4.6, 3.2)
    ax = fig.add_subplot()
    for color, curve in zip(plots.COLORS, res["curves"]):
        name = curve["direction"]  # "v1"
        land = Landscape.from_dict({"center_loss": res["center_loss"], **curve, "labels": [f"${name[0]}_{name[1:]}$"]})
        plots.plot_landscape(land, ax, eigenvalue=curve["eigenvalue"], slope=curve["slope"], color=color)
    ax.set_xlabel(r"step $\alpha$ along the eigenvector")
    ax.set_ylabel(r"loss $L(\theta + \alpha v)$")
    ax.set_title("Loss along the top Hessian eigenvectors")
    return _save(fig, path)


@_styled
def landscape_2d(res: dict, path: Path) -> Path:
    """The loss on the plane of the top two eigenvectors: filled contours and a surface."""
    fig = _figure(8.4, 3.4)
    lam = res["eigenvalues"]
    land = Landscape.from_dict({**res, "labels": [f"$v_1$, $\\lambda_1$ = {lam[0]:.3g}",
                                                  f"$v_2$, $\\lambda_2$ = {lam[1]:.3g}"]})
    plots.plot_landscape(land, fig.add_subplot(1, 2, 1), kind="contour", title="Loss contours")
    ax3 = fig.add_subplot(1, 2, 2, projection="3d")
    plots.plot_landscape(land, ax3, kind="surface", title="Loss surface")
    ax3.set_xlabel(r"$\alpha$")
    ax3.set_ylabel(r"$\beta$")
    ax3.view_init(elev=28, azim=-60)
    return _save(fig, path)


@_styled
def layerwise(res: dict, path: Path) -> Path:
    """Per-block top eigenvalue and trace (bars), and per-block densities against the full one."""
    fig = _figure(9.0, max(3.4, 1.2 + 0.28 * len(res["rows"])))
    plots.plot_layerwise(LayerwiseResult.from_dict(res), [fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)])
    return _save(fig, path)


DRAW = {
    "eigenvalues": eigenvalues,
    "density": density,
    "landscape_1d": landscape_1d,
    "landscape_2d": landscape_2d,
    "layerwise": layerwise,
}
"""Which figure each step has (the trace is a number, it has none)."""
