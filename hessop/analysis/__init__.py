"""Curvature analyses built on the operator and the solvers.

Loss landscapes (:mod:`.landscape`), layer- and stage-wise spectra
(:mod:`.layerwise`), the Gauss-Newton decomposition (:mod:`.gauss_newton`),
curvature tracking through training (:mod:`.tracking`), Hessian trace
regularisation (:mod:`.regularizer`, PyTorch) and their figures (:mod:`.plots`).
Everything except the regulariser works through :class:`hessop.HessianOperator`,
so it runs on any backend; importing this package does not import a framework.
"""

from .gauss_newton import GaussNewtonResult, gauss_newton_decomposition
from .landscape import Landscape, filter_normalized_direction, landscape_1d, landscape_2d
from .layerwise import LayerwiseResult, layerwise, spectral_distances
from .plots import plot_density, plot_landscape, plot_layerwise, savefig, style
from .tracking import CurvatureTracker, plot_track, read_track

__all__ = [
    "CurvatureTracker",
    "GaussNewtonResult",
    "HessianTraceRegularizer",
    "Landscape",
    "LayerwiseResult",
    "filter_normalized_direction",
    "gauss_newton_decomposition",
    "landscape_1d",
    "landscape_2d",
    "layerwise",
    "plot_density",
    "plot_landscape",
    "plot_layerwise",
    "plot_track",
    "read_track",
    "savefig",
    "spectral_distances",
    "style",
]


def __getattr__(name: str):
    if name == "HessianTraceRegularizer":  # imports torch, so only on demand
        from .regularizer import HessianTraceRegularizer

        return HessianTraceRegularizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
