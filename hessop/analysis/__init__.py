"""Curvature analyses built on the operator and the solvers.

Each takes operators (:class:`hessop.HessianOperator`, any backend) and returns
a typed result whose rows are dataclasses that serialise themselves
(:mod:`.results`). Loss landscapes (:mod:`.landscape`), the spectrum of one
operator (:mod:`.spectrum`), parameter blocks (:mod:`.blocks`), layer- and
stage-wise spectra (:mod:`.layerwise`), the Gauss-Newton decomposition
(:mod:`.gauss_newton`), curvature tracking through training (:mod:`.tracking`),
Hessian trace regularisation (:mod:`.regularizer`, PyTorch), influence functions
(:mod:`.influence_functions`, PyTorch) and the figures of
all of them and of the ``hessop`` report (:mod:`.plots`). Importing this package
does not import a framework.
"""

from .blocks import resolve_blocks
from .gauss_newton import GaussNewtonResult, gauss_newton_decomposition
from .landscape import Landscape, filter_normalized_direction, landscape_1d, landscape_2d
from .layerwise import LayerwiseResult, layerwise, spectral_distances
from .plots import plot_density, plot_eigenvalues, plot_landscape, plot_layerwise, savefig, style
from .results import GaussNewtonRow, LayerwiseRow, TrackRecord
from .spectrum import BlockSpectrum, block_spectrum
from .tracking import CurvatureTracker, plot_track, read_track

__all__ = [
    "BlockSpectrum",
    "CurvatureTracker",
    "GaussNewtonResult",
    "GaussNewtonRow",
    "HessianTraceRegularizer",
    "InfluenceResult",
    "Landscape",
    "LayerwiseResult",
    "LayerwiseRow",
    "TrackRecord",
    "block_spectrum",
    "filter_normalized_direction",
    "gauss_newton_decomposition",
    "influence",
    "landscape_1d",
    "landscape_2d",
    "layerwise",
    "plot_density",
    "plot_eigenvalues",
    "plot_landscape",
    "plot_layerwise",
    "plot_track",
    "read_track",
    "resolve_blocks",
    "savefig",
    "spectral_distances",
    "style",
]


def __getattr__(name: str):
    if name == "HessianTraceRegularizer":  # imports torch, so only on demand
        from .regularizer import HessianTraceRegularizer

        return HessianTraceRegularizer
    if name in ("influence", "InfluenceResult"):  # imports torch, so only on demand
        from . import influence_functions

        return getattr(influence_functions, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
