"""hessop: the Hessian of a neural network's loss as a linear operator, and its spectrum, fast.

``hessop.hessian(...)`` builds a :class:`HessianOperator` (a scipy
``LinearOperator``) from a PyTorch or JAX model; the solvers below read its
spectrum on the operator's own device. Importing hessop imports no framework.
"""

from .cupy import from_cupy, to_cupy
from .distributed import RankDisagreementError, abort_on_error, shard
from .factory import hessian
from .operator import CallableOperator, HessianOperator, as_operator
from .solvers import (
    DiagonalResult,
    EigshResult,
    FunmResult,
    LanczosDecomposition,
    SketchResult,
    SolveResult,
    SpectralDensity,
    TraceResult,
    density,
    diagonal,
    eigsh,
    funm,
    lanczos,
    logdet,
    sketch,
    solve,
    spectral_distance,
    trace,
)

__all__ = [
    "HessianOperator", "CallableOperator", "as_operator", "hessian", "to_cupy", "from_cupy",
    "shard", "abort_on_error", "RankDisagreementError",
    "eigsh", "trace", "diagonal", "density", "spectral_distance", "sketch", "lanczos",
    "EigshResult", "TraceResult", "DiagonalResult", "SpectralDensity", "SketchResult", "LanczosDecomposition",
    "solve", "SolveResult",
    "funm", "FunmResult",
    "logdet",
]
__version__ = "0.1.0"
