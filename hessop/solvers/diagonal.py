"""Stochastic diagonal estimation: Hutchinson (Bekas, Kokiopoulou & Saad 2007) and XDiag.

* Hutchinson: ``diag(A) ≈ mean_i z_i ⊙ A z_i`` with Rademacher (or Gaussian)
  probes; the per-coordinate spread of the samples gives the standard error.
* XDiag (Epperly, Tropp & Webber 2024, *SIMAX* 45(1), Sec. 4): the exchangeable
  diagonal estimator. With ``Y = AΩ = QR`` and ``P_i`` the projector onto the
  sketch without test vector ``i``, sample ``i`` is
  ``diag(P_i A) + ω_i ⊙ (I - P_i) A ω_i``; every sample is unbiased and they are
  exchangeable, so their mean and spread give the estimate and its error.
  Spectra dominated by a few directions are captured almost exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._array import Array
from .._collective import check_arguments
from .._renamed import renamed
from ._linear_map import LinearMap, as_linear_map
from ._progress import Progress
from .probes import (
    MIN_CALIBRATED,
    Interrupted,
    apply_blocks,
    blocks,
    check_budget,
    check_kind,
    check_method,
    check_seed,
    gather,
    host64,
    loo_directions,
    mine,
    probe_comm,
    probes,
    t_factor,
    warn_uncalibrated,
)

__all__ = ["DiagonalResult", "diagonal"]

METHODS = ("xdiag", "hutchinson")
PAIR_CHUNK = 8
"""Columns per step of the XDiag covariance, bounding its temporaries to a few ``(n, 8)`` arrays."""
MINIMUM = {"hutchinson": 2, "xdiag": 4}


@dataclass(frozen=True)
class DiagonalResult:
    """A diagonal estimate and its per-entry standard error.

    Attributes
    ----------
    estimate, stderr : native arrays (n,)
        On the operator's device and dtype. ``stderr`` is widened by the Student-t factor
        (:func:`~hessop.solvers.probes.t_factor`) and, for XDiag, includes the covariance of
        the exchangeable samples, so ``estimate ± 2 stderr`` covers each entry about 95% of the
        time (docs/numerics.md).
    num_matvecs : int
        Products this call spent (symmetry probe included; summed over ranks).
    method : str
        An interrupted XDiag run that finished no test vector's second product falls back to
        Hutchinson on its finished sketch products and says ``"hutchinson"``.
    num_probes : int
        Samples averaged per entry.
    converged : bool
        ``False`` if the run was interrupted before spending its budget (the estimate then uses
        the products finished before the interrupt).
    calibrated : bool
        ``False`` (with a ``RuntimeWarning``) when ``num_probes`` is below
        :data:`~hessop.solvers.probes.MIN_CALIBRATED`, too few for the error bar to be trusted.
    """

    estimate: Array
    stderr: Array
    num_matvecs: int
    method: str
    num_probes: int
    converged: bool = True
    calibrated: bool = True


@renamed(num_matvecs="max_matvecs")
def diagonal(A: Any, *, method: str = "xdiag", max_matvecs: int = 60, probe: str = "rademacher", seed: int = 0,
             comm: Any = None, check_symmetric: bool = True, progress: bool = False,
             block_size: int = 16) -> DiagonalResult:
    """Estimate the diagonal of a symmetric operator from products with random vectors.

    Parameters
    ----------
    A : operator
        Anything :func:`~hessop.solvers._linear_map.as_linear_map` accepts.
    method : {"xdiag", "hutchinson"}
    max_matvecs : int
        Budget of products (at least 2 for Hutchinson, 4 for XDiag, which uses
        ``max_matvecs // 2`` test vectors); the result's ``num_matvecs`` says how many were
        spent. ``num_matvecs=`` is its deprecated name.
    probe : {"rademacher", "gaussian"}
        Rademacher probes make Hutchinson exact on a diagonal matrix.
    seed : int
        Probe ``i`` is drawn from ``numpy.random.default_rng([seed, i])``.
    comm : communicator, optional
        Split Hutchinson probes across processes; all ranks get the same result.
        Ranks exchange per-entry sums and sums of squares (two length-``n``
        rows, one all-reduce), so results agree with a serial run to rounding.
    check_symmetric, block_size
        As in :func:`~hessop.solvers.trace.trace`.
    progress : bool
        Show a progress bar: probes done out of the planned ``max_matvecs`` (Hutchinson), or
        products done out of the ``2k`` of ``k`` test vectors (XDiag).

    Returns
    -------
    DiagonalResult

    Notes
    -----
    Products run in blocks of ``block_size``; a ``KeyboardInterrupt`` returns the
    estimate from the finished ones (``converged=False``): XDiag on the test vectors
    whose two products are done, or Hutchinson on the finished sketch products. With
    nothing finished, or in a multi-rank run, it propagates.

    Examples
    --------
    >>> import numpy as np
    >>> from hessop.testing import SpectralOperator
    >>> A = SpectralOperator(np.arange(1.0, 101.0), seed=0)
    >>> d = diagonal(A, max_matvecs=60)
    >>> exact = np.diag(A.to_dense())
    >>> float(np.mean(np.abs(d.estimate - exact) <= 3 * d.stderr)) >= 0.95   # entries within 3 stderr
    True
    """
    check_arguments("diagonal", A, comm, method=method, max_matvecs=max_matvecs, probe=probe, seed=seed, check_symmetric=check_symmetric, block_size=block_size)  # noqa: E501
    method = check_method(method, METHODS)
    budget = check_budget(max_matvecs, MINIMUM[method], f"diagonal(method={method!r})")
    check_kind(probe)
    seed = check_seed(seed)
    if block_size < 1:
        raise ValueError(f"block_size must be a positive int; got {block_size}")
    if comm is not None and method != "hutchinson":
        raise ValueError("probe-parallel estimation (comm) is available for method='hutchinson'; pass comm=None")
    comm = probe_comm(A, comm)
    lm = as_linear_map(A, check_symmetric=check_symmetric, seed=seed)
    overhead = lm.num_matvecs * comm.size
    start = lm.num_matvecs
    if method == "xdiag":
        k = min(budget // 2, lm.n)
        with Progress(progress, "diagonal (xdiag)", "matvec", 2 * k) as bar:
            lm = bar.ticking(lm)
            est, err, k, done, method = _xdiag(lm, k, probe, seed, block_size)
            if done:
                bar.finish()
        used = lm.num_matvecs - start + overhead
    else:
        with Progress(progress, "diagonal (hutchinson)", "probe", budget) as bar:
            est, err, k, done = _hutchinson(lm, budget, probe, seed, comm, block_size, bar)
        used = k + overhead
    key = "xdiag" if method == "xdiag" else "diagonal-hutchinson"
    calibrated = k >= MIN_CALIBRATED[key]
    if not calibrated:
        warn_uncalibrated(f"diagonal(method={method!r})", k, MIN_CALIBRATED[key])
    return DiagonalResult(est, err, used, method, k, done, calibrated)


def _hutchinson(lm: LinearMap, m: int, kind: str, seed: int, comm, block_size: int, bar: Progress):
    """Per-entry sums of ``z ⊙ Az`` and of its square, reduced over ranks once."""
    xp = lm.xp
    total, squares, count = lm.zeros((lm.n,)), lm.zeros((lm.n,)), 0
    done = True
    try:
        for idx in blocks(mine(comm, 0, m), block_size):
            Z = probes(lm, seed, idx, kind)
            X = Z * lm(Z)
            total, squares = total + xp.sum(X, axis=1), squares + xp.sum(X * X, axis=1)
            count += len(idx)
            bar.advance(len(idx) * comm.size)
    except KeyboardInterrupt:
        if comm.size > 1 or count == 0:
            raise
        done = False
    local = np.concatenate([host64(total), host64(squares), [count]])
    sums = gather(comm, local)
    n, count = lm.rows, int(round(sums[-1]))
    mean = sums[:n] / count
    var = np.clip(sums[n:2 * n] - count * mean**2, 0.0, None) / max(count - 1, 1)
    stderr = np.sqrt(var / count) * t_factor(count) if count > 1 else np.full(n, math.inf)
    return lm.asarray(mean), lm.asarray(stderr), count, done


def _xdiag(lm: LinearMap, k: int, kind: str, seed: int, block_size: int):
    """XDiag with ``k`` test vectors (``2k`` products); the samples stay on the device.

    With ``Z = AQ``, ``S`` the leave-one-out directions (see
    :func:`hessop.solvers.probes.loo_directions`) and ``c_i = s_iᵀ r_i``, sample
    ``i`` is ``diag(QZᵀ) - (Qs_i) ⊙ (Zs_i) + c_i ω_i ⊙ (Qs_i)``, because
    ``(I - P_i) A ω_i = Q s_i (s_iᵀ r_i)`` when ``Aω_i = Q r_i``. The per-entry
    variance of the mean is the samples' spread over ``k`` plus their covariance
    (:func:`_pair_covariance`). Returns ``(estimate, stderr, k, complete, method)``.
    """
    xp = lm.xp
    Om = probes(lm, seed, range(k), kind)
    try:
        Y = apply_blocks(lm, Om, block_size)
    except Interrupted as exc:  # no second product yet: Hutchinson on the finished sketch products
        j = int(exc.done.shape[1])
        if j == 0:
            raise KeyboardInterrupt from None
        X = Om[:, :j] * exc.done
        mean = xp.mean(X, axis=1)
        var = xp.sum((X - mean[:, None]) ** 2, axis=1) / max(j - 1, 1)
        _check(lm, mean)
        return mean, (xp.sqrt(var / j) * t_factor(j) if j > 1 else var + math.inf), j, False, "hutchinson"
    Q, R = lm.qr(Y)
    try:
        Z, complete = apply_blocks(lm, Q, block_size), True
    except Interrupted as exc:  # the first j columns of Q span the first j columns of Y
        Z, complete = exc.done, False
        k = int(Z.shape[1])
        if k < 2:
            raise KeyboardInterrupt from None
        Om, Q, R = Om[:, :k], Q[:, :k], R[:k, :k]
    if k >= lm.n:  # Q is a basis of the whole space: diag(QZᵀ) = diag(A)
        est = xp.sum(Q * Z, axis=1)
        _check(lm, est)
        return est, lm.zeros((lm.n,)), k, complete, "xdiag"
    Rh = host64(R)
    S = loo_directions(Rh)
    c = np.sum(S * Rh, axis=0)
    Sd, cd = lm.small(S), lm.small(c[None, :])
    QS, ZS = Q @ Sd, Z @ Sd
    E = QS * (cd * Om - ZS)
    mean_e = xp.mean(E, axis=1)
    var = xp.sum((E - mean_e[:, None]) ** 2, axis=1) / max(k - 1, 1)
    est = xp.sum(Q * Z, axis=1) + mean_e
    _check(lm, est)
    if k < 2:
        return est, var + math.inf, k, complete, "xdiag"
    cov = _pair_covariance(lm, QS, ZS, Om, S, Rh)
    err = xp.sqrt(var / k + xp.where(cov > 0, cov, xp.zeros_like(cov))) * t_factor(k)
    return est, err, k, complete, "xdiag"


def _check(lm: LinearMap, est: Array) -> None:
    if not lm.all_finite(est):  # collective when split: every rank raises together
        raise FloatingPointError("the operator returned NaN or Inf on a probe vector; check the model and data")


def _pair_covariance(lm: LinearMap, QS: Array, ZS: Array, Om: Array, S: np.ndarray, R: np.ndarray) -> Array:
    """Per entry, the covariance of two XDiag samples (as :func:`hessop.solvers.probes.pair_covariance`).

    ``Δ_ij``, the change of sample ``i`` when ``ω_j`` also leaves the sketch, is
    ``(Qu) ⊙ (Zu) - (uᵀr_i) ω_i ⊙ (Qu)`` with ``u = (s_j - γ s_i)/√(1-γ²)``,
    ``γ = s_iᵀs_j``; the covariance estimate is the mean of ``Δ_ij ⊙ Δ_ji`` over ordered
    pairs. ``O(n k²)`` work on the device, on ``(n, PAIR_CHUNK)`` temporaries; no product.
    """
    xp, k = lm.xp, S.shape[1]
    if k < 3:
        return lm.zeros((QS.shape[0],))
    G = S.T @ S
    SR = S.T @ R  # SR[j, i] = s_jᵀ r_i
    dSR = np.diag(SR)
    acc = lm.zeros((QS.shape[0],))
    for i in range(k):
        g = G[i]
        ok = (1.0 - g**2 > 1e-10) & (np.arange(k) != i)
        r = np.where(ok, np.sqrt(np.abs(1.0 - g**2)), 1.0)
        w, gd = ok / r, g
        a, b = (SR[:, i] - g * dSR[i]) / r, (SR[i, :] - g * dSR) / r
        qi, zi, oi = QS[:, i:i + 1], ZS[:, i:i + 1], Om[:, i:i + 1]
        for lo in range(0, k, PAIR_CHUNK):  # (n, PAIR_CHUNK) temporaries, whatever k
            hi = min(lo + PAIR_CHUNK, k)
            wc, gc, ac, bc = (lm.small(v[None, lo:hi]) for v in (w, gd, a, b))
            q, z = QS[:, lo:hi], ZS[:, lo:hi]
            QU, ZU = (q - qi * gc) * wc, (z - zi * gc) * wc  # Q u_ij, Z u_ij over j in the chunk
            D = QU * (ZU - oi * ac)
            QV, ZV = (qi - q * gc) * wc, (zi - z * gc) * wc  # Q u_ji, Z u_ji
            E = QV * (ZV - Om[:, lo:hi] * bc)
            acc = acc + xp.sum(D * E, axis=1)
    return acc / (k * (k - 1))
