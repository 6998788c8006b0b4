"""``hessop.solve``: ``(A + damping·I) x = b`` by CG or MINRES, certified by the true residual.

The iterations (:mod:`._cgminres`) run on the operator's device. Whatever the
recurrences claim, the answer is judged at the end by the *true* relative residual
``||b - (A + λI) x|| / ||b||`` (one more product, counted): a column whose recurrence
converged but whose true residual did not (rounding drift on an ill-conditioned
system) is restarted from that true residual while it keeps halving, and
``converged`` is never set from anything else.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

from .._array import Array, namespace, to_numpy
from .._collective import check_arguments
from ._cgminres import RUNNERS, Column, Run
from ._linear_map import LinearMap, as_linear_map
from ._ortho import host
from ._progress import Progress
from .probes import check_method, check_seed

__all__ = ["SolveResult", "SolveState", "solve"]

METHODS = ("auto", "cg", "minres")
MAX_ROUNDS = 4
"""Restarts from the true residual at most (each must halve it; rounding drift needs one)."""
REASONS = {
    "budget": "the budget of products was spent (raise max_matvecs)",
    "callback": "the callback asked to stop",
    "interrupt": "interrupted (Ctrl-C); the residual is the recurrence's estimate, no product was made after it",
    "least-squares": "MINRES reached a least-squares point (||(A+λI)r|| at rounding level against ||A+λI|| ||r||): b "
                     "has a part outside the range of A + damping·I (an inconsistent system), or the system is too "
                     "ill-conditioned for this precision; add damping, project b, or use float64",
    "curvature": "CG met a direction of non-positive curvature: A + damping·I is not positive definite (use "
                 "method='minres' or 'auto', or raise damping)",
    "exhausted": "the Krylov space became invariant before the residual fell to rtol",
    "converged": "the recurrence converged but the true residual stayed above rtol (rounding: loosen rtol or use "
                 "float64)",
}


@dataclass(frozen=True)
class SolveState:
    """What a ``callback`` sees after each iteration: the active columns' estimated relative residuals."""

    method: str
    residuals: np.ndarray
    num_matvecs: int
    columns: tuple[int, ...] = ()
    """The columns of ``b`` still iterating (``residuals`` in their order)."""


@dataclass(frozen=True)
class SolveResult:
    """A solution of ``(A + damping·I) x = b`` and its quality.

    Attributes
    ----------
    x : array
        ``(n,)`` or ``(n, k)`` like ``b``, in the operator's namespace and device.
    residual : float or numpy.ndarray
        The true relative residual ``||b - (A+λI)x|| / ||b||`` recomputed from ``x`` (per column
        for a block); after Ctrl-C, the recurrence's estimate (no product is made after it).
    converged : bool or numpy.ndarray
        ``residual <= rtol`` from that recomputed residual; always False after Ctrl-C.
    num_matvecs : int
        Products spent (symmetry probe and the final residual included), over all columns.
    method : str
        ``"cg"``, ``"minres"``, or ``"cg+minres"`` when CG met non-positive curvature and
        ``method="auto"`` continued with MINRES from its iterate.
    negative_curvature : array or None
        A unit direction ``p`` with ``pᵀ(A+λI)p <= 0`` (to rounding) met by CG, ``(n,)`` (or
        ``(n, k)``, zero columns where none was met); None if CG met none.
    curvature : float or numpy.ndarray
        ``pᵀ(A+λI)p`` of that direction (NaN where none).
    message : str
        What happened, in a sentence.
    stopped : str
        ``"converged"``, or why the first unconverged column stopped: ``"budget"``,
        ``"callback"``, ``"interrupt"``, ``"curvature"``, ``"least-squares"``, ``"exhausted"``,
        ``"stagnated"``.
    rtol : float
    """

    x: Array
    residual: float | np.ndarray
    converged: bool | np.ndarray
    num_matvecs: int
    method: str
    negative_curvature: Array | None
    curvature: float | np.ndarray
    message: str
    stopped: str
    rtol: float

    @property
    def all_converged(self) -> bool:
        """Whether every right-hand side converged."""
        return bool(np.all(self.converged))


def solve(A: Any, b: Array, *, damping: float = 0.0, method: str = "auto", rtol: float = 1e-6,
          max_matvecs: int | None = None, x0: Array | None = None,
          callback: Callable[[SolveState], Any] | None = None, progress: bool = False, seed: int = 0,
          check_symmetric: bool = True) -> SolveResult:
    """Solve ``(A + damping·I) x = b`` for a symmetric operator ``A`` and one or more right-hand sides.

    Parameters
    ----------
    A : operator
        Anything :func:`~hessop.solvers._linear_map.as_linear_map` accepts.
    b : array
        ``(n,)`` or ``(n, k)`` (``k`` right-hand sides as columns), native or host numpy.
    damping : float
        ``λ`` of ``A + λI`` (Tikhonov damping, as in damped Newton and influence functions).
    method : {"auto", "cg", "minres"}
        ``"cg"``: conjugate gradients (Hestenes & Stiefel 1952), for positive definite
        ``A + λI``; it stops at a direction of non-positive curvature and returns it.
        ``"minres"``: MINRES (Paige & Saunders 1975), for indefinite or singular systems; from
        ``x0 = 0`` on a consistent singular system it gives the minimum-norm solution, on an
        inconsistent one a least-squares solution (marked not converged). ``"auto"``: CG,
        switching a column to MINRES, warm from CG's iterate, where CG meets non-positive
        curvature. CG costs one product and four vector operations per iteration, MINRES
        one product and more vector work, and on positive definite systems CG's error in the
        ``A``-norm is the smaller.
    rtol : float
        Target relative residual ``||b - (A+λI)x|| / ||b||``.
    max_matvecs : int, optional
        Budget of products over all columns (default ``10 n k``).
    x0 : array, optional
        Start iterate(s) shaped like ``b`` (one product more to form the residual).
    callback : callable, optional
        Called with a :class:`SolveState` after every iteration; return True or ``"stop"``
        to stop (the true residual of the current iterate is still computed and judged).
    progress : bool
        Show a progress bar of the products, with the worst estimated residual against ``rtol``.
    seed : int
        Seed of the symmetry probe.
    check_symmetric : bool
        Probe symmetry with two products first (counted).

    Returns
    -------
    SolveResult

    Notes
    -----
    The ``k`` columns of a block are iterated together, one batched product per iteration, each
    with its own scalars and dropped from the batch when it finishes: the products of ``k``
    separate solves, the device efficiency of a block. Block CG (O'Leary 1980) could save
    iterations when the right-hand sides share spectral content, but it must detect and drop
    dependent directions, and cannot switch one column to MINRES.

    A zero column of ``b`` gets ``x = 0`` (converged, residual 0). Pressing Ctrl-C returns the
    current iterate marked not converged.

    Examples
    --------
    >>> import numpy as np
    >>> from hessop.testing import SpectralOperator
    >>> A = SpectralOperator(np.linspace(1.0, 100.0, 200), seed=0)
    >>> b = np.ones(200)
    >>> r = solve(A, b, damping=0.5, rtol=1e-8)
    >>> r.converged, r.method, bool(r.residual <= 1e-8)
    (True, 'cg', True)
    """
    check_arguments("solve", A, None, b=b, x0=x0, damping=damping, method=method, rtol=rtol, max_matvecs=max_matvecs,
                    seed=seed, check_symmetric=check_symmetric)
    method = check_method(method, METHODS)
    if isinstance(damping, bool) or not isinstance(damping, (int, float, np.integer, np.floating)) \
            or not math.isfinite(damping):
        raise ValueError(f"damping must be a finite real number; got {damping!r}")
    if not 0.0 < rtol < 1.0:
        raise ValueError(f"rtol must lie in (0, 1); got {rtol}")
    seed = check_seed(seed)
    lm = as_linear_map(A, check_symmetric=check_symmetric, seed=seed)
    B, vector = _block(lm, b, "b")
    k = int(B.shape[1])
    if max_matvecs is not None and (isinstance(max_matvecs, bool) or not isinstance(max_matvecs, (int, np.integer))
                                    or max_matvecs < 1):
        raise ValueError(f"max_matvecs must be a positive int; got {max_matvecs!r}")
    budget = int(max_matvecs) if max_matvecs is not None else 10 * lm.n * k
    shifted = _damped(lm, float(damping))
    with Progress(progress, f"solve ({method})", "matvec") as bar:
        shifted = bar.ticking(shifted)
        run = Run(shifted, budget, float(rtol), np.zeros(k), lambda *_: False)
        run.report = _reporter(callback, bar, float(rtol), lambda: run.lm.num_matvecs)
        result = _solve(run, B, x0, method, vector, float(damping))
        if result.stopped != "interrupt":
            bar.finish()
        return result


def _solve(run: Run, B: Array, x0, method: str, vector: bool, damping: float) -> SolveResult:
    xp, lm = run.xp, run.lm
    k = int(B.shape[1])
    bnorm = _host(lm.colnorms(B))
    run.bnorm = np.where(bnorm > 0, bnorm, 1.0)
    out = {c: Column() for c in range(k)}
    todo = [c for c in range(k) if bnorm[c] > 0]
    residual = np.zeros(k)
    X = lm.zeros(B.shape)
    cols_x = [X[:, c] for c in range(k)]
    cols_r = [B[:, c] for c in range(k)]
    start = np.ones(k)
    if x0 is not None:
        X0, _ = _block(lm, x0, "x0")
        if X0.shape != B.shape:
            raise ValueError(f"x0 must have the shape of b, {tuple(B.shape)}; got {tuple(X0.shape)}")
        R0 = B - lm(X0)
        start = _host(lm.colnorms(R0)) / run.bnorm
        cols_x = [X0[:, c] if bnorm[c] > 0 else cols_x[c] for c in range(k)]
        cols_r = [R0[:, c] for c in range(k)]
    phase = {c: "minres" if method == "minres" else "cg" for c in todo}
    stopped, rounds = None, 0
    while todo and stopped is None:
        rounds += 1
        for name in ("cg", "minres"):
            cols = [c for c in todo if phase[c] == name]
            if not cols:
                continue
            stopped = RUNNERS[name](run, _stack(xp, [cols_x[c] for c in cols]), _stack(xp, [cols_r[c] for c in cols]),
                                    cols, out)
            for c in cols:
                cols_x[c] = out[c].x
                out[c].methods += (name,)
            if stopped:
                break
        Xs = _stack(xp, [cols_x[c] for c in todo])
        try:
            if stopped == "interrupt":
                raise KeyboardInterrupt
            Rt = _stack(xp, [B[:, c] for c in todo]) - lm(Xs)  # the true residual, judged and restarted from
        except KeyboardInterrupt:  # no product after Ctrl-C: the recurrences' estimates, marked not converged
            for c in todo:
                if out[c].status == "interrupt":  # this round's estimate; a column not run keeps its last true one
                    residual[c] = out[c].estimate
                out[c].status = "interrupt"
            break
        res = _host(lm.colnorms(Rt)) / run.bnorm[todo]
        keep = []
        for i, c in enumerate(todo):
            residual[c], cols_r[c] = res[i], Rt[:, i]
            status = out[c].status
            if res[i] <= run.rtol or stopped:
                continue
            if status == "curvature" and method == "auto" and phase[c] == "cg":
                phase[c] = "minres"
                keep.append(c)
            elif status in ("converged", "exhausted") and res[i] < 0.5 * start[c] \
                    and rounds < MAX_ROUNDS:
                keep.append(c)
            elif status in ("converged", "exhausted"):
                out[c].status = "stagnated" if rounds < MAX_ROUNDS else status
            start[c] = res[i]
        todo = keep
    return _result(run, cols_x, residual, out, vector, bnorm, damping)


def _result(run: Run, cols_x, residual, out, vector, bnorm, damping) -> SolveResult:
    xp, lm = run.xp, run.lm
    k = len(cols_x)
    interrupted = np.array([out[c].status == "interrupt" for c in range(k)])
    converged = (residual <= run.rtol) & ~interrupted
    for c in range(k):
        if bnorm[c] == 0:
            out[c].status, converged[c] = "converged", True
    used = {m for c in range(k) for m in out[c].methods}
    method = "+".join(m for m in ("cg", "minres") if m in used) or "cg"
    met = [c for c in range(k) if out[c].direction is not None]
    direction = None
    if met:
        direction = _stack(xp, [out[c].direction if out[c].direction is not None else lm.zeros((lm.n,))
                                for c in range(k)])
    curvature = np.array([out[c].curvature for c in range(k)])
    failed = [c for c in range(k) if not converged[c]]
    stopped = "converged" if not failed else out[failed[0]].status
    message = _message(run, residual, converged, out, failed, method, damping)
    X = _stack(xp, cols_x)
    if vector:
        return SolveResult(X[:, 0], float(residual[0]), bool(converged[0]), lm.num_matvecs, method,
                           None if direction is None else direction[:, 0], float(curvature[0]), message, stopped,
                           run.rtol)
    return SolveResult(X, residual, converged, lm.num_matvecs, method, direction, curvature, message, stopped,
                       run.rtol)


def _message(run: Run, residual, converged, out, failed, method, damping) -> str:
    k = len(residual)
    head = (f"converged: relative residual {np.max(residual):.2g} <= rtol {run.rtol:.2g}" if not failed else
            f"not converged: relative residual {np.max(residual):.2g} > rtol {run.rtol:.2g}")
    if k > 1:
        head = f"{int(np.sum(converged))} of {k} right-hand sides converged (worst residual {np.max(residual):.2g})"
    text = f"{head} after {run.lm.num_matvecs} products ({method})"
    met = [c for c in range(k) if out[c].direction is not None]
    if met:
        text += (f"; CG met non-positive curvature pᵀ(A+{damping:g}I)p/pᵀp = {out[met[0]].curvature:.3g}"
                 + (" and continued with MINRES" if "minres" in method else ""))
    if failed:
        status = out[failed[0]].status
        text += "; " + REASONS.get(status, "the residual stopped halving between restarts (rounding: loosen rtol "
                                          "or use float64)")
    return text


def _reporter(callback, bar: Progress, rtol: float, spent: Callable[[], int]):
    """The per-iteration hook: the bar shows the products so far and the worst estimated residual."""

    def report(method: str, cols: list[int], rel: np.ndarray) -> bool:
        worst = float(np.max(rel)) if rel.size else 0.0
        bar.plan(spent() + len(cols))  # no total is known ahead: the next iteration's products
        bar.note(f"{method}, residual {worst:.1e} / {rtol:.0e}")
        if callback is None:
            return False
        answer = callback(SolveState(method, np.array(rel), spent(), tuple(cols)))
        return answer is True or answer == "stop"

    return report


def _damped(lm: LinearMap, damping: float) -> LinearMap:
    """``A + damping·I`` as a map with the same counter (a copy: the caller's map is untouched)."""
    if damping == 0.0:
        return dataclasses.replace(lm)
    product = lm.product
    return dataclasses.replace(lm, product=lambda V: product(V) + damping * V)


def _block(lm: LinearMap, b, name: str) -> tuple[Array, bool]:
    """``b`` as a native ``(n, k)`` block in the map's dtype, and whether it was a vector."""
    xp = lm.xp
    if isinstance(b, (np.ndarray, list, tuple)) or not array_api_compat.is_array_api_obj(b):
        B = lm.vector(np.asarray(b))  # a whole host vector of a split map: this rank's rows
    elif namespace(b) is not xp:
        B = lm.vector(to_numpy(b))
    else:
        B = b
    if not hasattr(B, "ndim") or B.ndim not in (1, 2) or B.shape[0] != lm.rows:
        raise ValueError(f"{name} must have shape ({lm.rows},) or ({lm.rows}, k); got {tuple(getattr(B, 'shape', ()))}")
    if "complex" in str(B.dtype):
        raise TypeError(f"{name} is complex; solve real and imaginary parts separately")
    if B.dtype != lm.dtype:
        B = xp.astype(B, lm.dtype)
    vector = B.ndim == 1
    if vector:
        B = xp.reshape(B, (lm.rows, 1))
    if not lm.all_finite(B):  # collective when split: every rank raises together
        raise ValueError(f"{name} holds NaN or Inf")
    return B, vector


def _stack(xp, columns: list[Array]) -> Array:
    return xp.stack(columns, axis=1)


def _host(a: Array) -> np.ndarray:
    return host(a)
