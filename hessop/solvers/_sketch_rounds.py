"""One round of the sketched trace estimators: XTrace's and Hutch++'s samples from a sketch ``Y = AΩ``.

:func:`~hessop.solvers.trace.trace` drives the rounds (budgets, adaptive stopping, the final
sample); each round here turns a sketch, kept and extended in ``cache`` across rounds, into
exchangeable samples and their covariance. ``COST[round](k, have)`` is the products a round of
``k`` test vectors costs when ``have`` sketch columns exist already.
"""

from __future__ import annotations

import numpy as np

from ._linear_map import LinearMap
from .probes import (
    Interrupted,
    apply_blocks,
    host64,
    loo_directions,
    pair_covariance,
    probes,
)

__all__ = ["COST", "extend", "hutchpp_round", "xtrace_round"]


def extend(lm: LinearMap, cache: dict, k: int, kind: str, seed: int, stream: int | None, block_size: int):
    """Sketch ``Ω`` with ``k`` columns and ``Y = AΩ``, computing only the columns not cached.

    On Ctrl-C the finished columns are cached before the ``KeyboardInterrupt`` goes on.
    """
    xp = lm.xp
    have = cache["Y"].shape[1] if "Y" in cache else 0
    if k > have:
        Om = probes(lm, seed, range(have, k), kind, stream)
        try:
            Y, stop = apply_blocks(lm, Om, block_size), None
        except Interrupted as exc:
            Y, stop = exc.done, KeyboardInterrupt()
        Om = Om[:, :Y.shape[1]]
        cache["Om"] = Om if not have else xp.concat([cache["Om"], Om], axis=1)
        cache["Y"] = Y if not have else xp.concat([cache["Y"], Y], axis=1)
        if stop is not None:
            raise stop
    return cache["Om"][:, :k], cache["Y"][:, :k]


def xtrace_round(lm: LinearMap, k: int, cache: dict, kind: str, seed: int, spare: int, block_size: int):
    """The ``k`` exchangeable XTrace samples from ``k`` test vectors (``2k`` products), and their covariance.

    With ``Y = AΩ = QR``, leaving test vector ``i`` out removes from ``range(Q)``
    the unit direction ``Q s_i``, ``s_i ∝ R⁻ᵀ e_i``, so every leave-one-out
    estimate ``tr(P_i A) + ω_iᵀ(I-P_i)A(I-P_i)ω_i`` costs only ``k x k`` algebra.
    Interrupted while computing ``Z = AQ``, the first ``j`` columns of ``Q`` span
    the first ``j`` columns of ``Y``, so the samples of those ``j`` test vectors
    come with no further product (``complete=False``). With ``k = n`` test vectors
    ``Q`` spans the whole space and every sample is the exact ``tr(QᵀAQ)``.
    """
    Om, Y = extend(lm, cache, k, kind, seed, cache.get("stream"), block_size)
    Q, R = lm.qr(Y)
    try:
        Z, complete = apply_blocks(lm, Q, block_size), True
    except Interrupted as exc:
        Z, complete = exc.done, False
        j = int(Z.shape[1])
        if j < 2:
            raise KeyboardInterrupt from None
        Om, Y, Q, R = Om[:, :j], Y[:, :j], Q[:, :j], R[:j, :j]
    R, H, W, T = (host64(M) for M in (R, lm.inner(Q, Z), lm.inner(Q, Om), lm.inner(Z, Om)))
    wy = host64(lm.dots(Om, Y))
    H = 0.5 * (H + H.T)
    if H.shape[0] >= lm.n:  # Q is a basis of the whole space: tr(QᵀAQ) is the trace itself
        return np.full(H.shape[0], np.trace(H)), 0.0, complete
    S = loo_directions(R)
    c = np.sum(S * W, axis=0)
    V = W - S * c
    samples = (np.trace(H) - np.sum(S * (H @ S), axis=0) + wy - 2 * np.sum(T * V, axis=0)
               + np.sum(V * (H @ V), axis=0))
    return samples, pair_covariance(S, H, W, T - H @ V), complete


def hutchpp_round(lm: LinearMap, k: int, cache: dict, kind: str, seed: int, spare: int, block_size: int,
                   stream: int = 1):
    """Hutch++ samples: a ``k``-column sketch and ``k + spare`` residual probes (``3k + spare`` products).

    Sketch probes use stream 0, residual probes ``stream`` (1, or an adaptive run's final
    stream), so the families are independent and reproducible. The sketch's top part
    ``tr(QᵀAQ)`` is kept in ``cache``: a final round on the same sketch costs only its probes.
    """
    count = k + spare
    _, Y = extend(lm, cache, k, kind, seed, 0, block_size)
    Q, _ = lm.qr(Y)
    if cache.get("top", (None,))[0] == k:
        top = cache["top"][1]
    else:
        top = float(np.trace(host64(lm.inner(Q, lm(Q)))))
        cache["top"] = (k, top)
    if k >= lm.n:  # the sketch spans the whole space: nothing is left to estimate
        return np.full(max(count, 2), top), 0.0, True
    G = probes(lm, seed, range(count), kind, stream=stream)
    G = G - Q @ lm.inner(Q, G)
    G = G - Q @ lm.inner(Q, G)
    return top + host64(lm.dots(G, lm(G))), 0.0, True


def _xtrace_cost(k: int, have: int) -> int:
    return max(k - have, 0) + k


def _hutchpp_cost(k: int, have: int) -> int:
    return max(k - have, 0) + 2 * k


COST = {xtrace_round: _xtrace_cost, hutchpp_round: _hutchpp_cost}
