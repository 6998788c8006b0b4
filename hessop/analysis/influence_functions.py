"""Influence functions: how much each training example moves a test loss (Koh & Liang 2017, ICML).

Up-weighting a training example ``z`` by ``ε`` moves the minimiser by
``-ε H⁻¹ ∇ℓ(z)`` (``H`` the Hessian of the mean training loss), so the test loss moves at
rate

    I(z) = -∇L_testᵀ (H + λI)⁻¹ ∇ℓ(z),

and leaving ``z`` out (``ε = -1/N``) changes it by about ``-I(z) / N``. One solve
``s = (H + λI)⁻¹ ∇L_test`` per test batch (:func:`hessop.solve`, its accuracy certified by the
true residual) and then one gradient per training example: no LiSSA recursion whose
convergence nobody checks. ``λ`` (``damping``) is the weight decay of an L2-regularised
training loss, or the damping that makes a non-convex network's ``H`` invertible.

(The module is not called ``influence``: a submodule of that name would replace the
function ``hessop.analysis.influence`` as the package's attribute once imported.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._warnings import warn
from ..factory import hessian
from ..solvers.solve import SolveResult, solve

__all__ = ["InfluenceResult", "influence"]


@dataclass(frozen=True)
class InfluenceResult:
    """Influences of every training example on one test loss, and the quality of the solve behind them.

    Attributes
    ----------
    influence : numpy.ndarray
        ``(N,)`` float64, ``I(z_i) = -∇L_testᵀ (H + λI)⁻¹ ∇ℓ(z_i)`` in the order of the training
        data (batches in order, examples in order within a batch). Negative: up-weighting
        ``z_i`` lowers the test loss (a helpful example).
    loo_change : numpy.ndarray
        ``-I(z_i) / N``, the predicted change of the test loss when ``z_i`` is left out of training.
    test_loss : float
    solve : SolveResult
        The solve of ``(H + λI) s = ∇L_test``: its true relative residual and ``converged``.
    damping : float
    num_matvecs : int
        Hessian-vector products spent (the solve's).
    """

    influence: np.ndarray
    loo_change: np.ndarray
    test_loss: float
    solve: SolveResult
    damping: float
    num_matvecs: int

    @property
    def converged(self) -> bool:
        """Whether the solve met its tolerance (the influences are then accurate to about ``rtol``)."""
        return bool(self.solve.converged)


def influence(model: nn.Module, loss: Callable, train_data: Iterable, test_batch: Any, *, damping: float = 0.0,
              params: Any = None, method: str = "auto", rtol: float = 1e-6, max_matvecs: int | None = None,
              progress: bool = False, **options: Any) -> InfluenceResult:
    """Influence of each training example on the loss of ``test_batch`` (Koh & Liang 2017).

    Parameters
    ----------
    model : torch.nn.Module
        The trained network (in the mode it is evaluated in: ``eval()`` for BatchNorm/dropout).
    loss : callable
        ``loss(output, target)`` reducing by the mean (``nn.CrossEntropyLoss()``); a batch of
        one example gives that example's loss.
    train_data : iterable of (x, y) batches
        The training data the Hessian is the mean over, and whose examples are scored.
    test_batch : (x, y)
        The test example(s) whose mean loss is explained.
    damping : float
        ``λ`` in ``H + λI``: the weight decay of an L2-regularised training loss (then exact),
        or a damping for a Hessian that is not positive definite.
    params : optional
        The parameters (tensors or names) the influence is taken over (default: all trainable).
    method, rtol, max_matvecs : optional
        Passed to :func:`hessop.solve` (``"auto"`` handles an indefinite ``H + λI``).
    progress : bool
        Show the solve's progress bar.
    **options
        Passed to :func:`hessop.hessian` (e.g. ``hvp=``).

    Returns
    -------
    InfluenceResult
        A ``RuntimeWarning`` says when the solve did not converge.
    """
    batches = [tuple(b) for b in train_data] if not isinstance(train_data, tuple) else [tuple(train_data)]
    H = hessian(model, loss, batches, params=params, **options)
    T = hessian(model, loss, [tuple(test_batch)], params=params, **options)
    g_test = T.gradient()
    sol = solve(H, g_test, damping=float(damping), method=method, rtol=rtol, max_matvecs=max_matvecs,
                progress=progress)
    if not sol.converged:
        warn(f"influence: the solve did not converge ({sol.message}); the influences are approximate",
             RuntimeWarning,
         )
    s = _unflatten(torch.as_tensor(sol.x), H.parameter_shapes)
    names = H.parameter_names
    scores = [_scores(model, loss, names, s, x, y) for x, y in batches]
    values = -np.concatenate(scores)
    return InfluenceResult(values, -values / values.size, float(T.loss()), sol, float(damping), sol.num_matvecs)


def _unflatten(flat: torch.Tensor, shapes) -> list[torch.Tensor]:
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape)) if len(shape) else 1
        out.append(flat[start:start + size].reshape(shape))
        start += size
    return out


def _scores(model: nn.Module, loss: Callable, names: list[str], s: list[torch.Tensor], x, y) -> np.ndarray:
    """``∇ℓ(z)ᵀ s`` for every example ``z`` of one batch (per-example gradients by ``torch.func``)."""
    from torch.func import functional_call, grad, vmap

    named = dict(model.named_parameters())
    fixed = {k: v.detach() for k, v in named.items() if k not in names}
    fixed.update({k: v.detach() for k, v in model.named_buffers()})
    chosen = {k: named[k].detach() for k in names}

    def one(p, xi, yi):
        out = functional_call(model, ({**fixed, **p},), (xi.unsqueeze(0),))
        return loss(out, yi.unsqueeze(0))

    def score(xi, yi):
        g = grad(one)(chosen, xi, yi)
        return sum((g[k] * sk.to(g[k].dtype)).sum() for k, sk in zip(names, s))

    try:
        values = vmap(score)(x, y)
    except Exception:  # noqa: BLE001 - a model vmap cannot batch: one example at a time
        values = torch.stack([score(x[i], y[i]) for i in range(x.shape[0])])
    return values.detach().cpu().double().numpy()
