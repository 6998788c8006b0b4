"""Stochastic trace estimation: Hutchinson, Hutch++ and XTrace, each with a standard error.

* Hutchinson (Hutchinson 1989; Avron & Toledo 2011): ``tr(A) ≈ mean_i z_iᵀ A z_i``.
* Hutch++ (Meyer, Musco, Musco & Woodruff 2021, *SOSA*): the trace of ``A`` on a
  sketched dominant subspace exactly, Hutchinson on the deflated rest.
* XTrace (Epperly, Tropp & Webber 2024, *SIMAX* 45(1)): every test vector is used
  both to build the subspace and to estimate the rest, leaving it out in turn;
  the exchangeable samples give the estimate and its standard error.

On spectra whose mass sits in a few large eigenvalues (Hessians of trained
networks) Hutch++ and XTrace reach a given accuracy with far fewer products.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import scipy.stats
from tqdm.auto import tqdm

from .._collective import check_arguments
from ._linear_map import LinearMap, as_linear_map
from .probes import (blocks, check_budget, check_kind, check_method, check_seed, gather, host64, loo_directions,
                     mean_stderr, mine, probe_comm, probes)

__all__ = ["TraceResult", "trace"]

METHODS = ("xtrace", "hutch++", "hutchinson")
MINIMUM = {"hutchinson": 2, "hutch++": 4, "xtrace": 4}
"""Fewest products that still give a standard error: two samples for the stochastic part."""
FIRST_ROUND = 16
"""Adaptive mode: sketch size of the first Hutch++/XTrace round (Hutchinson starts with twice as many
probes). Fewer samples make the standard error itself too noisy to stop on."""


@dataclass(frozen=True)
class TraceResult:
    """A trace estimate and its quality.

    Attributes
    ----------
    estimate, stderr : float
        The estimate and its standard error (from the spread of ``samples``).
    num_matvecs : int
        Products this call spent (including the symmetry probe; in a
        probe-parallel run, summed over ranks).
    method : str
    converged : bool
        ``False`` when ``rtol`` was not reached within the budget, or the run was interrupted.
    samples : numpy.ndarray
        Host float64 samples whose mean is ``estimate``: ``z_iᵀ A z_i`` (Hutchinson),
        ``tr(QᵀAQ) + g_iᵀ(I-QQᵀ)A(I-QQᵀ)g_i`` (Hutch++), the leave-one-out
        estimates (XTrace).
    """

    estimate: float
    stderr: float
    num_matvecs: int
    method: str
    converged: bool
    samples: np.ndarray

    @property
    def num_probes(self) -> int:
        """Number of samples averaged."""
        return int(self.samples.size)

    def confidence_interval(self, level: float = 0.95) -> tuple[float, float]:
        """A normal-approximation confidence interval ``estimate ± z·stderr``."""
        z = float(scipy.stats.norm.ppf(0.5 + level / 2))
        return self.estimate - z * self.stderr, self.estimate + z * self.stderr


def trace(A: Any, method: str = "xtrace", num_matvecs: int = 60, rtol: float | None = None,
          probe: str = "rademacher", seed: int = 0, comm: Any = None, check_symmetric: bool = True,
          progress: bool = False, block_size: int = 16) -> TraceResult:
    """Estimate ``tr(A)`` of a symmetric operator from products with random vectors.

    Parameters
    ----------
    A : operator
        Anything :func:`~hessop.solvers._linear_map.as_linear_map` accepts.
    method : {"xtrace", "hutch++", "hutchinson"}
    num_matvecs : int
        Budget of products (at least 2 for Hutchinson, 4 for Hutch++ and XTrace).
    rtol : float in (0, 1), optional
        Adaptive mode: add probes (Hutchinson) or grow the sketch (Hutch++,
        XTrace, doubling it and reusing the products already made) until
        ``stderr <= rtol * |estimate|``; stop at the budget with ``converged=False``.
        Without ``rtol`` the whole budget is spent at once.
    probe : {"rademacher", "gaussian"}
    seed : int
        Probe ``i`` is drawn from ``numpy.random.default_rng([seed, i])``.
    comm : communicator, optional
        Split Hutchinson probes across processes (probe parallelism); every rank
        returns the same result as a single process would.
    check_symmetric : bool
        Test symmetry with two products first.
    progress : bool
        Show a progress bar.
    block_size : int
        Probes per batched product.

    Returns
    -------
    TraceResult

    Notes
    -----
    A ``KeyboardInterrupt`` returns the estimate from the probes (Hutchinson) or
    the last complete round (adaptive Hutch++/XTrace) gathered so far, with
    ``converged=False``; with nothing finished yet, or in a multi-rank run, it
    propagates. The Hutch++ standard error is conditional on the sketch: it
    measures only the Hutchinson part, and with few residual probes on a spectrum
    whose outliers the sketch missed it can be optimistic.
    """
    check_arguments("trace", A, comm, method=method, num_matvecs=num_matvecs, rtol=rtol, probe=probe, seed=seed, check_symmetric=check_symmetric, block_size=block_size)  # noqa: E501
    method = check_method(method, METHODS)
    budget = check_budget(num_matvecs, MINIMUM[method], f"trace(method={method!r})")
    check_kind(probe)
    seed = check_seed(seed)
    if rtol is not None and not 0.0 < rtol < 1.0:
        raise ValueError(f"rtol must lie in (0, 1); got {rtol}")
    if block_size < 1:
        raise ValueError(f"block_size must be a positive int; got {block_size}")
    if comm is not None and method != "hutchinson":
        raise ValueError(f"probe-parallel estimation (comm) is available for method='hutchinson', not {method!r}; "
                         "pass comm=None (every rank then computes the same estimate)")
    comm = probe_comm(A, comm)
    lm = as_linear_map(A, check_symmetric=check_symmetric, seed=seed)
    overhead = lm.num_matvecs * comm.size
    with tqdm(total=budget, disable=not progress, desc=f"trace ({method})", unit="matvec") as bar:
        if method == "hutchinson":
            samples, converged = _hutchinson(lm, budget, rtol, probe, seed, comm, block_size, bar)
        else:
            step = _xtrace_round if method == "xtrace" else _hutchpp_round
            samples, converged = _sketched(lm, step, budget, rtol, probe, seed, bar)
    # one product per Hutchinson probe over all ranks; a single process counts its own (interrupted ones too)
    used = lm.num_matvecs if comm.size == 1 else samples.size + overhead
    estimate, stderr = mean_stderr(samples)
    return TraceResult(float(estimate), float(stderr), used, method, converged, samples)


def _hutchinson(lm: LinearMap, budget, rtol, kind, seed, comm, block_size, bar):
    """Rounds of probes until the budget or ``rtol``; one all-reduce per round."""
    samples = np.zeros(0)
    size = budget if rtol is None else min(budget, max(2 * FIRST_ROUND, comm.size))
    try:
        while size > 0:
            start = samples.size
            local = np.zeros(size)
            for idx in blocks(mine(comm, start, start + size), block_size):
                Z = probes(lm, seed, idx, kind)
                local[np.asarray(idx) - start] = host64(lm.xp.sum(Z * lm(Z), axis=0))
                if comm.size == 1:  # keep what is done in case of an interrupt
                    samples = np.concatenate([samples[:start], local[:idx[-1] + 1 - start]])
                bar.update(len(idx) * comm.size)
            samples = np.concatenate([samples[:start], gather(comm, local)])
            if rtol is None:
                return samples, True
            mean, err = mean_stderr(samples)
            if err <= rtol * abs(mean):
                return samples, True
            wanted = samples.size * (err / (rtol * abs(mean) + 1e-300)) ** 2
            size = int(min(budget - samples.size, samples.size, max(comm.size, math.ceil(1.1 * wanted) - samples.size)))
    except KeyboardInterrupt:
        if comm.size > 1 or samples.size == 0:
            raise
    return samples, False


def _sketched(lm: LinearMap, step: Callable, budget, rtol, kind, seed, bar):
    """Hutch++ / XTrace: one round with the whole budget, or doubling rounds for ``rtol``.

    ``step(lm, k, cache, kind, seed, spare)`` runs one estimate with a
    ``k``-column sketch (and may use ``spare`` more products); ``cache`` keeps
    the sketch products so a larger round reuses them. A round costs
    ``cost(k, cached)`` products.
    """
    cost = _COST[step]
    cache: dict = {}
    k = _largest(lambda k: cost(k, 0) <= budget, 1, min(budget, lm.n))  # a sketch wider than n adds nothing
    if rtol is not None:
        k = min(k, FIRST_ROUND)
    spare = budget - cost(k, 0) if rtol is None else 0
    samples, start = None, lm.num_matvecs
    try:
        while True:
            before = lm.num_matvecs
            samples = step(lm, k, cache, kind, seed, spare)
            bar.update(lm.num_matvecs - before)
            if rtol is None:
                return samples, True
            mean, err = mean_stderr(samples)
            if err <= rtol * abs(mean):
                return samples, True
            have, left = cache["Y"].shape[1], budget - (lm.num_matvecs - start)
            k_next = _largest(lambda j: cost(j, have) <= left, k, min(2 * k, lm.n))
            if k_next <= k:
                return samples, False
            k = k_next
    except KeyboardInterrupt:
        if samples is None:
            raise
    return samples, False


def _largest(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """The largest ``k`` in ``[lo, hi]`` with ``fits(k)``, or ``lo`` if none does."""
    for k in range(hi, lo - 1, -1):
        if fits(k):
            return k
    return lo


def _extend(lm: LinearMap, cache: dict, k: int, kind: str, seed: int, stream: int):
    """Sketch ``Ω`` with ``k`` columns and ``Y = AΩ``, computing only the columns not cached."""
    xp = lm.xp
    have = cache["Y"].shape[1] if cache else 0
    if k > have:
        Om = probes(lm, seed, range(have, k), kind, stream)
        Y = lm(Om)
        cache["Om"] = Om if not have else xp.concat([cache["Om"], Om], axis=1)
        cache["Y"] = Y if not have else xp.concat([cache["Y"], Y], axis=1)
    return cache["Om"][:, :k], cache["Y"][:, :k]


def _xtrace_round(lm: LinearMap, k: int, cache: dict, kind: str, seed: int, spare: int) -> np.ndarray:
    """The ``k`` exchangeable XTrace samples from ``k`` test vectors (``2k`` products).

    With ``Y = AΩ = QR``, leaving test vector ``i`` out removes from ``range(Q)``
    the unit direction ``Q s_i``, ``s_i ∝ R⁻ᵀ e_i``, so every leave-one-out
    estimate ``tr(P_i A) + ω_iᵀ(I-P_i)A(I-P_i)ω_i`` costs only ``k x k`` algebra.
    """
    xp = lm.xp
    Om, Y = _extend(lm, cache, k, kind, seed, stream=None)
    Q, R = xp.linalg.qr(Y)
    Z = lm(Q)
    R, H, W, T = (host64(M) for M in (R, Q.T @ Z, Q.T @ Om, Z.T @ Om))
    wy = host64(xp.sum(Om * Y, axis=0))
    H = 0.5 * (H + H.T)
    S = loo_directions(R)
    c = np.sum(S * W, axis=0)
    V = W - S * c
    return (np.trace(H) - np.sum(S * (H @ S), axis=0) + wy - 2 * np.sum(T * V, axis=0)
            + np.sum(V * (H @ V), axis=0))


def _hutchpp_round(lm: LinearMap, k: int, cache: dict, kind: str, seed: int, spare: int) -> np.ndarray:
    """Hutch++ samples: a ``k``-column sketch and ``k + spare`` residual probes (``3k + spare`` products).

    Sketch probes use stream 0, residual probes stream 1, so both families are
    independent and reproducible.
    """
    xp = lm.xp
    l = k + spare
    _, Y = _extend(lm, cache, k, kind, seed, stream=0)
    Q, _ = xp.linalg.qr(Y)
    Z = lm(Q)
    top = float(np.trace(host64(Q.T @ Z)))
    G = probes(lm, seed, range(l), kind, stream=1)
    G = G - Q @ (Q.T @ G)
    G = G - Q @ (Q.T @ G)
    return top + host64(xp.sum(G * lm(G), axis=0))


def _xtrace_cost(k: int, have: int) -> int:
    return max(k - have, 0) + k


def _hutchpp_cost(k: int, have: int) -> int:
    return max(k - have, 0) + 2 * k


_COST = {_xtrace_round: _xtrace_cost, _hutchpp_round: _hutchpp_cost}
