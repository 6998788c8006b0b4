"""Orthogonalisation kernels shared by the Krylov solvers, written as device matrix products.

Classical Gram-Schmidt done twice (CGS2) keeps a new vector orthogonal to a basis
to working precision as long as the vector is not almost entirely inside the
basis' span ("twice is enough": Giraud, Langou, Rozloznik & van den Eshof 2005,
*Numer. Math.* 101). Both passes are two BLAS-2/3 products, so nothing moves to
the host but the small coefficient matrices. The coefficients ``Qᵀ W`` and Gram
matrices are the :class:`~._linear_map.LinearMap`'s reductions, so the kernels
work unchanged on vectors split across processes.
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np

from .._array import Array, to_numpy
from ._linear_map import LinearMap


def put(Q: Array, start: int, V: Array) -> Array:
    """Write ``V`` (``(n,)`` or ``(n, k)``) into columns ``start:start+k`` of ``Q``; returns ``Q``.

    In place where the namespace allows it; JAX arrays are immutable, so there a
    new array is returned (callers always rebind ``Q = put(Q, ...)``).
    """
    k = 1 if V.ndim == 1 else int(V.shape[1])
    if array_api_compat.is_jax_array(Q):
        return Q.at[:, start].set(V) if V.ndim == 1 else Q.at[:, start:start + k].set(V)
    if V.ndim == 1:
        Q[:, start] = V
    else:
        Q[:, start:start + k] = V
    return Q


def cgs2(lm: LinearMap, Q: Array | None, W: Array) -> tuple[Array, Array]:
    """Remove from ``W`` its components in the orthonormal columns of ``Q`` (two CGS passes).

    Returns ``(W', H)`` with ``W = Q H + W'`` and ``Qᵀ W' ≈ 0``; ``H`` has the
    shape of ``Qᵀ W`` (``None`` when ``Q`` has no columns).
    """
    if Q is None or Q.shape[1] == 0:
        return W, None
    H = lm.inner(Q, W)
    W = W - Q @ H
    H2 = lm.inner(Q, W)
    return W - Q @ H2, H + H2


def host(*scalars: Array) -> np.ndarray:
    """Move several 0-d or 1-d device arrays to the host in one transfer, as float64."""
    xp = array_api_compat.array_namespace(*scalars)
    parts = [xp.reshape(s, (-1,)) for s in scalars]
    return np.asarray(to_numpy(xp.concat(parts)), dtype=np.float64)


def orthonormalize(lm: LinearMap, W: Array, floor: float, rtol: float = 0.0) -> tuple[Array, np.ndarray]:
    """``W = X B`` with orthonormal ``X`` (``n x r``) spanning the directions of ``W`` above ``floor``.

    The singular values and right vectors of ``W`` come from the eigenvalues of
    its ``b x b`` Gram matrix (host); directions with singular value ``<= floor``
    or ``<= rtol`` times the largest are dropped (rank-deficient blocks). A second Gram step (as in CholeskyQR2;
    Fukaya et al. 2014) restores orthonormality lost to the conditioning of
    ``W``. Returns ``X`` (native) and ``B`` (``r x b``, host float64).
    """
    G = np.asarray(to_numpy(lm.inner(W, W)), dtype=np.float64)
    s2, V = np.linalg.eigh(0.5 * (G + G.T))
    s = np.sqrt(np.clip(s2, 0.0, None))
    keep = s > max(floor, rtol * (s.max() if s.size else 0.0))
    if not np.any(keep):
        return W[:, :0], np.zeros((0, W.shape[1]))
    s, V = s[keep], V[:, keep]
    X = W @ lm.small(V / s)
    B = s[:, None] * V.T
    G2 = np.asarray(to_numpy(lm.inner(X, X)), dtype=np.float64)
    R = np.linalg.cholesky(0.5 * (G2 + G2.T)).T  # X = X' R
    X = X @ lm.small(np.linalg.inv(R))
    return X, R @ B


def columns(xp, X: Array, mask: np.ndarray) -> Array:
    """The columns of ``X`` selected by a host boolean mask (no copy when all are kept)."""
    if np.all(mask):
        return X
    return take_columns(xp, X, np.flatnonzero(mask))


def take_columns(xp, X: Array, idx) -> Array:
    """The columns ``idx`` (host integers, in that order) of ``X``."""
    return xp.take(X, xp.asarray(np.asarray(idx, dtype=np.int64), device=array_api_compat.device(X)), axis=1)


def breakdown_tol(eps: float) -> float:
    """Relative threshold ``sqrt(eps)`` below which a new Krylov direction is suspect (see :func:`.lanczos.lanczos`)."""
    return math.sqrt(eps)


def noise_floor(eps: float) -> float:
    """Relative level ``eps^(2/3)`` below which a new Krylov direction is rounding noise (breakdown)."""
    return eps ** (2.0 / 3.0)
