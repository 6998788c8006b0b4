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

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .._collective import check_arguments
from .._renamed import renamed
from .._warnings import warn
from ._linear_map import LinearMap, as_linear_map
from ._progress import Progress
from ._sketch_rounds import COST, hutchpp_round, xtrace_round
from ._trace_result import TraceResult
from .probes import (
    MIN_CALIBRATED,
    blocks,
    check_budget,
    check_kind,
    check_method,
    check_seed,
    gather,
    host64,
    mean_stderr,
    mine,
    probe_comm,
    probes,
    t_factor,
    warn_uncalibrated,
)

__all__ = ["TraceResult", "trace"]

METHODS = ("xtrace", "hutch++", "hutchinson")
MINIMUM = {"hutchinson": 2, "hutch++": 4, "xtrace": 4}
DEFAULT_BUDGET = 60
"""Products an estimator spends when ``max_matvecs`` is not given (``f=`` has its own default)."""
"""Fewest products that still give a standard error: two samples for the stochastic part."""
FINAL_STREAM = 2
"""Adaptive mode: the final sample of attempt ``a`` draws its probes from stream ``FINAL_STREAM + a``,
apart from the pilot's (Hutchinson: ``[seed, i]``; Hutch++: streams 0 and 1; XTrace: ``[seed, i]``)."""
FINAL_MARGIN = 1.5
"""Adaptive mode: the final sample is sized for ``rtol`` at this many times the variance the pilot measured,
so that it meets ``rtol`` itself except about one time in a hundred (docs/numerics.md)."""
FIRST_ROUND = 16
"""Adaptive mode: sketch size of the first Hutch++/XTrace round (Hutchinson starts with
``MIN_CALIBRATED["hutchinson"]`` probes). Fewer samples make the standard error itself too noisy to stop on."""


@renamed(num_matvecs="max_matvecs")
def trace(A: Any, *, method: str = "xtrace", max_matvecs: int | None = None, rtol: float | None = None,
          probe: str = "rademacher", seed: int = 0, comm: Any = None, check_symmetric: bool = True,
          progress: bool = False, block_size: int = 16, f: Any = None) -> TraceResult:
    """Estimate ``tr(A)`` of a symmetric operator from products with random vectors.

    Parameters
    ----------
    A : operator
        Anything :func:`~hessop.solvers._linear_map.as_linear_map` accepts.
    method : {"xtrace", "hutch++", "hutchinson"}
    max_matvecs : int, optional
        Budget of products, 60 by default (at least 2 for Hutchinson, 4 for Hutch++ and XTrace); the result's
        ``num_matvecs`` says how many were spent. ``num_matvecs=`` is its deprecated name.
    rtol : float in (0, 1), optional
        Adaptive mode: a pilot adds probes (Hutchinson) or grows the sketch (Hutch++,
        XTrace, doubling it and reusing the products already made) until its
        ``stderr <= rtol * |estimate|``; the estimate then comes from a final sample of fresh
        probes sized by the pilot, so the stopping rule never saw it and the error bar keeps
        its coverage (docs/numerics.md). Stops at the budget with ``converged=False``.
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
        Show a progress bar: probes (Hutchinson) or products (Hutch++, XTrace) done out of those
        planned so far (an adaptive run plans round by round, never the whole budget up front),
        and after each adaptive round the products spent and ``stderr / |estimate|`` against ``rtol``.
    block_size : int
        Probes per batched product.
    f : {"sqrt", "exp", "log", "inv"} or callable, optional
        Estimate ``tr f(A)`` instead, by stochastic Lanczos quadrature
        (:func:`~hessop.solvers.trace_function.trace_function`, whose defaults apply; ``rtol``,
        ``probe``, ``seed``, ``comm``, ``progress`` and an explicit ``max_matvecs`` are passed on).

    Returns
    -------
    TraceResult

    Notes
    -----
    A ``KeyboardInterrupt`` (products run in blocks of ``block_size``) returns the
    estimate from what was finished, with ``converged=False``: the probes
    (Hutchinson), the last complete round (adaptive Hutch++/XTrace), XTrace on the
    test vectors whose two products are done, or else Hutchinson on the finished
    sketch products; with nothing finished yet, or in a multi-rank run, it
    propagates. The Hutch++ standard error is conditional on the sketch (the top
    part is exact given it; the residual probes are independent of it), so it is
    calibrated like Hutchinson's. XTrace's samples share their test vectors and
    are positively correlated: the spread alone underestimates the error by up to
    1.7x (measured); the standard error adds their covariance, estimated from how
    each sample changes when another test vector leaves the sketch (see
    :func:`~hessop.solvers.probes.pair_covariance`).

    Examples
    --------
    >>> import numpy as np
    >>> from hessop.testing import SpectralOperator
    >>> A = SpectralOperator(np.arange(1.0, 101.0), seed=0)    # eigenvalues 1..100: trace 5050
    >>> r = trace(A, max_matvecs=60)
    >>> bool(abs(r.estimate - 5050) < 3 * r.stderr), r.num_matvecs   # 2 more: the symmetry check
    (True, 62)
    >>> r = trace(A, method="hutchinson", max_matvecs=2000, rtol=0.01)   # adaptive: stop at 1%
    >>> r.converged, bool(r.stderr <= 0.01 * r.estimate), r.num_matvecs < 2000
    (True, True, True)
    """
    if f is not None:  # tr f(A): stochastic Lanczos quadrature, with its own default budget
        from .trace_function import trace_function
        return trace_function(A, f, rtol=rtol, max_matvecs=max_matvecs, probe=probe,
                              seed=seed, comm=comm, progress=progress, check_symmetric=check_symmetric)
    check_arguments("trace", A, comm, method=method, max_matvecs=max_matvecs, rtol=rtol, probe=probe, seed=seed, check_symmetric=check_symmetric, block_size=block_size)  # noqa: E501
    method = check_method(method, METHODS)
    if max_matvecs is None:
        max_matvecs = DEFAULT_BUDGET
    budget = check_budget(max_matvecs, MINIMUM[method], f"trace(method={method!r})")
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
    unit = "probe" if method == "hutchinson" else "matvec"
    with Progress(progress, f"trace ({method})", unit) as bar:
        if method == "hutchinson":
            samples, stop, evaluated = _hutchinson(lm, budget, rtol, probe, seed, comm, block_size, bar)
            cov, used_method = 0.0, method
        else:
            step = xtrace_round if method == "xtrace" else hutchpp_round
            lm = bar.ticking(lm)
            samples, cov, stop, used_method = _sketched(lm, step, budget, rtol, probe, seed, bar, block_size)
            evaluated = 0  # counted by lm (one process)
        if stop != "interrupt":
            bar.finish()
    converged = stop == "converged"
    # one product per Hutchinson probe over all ranks; a single process counts its own (interrupted ones too)
    used = lm.num_matvecs if comm.size == 1 else evaluated + overhead
    estimate, stderr = _estimate(samples, cov)
    calibrated = samples.size >= MIN_CALIBRATED[used_method]
    if not calibrated:
        warn_uncalibrated(f"trace(method={used_method!r})", samples.size, MIN_CALIBRATED[used_method])
    if stop == "budget":
        share = stderr / max(abs(estimate), 1e-300)
        unconfirmed = " (and no room was left for the independent final sample that confirms it)" * bool(
            rtol is not None and share <= rtol)
        warn(f"trace did not reach rtol={rtol:g}: the standard error is {share:.2g} of the estimate after"
             f" {used} products{unconfirmed}; raise max_matvecs (now {budget}) or loosen rtol",
             RuntimeWarning,
         )
    return TraceResult(float(estimate), float(stderr), used, used_method, converged, samples, calibrated)


def _estimate(samples: np.ndarray, cov: float) -> tuple[float, float]:
    """Mean and standard error of exchangeable samples whose pairwise covariance is ``cov``.

    ``Var(mean) = σ²/m + (m-1)/m · c`` while the sample variance estimates ``σ² - c``, so
    ``s²/m + c`` is unbiased for it; a negative ``c`` estimate is not used (it would only shrink
    the error bar). The result is widened by :func:`~hessop.solvers.probes.t_factor`.
    """
    m = samples.size
    mean = float(samples.mean())
    if m < 2:
        return mean, math.inf
    var = float(samples.var(ddof=1)) / m + max(float(cov), 0.0)
    return mean, math.sqrt(var) * t_factor(m)


def _hutchinson(lm: LinearMap, budget, rtol, kind, seed, comm, block_size, bar):
    """Hutchinson samples: ``budget`` probes at once, or for ``rtol`` a pilot then an independent final sample.

    The pilot (``MIN_CALIBRATED`` probes) measures the variance and so fixes the size of the
    final sample, whose probes come from a stream of their own: the stopping decision never saw
    them (docs/numerics.md, "Adaptive stopping"). A final that misses ``rtol`` joins the pilot
    and sizes the next. Returns ``(samples, stop, probes evaluated)``.
    """
    if rtol is None:
        samples, done = _probe_round(lm, seed, None, 0, budget, kind, comm, block_size, bar, np.zeros(0), budget)
        if not done and samples.size == 0:
            raise KeyboardInterrupt
        return samples, ("converged" if done else "interrupt"), samples.size
    pilot, last, spent, attempt = np.zeros(0), None, 0, 0
    size = min(budget, max(MIN_CALIBRATED["hutchinson"], comm.size))
    try:
        pilot, done = _probe_round(lm, seed, None, 0, size, kind, comm, block_size, bar, pilot, size)
        spent += size
        while done:
            mean, err = mean_stderr(pilot)
            bar.error(mean, err, rtol, lm.num_matvecs * comm.size)
            if err == 0.0:  # every sample equal: exact (a diagonal matrix, the zero operator), nothing to confirm
                return pilot, "converged", spent
            wanted = math.ceil(FINAL_MARGIN * pilot.size * (err / (rtol * abs(mean) + 1e-300)) ** 2)
            final_size = min(budget - spent, max(MIN_CALIBRATED["hutchinson"], comm.size, wanted))
            if final_size < MIN_CALIBRATED["hutchinson"]:  # no room for a calibrated final sample
                break
            last, done = _probe_round(lm, seed, FINAL_STREAM + attempt, 0, final_size, kind, comm, block_size,
                                      bar, np.zeros(0), spent + final_size)
            spent += final_size
            attempt += 1
            if not done:
                break
            fmean, ferr = mean_stderr(last)
            bar.error(fmean, ferr, rtol, lm.num_matvecs * comm.size)
            if ferr <= rtol * abs(fmean):
                return last, "converged", spent
            if final_size < wanted:  # cut by the budget
                return last, "budget", spent
            pilot = np.concatenate([pilot, last])  # a final that missed rtol joins the pilot
        if not done:
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        if comm.size > 1 or pilot.size == 0:
            raise
        return (last if last is not None and last.size >= 2 else pilot), "interrupt", spent
    return (last if last is not None else pilot), "budget", spent


def _probe_round(lm: LinearMap, seed, stream, start: int, size: int, kind, comm, block_size, bar, before,
                 planned: int):
    """``before`` followed by the samples of probes ``start .. start + size`` (of ``stream``); one all-reduce.

    Returns ``(samples, complete)``; on Ctrl-C in a single process the finished probes are kept
    (``complete=False``); under several processes the interrupt propagates.
    """
    bar.plan(planned)
    local = np.zeros(size)
    samples = before
    try:
        for idx in blocks(mine(comm, start, start + size), block_size):
            Z = probes(lm, seed, idx, kind, stream)
            local[np.asarray(idx) - start] = host64(lm.dots(Z, lm(Z)))
            if comm.size == 1:  # keep what is done in case of an interrupt
                samples = np.concatenate([before, local[:idx[-1] + 1 - start]])
            bar.advance(len(idx) * comm.size)
    except KeyboardInterrupt:
        if comm.size > 1:
            raise
        return samples, False
    return np.concatenate([before, gather(comm, local)]), True


def _sketched(lm: LinearMap, step: Callable, budget, rtol, kind, seed, bar, block_size):
    """Hutch++ / XTrace: one round with the whole budget, or for ``rtol`` pilot rounds then a final round.

    ``step(lm, k, cache, kind, seed, spare, block_size)`` runs one estimate with a
    ``k``-column sketch (and may use ``spare`` more products) and returns
    ``(samples, covariance, complete)``; ``cache`` keeps the sketch products so a
    larger round reuses them. A round costs ``cost(k, cached)`` products.

    With ``rtol`` the pilot rounds double the sketch until their error meets ``rtol``; that
    fixes the size, and the estimate comes from a final round whose probes the stopping
    decision never saw (:func:`_final`). A final round that misses ``rtol`` makes the pilot go on.
    Returns ``(samples, covariance, stop, method)``, ``stop`` one of ``"converged"``
    (``rtol`` reached, or the fixed budget spent), ``"budget"``, ``"interrupt"``.
    """
    cost = COST[step]
    name = "xtrace" if step is xtrace_round else "hutch++"
    cache: dict = {}
    k = _largest(lambda k: cost(k, 0) <= budget, 1, min(budget, lm.n))  # a sketch wider than n adds nothing
    if rtol is not None:
        k = min(k, FIRST_ROUND)
    spare = budget - cost(k, 0) if rtol is None else 0
    last, start, attempt = None, lm.num_matvecs, 0
    bar.plan(cost(k, 0) + (spare if step is hutchpp_round else 0))  # XTrace leaves the spare products unspent
    try:
        while True:
            samples, cov, complete = step(lm, k, cache, kind, seed, spare, block_size)
            if not complete:  # interrupted inside the round: keep whichever has more test vectors
                if last is None or samples.size > last[0].size:
                    last = (samples, cov)
                raise KeyboardInterrupt
            last = (samples, cov)
            if rtol is None:
                return samples, cov, "converged", name
            mean, err = _estimate(samples, cov)
            bar.error(mean, err, rtol, lm.num_matvecs)
            if err == 0.0:  # exact (the sketch spans the space, or the zero operator): nothing to confirm
                return samples, cov, "converged", name
            if err <= rtol * abs(mean):
                left = budget - (lm.num_matvecs - start)
                final = _final(lm, step, k, cache, kind, seed, block_size, (err / (rtol * abs(mean))) ** 2, left,
                               FINAL_STREAM + attempt, bar, lm.num_matvecs - start)
                attempt += 1
                if final is None:  # no room for a final round: the pilot is all there is
                    return samples, cov, "budget", name
                last = final[:2]
                fmean, ferr = _estimate(*last)
                bar.error(fmean, ferr, rtol, lm.num_matvecs)
                if ferr <= rtol * abs(fmean):
                    return last[0], last[1], "converged", name
                if final[2]:  # cut by the budget
                    return last[0], last[1], "budget", name
            have, left = cache["Y"].shape[1], budget - (lm.num_matvecs - start)
            k_next = _largest(functools.partial(_fits, cost, have, left), k, min(2 * k, lm.n))
            if k_next <= k:
                return last[0], last[1], "budget", name
            k = k_next
            bar.plan(lm.num_matvecs - start + cost(k, have))
    except KeyboardInterrupt:
        if last is not None:
            return last[0], last[1], "interrupt", name
        if "Y" not in cache or cache["Y"].shape[1] == 0:
            raise
    # interrupted while sketching: Hutchinson samples of the finished sketch products
    wy = host64(lm.dots(cache["Om"], cache["Y"]))
    return wy, 0.0, "interrupt", "hutchinson"


def _final(lm: LinearMap, step: Callable, k: int, cache: dict, kind, seed, block_size, ratio: float, left: int,
           stream: int, bar, spent: int):
    """The final round of an adaptive Hutch++ / XTrace run, on probes from ``stream`` only.

    ``ratio`` is ``(err / (rtol |mean|))²`` of the pilot round with sketch ``k`` that met ``rtol``.
    Hutch++ keeps the pilot's sketch (its top part is exact whatever the sketch) and draws fresh
    residual probes, as many as the pilot's variance asks for ``rtol`` with :data:`FINAL_MARGIN`
    and no fewer than the pilot had; XTrace draws fresh test vectors, as many again. Returns
    ``(samples, covariance, cut)``, ``cut`` True when the budget shortened the round, or None
    when there is no room for a calibrated round (the pilot is then returned, not converged).
    """
    if step is hutchpp_round:
        want = max(MIN_CALIBRATED["hutch++"], k, math.ceil(FINAL_MARGIN * k * ratio))
        size = min(want, left - (0 if cache.get("top", (None,))[0] == k else k))
        if size < MIN_CALIBRATED["hutch++"]:
            return None
        bar.plan(spent + size)
        samples, cov, _ = hutchpp_round(lm, k, cache, kind, seed, size - k, block_size, stream)
        return samples, cov, size < want
    want = min(lm.n, max(MIN_CALIBRATED["xtrace"], k, math.ceil(FINAL_MARGIN * k * ratio)))
    size = min(want, left // 2)
    if size < MIN_CALIBRATED["xtrace"]:
        return None
    fresh: dict = {"stream": stream}
    bar.plan(spent + 2 * size)
    samples, cov, complete = xtrace_round(lm, size, fresh, kind, seed, 0, block_size)
    if not complete:
        raise KeyboardInterrupt
    return samples, cov, size < want


def _fits(cost: Callable[[int, int], int], have: int, left: int, k: int) -> bool:
    """Whether a round with a ``k``-column sketch, ``have`` columns cached, fits in ``left`` products."""
    return cost(k, have) <= left


def _largest(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """The largest ``k`` in ``[lo, hi]`` with ``fits(k)``, or ``lo`` if none does."""
    for k in range(hi, lo - 1, -1):
        if fits(k):
            return k
    return lo
