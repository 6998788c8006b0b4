"""The Krylov basis engine shared by the Lanczos process and the eigensolvers.

:class:`KrylovBasis` is a preallocated orthonormal basis on the operator's
device that grows one column per product, with full reorthogonalisation and a
relative breakdown test (see :func:`.lanczos.lanczos` for the rules). The
unrestarted and restarted eigensolvers (:mod:`.thick_restart`), the
certification (:mod:`.certify`) and :func:`.lanczos.lanczos` all drive it.
"""

from __future__ import annotations

import numpy as np

from .._array import Array, rng
from ._linear_map import LinearMap
from ._ortho import breakdown_tol, cgs2, host, noise_floor, put


class KrylovBasis:
    """A growing orthonormal Lanczos basis on the device (the engine behind the eigensolvers).

    After ``extend``, columns ``0..size-1`` of :attr:`Q` are orthonormal,
    ``alpha[j]`` is ``q_jᵀ A q_j`` and ``beta[j]`` the coupling between columns
    ``j`` and ``j+1``; :attr:`r` is the normalised next vector (``None`` after a
    breakdown) with coefficient ``beta[-1]``; the next step after a breakdown
    starts from a fresh random vector orthogonal to the basis. Restarted solvers may
    overwrite the leading columns and :attr:`r` between calls (thick restart).
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
        if v.ndim != 1 or v.shape[0] != self.lm.rows:
            raise ValueError(f"the start vector must have shape ({self.lm.rows},); got {tuple(v.shape)}")
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
        j = self.size
        if self.keep:
            self.Q = put(self.Q, j, q)
        w = self.lm(q)
        if self.reorthogonalize:
            w, h = cgs2(self.lm, self.Q[:, : j + 1], w)
            a = h[j]
        else:
            if self._last is not None and self.beta and self.beta[-1] > 0:
                w = w - self.beta[-1] * self._last
            a = self.lm.inner(q, w)
            w = w - a * q
        alpha, beta = (float(x) for x in host(a, self.lm.norm(w)))
        if not (np.isfinite(alpha) and np.isfinite(beta)):
            raise FloatingPointError(
                f"the operator returned NaN or Inf at Lanczos step {j + 1}; check the model, the data and the dtype"
            )
        self.scale = max(self.scale, abs(alpha), beta)
        broke = j + 1 >= self.lm.n or beta == 0.0
        if not broke and beta <= self.tol * self.scale:
            if self.reorthogonalize:  # suspicious: a third pass tells noise from a small true coupling
                w, h = cgs2(self.lm, self.Q[:, : j + 1], w)  # two more passes
                a3, beta3 = (float(x) for x in host(h[j], self.lm.norm(w)))
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
        v0 = float(host(self.lm.norm(v))[0])
        if not np.isfinite(v0):
            raise FloatingPointError("the start vector holds NaN or Inf")
        if self.keep and self.size:
            v, _ = cgs2(self.lm, self.Q[:, : self.size], v)
        elif not self.keep:
            for u in (self._last, self._prev):
                if u is not None:
                    v = v - self.lm.inner(u, v) * u
        nv = float(host(self.lm.norm(v))[0])
        if nv <= self.tol * v0 or nv == 0.0:
            return None
        return v * (1.0 / nv)

    def _native(self, v: Array) -> Array:
        return self.lm.vector(v)
