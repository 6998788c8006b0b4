"""Thick-restarted block Lanczos: batched products ``A @ V`` with ``V`` of shape ``(n, b)``.

A block Krylov space ``span{V, AV, A²V, ...}`` (Golub & Underwood 1977; Cullum &
Donath 1974) finds up to ``b`` copies of a repeated or tightly clustered
eigenvalue at once, and each step is one batched product, which a GPU or a
vectorised Hessian-vector product runs much faster than ``b`` single ones.

Each new block ``W = A Q_j`` is orthogonalised against the whole basis by
classical Gram-Schmidt done twice as matrix products, so the projected matrix
``H = Qᵀ A Q`` is read off the Gram-Schmidt coefficients (block tridiagonal in
exact arithmetic, and exactly what it is after a restart). The rest of ``W`` is
orthonormalised through its small Gram matrix; directions below the noise
floor ``eps^(2/3) ||A||`` (rank-deficient blocks: an invariant subspace was
reached) are dropped and replaced by fresh random vectors, so the block keeps
its width. When the basis holds ``ncv`` vectors it is restarted thickly as in
:mod:`.thick_restart` (Zhou & Saad 2008 for the block case): the wanted Ritz
vectors and about half of the rest of the room are kept, and the pending block
continues the recurrence.
"""

from __future__ import annotations

import numpy as np

from .._array import rng, to_numpy
from ._linear_map import LinearMap
from ._ortho import cgs2, columns, noise_floor, orthonormalize, put
from ._ritz import Control, EigshResult, rayleigh_ritz, to_device
from .thick_restart import _kept, default_ncv


def block_lanczos(lm: LinearMap, control: Control, *, ncv: int | None = None, v0=None, seed=0,
                  block_size: int = 4, **_) -> EigshResult:
    """Block Lanczos with thick restarts; call it through :func:`hessop.solvers.eigsh.eigsh` (``method="block"``).

    ``ncv`` (default ``min(n, default_ncv + block_size)``, at least ``k + block_size``,
    with :func:`.thick_restart.default_ncv`) bounds the basis. Restarts keep what
    thick restart keeps (:func:`.thick_restart._kept`): the wanted pairs, the far
    end's converged ones, then the nearest.
    A run stops on the same relative Ritz residuals as the other methods,
    checked after every block product.
    """
    n, k, which, tol = lm.n, control.k, control.which, control.tol
    b = min(int(block_size), n)
    ncv = min(n, ncv or default_ncv(k, which) + b)
    ncv = max(ncv, min(n, k + b))
    keep_count = k + max(0, (ncv - k - b) // 2)
    gen = rng(seed)
    Q = lm.zeros((n, ncv))
    H = np.zeros((ncv, ncv))
    m, restarts, anorm = 0, 0, 0.0
    P = _start_block(lm, v0, b, gen)
    B = np.zeros((P.shape[1], 0))
    snap, stopped = None, "budget"
    try:
        while True:
            if m + P.shape[1] > ncv and m < n:  # basis full: thick restart
                m_old, theta, Y = snap.m, snap.theta, snap.Y
                coupling = np.linalg.norm(B @ Y[m_old - B.shape[1]:m_old, :], axis=0)
                converged = control.relative(theta, theta, coupling) <= tol
                keep = _kept(theta, converged, k, which, min(keep_count, ncv - P.shape[1]))
                C = B @ Y[m_old - B.shape[1]:m_old, keep]
                kept = control.snapshot(theta[keep], np.eye(keep.size), np.linalg.norm(C, axis=0), keep.size)
                Xk = Q[:, :m_old] @ to_device(lm, Y[:, keep])
                try:  # an interrupt must not separate the new basis from its snapshot
                    Q = put(Q, 0, Xk)
                finally:
                    snap = kept
                m, H = keep.size, np.zeros((ncv, ncv))
                H[:m, :m] = np.diag(theta[keep])
                restarts += 1
                continue
            bp = P.shape[1]
            if bp == 0 or m >= n:
                stopped = "exhausted"
                break
            if control.remaining() < bp:
                break
            Q = put(Q, m, P)
            W, h = cgs2(lm, Q[:, :m + bp], lm(P))
            h = np.asarray(to_numpy(h), dtype=np.float64)
            if not np.all(np.isfinite(h)):
                raise FloatingPointError(f"the operator returned NaN or Inf at block Lanczos step {restarts}:{m}")
            H[:m + bp, m:m + bp] = h
            H[m:m + bp, :m + bp] = h.T
            m += bp
            anorm = max(anorm, control.anorm, float(np.linalg.norm(h, 2)))
            P, B = _next_block(lm, Q[:, :m], W, b, anorm, gen)
            theta, sel, Y, res = rayleigh_ritz(H[:m, :m], B, k, which)
            snap, why = control.judge(theta, sel, Y, res, m, restarts, exhausted=m >= n)
            if why is not None:
                stopped = why
                break
    except KeyboardInterrupt:
        stopped = "interrupt"
    return control.ritz_result(snap, lambda m: Q[:, :m], restarts, stopped)


def _start_block(lm: LinearMap, v0, b: int, gen):
    """An orthonormal ``(n, b)`` start block: ``v0``'s columns completed by seeded Gaussian ones."""
    V = lm.random(gen, (lm.n, b))
    if v0 is not None:
        v = lm.vector(v0)
        v = lm.xp.reshape(v, (lm.rows, -1))[:, :b]
        V = put(V, 0, v)
    X, _ = orthonormalize(lm, V, 0.0, rtol=np.sqrt(lm.eps))
    if X.shape[1] == 0:
        raise ValueError("the start block is zero; pass a nonzero v0")
    return X


def _next_block(lm: LinearMap, Q, W, b: int, anorm: float, gen):
    """Orthonormal next block ``P`` with ``W ≈ P B``, refilled with random vectors where ``W`` lost rank.

    Returns ``(P, B)``; ``B`` has zero rows for the fresh vectors.
    """
    floor = noise_floor(lm.eps) * anorm
    X, B = orthonormalize(lm, W, floor)
    if X.shape[1]:  # DGKS test: directions that were mostly inside span(Q) are rounding noise
        Xc, _ = cgs2(lm, Q, X)
        kept = np.sqrt(np.clip(np.asarray(to_numpy(lm.dots(Xc, Xc)), dtype=np.float64), 0, None)) > 0.717
        X, B = columns(lm.xp, Xc, kept), B[kept]
        if X.shape[1]:
            X, R = orthonormalize(lm, X, 0.5)
            B = R @ B
    width = min(b, lm.n - Q.shape[1])
    keep = min(width, int(X.shape[1]))  # strict array namespaces refuse slices past the end
    X, B = X[:, :keep], B[:keep]
    room = width - X.shape[1]
    if room > 0:
        basis = lm.xp.concat([Q, X], axis=1)
        R, _ = cgs2(lm, basis, lm.random(gen, (lm.n, room)))
        F, _ = orthonormalize(lm, R, 0.0, rtol=np.sqrt(lm.eps))
        F, _ = orthonormalize(lm, cgs2(lm, basis, F)[0], 0.5)
        X = lm.xp.concat([X, F], axis=1)
        B = np.concatenate([B, np.zeros((F.shape[1], W.shape[1]))])
    return X, B
