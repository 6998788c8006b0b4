"""The spectrum of one operator: top eigenvalues, trace with its standard error, SLQ density.

:func:`block_spectrum` is the measurement the layer-wise, Gauss-Newton and
tracking analyses make of each block (or of the whole network): thick-restart
Lanczos for the top eigenvalues, a stochastic trace estimator with its standard
error, and stochastic Lanczos quadrature for the density. Blocks of at most
:data:`DENSE_BELOW` parameters are solved exactly from their dense matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._array import host_floats
from .._renamed import renamed
from ..solvers import SpectralDensity, density, eigsh, trace

__all__ = ["BlockSpectrum", "block_spectrum", "DENSE_BELOW", "density_to_dict", "density_from_dict"]

DENSE_BELOW = 64
"""Blocks with at most this many parameters are analysed exactly, from the dense block (n products)."""


@dataclass(frozen=True)
class BlockSpectrum:
    """Top eigenvalues, trace and density of one operator, with their quality.

    ``exact`` blocks (at most :data:`DENSE_BELOW` parameters) come from the dense
    matrix: all eigenvalues, the exact trace (``trace_stderr`` 0) and the exact
    density; others from thick-restart Lanczos, a stochastic trace estimator and SLQ.
    """

    num_params: int
    eigenvalues: list
    residual_norms: list
    converged: bool
    trace: float
    trace_stderr: float
    trace_samples: np.ndarray = field(repr=False)
    density: Any = field(repr=False)
    num_matvecs: int
    exact: bool


@renamed(trace_matvecs="trace_max_matvecs")
def block_spectrum(H: Any, k: int = 1, *, trace_max_matvecs: int = 60, density_steps: int = 60, num_probes: int = 2,
                   seed: int = 0, trace_method: str = "xtrace", with_density: bool = True,
                   with_trace: bool = True) -> BlockSpectrum:
    """The top ``k`` eigenvalues, the trace (with stderr) and optionally the SLQ density of ``H``.

    ``with_trace=False`` skips the trace estimate (NaN, no products spent).
    """
    n = int(H.shape[0])
    if n <= DENSE_BELOW and getattr(H, "split", None) is None:  # no rank of a split operator holds its columns
        dense = np.asarray(H.to_dense(), dtype=np.float64)
        lam = np.linalg.eigvalsh(0.5 * (dense + dense.T))[::-1]
        tr = float(np.trace(dense))
        rho = SpectralDensity.from_eigenvalues(lam) if with_density else None
        return BlockSpectrum(n, [float(v) for v in lam[:k]], [0.0] * min(k, n), True, tr, 0.0, np.array([tr]),
                             rho, n, True)
    eig = eigsh(H, k=min(k, n - 1), seed=seed)
    order = np.argsort(-np.asarray(eig.eigenvalues, dtype=np.float64))
    spent = int(eig.num_matvecs)
    tr, stderr, samples = math.nan, math.nan, np.empty(0)
    if with_trace:
        est = trace(H, method=trace_method, max_matvecs=max(4, trace_max_matvecs), seed=seed)
        tr, stderr, samples = float(est.estimate), float(est.stderr), np.asarray(est.samples, dtype=np.float64)
        spent += int(est.num_matvecs)
    rho = None
    if with_density:
        rho = density(H, num_steps=density_steps, num_probes=num_probes, seed=seed)
        spent += int(rho.num_matvecs)
    return BlockSpectrum(n, [float(eig.eigenvalues[i]) for i in order],
                         [float(eig.residual_norms[i]) for i in order], bool(np.all(eig.converged)),
                         tr, stderr, samples, rho, spent, False)


def density_to_dict(rho: Any) -> dict:
    """A density as JSON: the smoothed curve, the quadrature rules, the kernel width and the order.

    (The natural home of this pair is ``SpectralDensity.to_dict``/``from_dict``.)
    """
    return {
        "grid": host_floats(rho.grid),
        "values": host_floats(rho.values),
        "nodes": host_floats(rho.nodes),
        "weights": host_floats(rho.weights),
        "sigma": float(rho.sigma),
        "n": int(rho.n),
        "num_matvecs": int(rho.num_matvecs),
    }


def density_from_dict(d: dict) -> SpectralDensity:
    """The density written by :func:`density_to_dict` (``n`` and the product count may be missing: 0)."""
    arr = lambda key: np.asarray(d[key], dtype=np.float64)  # noqa: E731
    nodes, weights = arr("nodes"), arr("weights")
    if nodes.ndim == 1:
        nodes, weights = nodes[None, :], weights[None, :]
    return SpectralDensity(nodes, weights, int(d.get("n", 0)), float(d["sigma"]), arr("grid"), arr("values"),
                           int(d.get("num_matvecs", 0)))
