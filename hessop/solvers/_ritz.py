"""What every eigensolver shares: its result types, the wanted Ritz values, Rayleigh-Ritz, run control.

The methods (:mod:`.thick_restart`, :mod:`.lanczos`, :mod:`.block`,
:mod:`.power`) and the certification (:mod:`.certify`) build on these; the
entry point :func:`.eigsh.eigsh` chooses the method and runs the control.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .._array import Array
from ._linear_map import LinearMap
from ._small import eigh as small_eigh


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
        Recomputed from the returned pairs with one product of the ``k`` eigenvectors
        (reserved in the budget; :mod:`.verify`), never reported below the vectors'
        machine epsilon nor below the operator's ``product_error`` (finite-difference
        products). A run interrupted by Ctrl-C keeps the Krylov relation's estimates.
    converged : numpy.ndarray
        ``residual_norms <= tol`` (bool), and, for every method but ``"power"``, the result
        certified complete: no copy of a wanted eigenvalue missed (:mod:`.certify`). A
        certification cut short by the budget, a callback or Ctrl-C leaves every pair False.
    num_matvecs : int
        Products spent by this call (symmetry probe included).
    method, which : str
    num_restarts : int
        Restart cycles (thick-restart, block) or deflation steps (power), plus the
        certification rounds that found a missed copy (:mod:`.certify`).
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


class Snapshot(NamedTuple):
    """One Rayleigh-Ritz step of a run over the first ``m`` basis vectors."""

    m: int
    theta: np.ndarray
    """Every Ritz value, ascending."""
    sel: np.ndarray
    """Indices of the wanted ones, in eigsh's order."""
    Y: np.ndarray
    """Eigenvectors of the projected matrix (columns, as ``theta``)."""
    rel: np.ndarray
    """Relative residuals of the wanted pairs."""
    res: np.ndarray
    """Absolute residual norms of every pair."""


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
        self.last: tuple[Snapshot, Callable] | None = None  # the run's last snapshot and basis, for certify
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=k, desc=f"eigsh ({method})", unit="pair")

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
        # pair attain; never claim better than the vectors' machine epsilon, nor than the products' own error.
        return np.maximum(rel, max(self.lm.eps, self.lm.product_error))

    def snapshot(self, theta: np.ndarray, Y: np.ndarray, res: np.ndarray, m: int) -> Snapshot:
        """The :class:`Snapshot` of ``θ`` (ascending) with eigenvectors ``Y`` of the projected matrix of the
        first ``m`` basis vectors and absolute residuals ``res`` of every pair."""
        sel = wanted(theta, self.k, self.which)
        return Snapshot(m, theta, sel, Y, self.relative(theta, theta[sel], res[sel]), np.asarray(res))

    def judge(self, theta: np.ndarray, sel: np.ndarray, Y: np.ndarray, res: np.ndarray, m: int, restarts: int,
              exhausted: bool) -> tuple[Snapshot, str | None]:
        """The :class:`Snapshot` of a Rayleigh-Ritz step over ``m`` basis vectors and why the run stops there.

        ``"converged"`` (every wanted pair below ``tol``), ``"exhausted"`` (the basis spans the
        whole space), ``"callback"`` (the callback asked to stop, see :meth:`report`), or None to go on.
        The shared tail of every restarted Krylov method's step.
        """
        snap = self.snapshot(theta, Y, res, m)
        if sel.size == self.k and bool(np.all(snap.rel <= self.tol)):
            return snap, "converged"
        if exhausted:
            return snap, "exhausted"
        if self.report(theta[sel], snap.rel, restarts):
            return snap, "callback"
        return snap, None

    def report(self, theta: np.ndarray, rel: np.ndarray, restarts: int, stage: str = "") -> bool:
        """Update the progress bar and ask the callback; True means stop.

        The bar counts converged wanted pairs out of ``k`` and shows the products
        spent and the worst residual against the tolerance (``stage`` names a
        phase such as the certification).
        """
        if self.bar is not None:
            self.bar.n = int(np.count_nonzero(rel <= self.tol))
            worst = float(np.max(rel)) if rel.size else 0.0
            self.bar.set_postfix_str(f"{self.lm.num_matvecs} products, residual {worst:.1e} / {self.tol:.0e}"
                                     + (f", {stage}" if stage else ""))
        if self.callback is None:
            return False
        state = EigshState(np.array(theta), np.array(rel), self.lm.num_matvecs, restarts, self.method)
        answer = self.callback(state)
        return answer is True or answer == "stop"

    def ritz_result(self, snap: Snapshot | None, basis: Callable, restarts: int, stopped: str) -> EigshResult:
        """The result from the last Rayleigh-Ritz snapshot (kept in ``last`` for :mod:`.certify`).

        ``basis(m)`` gives the first ``m`` basis vectors; no snapshot means no pair yet.
        """
        if snap is None:
            return self.result(np.zeros(0), None, np.zeros(0), restarts, stopped)
        self.last = (snap, basis)
        return self.result(snap.theta[snap.sel], basis(snap.m) @ to_device(self.lm, snap.Y[:, snap.sel]), snap.rel,
                           restarts, stopped)

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
    """A small host coefficient matrix moved next to the operator's vectors (namespace, device, dtype)."""
    return lm.small(np.ascontiguousarray(Y))
