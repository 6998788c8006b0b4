"""The result of every trace estimator: an estimate and its quality (:func:`~hessop.solvers.trace.trace`,
:func:`~hessop.solvers.trace_function.trace_function`, :func:`~hessop.solvers.trace_function.logdet`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.special

__all__ = ["TraceResult"]


@dataclass(frozen=True)
class TraceResult:
    """A trace estimate and its quality.

    Attributes
    ----------
    estimate, stderr : float
        The estimate and its standard error: the spread of ``samples`` over ``√m``, plus for
        XTrace the covariance of its exchangeable samples, widened by the Student-t factor
        :func:`~hessop.solvers.probes.t_factor` so that ``estimate ± 2 stderr`` is a 95% interval
        (measured coverage: docs/numerics.md).
    num_matvecs : int
        Products this call spent (including the symmetry probe; in a
        probe-parallel run, summed over ranks).
    method : str
    converged : bool
        ``False`` when ``rtol`` was not reached within the budget (with a ``RuntimeWarning``), or the
        run was interrupted (then the estimate uses the products finished before the interrupt).
    samples : numpy.ndarray
        Host float64 samples whose mean is ``estimate``: ``z_iᵀ A z_i`` (Hutchinson),
        ``tr(QᵀAQ) + g_iᵀ(I-QQᵀ)A(I-QQᵀ)g_i`` (Hutch++), the leave-one-out
        estimates (XTrace); an interrupted sketched run may fall back to ``z_iᵀ A z_i`` of its
        finished sketch products (``method`` then says ``"hutchinson"``).
    calibrated : bool
        ``True`` when the standard error rests on at least
        :data:`~hessop.solvers.probes.MIN_CALIBRATED` samples (60 Hutchinson probes, 16 Hutch++
        residual probes, 12 XTrace test vectors), from which ``± 2 stderr`` is measured
        to cover the trace 93-97% of the time; ``False`` (with a ``RuntimeWarning``) otherwise.
    """

    estimate: float
    stderr: float
    num_matvecs: int
    method: str
    converged: bool
    samples: np.ndarray
    calibrated: bool = True

    @property
    def num_probes(self) -> int:
        """Number of samples averaged."""
        return int(self.samples.size)

    def confidence_interval(self, level: float = 0.95) -> tuple[float, float]:
        """The interval ``estimate ± z·stderr`` with ``z`` the normal quantile of ``level``.

        ``stderr`` already carries the Student-t widening for its sample size, so the interval
        is calibrated at ``level ≈ 0.95`` (``z ≈ 2``); far out in the tails (``level > 0.99``) it
        may be optimistic for small samples.
        """
        z = float(scipy.special.ndtri(0.5 + level / 2))  # scipy.stats.norm.ppf
        return self.estimate - z * self.stderr, self.estimate + z * self.stderr
