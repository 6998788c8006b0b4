"""Conjugate gradients and MINRES on blocks of right-hand sides, native on the operator's device.

Both methods iterate every column of a block at once (one batched product per
iteration) with their own scalars per column, and drop a column from the batch
the moment it finishes, so a block of ``k`` right-hand sides costs the products of
``k`` separate solves and no more. Vectors stay in the operator's namespace; the
scalars of an iteration reach the host in one transfer.

* CG (Hestenes & Stiefel 1952) for ``A`` positive definite on the Krylov space. A
  direction of non-positive curvature ``pᵀAp <= 10 eps ||A||_est pᵀp`` ends the
  column (``status="curvature"``) *before* the step is taken, and the direction is kept.
* MINRES (Paige & Saunders 1975, *SINUM* 12(4)) for symmetric indefinite or
  singular ``A``, in the unpreconditioned form. From a start in ``range(A)`` (e.g.
  ``x0 = 0``) on a consistent singular system its iterates stay in ``range(A)``, so
  it converges to the minimum-norm solution; on an inconsistent one it stops when
  ``||A r|| / (||A|| ||r||) <= rtol`` (``status="least-squares"``).

Every reduction over the vectors' length is the :class:`~._linear_map.LinearMap`'s
(``lm.dots``, ``lm.colnorms``), so split vectors take one all-reduce each.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._array import Array
from ._linear_map import LinearMap
from ._ortho import host, take_columns

CURVATURE = 10.0
"""Curvature ``pᵀAp`` at or below ``CURVATURE · eps · ||A||_est · pᵀp`` counts as non-positive."""


@dataclass
class Column:
    """What one right-hand side's run produced: the iterate and why it stopped."""

    x: Array | None = None
    status: str = ""
    estimate: float = math.inf
    """The recurrence's relative residual when the run stopped."""
    direction: Array | None = None
    """A unit direction of non-positive curvature met by CG."""
    curvature: float = math.nan
    """Its Rayleigh quotient ``pᵀ(A+λI)p / pᵀp``."""
    methods: tuple[str, ...] = ()


@dataclass
class Run:
    """What both methods share in one call: the (damped) map, budget, tolerance, callback and bar."""

    lm: LinearMap
    budget: int
    rtol: float
    bnorm: np.ndarray
    report: Callable[[str, list[int], np.ndarray], bool]
    anorm: float = 0.0

    @property
    def xp(self) -> Any:
        return self.lm.xp

    def affordable(self, m: int) -> bool:
        """Whether ``m`` more products fit, keeping ``m`` for the final true residual."""
        return self.lm.num_matvecs + 2 * m <= self.budget

    def row(self, *rows: np.ndarray) -> list[Array]:
        """Host per-column scalars moved to the device in one transfer, as ``(1, k)`` rows."""
        dev = self.lm.small(np.stack(rows))
        return [dev[i:i + 1, :] for i in range(len(rows))]


def _finite(*values: np.ndarray) -> None:
    if not all(np.all(np.isfinite(v)) for v in values):
        raise FloatingPointError("the operator returned NaN or Inf during the solve; check the model, the data and "
                                 "the dtype")


def _select(xp, keep: np.ndarray, *arrays: Array) -> list[Array]:
    idx = np.flatnonzero(keep)
    return [take_columns(xp, A, idx) if A.ndim == 2 else take_columns(xp, A[None, :], idx)[0, :] for A in arrays]


def cg(run: Run, X: Array, R: Array, cols: list[int], out: dict[int, Column]) -> str | None:
    """CG on the columns ``cols`` from iterates ``X`` with residuals ``R``; fills ``out``.

    Returns ``"callback"`` or ``"interrupt"`` when the whole call must stop, else None.
    """
    xp, lm = run.xp, run.lm
    tol_c = CURVATURE * lm.eps
    P, rr = R, lm.dots(R, R)
    (rr_h,) = _split(host(rr), 1)
    _finite(rr_h)
    target = run.rtol * run.bnorm[cols]
    state = (cols, X, rr_h)

    def finish(mask: np.ndarray, status: str, X: Array, rr_h: np.ndarray, cols: list[int]) -> None:
        for i in np.flatnonzero(mask):
            c = out[cols[i]]
            c.x, c.status = X[:, i], status
            c.estimate = math.sqrt(max(rr_h[i], 0.0)) / run.bnorm[cols[i]]

    try:
        while cols:
            done = np.sqrt(rr_h) <= target
            if done.any():
                finish(done, "converged", X, rr_h, cols)
                X, R, P, rr = _select(xp, ~done, X, R, P, rr)
                cols, rr_h, target = [c for c, d in zip(cols, done) if not d], rr_h[~done], target[~done]
                state = (cols, X, rr_h)
                if not cols:
                    break
            if not run.affordable(len(cols)):
                finish(np.ones(len(cols), bool), "budget", X, rr_h, cols)
                return None
            AP = lm(P)
            pAp, pp = lm.dots(P, AP), lm.dots(P, P)
            anorm = run.anorm
            ok = pAp > (tol_c * anorm) * pp
            alpha = xp.where(ok, rr / xp.where(ok, pAp, xp.ones_like(pAp)), xp.zeros_like(pAp))
            X = X + alpha * P
            state = (cols, X, rr_h)
            R = R - alpha * AP
            rr_new = lm.dots(R, R)
            pAp_h, pp_h, rrn_h = _split(host(pAp, pp, rr_new), 3)
            _finite(pAp_h, rrn_h)
            bad = ~(pAp_h > (tol_c * anorm) * pp_h)  # the device's test, on the same numbers
            quotient = pAp_h / np.where(pp_h > 0, pp_h, 1.0)
            run.anorm = max(anorm, float(np.max(np.abs(quotient))))
            for i in np.flatnonzero(bad):
                c = out[cols[i]]
                c.direction = P[:, i] * (1.0 / math.sqrt(pp_h[i])) if pp_h[i] > 0 else None
                c.curvature = float(quotient[i])
            finish(bad, "curvature", X, rrn_h, cols)
            stop = run.report("cg", cols, np.sqrt(rrn_h) / run.bnorm[cols])
            beta = rr_new / xp.where(rr > 0, rr, xp.ones_like(rr))
            P = R + beta * P
            rr = rr_new
            if bad.any():
                X, R, P, rr = _select(xp, ~bad, X, R, P, rr)
                cols, rrn_h, target = [c for c, b in zip(cols, bad) if not b], rrn_h[~bad], target[~bad]
            rr_h = rrn_h
            state = (cols, X, rr_h)
            if stop:
                finish(np.ones(len(cols), bool), "callback", X, rr_h, cols)
                return "callback"
    except KeyboardInterrupt:
        cols, X, rr_h = state
        finish(np.ones(len(cols), bool), "interrupt", X, rr_h, cols)
        return "interrupt"
    return None


def minres(run: Run, X: Array, R: Array, cols: list[int], out: dict[int, Column]) -> str | None:
    """MINRES on the columns ``cols`` from iterates ``X`` with (true) residuals ``R``; fills ``out``.

    Returns ``"callback"`` or ``"interrupt"`` when the whole call must stop, else None.
    """
    xp, lm = run.xp, run.lm
    m = len(cols)
    (beta1,) = _split(host(lm.colnorms(R)), 1)
    _finite(beta1)
    s = {"oldb": np.zeros(m), "beta": beta1, "dbar": np.zeros(m), "epsln": np.zeros(m), "phibar": beta1.copy(),
         "cs": -np.ones(m), "sn": np.zeros(m), "anorm": np.zeros(m), "gmax": np.zeros(m),
         "target": run.rtol * run.bnorm[cols]}
    R1 = R2 = Y = R
    W = W2 = lm.zeros(R.shape)
    first = True
    state = (cols, X, s["phibar"])
    tiny = np.finfo(np.float64).tiny

    def finish(mask: np.ndarray, status: str) -> None:
        cols_, X_, phibar = state
        for i in np.flatnonzero(mask):
            c = out[cols_[i]]
            c.x, c.status, c.estimate = X_[:, i], status, float(phibar[i]) / run.bnorm[cols_[i]]

    try:
        while cols:
            done = s["phibar"] <= s["target"]
            if done.any():
                finish(done, "converged")
                X, R1, R2, Y, W, W2 = _select(xp, ~done, X, R1, R2, Y, W, W2)
                s = {key: v[~done] for key, v in s.items()}
                cols = [c for c, d in zip(cols, done) if not d]
                state = (cols, X, s["phibar"])
                if not cols:
                    break
            if not run.affordable(len(cols)):
                finish(np.ones(len(cols), bool), "budget")
                return None
            inv_beta, ratio = run.row(1.0 / s["beta"], s["beta"] / np.where(s["oldb"] > 0, s["oldb"], 1.0))
            V = Y * inv_beta
            Y = lm(V)
            if not first:
                Y = Y - ratio * R1
            alfa = lm.dots(V, Y)
            Y = Y - (alfa * inv_beta) * R2
            R1, R2 = R2, Y
            alfa_h, beta_h = _split(host(alfa, lm.colnorms(Y)), 2)
            _finite(alfa_h, beta_h)
            first = False
            oldb, beta = s["beta"], beta_h
            # ||A||_2 from below: the largest row norm of the tridiagonal T (Frobenius, as in Paige &
            # Saunders, grows with the iterations and would loosen the least-squares test below)
            s["anorm"] = np.maximum(s["anorm"], np.sqrt(alfa_h**2 + oldb**2 + beta**2))
            oldeps = s["epsln"]
            cs, sn, dbar = s["cs"], s["sn"], s["dbar"]
            delta = cs * dbar + sn * alfa_h
            gbar = sn * dbar - cs * alfa_h
            s["epsln"] = sn * beta
            s["dbar"] = -cs * beta
            root = np.hypot(gbar, s["dbar"])
            gamma = np.maximum(np.hypot(gbar, beta), tiny)
            # A pivot at rounding level against the largest one: the projected matrix is singular (b has a
            # part in the null space); stepping through it would throw x along a null direction.
            singular = gamma <= 10.0 * lm.eps * np.maximum(s["gmax"], gamma)
            s["gmax"] = np.maximum(s["gmax"], gamma)
            s["cs"], s["sn"] = gbar / gamma, beta / gamma
            phi = np.where(singular, 0.0, s["cs"] * s["phibar"])
            s["phibar"] = np.where(singular, s["phibar"], s["sn"] * s["phibar"])
            s["oldb"], s["beta"] = oldb, beta
            d_oldeps, d_delta, d_denom, d_phi = run.row(oldeps, delta, np.where(singular, 0.0, 1.0 / gamma), phi)
            W, W2 = (V - d_oldeps * W2 - d_delta * W) * d_denom, W
            X = X + d_phi * W
            state = (cols, X, s["phibar"])
            anorm = s["anorm"]
            run.anorm = max(run.anorm, float(np.max(anorm)))
            stop = run.report("minres", cols, s["phibar"] / run.bnorm[cols])
            conv = s["phibar"] <= s["target"]
            # ||A r|| / (||A|| ||r||) this small: r is a null vector to the accuracy the recurrence keeps
            # (without reorthogonalisation it holds about sqrt(eps); below that the iterates diverge)
            lsq = ~conv & ((root <= max(run.rtol, math.sqrt(lm.eps)) * anorm) | singular)
            exhausted = ~conv & ~lsq & (beta <= lm.eps * anorm)  # the Krylov space is invariant
            finish(lsq, "least-squares")
            finish(exhausted, "exhausted")
            gone = lsq | exhausted
            if gone.any():
                X, R1, R2, Y, W, W2 = _select(xp, ~gone, X, R1, R2, Y, W, W2)
                s = {key: v[~gone] for key, v in s.items()}
                cols = [c for c, g in zip(cols, gone) if not g]
                state = (cols, X, s["phibar"])
            if stop:
                finish(np.ones(len(cols), bool), "callback")
                return "callback"
    except KeyboardInterrupt:
        finish(np.ones(len(state[0]), bool), "interrupt")
        return "interrupt"
    return None


def _split(a: np.ndarray, parts: int) -> list[np.ndarray]:
    return list(np.split(a, parts))


RUNNERS = {"cg": cg, "minres": minres}
