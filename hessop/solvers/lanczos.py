"""The Lanczos process with full reorthogonalisation, robust to the null spaces of Hessians.

:func:`lanczos` runs ``m`` steps of the symmetric Lanczos recurrence (Lanczos 1950;
Paige 1972) from a start vector and returns the tridiagonal matrix ``T`` (float64,
host) and, optionally, the orthonormal basis ``Q`` (native, on the operator's
device) with ``Qᵀ A Q = T``. Its eigenvalues are the Ritz values used by the
eigensolvers; the squared first row of its eigenvectors gives the quadrature
weights of stochastic Lanczos quadrature.

:func:`lanczos_eigsh` is the eigensolver of ``eigsh(method="lanczos")``. Both
drive :class:`._krylov.KrylovBasis`, a preallocated device basis that grows
one column per product.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._array import Array, rng
from ._krylov import KrylovBasis
from ._linear_map import LinearMap, as_linear_map
from ._ritz import Control, EigshResult
from .thick_restart import run

__all__ = ["LanczosDecomposition", "lanczos", "lanczos_eigsh"]

@dataclass(frozen=True)
class LanczosDecomposition:
    """``A Q = Q T + r e_mᵀ`` with ``T = tridiag(beta, alpha, beta)``.

    Attributes
    ----------
    alpha : numpy.ndarray
        ``(m,)`` float64, the diagonal of ``T``. ``m`` may be smaller than the
        requested number of steps if the whole space was exhausted (``m = n``).
    beta : numpy.ndarray
        ``(m-1,)`` float64, the off-diagonal of ``T``. A zero marks a breakdown
        after which the recurrence restarted from a fresh random vector.
    basis : array or None
        ``(n, m)`` native Lanczos vectors (columns), ``None`` if ``store_basis=False``.
    residual_norm : float
        ``beta_m = ||r||``, the norm of the residual after the last step (0 after exhaustion).
    breakdowns : int
        How many times a breakdown restarted the recurrence with a fresh vector.
    """

    alpha: np.ndarray
    beta: np.ndarray
    basis: Array | None
    residual_norm: float
    breakdowns: int

    @property
    def num_steps(self) -> int:
        """``m``, the order of ``T``."""
        return int(self.alpha.size)

    def tridiagonal(self) -> np.ndarray:
        """``T`` as a dense ``(m, m)`` float64 host matrix."""
        return np.diag(self.alpha) + np.diag(self.beta, 1) + np.diag(self.beta, -1)


def lanczos(
    A: Any,
    num_steps: int,
    *,
    v0: Array | None = None,
    reorthogonalize: bool = True,
    store_basis: bool = True,
    seed=0,
    check_symmetric: bool = True,
) -> LanczosDecomposition:
    """Run ``num_steps`` Lanczos steps on the symmetric operator ``A`` from ``v0``.

    Parameters
    ----------
    A
        Anything the solvers accept (a :class:`~hessop.HessianOperator`, a scipy
        ``LinearOperator`` or sparse matrix, a dense array of any array-API
        namespace); the basis comes back in its namespace, on its device.
    num_steps : int
        Number of steps ``m`` (capped at ``n``); each costs one product.
    v0 : array, optional
        Start vector (native, or a host numpy array; normalised here). ``None``
        draws a seeded Gaussian vector.
    reorthogonalize : bool
        Full reorthogonalisation by classical Gram-Schmidt done twice, as two
        matrix products per step on the device (Parlett 1998, sec. 13.2). Without
        it the plain three-term recurrence is used (memory O(n) when
        ``store_basis=False``), which loses orthogonality once Ritz values converge
        (Paige 1976): fine for quadrature, not for eigenvectors.
    store_basis : bool
        Return the basis ``Q`` (``n x m``, native). With ``reorthogonalize`` the
        basis is kept on the device during the run either way.
    seed
        Seed of the fresh vectors drawn at breakdowns (and of ``v0`` when it is None).
    check_symmetric : bool
        Probe symmetry with two products first (counted, not part of the decomposition). The
        default is True, as in every solver (it was False before; pass False to save the two products).

    Returns
    -------
    LanczosDecomposition

    Notes
    -----
    *Breakdown.* Hessians of neural networks are mostly null space, so the
    Krylov space of a start vector is often invariant long before ``m = n``.
    Breakdown is tested relative to ``s = max_i(|alpha_i|, |beta_i|)``, a running
    lower bound on ``||A||``. A coupling ``beta_j > sqrt(eps) s`` is always
    genuine: CGS2 keeps the new vector orthogonal when it retains more than
    ``sqrt(eps)`` of its norm ("twice is enough"). Below that level the vector
    may be rounding noise inside the span, so two more Gram-Schmidt passes are
    made: if they still cancel (the norm drops by more than the DGKS factor
    0.717; Daniel, Gragg, Kaufman & Stewart 1976) or leave less than
    ``eps^(2/3) s`` (the noise floor of products, which reaches ``100 eps s`` in
    float32; ARPACK's ``eps23``), the step broke down; otherwise the small
    coupling is genuine and kept. Dropping nothing larger than ``eps^(2/3) s``
    keeps ``T`` accurate far below any attainable tolerance. At a breakdown the
    recurrence records ``beta_j = 0`` and continues from a fresh random vector
    orthogonalised against the basis; if no such vector is left (``m = n``), it
    stops early. Without reorthogonalisation the plain test
    ``beta_j <= sqrt(eps) s`` is used, and without a stored basis the fresh
    vector is orthogonalised against the last two Lanczos vectors only.

    *Precision.* Vectors stay in the operator's dtype on its device; ``alpha``
    and ``beta`` are accumulated in float64 on the host with one transfer per step.
    """
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be at least 1; got {num_steps}")
    lm = A if isinstance(A, LinearMap) else as_linear_map(A, check_symmetric=check_symmetric, seed=seed)
    m = min(int(num_steps), lm.n)
    gen = rng(seed)
    if v0 is None:
        v0 = lm.random(gen, (lm.n,))
    K = KrylovBasis(lm, m, gen, reorthogonalize=reorthogonalize, keep=reorthogonalize or store_basis)
    K.start(v0)
    K.extend(m)
    alpha = np.asarray(K.alpha, dtype=np.float64)
    beta = np.asarray(K.beta, dtype=np.float64)
    return LanczosDecomposition(
        alpha=alpha,
        beta=beta[: alpha.size - 1],
        basis=K.basis() if store_basis else None,
        residual_norm=float(beta[-1]) if beta.size else 0.0,
        breakdowns=K.breakdowns,
    )


def lanczos_eigsh(lm: LinearMap, control: Control, *, ncv: int | None = None, v0=None, seed=0,
                  **_) -> EigshResult:
    """Lanczos with full reorthogonalisation grown until convergence; call it through
    :func:`hessop.solvers.eigsh.eigsh` (``method="lanczos"``).

    The basis grows (by doubling its allocation) up to ``ncv`` vectors (default
    ``n``); memory is one vector per product. The loop is thick restart's
    (:func:`.thick_restart.run`) without the restarts.
    """
    depth = min(lm.n, ncv or lm.n)
    return run(lm, control, depth, v0, seed, restart=False)
