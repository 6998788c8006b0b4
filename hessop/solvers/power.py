"""Deflated power iteration, the way PyHessian computes top Hessian eigenvalues (a baseline).

PyHessian (Yao, Gholami, Keutzer & Mahoney 2020, "PyHessian: Neural networks
through the lens of the Hessian") finds eigenpairs one at a time: a random unit
vector is made orthogonal to the pairs already found, multiplied by ``A`` and
normalised, until the Rayleigh quotient changes by less than ``tol``
relatively; the vector then joins the deflation set. Power iteration converges
to the eigenvalue of largest *magnitude* of the deflated operator, at the rate
``|λ_{i+1} / λ_i|`` per product, and its stopping rule watches the eigenvalue
(error ``O(r²)``) rather than the residual ``r``, so it often stops early.

We keep that stopping rule, so this is an honest baseline, but report the true
relative residual of every returned pair, and mark a pair converged only if that
residual meets ``tol``.

``which="LM"`` is plain power iteration. ``"LA"`` and ``"SA"`` first find the
dominant eigenvalue ``λ_d`` (it is the answer's first pair when it has the
wanted sign) and then iterate on ``A + |λ_d| I`` (``"LA"``) or ``|λ_d| I - A``
(``"SA"``), which are positive semi-definite with the wanted end on top: correct
for any spectrum, but slower when ``|λ_d|`` is large against the gaps.
``"BE"`` is not supported.
"""

from __future__ import annotations

import numpy as np

from .._array import rng
from ._linear_map import LinearMap
from ._ortho import cgs2, host
from ._ritz import Control, EigshResult, wanted


def power_iteration(lm: LinearMap, control: Control, *, v0=None, seed=0, **_) -> EigshResult:
    """Deflated power iteration; call it through :func:`hessop.solvers.eigsh.eigsh` (``method="power"``)."""
    k, which = control.k, control.which
    if which not in ("LM", "LA", "SA"):
        raise ValueError(f"method='power' supports which='LM', 'LA' or 'SA', not {which!r}; use method='thick-restart'")
    gen = rng(seed)
    xp = lm.xp
    found: list = []  # eigenvectors (native)
    values: list[float] = []
    residuals: list[float] = []
    sign, shift = 1.0, 0.0
    stopped, current = "settled", None
    try:
        while len(found) < k:
            start = v0 if (v0 is not None and not found) else None
            out = _one_pair(lm, control, found, sign, shift, start, gen, values, residuals)
            lam, v, r, status = out
            current = (lam, v, r)
            if status != "settled":
                stopped = status
                break
            current = None
            if which != "LM" and shift == 0.0:  # the dominant pair: set the shift, keep it if wanted
                shift, sign = abs(lam), (1.0 if which == "LA" else -1.0)
                if (lam >= 0) != (which == "LA") or lam == 0.0:
                    continue
            found.append(v)
            values.append(lam)
            residuals.append(r)
    except KeyboardInterrupt:
        stopped = "interrupt"
    if current is not None:
        found.append(current[1])
        values.append(current[0])
        residuals.append(current[2])
    theta = np.asarray(values, dtype=np.float64)
    rel = control.relative(theta, theta, np.asarray(residuals, dtype=np.float64))
    order = np.argsort(theta, kind="stable")
    idx = order[wanted(theta[order], theta.size, which)] if theta.size else order
    X = xp.stack([found[i] for i in idx], axis=1) if theta.size else None
    return control.result(theta[idx], X, rel[idx], len(found), stopped)


def _one_pair(lm, control, found, sign, shift, v0, gen, values, residuals):
    """Iterate until the Rayleigh quotient settles; returns ``(λ, v, ||A v - λ v||, status)``."""
    xp = lm.xp
    basis = xp.stack(found, axis=1) if found else None
    v = lm.vector(v0) if v0 is not None else None
    if v is None:
        v = lm.random(gen, (lm.n,))
    lam_prev, pair = None, (float("nan"), v, float("inf"))
    while True:
        v, _ = cgs2(lm, basis, v)
        nv = float(host(lm.norm(v))[0])
        if nv == 0.0 or not np.isfinite(nv):
            v = lm.random(gen, (lm.n,))
            continue
        v = v * (1.0 / nv)
        if control.remaining() < 1:
            return (*pair, "budget")
        w = lm(v)
        lam_dev = lm.inner(v, w)
        lam, res = (float(x) for x in host(lam_dev, lm.norm(w - lam_dev * v)))
        if not (np.isfinite(lam) and np.isfinite(res)):
            raise FloatingPointError(f"the operator returned NaN or Inf in power iteration for pair {len(found) + 1}")
        pair = (lam, v, res)
        theta = np.asarray(values + [lam])
        rel = control.relative(theta, theta, np.asarray(residuals + [res]))
        if lam_prev is not None and abs(lam - lam_prev) / (abs(lam_prev) + 1e-6) < control.tol:
            return lam, v, res, "settled"
        if control.report(theta, rel, len(found)):
            return lam, v, res, "callback"
        lam_prev = lam
        v = sign * w + shift * v if shift else w
