"""Certify an eigsh result from fresh random vectors: no copy of a wanted eigenvalue is missed.

A single-vector Krylov space ``K(A, v)`` holds exactly one direction of each
eigenspace that ``v`` touches, so Lanczos from one start vector sees one copy of
a repeated eigenvalue (rounding may or may not reveal more); a block method sees
up to ``b``. Network Hessians are full of repeated eigenvalues: an exact null
space, and the permutation symmetry of hidden units.

So a converged result is confirmed before it is reported. Its ``k`` pairs
``(Θ, X)`` are *locked* (their residuals are below the tolerance, so their
coupling to the rest is dropped; Lehoucq & Sorensen 1996), and Lanczos runs on
the complement, from a fresh Gaussian vector orthogonal to ``X``, fully
reorthogonalised against ``X`` and its own basis (Lanczos on
``(I - XXᵀ) A (I - XXᵀ)``). After each step its Ritz values ``μ`` are read:

* a converged one lies beyond the least wanted returned value ``θ_k`` by more
  than ``δ = tol ||A||``: an eigenvalue was missed. It joins the locked pairs,
  the least wanted one leaves, and a new round starts from a new fresh vector
  (a round finds one more copy of each missed value);
* otherwise the end is *settled* when either its extreme Ritz pair has converged
  within ``3δ`` of ``θ_k`` (a further copy of ``θ_k``: the answer is the same),
  or no eigenvalue beyond ``θ_k + δ`` can have escaped the Krylov space except
  with probability below ``MISS_PROBABILITY`` (:func:`miss_probability`), or the
  fresh vector's Krylov space broke down (it is invariant: its Ritz values are
  exact eigenvalues of the complement, one for each distinct eigenvalue).

What this guarantees: each returned pair has a relative residual below ``tol``,
and the complement of the returned eigenvectors holds no eigenvalue beyond the
least wanted returned value by more than ``tol ||A||``, except with probability
at most ``MISS_PROBABILITY`` = 1e-3 per round over the fresh vector's draw. A
check that runs out of budget, or is stopped, leaves the result marked not
converged. The check costs the products it takes to separate ``θ_k`` from the
rest of the spectrum once more: a few where the wanted end is well separated
(outliers), as many as the main run spent on ``θ_k`` where ``θ_k`` lies in a
dense bulk (docs/numerics.md).

*Neighbours.* The check is cheaper when the complement's end lies further from
``θ_k``. The main run's last Rayleigh-Ritz step holds approximations of the
next eigenvalues for free; those accurate enough are locked too
(:func:`_neighbours`). A locked neighbour ``(μ_j, y_j)`` with residual ``r_j``
holds at most ``ρ_j = r_j / (θ_k + δ - μ_j)`` of a missed eigenvector ``u``
beyond the threshold (``|<u, y_j>| (λ_u - μ_j) <= r_j``), so ``u`` stays, to
``ρ = (Σ ρ_j²)^½``, in the complement, where it is an eigenvector of the
projected operator up to a residual ``||R|| ρ``. Neighbours are locked, nearest
first, while ``ρ <= 0.1`` and ``||R|| ρ <= δ``, the coupling the returned pairs
themselves are allowed (their residuals are below ``δ``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy.special import betainc

from .._array import rng
from ._krylov import KrylovBasis
from ._linear_map import LinearMap
from ._ortho import put, take_columns
from ._ritz import Control, EigshResult, rayleigh_ritz, to_device, wanted

MISS_PROBABILITY = 1e-3
"""Largest probability, per round, that an eigenvalue beyond the least wanted one escapes the check."""
COMPLEMENT_MARGIN = 0.5
"""A pair found on the complement must meet this share of ``tol`` there: its residual on ``A`` adds the
coupling to the locked pairs, which the complement does not see (:mod:`.verify` recomputes it)."""
NEIGHBOUR_SHARE = 0.1
"""Largest share ``ρ`` of a missed eigenvector that the locked neighbours may hold (module docstring)."""


def certified(lm: LinearMap, control: Control, result: EigshResult, seed) -> EigshResult:
    """``result`` confirmed (or completed with missed copies) from fresh vectors; see the module docstring.

    Only a fully converged result is checked; anything else is returned as it is.
    Products are counted in the result's ``num_matvecs``.
    """
    if not result.all_converged or result.stopped == "exhausted":
        return result
    gen = rng([int(seed) % 2**32, 0x6365727469])  # a stream apart from the start vectors'
    theta = np.asarray(result.eigenvalues, dtype=np.float64)
    X, rel = result.eigenvectors, np.asarray(result.residual_norms, dtype=np.float64)
    near = _neighbours(control, theta)  # thresholds only move outward in later rounds: they stay valid
    rounds = 0
    try:
        while True:
            found = _round(lm, control, theta, X, rel, gen, near)
            if found is None:  # certified
                return _rebuilt(control, result, theta, X, rel, rounds, result.stopped)
            if isinstance(found, str):  # "budget" or "callback": not certified
                return _rebuilt(control, result, theta, X, rel, rounds, found, certified=False)
            mu, V, mrel = found
            theta, X, rel = _merged(control, theta, X, rel, mu, V, mrel)
            rounds += 1
    except KeyboardInterrupt:
        return _rebuilt(control, result, theta, X, rel, rounds, "interrupt", certified=False)


def _round(lm: LinearMap, control: Control, theta: np.ndarray, X, rel: np.ndarray, gen, near=None):
    """One Lanczos run on the complement of ``X`` and the locked neighbours ``near`` (values, vectors).

    Returns None (nothing missed), ``"budget"``, ``"callback"``, or the converged missed Ritz
    pairs ``(values, vectors, relative residuals)``.
    """
    locked, values = X, list(theta)
    if near is not None:
        locked, values = lm.xp.concat([X, near[1]], axis=1), values + list(near[0])
    k = len(values)
    K = KrylovBasis(lm, k + 16, gen)
    K.Q = put(K.Q, 0, locked)
    K.size, K.alpha, K.beta = k, values, [0.0] * k
    K.scale = control.anorm
    K.start(lm.random(gen, (lm.n,)))
    low, high = _thresholds(theta, control.which)
    while True:
        if control.remaining() < 1:
            return "budget"
        if K.size == K.capacity:
            K.grow(2 * K.capacity)
        K.extend(1)
        exact = K.r is None or K.size >= lm.n
        m = K.size - k
        beta = np.asarray(K.beta[k:], dtype=np.float64)
        T = np.diag(np.asarray(K.alpha[k:], dtype=np.float64))
        i = np.arange(m - 1)
        T[i, i + 1] = T[i + 1, i] = beta[:-1]
        mu, _, Y, res = rayleigh_ritz(T, np.array([[0.0 if exact else beta[-1]]]), 1, "LA")
        mrel = control.relative(mu, mu, res)
        done = exact | (mrel <= COMPLEMENT_MARGIN * control.tol)
        delta = control.tol * max(control.anorm, 1e-300)
        beyond = np.zeros(mu.size, dtype=bool)
        if high is not None:
            beyond |= mu > high + delta
        if low is not None:
            beyond |= mu < low - delta
        if np.any(beyond & done):
            sel = beyond & done
            return mu[sel], K.basis()[:, k:] @ to_device(lm, Y[:, sel]), mrel[sel]
        log_beta = -np.inf if exact else float(np.sum(np.log(beta)))
        settled = [_settled(mu, done, log_beta, bound, sign, delta, lm.n - k)
                   for bound, sign in ((high, 1.0), (low, -1.0)) if bound is not None]
        if all(settled):
            return None
        if control.report(theta, rel, 0, "certifying"):
            return "callback"


def _settled(mu: np.ndarray, done: np.ndarray, log_beta: float, threshold: float, sign: float,
             delta: float, dim: int) -> bool:
    """Whether the end of the complement on ``sign``'s side holds nothing beyond ``threshold + delta``.

    Either its extreme Ritz pair has converged within ``3 delta`` of the threshold
    (a further copy of the least wanted value: the answer is the same), or the
    probability bound of :func:`miss_probability` is below :data:`MISS_PROBABILITY`.
    """
    s = sign * mu
    h = sign * threshold + delta
    top = int(np.argmax(s))
    if done[top] and s[top] >= h - 3 * delta:
        return True
    if np.any(s >= h):
        return False
    return miss_probability(log_beta - float(np.sum(np.log(h - s))), dim) <= MISS_PROBABILITY


def miss_probability(log_component: float, dim: int) -> float:
    """``P(|<v, u>| <= c)`` for ``v`` uniform on the unit sphere of dimension ``dim``, ``c = exp(log_component)``.

    After ``m`` Lanczos steps from ``v``, ``||χ(A) v|| = β_1 ⋯ β_m`` where ``χ`` is the
    characteristic polynomial of ``T_m``; an eigenvalue ``λ`` beyond every Ritz value
    has a component ``|<v, u>| <= β_1 ⋯ β_m / |χ(λ)|``, and ``|χ|`` grows beyond the
    Ritz values, so the bound at the threshold holds for every ``λ`` past it
    (van Dorsselaer, Hochstenbach & van der Vorst 2001). ``<v, u>²`` is
    Beta(1/2, (dim - 1)/2) distributed.
    """
    if log_component >= 0.0:
        return 1.0
    return float(betainc(0.5, max(dim - 1, 1) / 2.0, np.exp(2.0 * log_component)))


def _neighbours(control: Control, theta: np.ndarray):
    """The main run's unwanted Ritz pairs that may be locked beside the result: ``(values, vectors)`` or None.

    Taken nearest the thresholds first, while together they hold at most
    :data:`NEIGHBOUR_SHARE` of a missed eigenvector and couple it to the rest by
    at most ``δ`` (module docstring).
    """
    if control.last is None:
        return None
    snap, basis = control.last
    delta = control.tol * max(control.anorm, 1e-300)
    low, high = _thresholds(theta, control.which)
    others = np.setdiff1d(np.arange(snap.theta.size), snap.sel)
    values, res = snap.theta[others], snap.res[others]
    gap = np.full(values.size, np.inf)
    if high is not None:
        gap = np.minimum(gap, high + delta - values)
    if low is not None:
        gap = np.minimum(gap, values - (low - delta))
    order = np.array([i for i in np.argsort(gap) if gap[i] > 0], dtype=int)
    share = np.sqrt(np.cumsum((res[order] / gap[order]) ** 2))
    ok = (share <= NEIGHBOUR_SHARE) & (np.sqrt(np.cumsum(res[order] ** 2)) * share <= delta)
    count = min(ok.size if ok.all() else int(np.argmin(ok)), control.lm.n - theta.size - 1)  # room for a fresh vector
    if count <= 0:
        return None
    chosen = others[np.asarray(order[:count])]
    return snap.theta[chosen], basis(snap.m) @ to_device(control.lm, snap.Y[:, chosen])


def _thresholds(theta: np.ndarray, which: str):
    """The least wanted returned values at the low and the high end (None where that end is not wanted)."""
    if which == "LA":
        return None, float(theta.min())
    if which == "SA":
        return float(theta.max()), None
    if which == "LM":
        t = float(np.abs(theta).min())
        return -t, t
    s = np.sort(theta)
    low = s[: theta.size // 2]
    return (float(low.max()) if low.size else None), float(s[low.size:].min())


def _merged(control: Control, theta, X, rel, mu, V, mrel):
    """The ``k`` wanted pairs among the locked ones and the newly found ones, in eigsh's order."""
    values = np.concatenate([theta, mu])
    order = np.argsort(values, kind="stable")
    sel = order[wanted(values[order], control.k, control.which)]
    xp = control.lm.xp
    return values[sel], take_columns(xp, xp.concat([X, V], axis=1), sel), np.concatenate([rel, mrel])[sel]


def _rebuilt(control: Control, result: EigshResult, theta, X, rel, rounds: int, stopped: str,
             certified: bool = True) -> EigshResult:
    out = control.result(theta, X, rel, result.num_restarts + rounds, stopped)
    if certified:
        return out
    return replace(out, converged=np.zeros(out.converged.shape, dtype=bool))
