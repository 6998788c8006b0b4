"""``hessop.eigsh``: extreme eigenpairs of a symmetric operator, on the operator's device.

One entry point over four Krylov methods that share the same contract: a
matvec budget, relative Ritz residuals as the stopping rule, callbacks and
interrupts that return what has been found, and one result type.

========================  ===================================================================
``method``                algorithm
========================  ===================================================================
``"thick-restart"``       thick-restart Lanczos (Wu & Simon 2000), memory bounded by ``ncv``
``"lanczos"``             Lanczos with full reorthogonalisation, grown until converged
``"block"``               thick-restarted block Lanczos on ``(n, block_size)`` products
``"power"``               deflated power iteration as in PyHessian (Yao et al. 2020)
========================  ===================================================================

The pieces every method needs (selection of wanted Ritz values, Rayleigh-Ritz
on a small projected matrix, the run control) live here; the methods live in
their own modules and are imported when asked for.
"""

from __future__ import annotations

import importlib
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .._collective import check_arguments
from .._array import Array, numpy_dtype
from ._linear_map import LinearMap, as_linear_map
from ._small import eigh as small_eigh

__all__ = ["eigsh", "EigshResult", "EigshState"]

WHICH = ("LA", "SA", "LM", "BE")
METHODS = {
    "thick-restart": ("thick_restart", "thick_restart_lanczos"),
    "lanczos": ("thick_restart", "lanczos_eigsh"),
    "block": ("block", "block_lanczos"),
    "power": ("power", "power_iteration"),
}
DEFAULT_TOL = 1e-6
FLOOR_EPS = 100.0
"""The tolerance floor in units of the vectors' machine epsilon (see :func:`_tol` and docs/numerics.md)."""


@dataclass(frozen=True)
class EigshResult:
    """Eigenpairs and their quality.

    Attributes
    ----------
    eigenvalues : numpy.ndarray
        ``(k,)`` float64, ordered by ``which``: descending for ``"LA"``,
        ascending for ``"SA"``, descending ``|λ|`` for ``"LM"``, ascending for ``"BE"``.
    eigenvectors : array
        ``(n, k)`` orthonormal columns in the operator's namespace and device.
    residual_norms : numpy.ndarray
        ``||A x - λ x|| / max(|λ|, ||A||_est)`` (host float64), the normwise
        backward error of each pair; ``||A||_est`` is the largest ``|Ritz value|`` seen.
        Estimated from the Krylov relation (no extra products) and never reported
        below the vectors' machine epsilon, the accuracy rounding lets a pair attain.
    converged : numpy.ndarray
        ``residual_norms <= tol`` (bool).
    num_matvecs : int
        Products spent by this call (symmetry probe included).
    method, which : str
    num_restarts : int
        Restart cycles (thick-restart, block) or deflation steps (power).
    tol : float
        The tolerance actually used (after the precision floor).
    stopped : str
        ``"converged"``, ``"budget"`` (``max_matvecs`` spent), ``"callback"``,
        ``"interrupt"`` (KeyboardInterrupt), ``"exhausted"`` (the whole space
        was built: the pairs are exact) or, for ``"power"``, ``"settled"`` (every
        eigenvalue stopped changing by ``tol``, PyHessian's rule; ``converged``
        still tells whether the residuals met ``tol``).
    """

    eigenvalues: np.ndarray
    eigenvectors: Array
    residual_norms: np.ndarray
    converged: np.ndarray
    num_matvecs: int
    method: str
    which: str
    num_restarts: int
    tol: float
    stopped: str

    @property
    def all_converged(self) -> bool:
        """Whether every requested pair met the tolerance."""
        return bool(np.all(self.converged))


@dataclass(frozen=True)
class EigshState:
    """What a ``callback`` sees after each Rayleigh-Ritz step (the current wanted Ritz pairs)."""

    eigenvalues: np.ndarray
    residual_norms: np.ndarray
    num_matvecs: int
    num_restarts: int
    method: str


def eigsh(
    A: Any,
    k: int = 6,
    which: str = "LA",
    method: str = "thick-restart",
    tol: float | None = None,
    ncv: int | None = None,
    max_matvecs: int | None = None,
    block_size: int = 4,
    v0: Array | None = None,
    seed: int = 0,
    check_symmetric: bool = True,
    callback: Callable[[EigshState], Any] | None = None,
    progress: bool = False,
) -> EigshResult:
    """``k`` extreme eigenpairs of a symmetric operator.

    Parameters
    ----------
    A
        Anything :func:`~hessop.solvers._linear_map.as_linear_map` accepts: a
        :class:`~hessop.HessianOperator`, a scipy ``LinearOperator`` or sparse
        matrix, a dense array of any array-API namespace. Eigenvectors come back
        in ``A``'s namespace, on its device.
    k : int
        Number of eigenpairs, ``1 <= k < n``.
    which : {"LA", "SA", "LM", "BE"}
        Largest algebraic, smallest algebraic, largest magnitude, or both ends
        (``k // 2`` from the bottom, the rest from the top).
    method : {"thick-restart", "lanczos", "block", "power"}
        See the module docstring. ``"power"`` supports ``"LM"``, and ``"LA"`` /
        ``"SA"`` through a spectral shift (:mod:`.power`).
    tol : float, optional
        Relative residual at which a pair is converged (default ``1e-6``). It is
        raised to the floor of the operator's precision, ``100 eps`` (``1.2e-5``
        in float32, ``2.2e-14`` in float64), ten times the level at which the true
        residuals of float32 network Hessians stop falling (docs/numerics.md);
        asking for less warns.
    ncv : int, optional
        Basis size of the restarted methods (default ``min(n, max(2k + 1, 20))``,
        plus room for a block in ``"block"``; ``min(n, max(3k, 40))`` for
        ``"thick-restart"`` with ``"SA"`` or ``"BE"``, the clustered end of a
        Hessian); the maximum depth of ``"lanczos"`` (default ``n``).
    max_matvecs : int, optional
        Budget of products (default ``max(1000, 10 n)``); when it is spent the
        result is returned with ``converged`` False where not met.
    block_size : int
        Columns per product for ``"block"``.
    v0 : array, optional
        Start vector (or ``(n, block_size)`` start block); default seeded Gaussian.
    seed : int
        Seed of the start and refresh vectors: the same seed gives the same
        result in every framework.
    check_symmetric : bool
        Probe symmetry with two products before starting (counted).
    callback : callable, optional
        Called with an :class:`EigshState` after each Rayleigh-Ritz step; return
        True or ``"stop"`` to stop early (the result is then marked partial).
    progress : bool
        Show a tqdm bar of the products spent.

    Returns
    -------
    EigshResult

    Notes
    -----
    ``A`` with ``n <= ncv`` is solved by a Krylov space of full depth, exact up
    to rounding; there is no separate dense path. Pressing Ctrl-C returns the
    current Ritz pairs (``stopped="interrupt"``) instead of losing them.

    Krylov methods see an eigenvalue only through the start vector's component
    in its eigenspace. A start vector whose Krylov space is invariant (common
    for Hessians, which are mostly null space) is followed by fresh random
    vectors, and the run does not stop until a fresh block confirms the wanted
    values. Copies of a repeated eigenvalue appear one after another (through
    rounding and restarts) or up to ``block_size`` at once with ``"block"``;
    asking for more copies of a huge multiplicity (e.g. the ``k`` smallest
    eigenvalues of a matrix whose bottom is a 1000-fold zero) is slow.
    """
    check_arguments("eigsh", A, None, k=k, which=which, method=method, tol=tol, ncv=ncv, max_matvecs=max_matvecs, block_size=block_size, v0=v0, seed=seed, check_symmetric=check_symmetric)  # noqa: E501
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(map(repr, METHODS))}")
    if which not in WHICH:
        raise ValueError(f"unknown which {which!r}; choose one of {', '.join(map(repr, WHICH))}")
    if method == "power" and which == "BE":
        raise ValueError("method='power' finds one end at a time; use which='LM', 'LA' or 'SA', or method='thick-restart'")
    lm = as_linear_map(A, check_symmetric=False)
    if not isinstance(k, (int, np.integer)) or k < 1 or k >= lm.n:
        raise ValueError(f"k must be an integer with 1 <= k < n = {lm.n}; got {k!r} (use a dense eigensolver for all pairs)")
    if max_matvecs is not None and max_matvecs < 1:
        raise ValueError(f"max_matvecs must be at least 1; got {max_matvecs}")
    if ncv is not None and not k < ncv:
        raise ValueError(f"ncv must exceed k = {k}; got {ncv}")
    if method == "block" and block_size < 1:
        raise ValueError(f"block_size must be at least 1; got {block_size}")
    budget = int(max_matvecs) if max_matvecs is not None else max(1000, 10 * lm.n)
    tol = _tol(tol, lm)
    if check_symmetric:
        lm = as_linear_map(A, check_symmetric=True, seed=seed)
    control = Control(lm, k, which, tol, budget, callback, method, progress)
    module, name = METHODS[method]
    solve = getattr(importlib.import_module(f"{__package__}.{module}"), name)
    try:
        return solve(lm, control, ncv=ncv, v0=v0, seed=seed, block_size=block_size)
    finally:
        control.close()


def _tol(tol: float | None, lm: LinearMap) -> float:
    """The tolerance used: ``tol`` (default :data:`DEFAULT_TOL`) raised to ``FLOOR_EPS * eps``.

    Rounding in the products (sums over samples and activations) leaves the true
    residual of a computed pair at about ``10 eps ||A||`` however long Lanczos runs,
    while the Krylov relation's estimate keeps falling: measured against a float64
    copy of the operator, float32 network Hessians stop at 6-10 eps, and the
    estimate matches the true residual to three digits at ``100 eps`` but is half
    of it at ``10 eps``. The floor keeps a factor 10 above that level.
    """
    floor = FLOOR_EPS * lm.eps
    if tol is None:
        return max(DEFAULT_TOL, floor)
    if not tol > 0 or not math.isfinite(tol):
        raise ValueError(f"tol must be a positive number; got {tol!r}")
    if tol < floor:
        warnings.warn(
            f"tol={tol:g} is below what {numpy_dtype(lm.xp, lm.dtype).name} arithmetic can certify; "
            f"using {floor:.2g} (run the operator in float64 for tighter results)",
            RuntimeWarning,
            stacklevel=3,
        )
        return floor
    return float(tol)


def wanted(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    """Indices of the ``k`` wanted values of ascending ``theta``, in the order documented by :func:`eigsh`."""
    m = theta.size
    k = min(k, m)
    if which == "LA":
        return np.arange(m - 1, m - 1 - k, -1)
    if which == "SA":
        return np.arange(k)
    if which == "LM":
        return np.argsort(-np.abs(theta), kind="stable")[:k]
    low = k // 2
    return np.concatenate([np.arange(low), np.arange(m - (k - low), m)])


def rayleigh_ritz(H: np.ndarray, B: np.ndarray, k: int, which: str):
    """Ritz pairs of a projected matrix with the residual norms given by its Krylov relation.

    ``A Q = Q H + P B E_lastᵀ`` (``P`` the orthonormal next block, ``B`` its
    ``r x b`` coupling to the last ``b`` columns of ``Q``) gives, for
    ``H y = θ y``, ``||A Q y - θ Q y|| = ||B y_last||`` without a product.

    Returns all Ritz values (ascending), the wanted indices, the eigenvector
    matrix and the absolute residual norm of every Ritz pair.
    """
    H = 0.5 * (H + H.T)
    theta, Y = small_eigh(H)
    b = B.shape[1]
    res = np.linalg.norm(B @ Y[H.shape[0] - b:, :], axis=0) if B.size else np.zeros(theta.size)
    return theta, wanted(theta, k, which), Y, res


class Control:
    """Budget, tolerance, callback, progress and the ``||A||`` estimate of one call."""

    def __init__(self, lm: LinearMap, k: int, which: str, tol: float, budget: int,
                 callback, method: str, progress: bool):
        self.lm, self.k, self.which, self.tol = lm, k, which, tol
        self.budget, self.callback, self.method = budget, callback, method
        self.anorm = 0.0
        self.start = lm.num_matvecs  # the symmetry probe is already counted
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=budget, desc=f"eigsh ({method})", unit="matvec")

    def remaining(self) -> int:
        """Products left in the budget."""
        return self.budget - self.lm.num_matvecs

    def relative(self, theta_all: np.ndarray, theta: np.ndarray, res: np.ndarray) -> np.ndarray:
        """Relative residuals ``res / max(|θ|, ||A||_est)``, updating the estimate from all Ritz values."""
        if theta_all.size:
            self.anorm = max(self.anorm, float(np.max(np.abs(theta_all))))
        scale = np.maximum(np.abs(theta), self.anorm)
        rel = np.where(scale > 0, res / np.where(scale > 0, scale, 1.0), np.where(res > 0, np.inf, 0.0))
        # The Krylov relation's estimate keeps shrinking past what rounding lets a computed
        # pair attain; never claim better than the vectors' machine epsilon.
        return np.maximum(rel, self.lm.eps)

    def report(self, theta: np.ndarray, rel: np.ndarray, restarts: int) -> bool:
        """Update the progress bar and ask the callback; True means stop."""
        if self.bar is not None:
            self.bar.n = min(self.lm.num_matvecs, self.budget)
            self.bar.set_postfix(max_residual=f"{float(np.max(rel)) if rel.size else 0.0:.1e}")
        if self.callback is None:
            return False
        state = EigshState(np.array(theta), np.array(rel), self.lm.num_matvecs, restarts, self.method)
        answer = self.callback(state)
        return answer is True or answer == "stop"

    def ritz_result(self, snap, basis, restarts: int, stopped: str) -> EigshResult:
        """The result from the last Rayleigh-Ritz snapshot ``(m, θ, wanted, Y, rel)``.

        ``basis(m)`` gives the first ``m`` basis vectors; no snapshot means no pair yet.
        """
        if snap is None:
            return self.result(np.zeros(0), None, np.zeros(0), restarts, stopped)
        m, theta, sel, Y, rel = snap
        return self.result(theta[sel], basis(m) @ to_device(self.lm, Y[:, sel]), rel, restarts, stopped)

    def result(self, theta: np.ndarray, X: Array | None, rel: np.ndarray, restarts: int, stopped: str) -> EigshResult:
        """The frozen result; a run stopped before ``k`` Ritz pairs existed is padded with NaN pairs."""
        theta = np.asarray(theta, dtype=np.float64).ravel()
        rel = np.asarray(rel, dtype=np.float64).ravel()
        missing = self.k - theta.size
        if missing > 0:
            theta = np.concatenate([theta, np.full(missing, np.nan)])
            rel = np.concatenate([rel, np.full(missing, np.inf)])
            pad = self.lm.zeros((self.lm.n, missing))
            X = pad if X is None or X.shape[1] == 0 else self.lm.xp.concat([X, pad], axis=1)
        return EigshResult(
            eigenvalues=np.asarray(theta, dtype=np.float64),
            eigenvectors=X,
            residual_norms=rel,
            converged=rel <= self.tol,
            num_matvecs=self.lm.num_matvecs,
            method=self.method,
            which=self.which,
            num_restarts=int(restarts),
            tol=self.tol,
            stopped=stopped,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def to_device(lm: LinearMap, Y: np.ndarray) -> Array:
    """A small host coefficient matrix moved to the operator's namespace, device and dtype."""
    return lm.asarray(np.ascontiguousarray(Y))
