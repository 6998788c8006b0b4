"""Spectral densities by stochastic Lanczos quadrature (SLQ), and distances between them.

For a unit probe ``v``, ``m`` Lanczos steps give a tridiagonal ``T = U diag(θ) Uᵀ``;
the nodes ``θ_j`` with weights ``τ_j = U[0, j]²`` are the ``m``-point Gauss
quadrature of the measure ``Σ_i (vᵀq_i)² δ(λ_i)``, whose mean over random probes
is the eigenvalue distribution ``(1/n) Σ_i δ(λ_i)`` (Golub & Meurant 1994; Lin,
Saad & Yang 2016, *SIAM Rev.* 58(1); Ubaru, Chen & Saad 2017, *SIMAX* 38(4)).
Smoothing every node with a Gaussian gives the plotted density, as in the study
of neural-network Hessians by Ghorbani, Krishnan & Xiao 2019 (ICML).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import scipy.spatial.distance

from .._collective import check_arguments
from ._linear_map import as_linear_map
from ._progress import Progress
from .lanczos import lanczos
from .probes import MIN_CALIBRATED, check_seed, gather, mean_stderr, mine, probe_comm, probes, warn_uncalibrated

__all__ = ["SpectralDensity", "density", "spectral_distance"]

GRID_POINTS = 1024
"""Default number of grid points (more if needed to keep the spacing below ``sigma / 4``)."""


@dataclass(frozen=True)
class SpectralDensity:
    """A spectral density estimate: per-probe quadrature rules and their smoothed sum.

    Attributes
    ----------
    nodes, weights : numpy.ndarray
        ``(num_probes, m)`` host float64; the weights of each probe sum to one.
        Rows of probes that stopped early (exhausted Krylov space) are padded
        with zero-weight copies of their last node.
    n : int
        Order of the operator (``n * mean(Σ τθ)`` estimates the trace).
    sigma : float
        Width of the Gaussian kernel of ``values``.
    grid, values : numpy.ndarray
        The smoothed density on a grid; integrates to one over the default grid.
    num_matvecs : int
        Products spent (symmetry probe included; summed over ranks).
    converged : bool
        ``False`` if interrupted: then only the probes that finished are kept.
    """

    nodes: np.ndarray
    weights: np.ndarray
    n: int
    sigma: float
    grid: np.ndarray
    values: np.ndarray
    num_matvecs: int = 0
    converged: bool = True

    @classmethod
    def from_eigenvalues(cls, eigenvalues, sigma: float | None = None, grid=None) -> SpectralDensity:
        """The exact density of known eigenvalues (one "probe" with weights ``1/n``)."""
        lam = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())
        nodes, weights = lam[None, :], np.full((1, lam.size), 1.0 / lam.size)
        return _build(nodes, weights, lam.size, sigma, grid, max(lam.size - 1, 1), 0, True)

    @property
    def num_probes(self) -> int:
        """Number of probes averaged."""
        return int(self.nodes.shape[0])

    def evaluate(self, t, sigma: float | None = None) -> np.ndarray:
        """The Gaussian-smoothed density at points ``t`` (width ``sigma``, default ``self.sigma``)."""
        return _smooth(self.nodes, self.weights, np.asarray(t, dtype=np.float64), sigma or self.sigma)

    def cdf(self, t) -> np.ndarray | float:
        """Fraction of the spectrum at or below ``t``, from the discrete quadrature measure."""
        order = np.argsort(self.nodes, axis=None)
        x = self.nodes.ravel()[order]
        F = np.cumsum(self.weights.ravel()[order]) / self.num_probes
        idx = np.searchsorted(x, np.asarray(t, dtype=np.float64), side="right")
        out = np.where(idx > 0, F[np.maximum(idx - 1, 0)], 0.0)
        return float(out) if np.ndim(out) == 0 else out

    def negative_mass(self, tol: float | None = None) -> float:
        """Fraction of eigenvalues below ``-tol``: the one definition every report and analysis uses.

        ``tol`` defaults to :attr:`sigma`, the density's resolution (the kernel
        width, by default the mean spacing of the quadrature nodes). The
        Chebyshev-Markov-Stieltjes inequalities bound the distribution function
        read off an ``m``-point Gauss rule only up to the weight of the node
        nearest the point asked about (Golub & Meurant 2010, *Matrices, Moments
        and Quadrature*). A Hessian's null space and its continuum of tiny
        eigenvalues of both signs put nodes of large weight within ``sigma`` of
        zero, whose sign the quadrature does not resolve: counting them (a
        threshold of rounding size) moves the answer by their whole weight. On
        the small ``hessop demo`` MLP (610 parameters, 2 probes of 20 steps) the
        exact spectrum has 22% of its eigenvalues below ``-1e-6·λ_max`` and 11%
        below ``-sigma``; SLQ reports 53% at the first threshold and 13% at the
        second. Mass below ``-sigma`` is what the estimate resolves, and what the
        plotted curve shows. Pass a smaller ``tol`` (``0`` counts every negative
        node) to ask about finer scales, knowing the answer is then only as
        good as the nodes' convergence.
        """
        if tol is None:
            tol = self.sigma
        return float(np.sum(self.weights[self.nodes < -tol]) / self.num_probes)

    @property
    def calibrated(self) -> bool:
        """Whether the standard errors of :meth:`moments` and :attr:`trace_stderr` can be trusted.

        ``True`` from :data:`~hessop.solvers.probes.MIN_CALIBRATED` probes (60) on, where
        ``± 2 stderr`` is measured to cover ``tr(A)/n`` and ``tr(A²)/n`` 93-97% of the time; the
        default 4 probes buy a density, not an error bar. Asking for a standard error of an
        uncalibrated density warns.
        """
        return self.num_probes >= MIN_CALIBRATED["slq"]

    def moments(self, orders=(1, 2, 3, 4)) -> tuple[np.ndarray, np.ndarray]:
        """Estimates of ``tr(A^k) / n`` for each ``k`` in ``orders``, and their standard errors.

        Each probe's ``m``-point rule integrates polynomials of degree up to
        ``2m - 1`` exactly, so these are Hutchinson estimates over the probes; the standard
        errors carry the Student-t widening (:func:`~hessop.solvers.probes.t_factor`) and
        warn when :attr:`calibrated` is ``False``.
        """
        if not self.calibrated:
            warn_uncalibrated("SpectralDensity.moments", self.num_probes, MIN_CALIBRATED["slq"])
        return self._moments(orders)

    def _moments(self, orders) -> tuple[np.ndarray, np.ndarray]:
        per_probe = np.stack([np.sum(self.weights * self.nodes**k, axis=1) for k in orders], axis=1)
        return mean_stderr(per_probe)

    @property
    def trace_estimate(self) -> float:
        """``n · mean(Σ τθ)``: the Hutchinson trace estimate of the same probes."""
        return float(self.n * self._moments((1,))[0][0])

    @property
    def trace_stderr(self) -> float:
        """Standard error of :attr:`trace_estimate` (infinite with one probe; warns when not :attr:`calibrated`)."""
        if not self.calibrated:
            warn_uncalibrated("SpectralDensity.trace_stderr", self.num_probes, MIN_CALIBRATED["slq"])
        return float(self.n * self._moments((1,))[1][0])

    def plot(self, ax=None, log: bool = True, **kwargs):
        """Plot the smoothed density (log scale by default, as Hessian spectra need). Returns the axes."""
        import matplotlib.pyplot as plt

        ax = ax if ax is not None else plt.gca()
        ax.plot(self.grid, self.values, **kwargs)
        if log:
            ax.set_yscale("log")
            ax.set_ylim(bottom=max(float(np.max(self.values)) * 1e-10, np.finfo(float).tiny))
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density")
        return ax


def density(A: Any, *, num_probes: int = 4, num_steps: int = 90, seed: int = 0, sigma: float | None = None,
            grid=None, comm: Any = None, progress: bool = False, check_symmetric: bool = True) -> SpectralDensity:
    """Estimate the spectral density of a symmetric operator by stochastic Lanczos quadrature.

    Parameters
    ----------
    A : operator
        Anything :func:`~hessop.solvers._linear_map.as_linear_map` accepts.
    num_probes : int
        Rademacher probes; probe ``i`` comes from ``default_rng([seed, i])``.
    num_steps : int
        Lanczos steps per probe (one product each), with full reorthogonalisation.
    seed : int
    sigma : float, optional
        Kernel width. Default: ``(θ_max - θ_min) / m``, the mean spacing of ``m``
        nodes spread over the spectral range found (``θ`` over all probes), so the
        curve is smooth at the resolution the quadrature actually has.
    grid : array_like, optional
        Where to evaluate the density. Default: ``[θ_min - 5σ, θ_max + 5σ]``,
        ``1024`` points or more (spacing at most ``σ/4``), so ``values`` integrates to one.
    comm : communicator, optional
        Split probes across processes: rank ``r`` runs probes ``r, r+size, ...``,
        one all-reduce gathers every probe's rule; all ranks return the same density.
    progress : bool
        Show a progress bar: Lanczos steps (one product each) done out of the ``num_steps`` of
        every probe this process runs, and which probe is running.
    check_symmetric : bool
        Test symmetry with two products first.

    Returns
    -------
    SpectralDensity

    Examples
    --------
    >>> import numpy as np
    >>> from hessop.testing import SpectralOperator
    >>> rho = density(SpectralOperator(np.arange(1.0, 101.0), seed=0), num_probes=4, num_steps=30)
    >>> round(float(rho.cdf(50.5)), 1)          # half of the eigenvalues 1..100 lie below 50.5
    0.5
    """
    check_arguments("density", A, comm, num_probes=num_probes, num_steps=num_steps, seed=seed, sigma=sigma, grid=grid, check_symmetric=check_symmetric)  # noqa: E501

    for name, value in (("num_probes", num_probes), ("num_steps", num_steps)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    if sigma is not None and not sigma > 0:
        raise ValueError(f"sigma must be positive; got {sigma}")
    seed = check_seed(seed)
    comm = probe_comm(A, comm)
    lm = as_linear_map(A, check_symmetric=check_symmetric, seed=seed)
    overhead = lm.num_matvecs * comm.size
    m = min(int(num_steps), lm.n)
    local = np.zeros((num_probes, 2 * m + 2))  # nodes | weights | steps | products
    finished, ours = 0, mine(comm, 0, num_probes)
    bar = Progress(progress, "SLQ", "matvec", len(ours) * m)
    lm = bar.ticking(lm)
    try:
        for j, i in enumerate(ours):
            bar.note(f"probe {j + 1}/{len(ours)}" + (f" on rank {comm.rank}" if comm.size > 1 else ""))
            before = lm.num_matvecs
            v = probes(lm, seed, [i], "rademacher")[:, 0]
            dec = lanczos(lm, m, v0=v, reorthogonalize=True, store_basis=False, seed=[seed, i])
            theta, tau = _gauss_rule(dec.alpha, dec.beta)
            k = theta.size
            local[i, :k], local[i, m:m + k] = theta, tau
            local[i, 2 * m:] = k, lm.num_matvecs - before
            finished += 1
        bar.finish()
    except KeyboardInterrupt:
        if comm.size > 1 or finished == 0:
            raise
    finally:
        bar.close()
    table = gather(comm, local)
    done = table[:, 2 * m] > 0
    table = table[done]
    nodes, weights = table[:, :m].copy(), table[:, m:2 * m].copy()
    for row, k in enumerate(table[:, 2 * m].astype(int)):
        nodes[row, k:] = nodes[row, k - 1]
    # products of every probe over all ranks; a single process counts its own (an interrupted probe's too)
    used = lm.num_matvecs if comm.size == 1 else int(table[:, 2 * m + 1].sum()) + overhead
    return _build(nodes, weights, lm.n, sigma, grid, m, used, bool(np.all(done)))


def _gauss_rule(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (eigenvalues of ``T``) and weights (squared first row of its eigenvectors)."""
    if not (np.all(np.isfinite(alpha)) and np.all(np.isfinite(beta))):
        raise FloatingPointError("the operator returned NaN or Inf during Lanczos; check the model and data")
    if alpha.size == 1:
        return alpha.copy(), np.ones(1)
    theta, U = scipy.linalg.eigh_tridiagonal(alpha, beta)
    tau = U[0, :] ** 2
    return theta, tau / tau.sum()


def _build(nodes, weights, n, sigma, grid, m, used, converged) -> SpectralDensity:
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma is None:
        span = hi - lo
        sigma = (span if span > 0 else max(abs(hi), 1.0) * 1e-3) / max(m, 1)
    if grid is None:
        points = min(max(GRID_POINTS, math.ceil(4 * (hi - lo + 10 * sigma) / sigma) + 1), 2**16)
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, points)
    grid = np.array(grid, dtype=np.float64)  # a copy: results never alias the caller's arrays
    values = _smooth(nodes, weights, grid, sigma)
    return SpectralDensity(nodes, weights, int(n), float(sigma), grid, values, int(used), converged)


def _smooth(nodes: np.ndarray, weights: np.ndarray, t: np.ndarray, sigma: float) -> np.ndarray:
    """``(1/P) Σ_p Σ_j τ_pj N(t; θ_pj, σ²)``, in chunks of ``t`` to bound memory."""
    import scipy.stats  # here, not at the top: it takes half of ``import hessop``

    x, w = nodes.ravel(), weights.ravel() / nodes.shape[0]
    keep = w > 0
    x, w = x[keep], w[keep]
    flat = t.ravel()
    out = np.empty(flat.size)
    chunk = max(1, 2**22 // max(x.size, 1))
    for s in range(0, flat.size, chunk):
        out[s:s + chunk] = scipy.stats.norm.pdf(flat[s:s + chunk, None], loc=x, scale=sigma) @ w
    return out.reshape(t.shape)


def spectral_distance(a, b, *, metric: str = "wasserstein", sigma: float | None = None, scale: str = "none") -> float:
    """A distance between two spectral densities (or a density and exact eigenvalues).

    Parameters
    ----------
    a, b : SpectralDensity or array_like
        An array is read as exact eigenvalues with equal weights.
    metric : {"wasserstein", "jensen-shannon"}
        ``"wasserstein"``: the 1-Wasserstein (earth mover's) distance between the
        discrete quadrature measures (:func:`scipy.stats.wasserstein_distance`),
        in eigenvalue units. ``"jensen-shannon"``: the Jensen-Shannon distance
        (square root of the divergence, base 2, in ``[0, 1]``;
        :func:`scipy.spatial.distance.jensenshannon`) between the two densities
        smoothed with the same kernel on a common grid.
    sigma : float, optional
        Kernel width for Jensen-Shannon. Default: the larger width of the SLQ
        densities among ``a`` and ``b`` (exact eigenvalues adopt the other side's
        width, so both are smoothed alike).
    scale : {"none", "top"}
        ``"top"`` first divides each density's eigenvalue axis by its largest
        ``|λ|``, so the distance compares shapes only (blocks of different
        magnitude, as in the layer-wise analysis). Both measures are probability
        measures either way: operators of different sizes compare by the
        distribution of their eigenvalues.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}; got {scale!r}")
    a, b = (_scaled(x if isinstance(x, SpectralDensity) else SpectralDensity.from_eigenvalues(x), scale)
            for x in (a, b))
    if metric == "wasserstein":
        from scipy.stats import wasserstein_distance

        return float(wasserstein_distance(a.nodes.ravel(), b.nodes.ravel(), a.weights.ravel(), b.weights.ravel()))
    if metric in ("jensen-shannon", "js"):
        given = [d.sigma for d in (a, b) if d.num_matvecs > 0]  # SLQ widths, else the exact ones
        s = sigma or max(given or [a.sigma, b.sigma])
        lo = min(a.nodes.min(), b.nodes.min()) - 5 * s
        hi = max(a.nodes.max(), b.nodes.max()) + 5 * s
        t = np.linspace(lo, hi, min(max(4096, math.ceil(4 * (hi - lo) / s)), 2**16))
        return float(scipy.spatial.distance.jensenshannon(a.evaluate(t, s), b.evaluate(t, s), base=2))
    raise ValueError(f"unknown metric {metric!r}; use 'wasserstein' or 'jensen-shannon'")


SCALES = ("none", "top")
"""How :func:`spectral_distance` scales the eigenvalue axes before comparing."""


def _scaled(rho: SpectralDensity, scale: str) -> SpectralDensity:
    """The density with its eigenvalue axis divided by its largest ``|λ|`` (``scale="top"``)."""
    if scale == "none":
        return rho
    top = float(np.max(np.abs(rho.nodes[rho.weights > 0]), initial=0.0))
    if top == 0.0:
        return rho
    return dataclasses.replace(rho, nodes=rho.nodes / top, sigma=rho.sigma / top, grid=rho.grid / top,
                               values=rho.values * top)
