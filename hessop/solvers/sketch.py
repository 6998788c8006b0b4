"""Eigenvalue sketches: a small ``d x d`` matrix whose spectrum approximates the large eigenvalues.

* ``method="rademacher"``: ``B = Sᵀ A S`` with ``S`` of i.i.d. ``±1/√d`` entries, so
  ``E[S Sᵀ] = I`` and ``tr(B)`` is an unbiased trace estimate (the mean of ``d``
  Hutchinson samples). The eigenvalues of ``B`` approximate the large-magnitude
  eigenvalues of ``A`` to additive error ``O(‖A‖_F / √d)``, of either sign
  (Swartworth & Woodruff 2023, "Optimal eigenvalue approximation via sketching", STOC).
* ``method="nystrom"``: the randomized Nyström approximation ``AΩ(ΩᵀAΩ)⁺ΩᵀA`` of a
  positive semi-definite ``A`` (Gittens & Mahoney 2016, *JMLR* 17), computed in the
  numerically stable shifted form of Tropp, Yurtsever, Udell & Cevher 2017
  (*SIMAX* 38(4), Alg. 3).
* ``refine=True``: Rayleigh-Ritz on the sketched range ``span(AΩ)``: orthonormalise,
  project ``QᵀAQ`` (``d`` more products), take its eigenvalues. Exact when ``d = n``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg

from .._collective import check_arguments
from .._renamed import renamed
from .._warnings import warn
from ._linear_map import as_linear_map
from ._progress import Progress
from .probes import Interrupted, apply_blocks, check_method, check_seed, host64, mean_stderr, probes

__all__ = ["SketchResult", "sketch"]

METHODS = ("rademacher", "nystrom")


@dataclass(frozen=True)
class SketchResult:
    """What a sketch says about the spectrum.

    Attributes
    ----------
    eigenvalues : numpy.ndarray
        Host float64, descending: approximations of the largest (in magnitude,
        for Rademacher) eigenvalues of ``A``.
    trace : float
        ``tr(SᵀAS)`` (Rademacher: unbiased for ``tr(A)``); for Nyström the trace
        of the approximation, a lower bound of ``tr(A)`` for PSD ``A``.
    trace_stderr : float
        Standard error of ``trace`` for Rademacher (spread of the ``d`` column
        samples ``d·s_jᵀAs_j``, Student-t widened as in :func:`~hessop.solvers.trace.trace`; from
        fewer than 60 columns it is not calibrated: use :func:`~hessop.solvers.trace.trace` for an
        error bar); not defined for Nyström, whose trace is a bound, not an estimate (NaN).
    num_matvecs : int
    method : str
        ``"rademacher"`` or ``"nystrom"`` (``kind`` is its deprecated name).
    refined : bool
        ``False`` also when an interrupt came during the refinement.
    converged : bool
        ``False`` when a ``KeyboardInterrupt`` stopped the products: the sketch then has the
        ``d' < d`` columns whose products finished (``eigenvalues`` has ``d'`` entries).
    """

    eigenvalues: np.ndarray
    trace: float
    trace_stderr: float
    num_matvecs: int
    method: str
    refined: bool
    converged: bool = True

    @property
    def kind(self) -> str:
        """Deprecated name of :attr:`method`."""
        warn("SketchResult.kind is now SketchResult.method; the name kind will be removed",
             DeprecationWarning)
        return self.method


@renamed(kind="method")
def sketch(A: Any, d: int = 50, *, method: str = "rademacher", seed: int = 0, refine: bool = False,
           check_symmetric: bool = True, block_size: int = 16, progress: bool = False) -> SketchResult:
    """Sketch a symmetric operator down to ``d x d`` and return the sketch's spectrum.

    Parameters
    ----------
    A : operator
        Anything :func:`~hessop.solvers._linear_map.as_linear_map` accepts.
    d : int
        Sketch size, ``1 <= d <= n`` (``d`` products; ``2d`` with ``refine``).
    method : {"rademacher", "nystrom"}
        Nyström needs a positive semi-definite ``A`` (a Gauss-Newton matrix, a
        Hessian near a minimum); Rademacher works for any symmetric ``A``. ``kind=`` is
        its deprecated name.
    seed : int
        Column ``j`` of the test matrix comes from ``default_rng([seed, j])``.
    refine : bool
        Replace the sketch eigenvalues by Ritz values of ``A`` on ``span(AΩ)``.
    check_symmetric : bool
        Test symmetry with two products first.
    block_size : int
        Columns per batched product; a ``KeyboardInterrupt`` keeps the finished blocks
        and returns the sketch of those columns (``converged=False``), or the unrefined
        sketch if it came during the refinement. With no finished column it propagates.
    progress : bool
        Show a progress bar of the products done out of the ``d`` planned (``2d`` with ``refine``).

    Returns
    -------
    SketchResult

    Examples
    --------
    >>> import numpy as np
    >>> from hessop.testing import SpectralOperator
    >>> A = SpectralOperator(np.concatenate([[10.0, 9.0, 8.0], np.zeros(197)]), seed=0)   # rank 3
    >>> s = sketch(A, d=10, refine=True)        # span(AΩ) is range(A): the Ritz values are exact
    >>> s.eigenvalues[:3].round(6).tolist(), s.num_matvecs
    ([10.0, 9.0, 8.0], 22)
    """
    check_arguments("sketch", A, None, d=d, method=method, seed=seed, refine=refine, check_symmetric=check_symmetric)
    kind = check_method(method, METHODS)
    seed = check_seed(seed)
    lm = as_linear_map(A, check_symmetric=check_symmetric, seed=seed)
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 1 <= d <= lm.n:
        raise ValueError(f"sketch size d must be an int between 1 and n = {lm.n}; got {d!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive int; got {block_size!r}")
    d = int(d)
    Om = probes(lm, seed, range(d), "rademacher" if kind == "rademacher" else "gaussian")
    with Progress(progress, f"sketch ({kind})", "matvec", 2 * d if refine else d) as bar:
        lm = bar.ticking(lm)
        eigs, tr, tr_err, refined, done = _sketch(lm, Om, kind, bool(refine), int(block_size))
        if done:
            bar.finish()
    return SketchResult(np.ascontiguousarray(eigs), tr, tr_err, lm.num_matvecs, kind, refined, done)


def _sketch(lm, Om, kind: str, refine: bool, block_size: int):
    """The sketch's eigenvalues, trace and its error, and the flags ``refined``, ``done``."""
    d, done = int(Om.shape[1]), True
    try:
        Y = apply_blocks(lm, Om, int(block_size))
    except Interrupted as exc:
        Y, done = exc.done, False
        if Y.shape[1] == 0:
            raise KeyboardInterrupt from None
        d = int(Y.shape[1])
        Om = Om[:, :d]
    if kind == "rademacher":
        B = host64(lm.inner(Om, Y)) / d
        eigs = scipy.linalg.eigvalsh(0.5 * (B + B.T))[::-1]
        _, err = mean_stderr(host64(lm.dots(Om, Y)))
        tr, tr_err = float(np.trace(B)), float(err)
    else:
        eigs = _nystrom_eigenvalues(lm, Om, Y)
        tr, tr_err = float(np.sum(eigs)), math.nan
    refined = bool(refine) and done
    if refined:
        Q, _ = lm.qr(Y)
        try:
            H = host64(lm.inner(Q, apply_blocks(lm, Q, int(block_size))))
        except Interrupted:
            refined = done = False
        else:
            eigs = scipy.linalg.eigvalsh(0.5 * (H + H.T))[::-1]
            if kind == "nystrom":
                tr = float(np.sum(eigs))
    return eigs, tr, tr_err, refined, done


def _nystrom_eigenvalues(lm, Om, Y) -> np.ndarray:
    """Eigenvalues of the Nyström approximation, stabilised by a shift ``ν = √n·eps·‖Y‖``.

    ``Y_ν = Y + νΩ``, ``C = chol(ΩᵀY_ν)``, ``B = Y_ν C⁻ᵀ``; the eigenvalues are
    ``max(σ(B)² - ν, 0)`` (Tropp et al. 2017, Alg. 3). When ``ΩᵀY_ν`` is
    numerically singular (``d`` close to ``n`` on a fast-decaying spectrum) a
    truncated inverse square root from its eigendecomposition replaces ``C⁻ᵀ``. The small ``d x d`` work
    is done on the host; the ``n x d`` product ``B`` stays on the device.
    """
    nu = math.sqrt(lm.n) * lm.eps * float(host64(lm.norm(Y)))
    Ynu = Y + nu * Om
    G = host64(lm.inner(Om, Ynu))
    G = 0.5 * (G + G.T)
    try:
        F = scipy.linalg.solve_triangular(np.linalg.cholesky(G), np.eye(G.shape[0]), lower=True).T
    except np.linalg.LinAlgError:  # numerically singular (d close to n): a truncated pseudo-inverse root
        g, V = np.linalg.eigh(G)
        if g[0] < -math.sqrt(lm.eps) * max(g[-1], 0.0) or g[-1] <= 0:
            raise ValueError("the Nyström sketch needs a positive semi-definite operator but ΩᵀAΩ is "
                             "indefinite; use kind='rademacher' for an indefinite Hessian") from None
        keep = g > g[-1] * G.shape[0] * lm.eps
        F = V[:, keep] / np.sqrt(g[keep])
    B = Ynu @ lm.small(F)
    s = scipy.linalg.svdvals(host64(lm.inner(B, B)))  # σ(B)² as eigenvalues of BᵀB, d x d on the host
    return np.concatenate([np.clip(s - nu, 0.0, None), np.zeros(Om.shape[1] - s.size)])
