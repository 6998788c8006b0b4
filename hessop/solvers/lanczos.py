"""The Lanczos process with full reorthogonalisation, robust to the null spaces of Hessians.

:func:`lanczos` runs ``m`` steps of the symmetric Lanczos recurrence (Lanczos 1950;
Paige 1972) from a start vector and returns the tridiagonal matrix ``T`` (float64,
host) and, optionally, the orthonormal basis ``Q`` (native, on the operator's
device) with ``Qᵀ A Q = T``. Its eigenvalues are the Ritz values used by the
eigensolvers; the squared first row of its eigenvectors gives the quadrature
weights of stochastic Lanczos quadrature.

:class:`KrylovBasis` is the stateful engine behind it, shared with the restarted
eigensolvers (:mod:`.thick_restart`, :mod:`.eigsh`): a preallocated device basis
that grows one column per product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._array import Array, rng
from ._linear_map import LinearMap
from ._ortho import breakdown_tol, cgs2, host, noise_floor, norm, put

__all__ = ["LanczosDecomposition", "lanczos"]


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
    lm: LinearMap,
    v0: Array | None,
    num_steps: int,
    *,
    reorthogonalize: bool = True,
    store_basis: bool = True,
    seed=0,
) -> LanczosDecomposition:
    """Run ``num_steps`` Lanczos steps on the symmetric map ``lm`` from ``v0``.

    Parameters
    ----------
    lm : LinearMap
        The operator, from :func:`hessop.solvers._linear_map.as_linear_map`.
    v0 : array or None
        Start vector (native, or a host numpy array; normalised here). ``None``
        draws a seeded Gaussian vector.
    num_steps : int
        Number of steps ``m`` (capped at ``n``); each costs one product.
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


class KrylovBasis:
    """A growing orthonormal Lanczos basis on the device (the engine behind the eigensolvers).

    After ``extend``, columns ``0..size-1`` of :attr:`Q` are orthonormal,
    ``alpha[j]`` is ``q_jᵀ A q_j`` and ``beta[j]`` the coupling between columns
    ``j`` and ``j+1``; :attr:`r` is the normalised next vector (``None`` after a
    breakdown) with coefficient ``beta[-1]``; the next step after a breakdown
    starts from a fresh random vector orthogonal to the basis. Restarted solvers may overwrite the leading columns and :attr:`r` between
    calls (thick restart).
    """

    def __init__(self, lm: LinearMap, capacity: int, seed=0, *, reorthogonalize: bool = True, keep: bool = True):
        self.lm, self.xp = lm, lm.xp
        self.reorthogonalize = reorthogonalize
        self.keep = keep or reorthogonalize
        self.Q = lm.zeros((lm.n, max(int(capacity), 1))) if self.keep else None
        self.size = 0
        self.alpha: list[float] = []
        self.beta: list[float] = []
        self.r: Array | None = None
        self.scale = 0.0
        self.breakdowns = 0
        self.tol = breakdown_tol(lm.eps)
        self._gen = rng(seed)
        self._last: Array | None = None  # q_j and q_{j-1} when no basis is kept
        self._prev: Array | None = None

    @property
    def capacity(self) -> int:
        return int(self.Q.shape[1]) if self.Q is not None else self.lm.n

    def basis(self, stop: int | None = None) -> Array:
        """Columns ``0..stop-1`` of the basis (a view; default all filled columns)."""
        return self.Q[:, : self.size if stop is None else stop]

    def grow(self, capacity: int) -> None:
        """Reallocate the basis with room for ``capacity`` columns (keeps the filled ones)."""
        capacity = min(int(capacity), self.lm.n)
        if self.Q is None or capacity <= self.capacity:
            return
        Q = self.lm.zeros((self.lm.n, capacity))
        self.Q = put(Q, 0, self.Q[:, : self.size]) if self.size else Q

    def start(self, v0: Array) -> None:
        """Set the next vector to ``v0`` (orthogonalised against the basis, normalised)."""
        v = self._native(v0)
        if v.ndim != 1 or v.shape[0] != self.lm.n:
            raise ValueError(f"the start vector must have shape ({self.lm.n},); got {tuple(v.shape)}")
        r = self._normalized(v)
        if r is None:
            raise ValueError("the start vector is zero (or lies in the span already built); pass a nonzero v0")
        self.r = r

    def extend(self, num_steps: int) -> int:
        """Run up to ``num_steps`` more steps (fewer if the basis is full or the space exhausted).

        Returns the number of steps done. State is updated only after a step is
        complete, so an interrupt leaves a consistent decomposition.
        """
        done = 0
        while done < num_steps and self.size < min(self.capacity, self.lm.n):
            q = self.r if self.r is not None else self._fresh()
            if q is None:
                break
            if self.r is None:
                self.breakdowns += 1
            self._step(q)
            done += 1
        return done

    # -- internals ---------------------------------------------------------------------------
    def _step(self, q: Array) -> None:
        xp, j = self.xp, self.size
        if self.keep:
            self.Q = put(self.Q, j, q)
        w = self.lm(q)
        if self.reorthogonalize:
            w, h = cgs2(self.Q[:, : j + 1], w)
            a = h[j]
        else:
            if self._last is not None and self.beta and self.beta[-1] > 0:
                w = w - self.beta[-1] * self._last
            a = xp.sum(q * w)
            w = w - a * q
        alpha, beta = (float(x) for x in host(a, norm(xp, w)))
        if not (np.isfinite(alpha) and np.isfinite(beta)):
            raise FloatingPointError(
                f"the operator returned NaN or Inf at Lanczos step {j + 1}; check the model, the data and the dtype"
            )
        self.scale = max(self.scale, abs(alpha), beta)
        broke = j + 1 >= self.lm.n or beta == 0.0
        if not broke and beta <= self.tol * self.scale:
            if self.reorthogonalize:  # suspicious: a third pass tells noise from a small true coupling
                w, h = cgs2(self.Q[:, : j + 1], w)  # two more passes
                a3, beta3 = (float(x) for x in host(h[j], norm(xp, w)))
                alpha += a3
                broke = beta3 < 0.717 * beta or beta3 <= noise_floor(self.lm.eps) * self.scale
                beta = beta3
            else:
                broke = True
        self._prev, self._last = self._last, q
        self.r = None if broke else w * (1.0 / beta)
        self.alpha.append(float(alpha))
        self.beta.append(0.0 if broke else float(beta))
        self.size = j + 1

    def _fresh(self) -> Array | None:
        """A random unit vector orthogonal to the basis, or None if the space is exhausted."""
        if self.size >= self.lm.n:
            return None
        for _ in range(3):
            v = self._normalized(self.lm.random(self._gen, (self.lm.n,)))
            if v is not None:
                return v
        return None

    def _normalized(self, v: Array) -> Array | None:
        xp = self.xp
        v0 = float(host(norm(xp, v))[0])
        if not np.isfinite(v0):
            raise FloatingPointError("the start vector holds NaN or Inf")
        if self.keep and self.size:
            v, _ = cgs2(self.Q[:, : self.size], v)
        elif not self.keep:
            for u in (self._last, self._prev):
                if u is not None:
                    v = v - xp.sum(u * v) * u
        nv = float(host(norm(xp, v))[0])
        if nv <= self.tol * v0 or nv == 0.0:
            return None
        return v * (1.0 / nv)

    def _native(self, v: Array) -> Array:
        lm = self.lm
        if isinstance(v, np.ndarray):
            return lm.asarray(v)
        return v if v.dtype == lm.dtype else lm.xp.astype(v, lm.dtype)
