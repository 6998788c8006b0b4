"""Thick-restart Lanczos (Wu & Simon 2000), and the loop it shares with plain Lanczos.

A restart cycle extends an orthonormal basis ``Q = [X, q_l, ..., q_{m-1}]`` by
Lanczos steps with full reorthogonalisation until it holds ``ncv`` vectors.
The projected matrix ``Qᵀ A Q`` is an *arrowhead* block for the ``l`` kept Ritz
pairs ``(θ_i, x_i)`` (diagonal ``θ``, coupled to ``q_l`` by ``s_i``) followed by a
tridiagonal block (Wu & Simon 2000, eq. 2.4; Stathopoulos, Saad & Wu 1998).
After each step the small matrix is diagonalised on the host; the residual of a
Ritz pair ``(θ, Q y)`` is ``β_m |y_m|`` (no product needed), and the run stops
when the wanted ones are below ``tol`` relative to ``max(|θ|, ||A||_est)``.
When the basis is full the wanted Ritz vectors plus about half of the
remaining room are kept: ``x_i = Q y_i`` and ``s_i = β_m y_{m,i}``, and the
residual vector continues the recurrence. Memory stays at ``ncv + 1`` vectors.

*What is kept.* The extra room goes first to Ritz pairs at the *other* end of
the spectrum that have already converged, then to the ones nearest the wanted
end. Keeping both ends is the advice of Stathopoulos, Saad & Wu (1998) for
thick restarting: a converged pair kept in the basis is deflated for free
(as if locked), so the next cycle's polynomial works on a narrower interval.
It matters for Hessians, whose spectra are lopsided: a few well separated
outliers at the top, a dense cluster (bulk, null space, small negatives) at
the bottom. Plain Lanczos resolves the outliers in a few steps and then
behaves as if the spectrum ended at the bulk; a restart that keeps only the
bottom Ritz vectors throws the outliers away and pays for them again in every
cycle, many times the products of plain Lanczos (measurements: docs/performance.md,
"Solvers"). For the same reason the clustered ends (``"SA"``, ``"BE"``) get a
larger default basis, room for the wanted pairs, their neighbours in the
cluster and the outliers at once.

Plain Lanczos (``method="lanczos"``, :func:`.lanczos.lanczos_eigsh`) is the same
loop, :func:`run`, with the basis grown instead of restarted.
"""

from __future__ import annotations

import numpy as np

from .._array import rng
from ._krylov import KrylovBasis
from ._linear_map import LinearMap
from ._ortho import put
from ._ritz import Control, EigshResult, rayleigh_ritz, to_device, wanted


def thick_restart_lanczos(lm: LinearMap, control: Control, *, ncv: int | None = None, v0=None, seed=0,
                          **_) -> EigshResult:
    """Thick-restart Lanczos; call it through :func:`hessop.solvers.eigsh.eigsh` (``method="thick-restart"``).

    ``ncv`` bounds the basis: default ``min(n, max(2k + 1, 20))`` for ``"LA"`` and
    ``"LM"``, ``min(n, max(3k, 40))`` for the ends where Hessian spectra are
    clustered, ``"SA"`` and ``"BE"`` (see the module docstring). At a restart
    ``k + (ncv - k) // 2`` Ritz vectors are kept (:func:`_kept`), so each cycle
    adds about ``(ncv - k) / 2`` new directions.
    """
    ncv = min(lm.n, ncv or default_ncv(control.k, control.which))
    return run(lm, control, ncv, v0, seed, restart=True)


def run(lm: LinearMap, control: Control, ncv: int, v0, seed, restart: bool) -> EigshResult:
    """The Lanczos loop of both methods: thick restarts when the basis is full, or growth (``restart=False``)."""
    k, which, tol = control.k, control.which, control.tol
    gen = rng(seed)
    K = KrylovBasis(lm, ncv if restart else min(ncv, max(2 * k + 1, 32)), gen)
    K.start(v0 if v0 is not None else lm.random(gen, (lm.n,)))
    nk, s = 0, np.zeros(0)  # kept Ritz vectors and their coupling to the next Lanczos vector
    restarts = 0
    snap = None  # the last Rayleigh-Ritz (_ritz.Snapshot)
    stopped = "budget"
    try:
        while True:
            if K.size == K.capacity:
                if not restart:
                    if K.capacity >= ncv:
                        break
                    K.grow(min(2 * K.capacity, ncv))
                    continue
                m, theta, Y = snap.m, snap.theta, snap.Y
                coupling = K.beta[m - 1] * Y[m - 1, :]
                converged = control.relative(theta, theta, np.abs(coupling)) <= tol
                keep = _kept(theta, converged, k, which)  # ascending θ
                nk, s = keep.size, coupling[keep]
                kept = control.snapshot(theta[keep], np.eye(nk), np.abs(s), nk)
                Xk = K.basis(m) @ to_device(lm, Y[:, keep])
                try:  # an interrupt must not separate the new basis from its snapshot
                    K.Q = put(K.Q, 0, Xk)
                finally:
                    snap = kept
                K.size, K.alpha, K.beta = nk, list(theta[keep]), [0.0] * nk
                restarts += 1
                continue
            steps = min(K.capacity - K.size, max(1, K.size // 32), control.remaining())
            if steps <= 0:
                break
            if K.extend(steps) == 0:
                stopped = "exhausted"
                break
            H = _projected(K, nk, s)
            theta, sel, Y, res = rayleigh_ritz(H, np.array([[K.beta[-1]]]), k, which)
            snap, why = control.judge(theta, sel, Y, res, K.size, restarts, exhausted=K.size >= lm.n)
            if why is not None:
                stopped = why
                break
    except KeyboardInterrupt:
        stopped = "interrupt"
    return control.ritz_result(snap, K.basis, restarts, stopped)


def _projected(K: KrylovBasis, nk: int, s: np.ndarray) -> np.ndarray:
    """``Qᵀ A Q``: arrowhead over the ``nk`` kept Ritz vectors, tridiagonal after (host float64)."""
    m = K.size
    H = np.diag(np.asarray(K.alpha[:m], dtype=np.float64))
    if nk:
        H[:nk, nk] = H[nk, :nk] = s
    i = np.arange(nk, m - 1)
    H[i, i + 1] = H[i + 1, i] = np.asarray(K.beta[nk:m - 1], dtype=np.float64)
    return H


def default_ncv(k: int, which: str) -> int:
    """Default basis size of thick restart (before the cap at ``n``).

    ARPACK's ``max(2k + 1, 20)`` where the wanted end is usually well separated
    (the top of a Hessian), ``max(3k, 40)`` where it is usually clustered (its
    bottom), where the larger basis saves most of the products (docs/performance.md,
    "Solvers"); a larger basis costs memory, not products, so the top keeps the smaller one.
    """
    if which in ("SA", "BE"):
        return max(3 * k, 40)
    return max(2 * k + 1, 20)


def _keep(k: int, ncv: int) -> int:
    """Ritz vectors kept at a restart: the ``k`` wanted and half of the remaining room."""
    return min(k + (ncv - k) // 2, ncv - 1)


def _kept(theta: np.ndarray, converged: np.ndarray, k: int, which: str, total: int | None = None) -> np.ndarray:
    """Indices (ascending) of the Ritz pairs kept at a restart of a full basis.

    ``theta`` ascending, ``converged`` whether each pair meets the tolerance.
    ``total`` (default :func:`_keep`) of them are kept: the ``k`` wanted; then, for ``"LA"`` and
    ``"SA"``, the converged pairs at the far end of the spectrum, counted from
    its extreme inward up to the first unconverged one (Stathopoulos, Saad & Wu
    1998 keep Ritz vectors from both ends); the rest of the room goes to the
    pairs nearest the wanted end (Wu & Simon 2000). ``"BE"`` wants both ends
    and ``"LM"`` may, so they keep the nearest only.
    """
    m = theta.size
    total = _keep(k, m) if total is None else min(total, m)
    far = 0
    if which in ("LA", "SA"):
        inward = converged if which == "LA" else converged[::-1]  # the far end's extreme first
        far = min(m if inward.all() else int(np.argmin(inward)), total - k)
    near = wanted(theta, total - far, which)
    far_end = np.arange(far) if which == "LA" else np.arange(m - far, m)
    return np.sort(np.concatenate([near, far_end])).astype(int)
