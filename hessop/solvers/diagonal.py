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
from tqdm.auto import tqdm

from .._collective import check_arguments
from .._array import Array, to_numpy
from ._linear_map import LinearMap, as_linear_map
from .probes import (blocks, check_budget, check_kind, check_method, check_seed, gather, host64,
                     loo_directions, mine, probe_comm, probes)

__all__ = ["DiagonalResult", "diagonal"]

METHODS = ("xdiag", "hutchinson")
MINIMUM = {"hutchinson": 2, "xdiag": 4}


@dataclass(frozen=True)
class DiagonalResult:
    """A diagonal estimate and its per-entry standard error.

    Attributes
    ----------
    estimate, stderr : native arrays (n,)
        On the operator's device and dtype.
    num_matvecs : int
        Products this call spent (symmetry probe included; summed over ranks).
    method : str
    num_probes : int
        Samples averaged per entry.
    converged : bool
        ``False`` if the run was interrupted before spending its budget.
    """

    estimate: Array
    stderr: Array
    num_matvecs: int
    method: str
    num_probes: int
    converged: bool = True


def diagonal(A: Any, method: str = "xdiag", num_matvecs: int = 60, probe: str = "rademacher", seed: int = 0,
             comm: Any = None, check_symmetric: bool = True, progress: bool = False,
             block_size: int = 16) -> DiagonalResult:
    """Estimate the diagonal of a symmetric operator from products with random vectors.

    Parameters
    ----------
    A : operator
        Anything :func:`~hessop.solvers._linear_map.as_linear_map` accepts.
    method : {"xdiag", "hutchinson"}
    num_matvecs : int
        Budget of products (at least 2 for Hutchinson, 4 for XDiag, which uses
        ``num_matvecs // 2`` test vectors).
    probe : {"rademacher", "gaussian"}
        Rademacher probes make Hutchinson exact on a diagonal matrix.
    seed : int
        Probe ``i`` is drawn from ``numpy.random.default_rng([seed, i])``.
    comm : communicator, optional
        Split Hutchinson probes across processes; all ranks get the same result.
        Ranks exchange per-entry sums and sums of squares (two length-``n``
        rows, one all-reduce), so results agree with a serial run to rounding.
    check_symmetric, progress, block_size
        As in :func:`~hessop.solvers.trace.trace`.

    Returns
    -------
    DiagonalResult
    """
    check_arguments("diagonal", A, comm, method=method, num_matvecs=num_matvecs, probe=probe, seed=seed, check_symmetric=check_symmetric, block_size=block_size)  # noqa: E501
    method = check_method(method, METHODS)
    budget = check_budget(num_matvecs, MINIMUM[method], f"diagonal(method={method!r})")
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
        est, err, k = _xdiag(lm, min(budget // 2, lm.n), probe, seed)
        return DiagonalResult(est, err, lm.num_matvecs - start + overhead, method, k)
    est, err, k, done = _hutchinson(lm, budget, probe, seed, comm, block_size, progress)
    return DiagonalResult(est, err, k + overhead, method, k, done)


def _hutchinson(lm: LinearMap, m: int, kind: str, seed: int, comm, block_size: int, progress: bool):
    """Per-entry sums of ``z ⊙ Az`` and of its square, reduced over ranks once."""
    xp = lm.xp
    total, squares, count = lm.zeros((lm.n,)), lm.zeros((lm.n,)), 0
    done = True
    try:
        with tqdm(total=m, disable=not progress, desc="diagonal (hutchinson)", unit="matvec") as bar:
            for idx in blocks(mine(comm, 0, m), block_size):
                Z = probes(lm, seed, idx, kind)
                X = Z * lm(Z)
                total, squares = total + xp.sum(X, axis=1), squares + xp.sum(X * X, axis=1)
                count += len(idx)
                bar.update(len(idx) * comm.size)
    except KeyboardInterrupt:
        if comm.size > 1 or count == 0:
            raise
        done = False
    local = np.concatenate([host64(total), host64(squares), [count]])
    sums = gather(comm, local)
    n, count = lm.n, int(round(sums[-1]))
    mean = sums[:n] / count
    var = np.clip(sums[n:2 * n] - count * mean**2, 0.0, None) / max(count - 1, 1)
    stderr = np.sqrt(var / count) if count > 1 else np.full(n, math.inf)
    return lm.asarray(mean), lm.asarray(stderr), count, done


def _xdiag(lm: LinearMap, k: int, kind: str, seed: int):
    """XDiag with ``k`` test vectors (``2k`` products); the samples stay on the device.

    With ``Z = AQ``, ``S`` the leave-one-out directions (see
    :func:`hessop.solvers.probes.loo_directions`) and ``c_i = s_iᵀ r_i``, sample
    ``i`` is ``diag(QZᵀ) - (Qs_i) ⊙ (Zs_i) + c_i ω_i ⊙ (Qs_i)``, because
    ``(I - P_i) A ω_i = Q s_i (s_iᵀ r_i)`` when ``Aω_i = Q r_i``.
    """
    xp = lm.xp
    Om = probes(lm, seed, range(k), kind)
    Q, R = xp.linalg.qr(lm(Om))
    Z = lm(Q)
    Rh = host64(R)
    S = loo_directions(Rh)
    c = np.sum(S * Rh, axis=0)
    Sd, cd = lm.asarray(S), lm.asarray(c[None, :])
    QS, ZS = Q @ Sd, Z @ Sd
    E = QS * (cd * Om - ZS)
    mean_e = xp.mean(E, axis=1)
    var = xp.sum((E - mean_e[:, None]) ** 2, axis=1) / max(k - 1, 1)
    est = xp.sum(Q * Z, axis=1) + mean_e
    if not np.all(np.isfinite(to_numpy(est))):
        raise FloatingPointError("the operator returned NaN or Inf on a probe vector; check the model and data")
    return est, (xp.sqrt(var / k) if k > 1 else var + math.inf), k
