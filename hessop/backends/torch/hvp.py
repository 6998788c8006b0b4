"""Curvature-vector products of one batch, on tuples of parameter-shaped tensors.

Three ways to multiply by the Hessian of a scalar ``f(p)`` and one for the
generalised Gauss-Newton matrix:

* **double backward** (Pearlmutter 1994, "Fast exact multiplication by the
  Hessian"): one reverse pass with ``create_graph=True`` gives ``g = ∇f`` and
  its graph; a second reverse pass of ``<g, v>`` gives ``H v``. The graph of
  ``g`` can be kept and reused for many ``v`` (:class:`FirstOrderGraph`). A
  block of vectors goes through ``is_grads_batched=True`` (vmap of the second
  pass) or a loop of second passes over one first-order graph.
* **forward over reverse**: ``torch.func.jvp`` of ``torch.func.grad(f)``, the
  form recommended by the ``torch.func`` documentation; a block is a
  ``torch.func.vmap`` of it.
* **GGN** (Schraudolph 2002, "Fast curvature matrix-vector products for
  second-order gradient descent"): ``Gv = Jᵀ (∇²ℓ) J v`` with ``J`` the Jacobian of
  the network output, ``J v`` by forward mode, ``∇²ℓ`` the Hessian of the loss
  with respect to the output (forward over reverse on the output only), and
  ``Jᵀ`` by one reverse pass.

Batched inputs carry the block index first: each tangent is ``(k, *shape)``.
Losses are ``f(params, target)``. Under forward mode a floating-point target
gets an explicit zero tangent: without it, ``mse_loss(reduction="mean")`` fails
inside ``jvp(grad(...))`` on PyTorch's immutable ZeroTensor (pytorch#123996).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.func import grad, jvp, vjp, vmap

Tensors = tuple[torch.Tensor, ...]
Loss = Callable[[Tensors, Any], torch.Tensor]


def _jvp_with_target(fn: Callable, primal: Any, tangent: Any, target: Any) -> Any:
    """``jvp`` of ``fn(primal, target)`` along ``tangent``, the target held fixed with a real zero tangent."""
    if isinstance(target, torch.Tensor) and target.is_floating_point():
        return jvp(fn, (primal, target), (tangent, torch.zeros_like(target)))[1]
    return jvp(lambda p: fn(p, target), (primal,), (tangent,))[1]


class FirstOrderGraph:
    """The gradient of one batch's loss with its autograd graph kept for second derivatives.

    Building it costs a forward and a backward pass with ``create_graph=True``;
    every :meth:`hvp` afterwards costs one more backward pass only.
    """

    def __init__(self, f: Loss, params: Sequence[torch.Tensor], target: Any):
        self.params = tuple(p.detach().requires_grad_() for p in params)
        with torch.enable_grad():
            self.loss = f(self.params, target)
            g = torch.autograd.grad(self.loss, self.params, create_graph=True, allow_unused=True)
        # Entries of g that do not depend on the parameters (the loss is linear in them) add nothing.
        self.live = [i for i, gi in enumerate(g) if gi is not None and gi.requires_grad]
        self.grads = [g[i] for i in self.live]

    def hvp(self, v: Tensors, batched: bool = False, retain: bool = True) -> Tensors:
        """``H v`` (``v`` a tuple of tensors; with ``batched`` each has a leading block dimension)."""
        if not self.live:
            return tuple(torch.zeros_like(vi) for vi in v)
        with torch.enable_grad():
            out = torch.autograd.grad(
                self.grads,
                self.params,
                grad_outputs=[v[i] for i in self.live],
                retain_graph=retain,
                allow_unused=True,
                is_grads_batched=batched,
            )
        return tuple(torch.zeros_like(vi) if o is None else o for o, vi in zip(out, v))

    def hvp_loop(self, v: Tensors, retain: bool = True) -> Tensors:
        """``H V`` for a block, one backward pass per column over this one graph."""
        k = v[0].shape[0]
        cols = [self.hvp(tuple(vi[c] for vi in v), retain=retain or c < k - 1) for c in range(k)]
        return tuple(torch.stack(parts) for parts in zip(*cols))


def double_backward(f: Loss, params: Sequence[torch.Tensor], target: Any, v: Tensors, batched: bool) -> Tensors:
    """``H v`` by reverse over reverse; a block as one second pass per column over a shared first pass."""
    graph = FirstOrderGraph(f, params, target)
    return graph.hvp_loop(v, retain=False) if batched else graph.hvp(v, retain=False)


def double_backward_vmap(f: Loss, params: Sequence[torch.Tensor], target: Any, v: Tensors, batched: bool) -> Tensors:
    """``H v`` by reverse over reverse; a block as one second pass through ``is_grads_batched``."""
    return FirstOrderGraph(f, params, target).hvp(v, batched=batched, retain=False)


def forward_over_reverse(f: Loss, params: Sequence[torch.Tensor], target: Any, v: Tensors, batched: bool) -> Tensors:
    """``H v`` as the directional derivative of the gradient; a block through ``vmap``."""
    primals = tuple(p.detach() for p in params)
    gradient = grad(f)

    def one(u: Tensors) -> Tensors:
        return _jvp_with_target(gradient, primals, u, target)

    return vmap(one)(v) if batched else one(v)


def ggn(
    model_fn: Callable[[Tensors], torch.Tensor],
    loss_of_output: Callable[[torch.Tensor, Any], torch.Tensor],
    params: Sequence[torch.Tensor],
    target: Any,
    v: Tensors,
    batched: bool,
) -> Tensors:
    """``Jᵀ (∇²ℓ) J v`` for the network output ``model_fn(params)`` and the loss ``ℓ`` of that output."""
    primals = tuple(p.detach() for p in params)
    output, pullback = vjp(model_fn, primals)
    output = output.detach()
    loss_grad = grad(loss_of_output)

    def one(u: Tensors) -> Tensors:
        ju = jvp(model_fn, (primals,), (u,))[1]
        hju = _jvp_with_target(loss_grad, output, ju, target)
        return pullback(hju)[0]

    return vmap(one)(v) if batched else one(v)


ALIASES = {"double-backward-loop": "double-backward"}
"""Former names: ``"double-backward-loop"`` was the column loop that ``"double-backward"`` now does for blocks."""

STRATEGIES = {
    "double-backward": double_backward,
    "double-backward-vmap": double_backward_vmap,
    "forward-over-reverse": forward_over_reverse,
}


INEXACT = ("finite-difference",)
"""Strategies that approximate (:mod:`.finite_difference`): chosen by name, or by ``"auto"`` only when every exact
one fails."""
