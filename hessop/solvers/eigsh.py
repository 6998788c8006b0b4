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
on a small projected matrix, the run control, the result) live in
:mod:`._ritz`; each method lives in the module its name says, and every result
but power iteration's is certified by :mod:`.certify` before it is returned.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .._array import Array, numpy_dtype
from .._collective import check_arguments
from .._warnings import warn
from ._linear_map import LinearMap, as_linear_map
from ._ritz import Control, EigshResult, EigshState
from .block import block_lanczos
from .certify import certified
from .lanczos import lanczos_eigsh
from .power import power_iteration
from .thick_restart import thick_restart_lanczos
from .verify import reserve, verified

__all__ = ["eigsh", "EigshResult", "EigshState"]

WHICH = ("LA", "SA", "LM", "BE")
METHODS = {
    "thick-restart": thick_restart_lanczos,
    "lanczos": lanczos_eigsh,
    "block": block_lanczos,
    "power": power_iteration,
}
DEFAULT_TOL = 1e-6
FLOOR_EPS = 100.0
"""The tolerance floor in units of the vectors' machine epsilon (see :func:`_tol` and docs/numerics.md)."""


def eigsh(
    A: Any,
    k: int = 6,
    *,
    which: str = "LA",
    method: str = "thick-restart",
    tol: float | None = None,
    ncv: int | None = None,
    max_matvecs: int | None = None,
    block_size: int = 4,
    v0: Array | None = None,
    seed: int = 0,
    check_symmetric: bool = True,
    certify: bool = True,
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
    certify : bool
        Confirm a converged result from a fresh random vector before returning
        it, so that no copy of a repeated wanted eigenvalue is missed (see
        Notes; ignored by ``"power"``). ``False`` saves the check's products
        and returns what the Krylov space of the start vector holds, as ARPACK does.
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
    in its eigenspace, so a single-vector space holds one copy of a repeated
    eigenvalue. Every method but ``"power"`` therefore certifies a converged
    result before returning it (:mod:`.certify`): Lanczos from a fresh random
    vector orthogonal to the returned eigenvectors either finds a missed copy
    (which joins the result, and the check repeats) or shows, except with
    probability below 1e-3, that none lies beyond the least wanted value. A
    check cut short (budget, callback, Ctrl-C) marks the pairs not converged.
    Asking for many copies of a huge multiplicity (the ``k`` smallest of a
    matrix whose bottom is a 1000-fold zero) costs one check round per copy.

    Examples
    --------
    >>> import numpy as np
    >>> from hessop.testing import SpectralOperator
    >>> A = SpectralOperator(np.concatenate([[10.0, 9.0, 8.0], np.linspace(0, 1, 197)]), seed=0)
    >>> r = eigsh(A, k=3)
    >>> r.eigenvalues.round(6).tolist(), bool(r.converged.all()), bool(r.residual_norms.max() <= r.tol)
    ([10.0, 9.0, 8.0], True, True)
    """
    check_arguments("eigsh", A, None, k=k, which=which, method=method, tol=tol, ncv=ncv, max_matvecs=max_matvecs,
                    block_size=block_size, v0=v0, seed=seed, check_symmetric=check_symmetric, certify=certify)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(map(repr, METHODS))}")
    if which not in WHICH:
        raise ValueError(f"unknown which {which!r}; choose one of {', '.join(map(repr, WHICH))}")
    if method == "power" and which == "BE":
        raise ValueError("method='power' finds one end at a time; use which='LM', 'LA' or 'SA', "
                         "or method='thick-restart'")
    lm = as_linear_map(A, check_symmetric=False)
    if not isinstance(k, (int, np.integer)) or k < 1 or k >= lm.n:
        raise ValueError(f"k must be an integer with 1 <= k < n = {lm.n}; got {k!r} "
                         "(use a dense eigensolver for all pairs)")
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
    checked = method != "power"  # power iteration's residuals come from its pairs' own products
    control = Control(lm, k, which, tol, budget - (reserve(k, budget) if checked else 0), callback, method, progress)
    try:
        result = METHODS[method](lm, control, ncv=ncv, v0=v0, seed=seed, block_size=block_size)
        if checked and certify:
            result = certified(lm, control, result, seed)
        return verified(lm, control, result, budget) if checked else result
    finally:
        control.close()


def _tol(tol: float | None, lm: LinearMap) -> float:
    """The tolerance used: ``tol`` (default :data:`DEFAULT_TOL`) raised to ``FLOOR_EPS * eps``.

    Rounding in the products (sums over samples and activations) leaves the true
    residual of a computed pair at about ``10 eps ||A||`` however long Lanczos runs,
    while the Krylov relation's estimate keeps falling; the floor keeps a factor 10
    above that level (the measurements: docs/numerics.md, "Why 100 ε").
    """
    floor = FLOOR_EPS * lm.eps
    if tol is None:
        return max(DEFAULT_TOL, floor)
    if not tol > 0 or not math.isfinite(tol):
        raise ValueError(f"tol must be a positive number; got {tol!r}")
    if tol < floor:
        warn(
            f"tol={tol:g} is below what {numpy_dtype(lm.xp, lm.dtype).name} arithmetic can certify; "
            f"using {floor:.2g} (run the operator in float64 for tighter results)",
            RuntimeWarning,
        )
        return floor
    return float(tol)


