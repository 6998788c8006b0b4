"""Orthogonalisation kernels shared by the Krylov solvers, written as device matrix products.

Classical Gram-Schmidt done twice (CGS2) keeps a new vector orthogonal to a basis
to working precision as long as the vector is not almost entirely inside the
basis' span ("twice is enough": Giraud, Langou, Rozloznik & van den Eshof 2005,
*Numer. Math.* 101). Both passes are two BLAS-2/3 products, so nothing moves to
the host but the small coefficient matrices.
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np

from .._array import Array, to_numpy


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


def cgs2(Q: Array | None, W: Array) -> tuple[Array, Array | None]:
    """Remove from ``W`` its components in the orthonormal columns of ``Q`` (two CGS passes).

    Returns ``(W', H)`` with ``W = Q H + W'`` and ``Qᵀ W' ≈ 0``; ``H`` has the
    shape of ``Qᵀ W`` (``None`` when ``Q`` has no columns).
    """
    if Q is None or Q.shape[1] == 0:
        return W, None
    H = Q.T @ W
    W = W - Q @ H
    H2 = Q.T @ W
    return W - Q @ H2, H + H2


def norm(xp, w: Array) -> Array:
    """2-norm of a vector as a 0-d device array."""
    return xp.linalg.vector_norm(w)


def host(*scalars: Array) -> np.ndarray:
    """Move several 0-d or 1-d device arrays to the host in one transfer, as float64."""
    xp = array_api_compat.array_namespace(*scalars)
    parts = [xp.reshape(s, (-1,)) for s in scalars]
    return np.asarray(to_numpy(xp.concat(parts)), dtype=np.float64)


def orthonormalize(xp, W: Array, tol: float) -> tuple[Array, np.ndarray]:
    """An orthonormal basis of the numerical range of ``W`` (``n x b``), by eigh of its Gram matrix.

    Directions whose singular value is below ``tol`` times the largest one (or
    below ``tol`` in absolute terms when ``W`` is nearly zero) are dropped. The
    Gram step is done twice (as CholeskyQR2; Fukaya et al. 2014) so the result is
    orthonormal to working precision. Returns the basis ``(n, r)`` and the
    singular values of ``W`` (host, descending).
    """
    G = np.asarray(to_numpy(W.T @ W), dtype=np.float64)
    G = 0.5 * (G + G.T)
    s2, V = np.linalg.eigh(G)
    order = np.argsort(s2)[::-1]
    s2, V = np.clip(s2[order], 0.0, None), V[:, order]
    s = np.sqrt(s2)
    keep = s > tol * max(s[0] if s.size else 0.0, tol) if s.size else np.zeros(0, bool)
    if not np.any(keep):
        return W[:, :0], s
    C = V[:, keep] / s[keep]
    X = W @ _device(xp, W, C)
    # second pass: X is orthonormal up to ~ eps * cond(W)^2; one more Gram step fixes it
    G2 = np.asarray(to_numpy(X.T @ X), dtype=np.float64)
    L = np.linalg.cholesky(0.5 * (G2 + G2.T))
    X = X @ _device(xp, X, np.linalg.inv(L).T)
    return X, s


def _device(xp, like: Array, a: np.ndarray) -> Array:
    out = xp.asarray(np.ascontiguousarray(a), device=array_api_compat.device(like))
    return xp.astype(out, like.dtype) if out.dtype != like.dtype else out


def breakdown_tol(eps: float) -> float:
    """Relative breakdown threshold ``sqrt(eps)`` (see :func:`hessop.solvers.lanczos.lanczos`)."""
    return math.sqrt(eps)
