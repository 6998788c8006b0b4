"""``hessop.funm``: ``f(A) v`` for a symmetric operator by the Lanczos method, with an error estimate.

``m`` Lanczos steps from ``v`` give ``A Q_m ≈ Q_m T_m`` and the approximation
``f(A) v ≈ ||v|| Q_m f(T_m) e_1`` (Saad 1992, *SINUM* 29(1); Higham 2008, *Functions
of Matrices*, ch. 13), exact once the Krylov space is invariant. The basis is the
project's fully reorthogonalised one (:class:`._krylov.KrylovBasis`), so the
approximations ``y_m = ||v|| f(T_m) e_1`` of successive steps live in one
orthonormal basis and the norm of their difference costs no product.

Error estimate: the distance ``||x_m - x_{m-d}||`` between the current and the
``d``-steps-older approximation, with ``d = max(LAG, m // 4)`` (the "difference of
iterates" estimate, Saad 1992 sec. 5; Frommer & Simoncini 2008). It estimates the
error of the *older* iterate, and is reported for the newer one: for the
superlinear convergence of Lanczos on analytic ``f`` it over-estimates, and the lag
growing with ``m`` keeps it above the error through the plateaus that spectra with
eigenvalues near a singularity of ``f`` (``sqrt``, ``log``, ``inv`` near zero) cause.
How often it is still below the true error is measured in docs/numerics.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg

from .._array import Array, namespace, to_numpy
from .._collective import check_arguments
from ._krylov import KrylovBasis
from ._linear_map import LinearMap, as_linear_map
from ._ortho import host
from ._progress import Progress
from .probes import check_seed

__all__ = ["FunmResult", "funm", "matrix_function"]

LAG = 3
"""Smallest lag ``d`` of the difference-of-iterates error estimate (``d = max(LAG, m // 4)``)."""


def _inv(t: np.ndarray) -> np.ndarray:
    return 1.0 / t


NAMED: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "sqrt": (np.sqrt, 0.0), "log": (np.log, 0.0), "exp": (np.exp, -math.inf), "inv": (_inv, -math.inf),
}
"""Named functions and the lower end of their domain (``sqrt`` and ``log`` need ``A`` positive (semi)definite)."""


@dataclass(frozen=True)
class FunmResult:
    """``f(A) v`` and the estimate of its error.

    Attributes
    ----------
    x : array
        ``(n,)`` in the operator's namespace and device.
    error : float
        Estimated ``||x - f(A) v||`` (the difference of iterates; 0 to rounding once the
        Krylov space is invariant, then the approximation is exact).
    relative_error : float
        ``error / ||x||``.
    converged : bool
        ``relative_error <= rtol``.
    num_matvecs : int
        Products spent (symmetry probe included).
    num_steps : int
        Lanczos steps ``m``.
    stopped : str
        ``"converged"``, ``"exhausted"`` (invariant Krylov space: exact), ``"budget"`` or ``"interrupt"``.
    function : str
        The name of ``f``.
    """

    x: Array
    error: float
    relative_error: float
    converged: bool
    num_matvecs: int
    num_steps: int
    stopped: str
    function: str


def matrix_function(f: str | Callable) -> tuple[Callable[[np.ndarray], np.ndarray], str, float]:
    """``f`` as a vectorised host function, its name and the lower end of its domain."""
    if isinstance(f, str):
        if f not in NAMED:
            raise ValueError(f"unknown function {f!r}; use one of {', '.join(map(repr, NAMED))} or a callable on "
                             "eigenvalues")
        fn, low = NAMED[f]
        return fn, f, low
    if not callable(f):
        raise TypeError(f"f must be a name or a callable on an array of eigenvalues; got {type(f).__name__}")
    return (lambda t: np.asarray(f(t), dtype=np.float64)), getattr(f, "__name__", "f"), -math.inf


def ritz_function(fn: Callable, name: str, low: float, alpha: np.ndarray, beta: np.ndarray):
    """Ritz values ``θ``, eigenvectors ``U`` of ``T = tridiag(beta, alpha, beta)`` and ``f(θ)`` (host float64).

    Raises a ``ValueError`` with a sentence when ``θ`` leaves ``f``'s domain or ``f`` is not finite there.
    """
    if alpha.size == 1:
        theta, U = alpha.copy(), np.ones((1, 1))
    else:
        theta, U = scipy.linalg.eigh_tridiagonal(alpha, beta)
    if low > -math.inf and theta[0] < low - 1e-12 * max(abs(theta[-1]), 1.0):
        raise ValueError(f"f = {name} needs a positive semidefinite operator, but A has an eigenvalue at most "
                         f"{theta[0]:.3g} (a Ritz value); add damping or use a function defined there")
    values = fn(np.maximum(theta, low) if low > -math.inf else theta)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"f = {name} is not finite at the Ritz value(s) {theta[~np.isfinite(values)][:3]}; "
                         "the operator has eigenvalues where f is undefined (add damping)")
    return theta, U, values


def apply_function(fn: Callable, name: str, low: float, alpha: np.ndarray, beta: np.ndarray):
    """``f(T) e_1`` for ``T = tridiag(beta, alpha, beta)``, and the relative condition number of ``f`` at ``T``.

    The condition number ``max|f'(θ)| · max|θ| / max|f(θ)|`` bounds the Fréchet derivative's for a
    normal matrix (Higham 2008, sec. 3.1); ``f'`` by central differences.
    """
    theta, U, values = ritz_function(fn, name, low, alpha, beta)
    y = U @ (values * U[0, :])
    t = np.maximum(theta, low) if low > -math.inf else theta
    h = 1e-5 * np.maximum(np.abs(t), 1e-300)
    lo = np.maximum(t - h, low) if low > -math.inf else t - h
    with np.errstate(all="ignore"):
        slope = np.abs((fn(t + h) - fn(lo)) / (t + h - lo))
    top = float(np.max(np.abs(values)))
    cond = float(np.nanmax(slope)) * float(np.max(np.abs(t))) / top if top > 0 else 1.0
    return y, (cond if math.isfinite(cond) else math.inf)


def funm(A: Any, v: Array, f: str | Callable, *, rtol: float = 1e-6, max_matvecs: int | None = None,
         seed: int = 0, check_symmetric: bool = True, progress: bool = False) -> FunmResult:
    """``f(A) v`` for a symmetric operator ``A`` by Lanczos, stopping at an estimated relative error ``rtol``.

    Parameters
    ----------
    A : operator
        Anything :func:`~hessop.solvers._linear_map.as_linear_map` accepts.
    v : array
        ``(n,)``, native or host numpy.
    f : {"sqrt", "exp", "log", "inv"} or callable
        A function of the eigenvalues: a callable takes a float64 numpy array of Ritz values
        and returns ``f`` of each (``np.sqrt``, ``lambda t: np.exp(-t)``). ``"sqrt"`` and ``"log"``
        need ``A`` positive (semi)definite.
    rtol : float
        Target of the estimated relative error ``||x - f(A)v|| / ||x||``.
    max_matvecs : int, optional
        Budget of products (default ``n``, after which the Krylov space is the whole space).
    seed : int
        Seed of the symmetry probe and of the fresh vectors after a Lanczos breakdown.
    check_symmetric : bool
        Probe symmetry with two products first (counted).
    progress : bool
        Show a progress bar of the Lanczos steps with the estimated error against ``rtol``.

    Returns
    -------
    FunmResult

    Notes
    -----
    Ctrl-C returns the current approximation marked not converged. Memory is one vector per
    step (the reorthogonalised basis). See the module docstring for the error estimate.

    Examples
    --------
    >>> import numpy as np
    >>> from hessop.testing import SpectralOperator
    >>> A = SpectralOperator(np.linspace(0.1, 10.0, 300), seed=0)
    >>> v = np.ones(300)
    >>> r = funm(A, v, "sqrt", rtol=1e-8)
    >>> exact = A.eigenvectors() @ (np.sqrt(A.eigenvalues) * (A.eigenvectors().T @ v))
    >>> r.converged, bool(np.linalg.norm(r.x - exact) <= r.error)
    (True, True)
    """
    check_arguments("funm", A, None, v=v, f=f if isinstance(f, str) else None, rtol=rtol, max_matvecs=max_matvecs,
                    seed=seed, check_symmetric=check_symmetric)
    fn, name, low = matrix_function(f)
    if not 0.0 < rtol < 1.0:
        raise ValueError(f"rtol must lie in (0, 1); got {rtol}")
    seed = check_seed(seed)
    lm = as_linear_map(A, check_symmetric=check_symmetric, seed=seed)
    if max_matvecs is not None and (isinstance(max_matvecs, bool) or not isinstance(max_matvecs, (int, np.integer))
                                    or max_matvecs < 1):
        raise ValueError(f"max_matvecs must be a positive int; got {max_matvecs!r}")
    budget = int(max_matvecs) if max_matvecs is not None else lm.num_matvecs + lm.n
    v = _vector(lm, v)
    with Progress(progress, f"funm ({name})", "matvec") as bar:
        result = _funm(bar.ticking(lm), v, fn, name, low, rtol, budget, seed, bar)
        if result.stopped != "interrupt":
            bar.finish()
        return result


def _funm(lm: LinearMap, v: Array, fn, name: str, low: float, rtol: float, budget: int, seed, bar) -> FunmResult:
    v0 = float(host(lm.norm(v))[0])
    if v0 == 0.0:
        return FunmResult(lm.zeros((lm.n,)), 0.0, 0.0, True, lm.num_matvecs, 0, "converged", name)
    K = KrylovBasis(lm, min(lm.n, 32), seed)
    K.start(v)
    history: list[np.ndarray] = []  # y_m for every m
    stopped, error = "budget", math.inf
    try:
        while lm.num_matvecs < budget:
            if K.size == K.capacity:
                K.grow(2 * K.capacity)
            K.extend(1)
            m = K.size
            alpha, beta = np.asarray(K.alpha), np.asarray(K.beta)
            y, cond = apply_function(fn, name, low, alpha, beta[: m - 1])
            history.append(v0 * y)
            exhausted = K.r is None or m >= lm.n  # an invariant Krylov space: f(T) e_1 is exact
            floor = _rounding(history[-1], lm.eps, m, cond)
            error = floor if exhausted else max(_estimate(history), floor)
            size = float(np.linalg.norm(history[-1]))
            bar.plan(lm.num_matvecs + 1)
            bar.note(f"error {error / max(size, 1e-300):.1e} / {rtol:.0e}")
            if exhausted:
                stopped = "exhausted"
                break
            if error <= rtol * size:
                stopped = "converged"
                break
    except KeyboardInterrupt:
        stopped = "interrupt"
    m = len(history)
    if m == 0:
        return FunmResult(lm.zeros((lm.n,)), math.inf, math.inf, False, lm.num_matvecs, 0, stopped, name)
    y = history[-1]
    x = K.basis(m) @ lm.small(y)
    size = float(np.linalg.norm(y))
    rel = error / size if size > 0 else (0.0 if error == 0 else math.inf)
    converged = stopped in ("converged", "exhausted") and rel <= rtol
    return FunmResult(x, float(error), float(rel), bool(converged), lm.num_matvecs, m, stopped, name)


def _estimate(history: list[np.ndarray]) -> float:
    """``||y_m - y_{m-d}||`` with ``d = max(LAG, m // 4)`` (infinite before ``d + 1`` steps)."""
    m = len(history)
    d = max(LAG, m // 4)
    if m <= d:
        return math.inf
    new, old = history[-1], history[-1 - d]
    diff = new.copy()
    diff[: old.size] -= old
    return float(np.linalg.norm(diff))


def _rounding(y: np.ndarray, eps: float, m: int, cond: float) -> float:
    """The accuracy rounding allows: ``sqrt(m) eps cond_f ||y||``.

    The basis and ``T`` are exact to ``O(eps ||A||)``; ``f`` amplifies that by its relative
    condition number at ``T`` (``||A|| ||A⁻¹||`` for ``inv``).
    """
    return math.sqrt(m) * eps * max(cond, 1.0) * float(np.linalg.norm(y))


def _vector(lm: LinearMap, v) -> Array:
    xp = lm.xp
    if isinstance(v, (np.ndarray, list, tuple)) or namespace(v) is not xp:
        v = lm.vector(np.asarray(to_numpy(v) if not isinstance(v, (list, tuple)) else v))
    if v.ndim != 1 or v.shape[0] != lm.rows:
        raise ValueError(f"v must have shape ({lm.rows},); got {tuple(v.shape)}")
    if v.dtype != lm.dtype:
        v = xp.astype(v, lm.dtype)
    if not lm.all_finite(v):  # collective when split: every rank raises together
        raise ValueError("v holds NaN or Inf")
    return v
