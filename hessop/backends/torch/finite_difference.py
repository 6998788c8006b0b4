"""``hvp="finite-difference"``: a central difference of two gradient passes, with its error measured on the model.

``H v ≈ (∇f(θ + h v) − ∇f(θ − h v)) / 2h`` has a truncation error ``O(h²)`` and a
rounding error ``O(ε_f / h)``, where ``ε_f`` is the precision the *loss* is computed
to. The parameters' machine epsilon is a guess at ``ε_f`` that a loss computed in
lower precision inside (logits cast to float32 before the cross-entropy, a fused
kernel in half precision) makes wrong by orders of magnitude. So the first product
measures, on its first batch and vector:

* starting from ``h₀ ‖v‖ = ε^(1/3) (1 + ‖θ‖)`` (ε the parameters' epsilon; the step
  that balances the two errors when ``ε_f = ε``, Nocedal & Wright 2006, "Numerical
  Optimization", §8.1), the differences ``D(h)`` at steps doubling from ``h₀/2``;
* ``e(h) = ‖D(h) − D(2h)‖ / ‖D(h)‖``, which is within a factor of about 3 of the
  error of ``D(h)`` either way: where truncation dominates, ``D(2h)`` errs 4 times
  more (``e ≈ 3 × error``); where rounding dominates, ``D(2h)`` errs half as much, by
  an unrelated amount (``e ≈ error``);
* the step with the smallest ``e`` (the ladder stops two steps after the minimum,
  after at most :data:`MAX_STEPS` doublings), kept relative to ``h₀`` for every later
  product, and ``e`` there as the products' relative error, :attr:`FiniteDifference.error`.

The measurement costs about twice as many gradient passes as doublings (10 to 30),
once. Measured against exact products: ``docs/numerics.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.func import grad

from ..._warnings import warn
from .hvp import Loss, Tensors

SOLVER_TOLERANCE = 1e-6
"""The solvers' default relative tolerance (``hessop.solvers.eigsh.DEFAULT_TOL``): a larger error is warned about."""

MAX_STEPS = 16
"""Doublings of the step the first product tries at most (a factor 65,536 above ``h₀/2``)."""


def _norm(parts: Sequence[torch.Tensor]) -> float:
    return math.sqrt(sum(float(p.double().square().sum()) for p in parts))


class FiniteDifference:
    """Central differences of gradients at a step measured at the first product (module docstring).

    ``error`` is None until the first product, then the measured relative error.
    """

    def __init__(self) -> None:
        self.factor: float | None = None  # the step over h₀
        self.error: float | None = None

    def __call__(self, f: Loss, params: Sequence[torch.Tensor], target: Any, v: Tensors, batched: bool) -> Tensors:
        if batched:
            cols = [self(f, params, target, tuple(vi[c] for vi in v), False) for c in range(v[0].shape[0])]
            return tuple(torch.stack(parts) for parts in zip(*cols))
        primals = tuple(p.detach() for p in params)
        v_norm = _norm(v)
        if v_norm == 0:
            return tuple(torch.zeros_like(vi) for vi in v)
        eps = max(float(torch.finfo(p.dtype).eps) for p in primals if p.is_floating_point())
        h0 = eps ** (1 / 3) * (1 + _norm(primals)) / v_norm
        gradient = grad(f)
        difference = lambda h: _difference(gradient, primals, target, v, h)  # noqa: E731
        if self.factor is None:
            out, self.factor, self.error = ladder(difference, h0, _relative_change)
            tolerance = max(SOLVER_TOLERANCE, 100 * eps)  # eigsh's default tolerance, or its floor in this dtype
            if self.error > tolerance:
                warn(
                    f"finite-difference products are accurate to about {self.error:.1g} (relative) on this model, "
                    f"measured at the first product: more than the solvers' default tolerance {tolerance:.1g}, and "
                    "solvers report no residual below it (H.product_error); pass a tol of at least that, or use an "
                    "exact hvp (or a loss computed in float64) for tighter results",
                    RuntimeWarning,
                )
            return out
        return difference(h0 * self.factor)


def _difference(gradient: Callable, primals: Tensors, target: Any, v: Tensors, h: float) -> Tensors:
    plus = gradient(tuple(p + h * vi.to(p.dtype) for p, vi in zip(primals, v)), target)
    minus = gradient(tuple(p - h * vi.to(p.dtype) for p, vi in zip(primals, v)), target)
    return tuple((a - b) / (2 * h) for a, b in zip(plus, minus))


def _relative_change(current: Tensors, following: Tensors) -> float:
    scale = _norm(current)
    return _norm([a - b for a, b in zip(current, following)]) / scale if scale > 0 else 0.0


def ladder(difference: Callable[[float], Any], h0: float,
           relative_change: Callable[[Any, Any], float]) -> tuple[Any, float, float]:
    """Steps doubling from ``h0 / 2``, each difference's error estimated by ``relative_change`` to the next.

    Returns the difference at the step of least estimated error, that step over ``h0``, and the
    estimate. ``relative_change`` is where a split model sums its norms over the ranks, so that all
    take the same steps.
    """
    h = h0 / 2
    current = difference(h)
    best: tuple[float, float, Any] | None = None
    rises = 0
    for _ in range(MAX_STEPS):
        following = difference(2 * h)
        estimate = relative_change(current, following)
        if best is None or estimate < best[0]:
            best, rises = (estimate, h, current), 0
        else:
            rises += 1
        if rises == 2 or estimate == 0.0 or not math.isfinite(estimate):
            break
        current, h = following, 2 * h
    assert best is not None
    estimate, h, out = best
    return out, h / h0, estimate
