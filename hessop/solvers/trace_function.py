"""``tr f(A)`` and ``log det(A + λI)`` by stochastic Lanczos quadrature, with top eigenpairs deflated.

For a probe ``z``, ``m`` Lanczos steps from ``z`` give the Gauss rule with nodes ``θ_j``
and weights ``τ_j`` (squared first row of ``T``'s eigenvectors), and ``||z||² Σ τ_j f(θ_j)``
approximates ``zᵀ f(A) z``, whose mean over Rademacher probes is ``tr f(A)`` (Bai, Fahey &
Golub 1996; Ubaru, Chen & Saad 2017, *SIMAX* 38(4)). Each probe runs until its quadrature
changes by less than ``qtol`` of its scale over the last few steps, so the quadrature
error stays far below the standard error of the mean over probes.

Deflation (``deflate=k``): the ``k`` eigenpairs of largest value (``hessop.eigsh``) enter
exactly as ``Σ f(λ_i + λ)``, and the probes estimate the rest on ``P (A + λI) P`` with
``P = I - QQᵀ``, from probes ``Pz`` (Gambhir, Stathopoulos & Orginos 2017 deflate
Hutchinson the same way; Meyer et al. 2021 analyse why it pays): a few outliers no longer
dominate the variance of ``zᵀ f(A) z``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .._array import Array
from .._collective import check_arguments
from .._warnings import warn
from ._krylov import KrylovBasis
from ._linear_map import LinearMap, as_linear_map
from ._ortho import cgs2
from ._progress import Progress
from ._trace_result import TraceResult
from .funm import matrix_function, ritz_function
from .probes import (
    MIN_CALIBRATED,
    check_kind,
    check_seed,
    gather,
    mean_stderr,
    mine,
    probe_comm,
    probes,
    warn_uncalibrated,
)

__all__ = ["logdet", "trace_function"]

QTOL = 1e-5
"""A probe stops when its quadrature moved less than ``QTOL · ||z||² Σ τ_j |f(θ_j)|`` over the last ``LAG`` steps."""
LAG = 3
MAX_STEPS = 150
"""Default cap on the Lanczos steps of one probe."""


def logdet(A: Any, *, damping: float = 0.0, deflate: int = 0, num_probes: int = 60, rtol: float | None = None,
           max_matvecs: int | None = None, max_steps: int = MAX_STEPS, probe: str = "rademacher", seed: int = 0,
           comm: Any = None, progress: bool = False, check_symmetric: bool = True) -> TraceResult:
    """``log det(A + damping·I)`` of a symmetric positive definite operator by stochastic Lanczos quadrature.

    The log-determinant of a Laplace approximation's evidence (MacKay 1992), estimated as
    ``tr log(A + λI)`` by :func:`trace_function` (see it for the parameters). ``A + λI`` must be
    positive definite: a Ritz value at or below zero raises a ``ValueError`` (add damping).

    Examples
    --------
    >>> import numpy as np
    >>> from hessop.testing import SpectralOperator
    >>> lam = np.linspace(0.0, 5.0, 400)
    >>> r = logdet(SpectralOperator(lam, seed=0), damping=0.1, deflate=5)
    >>> bool(abs(r.estimate - np.sum(np.log(lam + 0.1))) < 3 * r.stderr), r.method
    (True, 'slq')
    """
    return trace_function(A, "log", damping=damping, deflate=deflate, num_probes=num_probes, rtol=rtol,
                          max_matvecs=max_matvecs, max_steps=max_steps, probe=probe, seed=seed, comm=comm,
                          progress=progress, check_symmetric=check_symmetric)


def trace_function(A: Any, f: str | Callable, *, damping: float = 0.0, deflate: int = 0, num_probes: int = 60,
                   rtol: float | None = None, max_matvecs: int | None = None, max_steps: int = MAX_STEPS,
                   probe: str = "rademacher", seed: int = 0, comm: Any = None, progress: bool = False,
                   check_symmetric: bool = True) -> TraceResult:
    """``tr f(A + damping·I)`` by stochastic Lanczos quadrature; what ``hessop.trace(A, f=...)`` runs.

    Parameters
    ----------
    A : operator
        Anything :func:`~hessop.solvers._linear_map.as_linear_map` accepts.
    f : {"sqrt", "exp", "log", "inv"} or callable
        A function of the eigenvalues (see :func:`~hessop.solvers.funm.funm`).
    damping : float
        ``λ`` of ``A + λI``.
    deflate : int
        Compute the top ``deflate`` eigenpairs with :func:`hessop.eigsh` (largest ``λ`` for
        ``sqrt``/``log``, largest ``|λ|`` otherwise), add ``Σ f(λ_i + damping)`` exactly and
        estimate the rest on the deflated operator. Their products are counted.
    num_probes : int
        Probes of the first (or only) round; 60 or more give a calibrated standard error.
    rtol : float, optional
        Adaptive: add probes until ``stderr <= rtol · |estimate|`` (or the budget).
    max_matvecs : int, optional
        Cap on the products; probes stop when the next one might not fit.
    max_steps : int
        Cap on the Lanczos steps of one probe (each probe stops earlier once its quadrature settles).
    probe : {"rademacher", "gaussian"}
    seed : int
        Probe ``i`` is drawn from ``default_rng([seed, i])``.
    comm : communicator, optional
        Probe parallelism: rank ``r`` runs probes ``r, r + size, ...``; all ranks return the same result.
    progress, check_symmetric : bool

    Returns
    -------
    TraceResult
        ``method="slq"``; ``samples`` are the per-probe estimates of the whole trace (the exact
        deflated part plus the probe's quadrature), ``stderr`` their standard error with the
        Student-t widening; ``calibrated`` from 60 probes on (coverage in docs/numerics.md).
        ``converged`` is False when ``rtol`` was not met, a probe hit ``max_steps`` without its
        quadrature settling, or the run was interrupted (Ctrl-C keeps the finished probes).
    """
    check_arguments("trace_function", A, comm, f=f if isinstance(f, str) else None, damping=damping, deflate=deflate,
                    num_probes=num_probes, rtol=rtol,
                    max_matvecs=max_matvecs, max_steps=max_steps, probe=probe, seed=seed,
                    check_symmetric=check_symmetric)
    fn, name, low = matrix_function(f)
    for label, value, least in (("num_probes", num_probes, 2), ("max_steps", max_steps, 1), ("deflate", deflate, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{label} must be an int >= {least}; got {value!r}")
    if not math.isfinite(damping):
        raise ValueError(f"damping must be finite; got {damping!r}")
    if rtol is not None and not 0.0 < rtol < 1.0:
        raise ValueError(f"rtol must lie in (0, 1); got {rtol}")
    check_kind(probe)
    seed = check_seed(seed)
    comm = probe_comm(A, comm)
    lm = as_linear_map(A, check_symmetric=check_symmetric, seed=seed)
    budget = math.inf if max_matvecs is None else int(max_matvecs)
    exact, Q, used = 0.0, None, 0
    if deflate:
        exact, Q, used = _deflate(A, lm, int(deflate), fn, name, low, float(damping), seed)
    op = _deflated(lm, Q, float(damping))
    with Progress(progress, f"trace of {name} (SLQ)", "probe") as bar:
        samples, settled, stop = _probes(op, fn, name, low, Q, int(num_probes), rtol, budget - used, int(max_steps),
                                         probe, seed, comm, bar)
    samples = samples + exact
    estimate, stderr = (float(x[0]) for x in mean_stderr(samples[:, None])) if samples.size else (math.nan, math.inf)
    calibrated = samples.size >= MIN_CALIBRATED["slq"]
    if not calibrated:
        warn_uncalibrated(f"trace of {name} (SLQ)", samples.size, MIN_CALIBRATED["slq"])
    if not settled:
        warn(f"some probes' quadrature of {name} had not settled after max_steps={max_steps} Lanczos steps: "
             "the estimate may be biased beyond its standard error; raise max_steps or add damping",
             RuntimeWarning,
         )
    mine_ = float(op.num_matvecs - lm.num_matvecs)  # this rank's probe products; the rest ran on every rank
    spent = mine_ if comm.size == 1 else float(gather(comm, np.array([mine_]))[0])
    num = int(spent) + (lm.num_matvecs + used) * comm.size
    converged = stop == "converged" and settled
    return TraceResult(estimate, stderr, int(num), "slq", bool(converged), samples, bool(calibrated))


def _deflate(A, lm: LinearMap, k: int, fn, name, low, damping: float, seed: int):
    """The top ``k`` eigenpairs of ``A``; returns ``Σ f(λ_i + damping)``, the native basis and products spent."""
    from .eigsh import eigsh

    if k >= lm.n:
        raise ValueError(f"deflate must be smaller than n = {lm.n}; got {k}")
    which = "LA" if low > -math.inf else "LM"
    r = eigsh(A, k=k, which=which, seed=seed, check_symmetric=False)
    if not r.all_converged:
        warn(f"deflation: only {int(np.sum(r.converged))} of the top {k} eigenpairs converged; the exact "
             "part uses Ritz values (its error is second order in their residuals)",
             RuntimeWarning,
         )
    lam = np.asarray(r.eigenvalues, dtype=np.float64) + damping
    if low > -math.inf and np.any(lam <= low):
        raise ValueError(f"f = {name} needs a positive definite operator; A + damping·I has the eigenvalue "
                         f"{lam.min():.3g} (add damping)")
    values = np.asarray(fn(lam), dtype=np.float64)
    return float(np.sum(values)), r.eigenvectors, int(r.num_matvecs)


def _deflated(lm: LinearMap, Q: Array | None, damping: float) -> LinearMap:
    """``P (A + damping·I) P`` with ``P = I - QQᵀ`` (``A + damping·I`` without ``Q``), same counter."""
    product = lm.product
    if Q is None:
        return dataclasses.replace(lm, product=(lambda V: product(V) + damping * V) if damping else product)

    def project(V: Array) -> Array:
        return cgs2(lm, Q, V)[0]  # two passes, as the Krylov kernels orthogonalise

    def deflated(V: Array) -> Array:
        W = project(V)
        return project(product(W) + damping * W)

    return dataclasses.replace(lm, product=deflated)


def _probes(op: LinearMap, fn, name, low, Q, first: int, rtol, budget, max_steps, kind, seed, comm, bar):
    """Rounds of probes until the round is done (no ``rtol``), ``rtol`` is met, or the budget is spent."""
    samples, settled, size, stop = np.zeros(0), True, first, "converged"
    start_products = op.num_matvecs
    try:
        while size > 0:
            start = samples.size
            bar.plan(start + size)
            local = np.zeros((size, 2))  # the quadrature, whether it settled (1) or not (-1)
            for i in mine(comm, start, start + size):
                spent = op.num_matvecs - start_products
                if comm.size == 1 and spent + max_steps > budget:
                    stop, size = "budget", 0
                    break
                local[i - start] = _one(op, fn, name, low, Q, i, max_steps, kind, seed)
                bar.advance(1)
                if comm.size == 1:  # keep what is done in case of an interrupt
                    done = local[: i - start + 1]
                    samples = np.concatenate([samples[:start], done[:, 0]])
                    settled = settled and bool(np.all(done[:, 1] > 0))
            table = gather(comm, local)
            table = table[table[:, 1] != 0]
            samples = np.concatenate([samples[:start], table[:, 0]])
            settled = settled and bool(np.all(table[:, 1] > 0))
            if stop == "budget" or rtol is None:
                break
            mean, err = mean_stderr(samples[:, None])
            bar.error(float(mean[0]), float(err[0]), rtol, op.num_matvecs)
            if err[0] <= rtol * abs(mean[0]):
                break
            wanted = samples.size * (float(err[0]) / (rtol * abs(float(mean[0])) + 1e-300)) ** 2
            size = int(min(samples.size, max(comm.size, math.ceil(1.1 * wanted) - samples.size)))
            stop = "rtol"
        if rtol is not None and stop == "rtol":
            mean, err = mean_stderr(samples[:, None])
            stop = "converged" if err[0] <= rtol * abs(mean[0]) else "budget"
    except KeyboardInterrupt:
        if comm.size > 1 or samples.size == 0:
            raise
        return samples, settled, "interrupt"
    return samples, settled, stop


def _one(op: LinearMap, fn, name, low, Q, i: int, max_steps: int, kind: str, seed: int) -> tuple[float, float]:
    """One probe's quadrature ``||z||² Σ τ_j f(θ_j)`` and 1 if it settled (-1 if it hit ``max_steps``)."""
    z = probes(op, seed, [i], kind)[:, 0]
    if Q is not None:
        z = cgs2(op, Q, z)[0]
    zz = float(op.inner(z, z))
    if zz == 0.0:
        return 0.0, 1.0
    steps = min(max_steps, op.n)
    K = KrylovBasis(op, steps, [seed, i])
    K.start(z)
    values: dict[int, float] = {}  # the quadrature after m steps, evaluated every LAG steps
    while K.size < steps:
        K.extend(min(LAG, steps - K.size) if K.size else 1)
        m = K.size
        theta, U, f_theta = ritz_function(fn, name, low, np.asarray(K.alpha), np.asarray(K.beta)[: m - 1])
        tau = U[0, :] ** 2  # the Gauss weights
        values[m] = zz * float(tau @ f_theta)
        if K.r is None:  # invariant Krylov space: the rule is exact for this probe
            return values[m], 1.0
        earlier = values.get(m - LAG)
        if earlier is not None and abs(values[m] - earlier) <= QTOL * zz * float(tau @ np.abs(f_theta)):
            return values[m], 1.0
    return values[K.size], -1.0
