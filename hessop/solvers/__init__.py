"""Generic spectral solvers: they speak only the operator protocol and the array API.

Each accepts a :class:`hessop.HessianOperator`, a scipy ``LinearOperator`` or
sparse matrix, a :class:`hessop.testing.SpectralOperator`, or a dense square
array of any array-API namespace, and works where that operator's vectors live.
"""

from .density import SpectralDensity, density, spectral_distance
from .diagonal import DiagonalResult, diagonal
from .eigsh import EigshResult, eigsh
from .funm import FunmResult, funm
from .lanczos import LanczosDecomposition, lanczos
from .sketch import SketchResult, sketch
from .solve import SolveResult, SolveState, solve
from .trace import TraceResult, trace
from .trace_function import logdet, trace_function

__all__ = [
    "DiagonalResult", "EigshResult", "LanczosDecomposition", "SketchResult", "SpectralDensity", "TraceResult",
    "density", "diagonal", "eigsh", "lanczos", "sketch", "spectral_distance", "trace",
    "SolveResult", "SolveState", "solve",
    "FunmResult", "funm",
    "logdet", "trace_function",
]
