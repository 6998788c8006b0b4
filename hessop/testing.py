"""Operators with prescribed spectra, for tests, benchmarks and numerical research.

Each ``*_spectrum`` function returns a sorted float64 eigenvalue array shaped like
a family seen in practice. :class:`SpectralOperator` turns eigenvalues into a
symmetric operator ``A = Q diag(λ) Qᵀ`` with a random orthogonal ``Q``: dense
(an explicit Haar-random ``Q``) or implicit (a product of a few Householder
reflections, O(n) memory and O(n) per product, for large n). It is a scipy
``LinearOperator`` and also speaks the native protocol (``apply``, ``xp``,
``device``, ``native_dtype``) in any array-API namespace, so a solver test can
run the same spectrum on numpy, ``array_api_strict`` or torch.
:class:`SplitSpectralOperator` is the same matrix with its vectors split across
processes (each rank holds a block of rows), to test the solvers on split
operators without any framework; :class:`InterruptingOperator` is one that is interrupted at a
chosen product, as by Ctrl-C.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._array import Array, from_numpy, namespace, rng, to_numpy
from .distributed import as_comm
from .operator import NativeOperator
from .split import RowSplit, refuse_host


def nn_like_spectrum(
    n: int,
    num_outliers: int = 10,
    null_fraction: float = 0.6,
    negative_fraction: float = 0.02,
    seed: int = 0,
) -> np.ndarray:
    """A neural-network-like Hessian spectrum (Ghorbani et al. 2019; Papyan 2019).

    ``num_outliers`` well separated large eigenvalues (about one per class), an
    exact null space holding ``null_fraction`` of the spectrum, a few small
    negative eigenvalues and a positive bulk decaying towards zero.
    """
    g = rng(seed)
    n_null = int(round(null_fraction * n))
    n_neg = int(round(negative_fraction * n))
    n_bulk = n - n_null - n_neg - num_outliers
    if n_bulk < 0:
        raise ValueError("n is too small for that many outliers, null and negative eigenvalues")
    outliers = 10.0 * (1.0 + np.arange(num_outliers)) + g.uniform(0, 3, num_outliers)
    bulk = 2.0 * g.exponential(0.15, n_bulk) * np.exp(-np.linspace(0, 3, n_bulk))
    negative = -np.abs(g.exponential(0.05, n_neg))
    return np.sort(np.concatenate([outliers, bulk, np.zeros(n_null), negative]))


def student_t_spectrum(n: int, df: float = 3.0, zero_fraction: float = 0.5, scale: float = 1.0,
                       seed: int = 0) -> np.ndarray:
    """Heavy-tailed eigenvalues: |Student-t| draws, with a ``zero_fraction`` of exact zeros (PSD)."""
    g = rng(seed)
    n_zero = int(round(zero_fraction * n))
    return np.sort(np.concatenate([np.zeros(n_zero), scale * np.abs(g.standard_t(df, n - n_zero))]))


def geometric_spectrum(n: int, ratio: float = 0.9, top: float = 1.0) -> np.ndarray:
    """``top · ratio**i`` for i = 0..n-1: geometric decay (PSD, condition number ``ratio**-(n-1)``)."""
    return np.sort(top * ratio ** np.arange(n))


def clustered_spectrum(n: int, centers=(1.0, 5.0, 10.0), width: float = 1e-3, seed: int = 0) -> np.ndarray:
    """Eigenvalues in tight clusters of relative ``width`` around ``centers`` (equal shares)."""
    g = rng(seed)
    centers = np.asarray(centers, dtype=float)
    idx = np.arange(n) % len(centers)
    return np.sort(centers[idx] * (1.0 + width * g.standard_normal(n)))


def low_rank_spectrum(n: int, rank: int = 5, top: float = 10.0) -> np.ndarray:
    """``rank`` eigenvalues from ``top`` down to ``top/rank``, the rest exactly zero."""
    vals = np.zeros(n)
    vals[:rank] = top * (rank - np.arange(rank)) / rank
    return np.sort(vals)


def indefinite_spectrum(n: int, negative_fraction: float = 0.3, seed: int = 0) -> np.ndarray:
    """Uniform eigenvalues on [-1, 2] with about ``negative_fraction`` of them below zero."""
    g = rng(seed)
    n_neg = int(round(negative_fraction * n))
    return np.sort(np.concatenate([-g.uniform(0.05, 1.0, n_neg), g.uniform(0.05, 2.0, n - n_neg)]))


class SpectralOperator(NativeOperator):
    """``A = Q diag(eigenvalues) Qᵀ`` with a seeded random orthogonal ``Q``.

    Parameters
    ----------
    eigenvalues : array_like
        The spectrum (any order).
    seed : int
        Seed of ``Q``.
    implicit : bool
        ``False``: a dense Haar-random ``Q`` (n up to a few thousand).
        ``True``: ``Q`` is a product of ``reflections`` Householder reflections.
    xp, device, dtype
        Namespace, device and dtype of the native path (default numpy float64).
    """

    def __init__(self, eigenvalues, seed: int = 0, implicit: bool = False, reflections: int = 3,
                 xp: Any = None, device: Any = None, dtype: Any = None):
        lam = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())
        n = lam.size
        self.eigenvalues = lam
        xp = xp if xp is not None else namespace(np.zeros(1))
        super().__init__(n, xp, device, dtype if dtype is not None else xp.float64)
        g = rng(seed)
        self.implicit = implicit
        if implicit:
            W = g.standard_normal((n, reflections))
            self._W = W / np.linalg.norm(W, axis=0)
            self._lam_native = self._native(lam[:, None])
            self._W_native = self._native(self._W)
        else:
            self._Q = _orthogonal(n, g)
            self._dense_native = self._native((self._Q * lam) @ self._Q.T)

    def _native(self, a: np.ndarray) -> Array:
        return from_numpy(a, self.xp, self.device, self.native_dtype)

    def _product(self, V: Array) -> Array:
        if not self.implicit:
            return self._dense_native @ V
        X = V if V.ndim == 2 else V[:, None]
        W = self._W_native
        reflect = lambda X, j: X - 2.0 * W[:, j:j + 1] @ (W[:, j:j + 1].T @ X)  # noqa: E731
        for j in reversed(range(W.shape[1])):  # Qᵀ X with Q = H_m ... H_0
            X = reflect(X, j)
        X = self._lam_native * X
        for j in range(W.shape[1]):  # Q X
            X = reflect(X, j)
        return X if V.ndim == 2 else self.xp.reshape(X, (-1,))

    def eigenvectors(self) -> np.ndarray:
        """The exact eigenvectors as columns, in ascending eigenvalue order (float64, host)."""
        if not self.implicit:
            return self._Q
        Q = np.eye(self.shape[0])
        for j in range(self._W.shape[1]):
            w = self._W[:, j:j + 1]
            Q = Q - 2.0 * w @ (w.T @ Q)
        return Q

    def to_dense(self) -> np.ndarray:
        """The matrix as a float64 host array."""
        Q = self.eigenvectors()
        return (Q * self.eigenvalues) @ Q.T


class InterruptingOperator(SpectralOperator):
    """A :class:`SpectralOperator` whose ``interrupt_at``-th product raises ``KeyboardInterrupt``, as Ctrl-C
    would there: to test what a solver returns when it is interrupted (a block product counts once)."""

    def __init__(self, eigenvalues, interrupt_at: int, **kwargs: Any):
        super().__init__(eigenvalues, **kwargs)
        self.interrupt_at = int(interrupt_at)
        self.products = 0

    def _product(self, V):
        self.products += 1
        if self.products == self.interrupt_at:
            raise KeyboardInterrupt
        return super()._product(V)


class SplitSpectralOperator(NativeOperator):
    """:class:`SpectralOperator`'s dense matrix with vectors split over the ranks of ``comm`` (numpy).

    Every rank builds the same ``A = Q diag(eigenvalues) Qᵀ`` from ``seed`` and keeps
    its block of rows; :meth:`apply` takes and returns this rank's rows of a
    vector. A product assembles the whole input with one all-reduce of ``n x k``
    (a test operator: small ``n`` only) and multiplies by the local rows.

    Parameters
    ----------
    eigenvalues, seed
        As :class:`SpectralOperator` (dense ``Q``).
    comm : communicator, optional
        The ranks the rows are split over (default: one process).
    rows : int, optional
        This rank's row count (default: ``n`` in near-equal contiguous blocks).
    """

    noun = "split operator"

    def __init__(self, eigenvalues, comm: Any = None, *, seed: int = 0, rows: int | None = None):
        comm = as_comm(comm)
        self.comm = comm
        self.eigenvalues = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())
        n = self.eigenvalues.size
        rows = RowSplit.even(n, comm).rows if rows is None else rows
        split = RowSplit.from_rows(rows, comm, n)  # ranks that disagree on n or the rows fail together
        self.split = self._layout = split
        g = rng(seed)
        self._Q = _orthogonal(n, g)
        self._rows = ((self._Q * self.eigenvalues) @ self._Q.T)[split.offset:split.stop]
        xp = namespace(np.zeros(1))
        super().__init__(n, xp, "cpu", xp.float64)

    def _product(self, V: Array) -> Array:
        return self._rows @ self._layout.gather(np.asarray(to_numpy(V)))

    def to_dense(self) -> np.ndarray:
        """Refused: no rank holds the whole matrix's columns (one sentence naming the solvers)."""
        refuse_host(self.noun, self._layout, "to_dense()")

    def eigenvectors(self) -> np.ndarray:
        """The exact eigenvectors (whole, host float64), as :meth:`SpectralOperator.eigenvectors`."""
        return self._Q


def extreme_eigenvalues(eigenvalues, k: int, which: str = "LA") -> np.ndarray:
    """The ``k`` wanted eigenvalues of a spectrum, in the order :func:`hessop.eigsh` returns them.

    ``"LA"`` descending, ``"SA"`` ascending, ``"LM"`` by descending ``|λ|``,
    ``"BE"`` the ``k // 2`` smallest ascending then the largest ascending.
    """
    eigs = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())
    if which == "LA":
        return eigs[::-1][:k]
    if which == "SA":
        return eigs[:k]
    if which == "LM":
        return eigs[np.argsort(-np.abs(eigs), kind="stable")][:k]
    if which == "BE":
        return np.concatenate([eigs[: k // 2], eigs[eigs.size - (k - k // 2):]])
    raise ValueError(f"unknown which {which!r}; choose one of 'LA', 'SA', 'LM', 'BE'")


def _orthogonal(n: int, g: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal ``n x n`` matrix (scipy.stats, imported only when one is drawn)."""
    from scipy.stats import ortho_group

    return ortho_group.rvs(n, random_state=g) if n > 1 else np.ones((1, 1))
