"""Seeded probe vectors, probe-parallel bookkeeping and input checks shared by the stochastic estimators.

Probe ``i`` of a call with seed ``s`` is always drawn from
``numpy.random.default_rng([s, i])`` on the host, whatever else happens: so an
estimate does not depend on how probes are batched or split across processes.
In a probe-parallel run (``comm`` of size ``p``) rank ``r`` evaluates probes
``i = r, r + p, ...``, writes what each probe produced into row ``i`` of a zero
host array and one ``comm.allreduce`` of that array hands every rank all
per-probe results, hence the same final answer. The leave-one-out directions of
the exchangeable estimators (XTrace, XDiag), the covariance of XTrace's samples,
and the Student-t widening and calibration rules of every standard error live here too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.special

from .._array import Array, to_numpy
from .._warnings import warn
from ..distributed import as_comm
from ._linear_map import LinearMap

PROBE_KINDS = ("rademacher", "gaussian")
MIN_CALIBRATED = {"hutchinson": 60, "hutch++": 16, "xtrace": 12, "xdiag": 12, "diagonal-hutchinson": 12, "slq": 60}
"""Fewest samples from which an estimator's standard error is reported as calibrated.

Below them the spread of the samples is itself too noisy, or too skewed, for ``± 2 stderr`` to
cover the truth 93-97% of the time and ``± 3 stderr`` at least 99% (measured by
``benchmarks/coverage.py``, docs/numerics.md). Samples ``zᵀAz`` of a spectrum dominated by a
few eigenvalues are skewed (skewness about 1.4 on the NN-like and low-rank test spectra): at 30
of them ``± 3 stderr`` covered only 98%, so Hutchinson and SLQ need 60. The residual samples of
Hutch++, from a deflated operator, need 16; XTrace and XDiag, whose covariance-corrected errors
are checked directly, 12 test vectors; the per-entry samples of diagonal Hutchinson, 12.
"""


def check_seed(seed: Any) -> int:
    """The seed as a non-negative int, or a clear error."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TypeError(f"seed must be a non-negative int (probe i is drawn from default_rng([seed, i])); got {seed!r}")
    return int(seed)


def check_kind(kind: str) -> str:
    """The probe distribution, or a clear error."""
    if kind not in PROBE_KINDS:
        raise ValueError(f"unknown probe {kind!r}; use one of {', '.join(map(repr, PROBE_KINDS))}")
    return kind


def check_budget(max_matvecs: Any, minimum: int, what: str) -> int:
    """The budget ``max_matvecs`` as an int of at least ``minimum``, or an error naming that minimum."""
    if isinstance(max_matvecs, bool) or not isinstance(max_matvecs, (int, np.integer)):
        raise TypeError(f"max_matvecs must be an int; got {max_matvecs!r}")
    if max_matvecs < minimum:
        raise ValueError(f"{what} needs max_matvecs >= {minimum}; got {max_matvecs}")
    return int(max_matvecs)


def check_method(method: str, methods: Sequence[str]) -> str:
    """``method`` lower-cased if it is one of ``methods``, else a clear error."""
    m = str(method).lower()
    if m not in methods:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(map(repr, methods))}")
    return m


def probe_comm(A: Any, comm: Any):
    """The communicator that splits probes, refusing a data-parallel operator.

    Probe parallelism needs every rank to hold the whole operator. A
    data-parallel :class:`~hessop.HessianOperator` (``A.comm.size > 1``) already
    reduces each product across ranks, so splitting probes as well would make
    ranks wait on each other's reductions forever.
    """
    if comm is not None and getattr(getattr(A, "comm", None), "size", 1) > 1:
        raise ValueError(
            "the operator is already data-parallel (A.comm.size > 1); pass comm=None so every rank works on "
            "the same probes, or build the operator without a communicator to split probes across ranks"
        )
    return as_comm(comm)


def probes(lm: LinearMap, seed: int, indices: Sequence[int], kind: str, stream: int | None = None) -> Array:
    """Probes ``indices`` as the columns of one native ``(n, len(indices))`` array.

    Probe ``i`` comes from ``default_rng([seed, i])`` (or ``[seed, stream, i]``
    when an estimator needs several independent families of probes); for an
    operator split across processes each rank draws its rows of the same
    whole probes, chunk by chunk (:meth:`~._linear_map.LinearMap.probes`).
    """
    key = (lambda i: [seed, i]) if stream is None else (lambda i: [seed, stream, i])
    return lm.probes([key(i) for i in indices], kind)


def mine(comm, start: int, stop: int) -> list[int]:
    """The probe indices in ``[start, stop)`` this rank evaluates: ``i ≡ rank (mod size)``."""
    return [i for i in range(start, stop) if i % comm.size == comm.rank]


def blocks(indices: Sequence[int], size: int):
    """``indices`` cut into consecutive chunks of at most ``size`` (one batched product each)."""
    for k in range(0, len(indices), size):
        yield list(indices[k:k + size])


def gather(comm, local: np.ndarray) -> np.ndarray:
    """Sum ``local`` (zeros except this rank's rows) over ranks with one all-reduce."""
    return np.asarray(to_numpy(comm.allreduce(local)), dtype=np.float64)


def host64(x: Array) -> np.ndarray:
    """A native array on the host as float64, raising if a product returned NaN or Inf."""
    out = np.asarray(to_numpy(x), dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise FloatingPointError("the operator returned NaN or Inf on a probe vector; check the model and data")
    return out


def t_factor(m: int) -> float:
    """Widening of a standard error from ``m`` samples so that ``± 2`` of it is a Student-t interval.

    ``t_{m-1}(Φ(2)) / 2``: with normal samples ``mean ± 2 · t_factor(m) · std / √m`` covers the
    mean with probability ``Φ(2) - Φ(-2) = 95.45%`` whatever ``m``, where the plain ``± 2 std/√m``
    covers only 86% at ``m = 4`` (Student 1908). It is 1.65 at ``m = 4``, 1.21 at 8, 1.04 at 30, 1 in the limit;
    ``± 3`` of it then covers at least 99% from ``m = 5`` on.
    """
    if m < 2:
        return math.inf
    return float(scipy.special.stdtrit(m - 1, scipy.special.ndtr(2.0))) / 2.0  # scipy.stats.t.ppf(norm.cdf(2))


def mean_stderr(samples: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sample mean and its standard error ``t_factor(m) · std(ddof=1) / sqrt(m)`` (inf with one sample)."""
    m = samples.shape[axis]
    mean = samples.mean(axis=axis)
    if m < 2:
        return mean, np.full_like(mean, math.inf)
    return mean, samples.std(axis=axis, ddof=1) / math.sqrt(m) * t_factor(m)


def warn_uncalibrated(what: str, m: int, minimum: int) -> None:
    """Say that ``what``'s standard error rests on too few samples to be trusted as an error bar."""
    warn(f"{what}: the standard error rests on {m} sample{'s' * (m != 1)}, fewer than the "
         f"{minimum} from which ±2 standard errors are known to cover the truth about 95% of "
         "the time; treat it as a rough guide (result.calibrated is False) or spend more products", RuntimeWarning)


class Interrupted(Exception):
    """A ``KeyboardInterrupt`` inside :func:`apply_blocks`, carrying the columns finished before it."""

    def __init__(self, done: Array):
        super().__init__("interrupted")
        self.done = done


def apply_blocks(lm: LinearMap, V: Array, block_size: int) -> Array:
    """``A @ V`` in blocks of ``block_size`` columns; on Ctrl-C raise :class:`Interrupted` with the finished ones."""
    xp, parts, k = lm.xp, [], int(V.shape[1])
    try:
        for s in range(0, k, block_size):
            parts.append(lm(V[:, s:min(s + block_size, k)]))
    except KeyboardInterrupt:
        raise Interrupted(xp.concat(parts, axis=1) if parts else V[:, :0]) from None
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=1)


def loo_directions(R: np.ndarray) -> np.ndarray:
    """Unit columns ``s_i ∝ R⁻ᵀ e_i``: ``s_i`` is orthogonal to every column of ``R`` but the ``i``-th.

    For a sketch ``Y = AΩ = QR``, ``Q s_i`` is the direction that leaving test
    vector ``i`` out removes from ``range(Q)`` (XTrace and XDiag; Epperly, Tropp &
    Webber 2024).

    Computed through an SVD with the singular values floored at ``k·eps·σ_max``,
    so a rank-deficient sketch (an operator of low rank) gives finite directions.
    """
    U, s, Vt = np.linalg.svd(R)
    floor = max(s[0] * R.shape[0] * np.finfo(float).eps, np.finfo(float).tiny) if s.size else 1.0
    w = 1.0 / np.maximum(s, floor)
    S = (U * (w / w.max())) @ Vt  # scaled so that a zero sketch (the zero operator) does not overflow
    return S / np.linalg.norm(S, axis=0)


def pair_covariance(S: np.ndarray, H: np.ndarray, W: np.ndarray, B: np.ndarray) -> float:
    """The covariance of two XTrace samples, from how each moves when the other's test vector leaves.

    The samples ``T_i = tr(A) + f_i`` share their test vectors: ``ω_j`` helps build the
    sketch of ``T_i``. Let ``Δ_ij = T_i - T_i^(j)``, where ``T_i^(j)`` is sample ``i``
    computed without ``ω_j`` in the sketch (independent of ``ω_j``). To first order in
    these influences ``E[f_i f_j] ≈ E[Δ_ij Δ_ji]``, and the mean of ``Δ_ij Δ_ji`` over
    ordered pairs estimates the covariance (checked against the exact covariance over
    seeds on the spectra of ``benchmarks/coverage.py``: it brings the error bar to within
    0.85-1.08 of the true spread, from 1.0-1.7 too small).

    In the basis ``Q`` of the sketch, with ``H = QᵀAQ``, ``W = QᵀΩ``, ``S`` the
    leave-one-out directions (:func:`loo_directions`) and ``V_i = W_i - s_i s_iᵀW_i``:
    dropping ``ω_j`` as well removes the unit direction ``u = (s_j - γ s_i)/√(1-γ²)``
    (``γ = s_iᵀs_j``), and with ``a = uᵀW_i``, ``Δ_ij = (1 - a²)·uᵀHu - 2a·uᵀb_i``,
    ``b_i = Qᵀ A ω_i - H V_i`` (the columns of ``B``): ``O(k³)`` host work, no product.
    """
    k = S.shape[1]
    if k < 3:
        return 0.0
    G = S.T @ S
    M = S.T @ H @ S
    N, K = S.T @ W, S.T @ B
    den = 1.0 - G**2
    ok = den > 1e-10
    np.fill_diagonal(ok, False)
    den = np.where(ok, den, 1.0)
    d = np.diag(M)
    uHu = (d[None, :] - 2.0 * G * M + G**2 * d[:, None]) / den
    root = np.sqrt(den)
    a = (N.T - G * np.diag(N)[:, None]) / root
    b = (K.T - G * np.diag(K)[:, None]) / root
    D = np.where(ok, (1.0 - a**2) * uHu - 2.0 * a * b, 0.0)
    return float(np.sum(D * D.T) / (k * (k - 1)))
