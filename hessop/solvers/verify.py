"""Residuals recomputed from the returned pairs: what an eigsh result reports is what its pairs attain.

The Krylov relation ``A Q = Q H + r eᵀ`` gives every Ritz pair's residual without a
product, but only in exact arithmetic. Rounding in the products and in the
orthogonalisation leaves a term the relation does not see, and the certification
(:mod:`.certify`) measures the pairs it adds on the complement of the locked ones, not
on ``A``. Both are small against a loose tolerance and dominant against a tight one:
on eigenvalues within ``1e-8`` of each other, ``method="block"`` at ``tol=1e-12``
reported ``2.2e-16`` where the pairs attained ``8e-13`` (docs/numerics.md).

So before a result is returned, one block product ``A X`` of its ``k`` vectors
recomputes ``||A x - θ x|| / ||x||`` for every pair; ``eigsh`` reserves those ``k``
products in the budget. A pair whose recomputed residual misses ``tol`` is not
converged. A run interrupted by Ctrl-C spends no further product: its pairs are
returned with the relation's estimates and marked not converged. Power iteration
needs none of this: its residuals are already computed from each returned
vector's own product (:mod:`.power`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ._linear_map import LinearMap
from ._ortho import host, take_columns
from ._ritz import Control, EigshResult, to_device


def reserve(k: int, budget: int) -> int:
    """Products set aside from ``budget`` for :func:`verified`: ``k``, or none when the budget is that small."""
    return k if budget > 2 * k else 0


def verified(lm: LinearMap, control: Control, result: EigshResult, budget: int) -> EigshResult:
    """``result`` with residuals recomputed from one product of its eigenvectors (module docstring).

    ``budget`` is the call's whole budget (the run's plus the reserve); without room for
    the product the pairs are marked not converged.

    ``converged`` only ever turns False here: a pair stays converged if its recomputed
    residual meets the tolerance.
    """
    theta = np.asarray(result.eigenvalues, dtype=np.float64)
    valid = np.flatnonzero(np.isfinite(theta))
    if valid.size == 0:
        return result
    if result.stopped == "interrupt" or budget - lm.num_matvecs < valid.size:
        return replace(result, converged=np.zeros(theta.shape, dtype=bool))
    xp = lm.xp
    X = result.eigenvectors if valid.size == theta.size else take_columns(xp, result.eigenvectors, valid)
    R = lm(X) - X * to_device(lm, theta[valid][None, :])
    norms = np.sqrt(host(lm.dots(R, R), lm.dots(X, X)))
    res, size = norms[:valid.size], norms[valid.size:]
    res = np.where(size > 0, res / np.where(size > 0, size, 1.0), np.inf)
    if not np.all(np.isfinite(res)):
        raise FloatingPointError("the operator returned NaN or Inf on the computed eigenvectors; check the model, "
                                 "the data and the dtype")
    rel = np.array(result.residual_norms, dtype=np.float64)
    rel[valid] = control.relative(np.zeros(0), theta[valid], res)
    converged = np.asarray(result.converged, dtype=bool) & (rel <= control.tol)
    return replace(result, residual_norms=rel, converged=converged, num_matvecs=lm.num_matvecs)
