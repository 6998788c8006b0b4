"""``hvp="linearize"``: each batch's gradient linearised once, then one tangent pass per product.

:func:`torch.func.linearize` of the gradient traces ``jvp(grad(f))`` at the
current parameters and keeps, as constants, every value that does not depend on
the tangent (the forward pass, the gradient and their intermediates). What is
left to run for each vector is the tangent part only: on the conv net with
BatchNorm of ``docs/performance.md`` about 1.5 gradient passes, against about 3
for a second backward pass over a kept first-order graph, whose nodes
differentiate each backward operation again. It is the analogue of the JAX
backend's ``hvp="linearize"``.

The price is the tracing (seconds per batch on the CPU, where a product takes
milliseconds) and the memory of the kept values, about that of a kept
first-order graph. For a list of batches each batch's linearisation is kept
while the model is unchanged (the test of :mod:`hessop.backends.torch.kept`:
the same modules, parameters and buffers, with the same data and versions) and
in eval mode; with a ``DataLoader`` or a model in train mode it is rebuilt at
every product, which only pays for blocks. ``hvp="auto"`` never chooses it.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from torch import nn
from torch.func import grad, linearize

from .hvp import Loss, Tensors
from .kept import snapshot, unchanged


class Linearized:
    """Per batch, the linearised gradient (module docstring)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.fns: dict[int, Callable[[Tensors], Tensors]] = {}
        self.entries: list | None = None

    def product(self, index: int, f: Loss, params: Tensors, target: Any, v: Tensors, batched: bool,
                keep: bool) -> Tensors:
        """``H_b v`` for batch ``index`` (``keep``: the data is a list, so a kept linearisation can be reused)."""
        keep = keep and not self.model.training
        if self.entries is None or not unchanged(self.entries):
            self.fns, self.entries = {}, snapshot(self.model)
        fn = self.fns.get(index)
        if fn is None:
            fn = _linearized_gradient(f, params, target)
            if keep:
                self.fns[index] = fn
        if not batched:
            return fn(v)
        cols = [fn(tuple(vi[c] for vi in v)) for c in range(v[0].shape[0])]
        return tuple(torch.stack(parts) for parts in zip(*cols))


def _linearized_gradient(f: Loss, params: Tensors, target: Any) -> Callable[[Tensors], Tensors]:
    """``v ↦ H v`` at ``params``: the linearisation of ``grad f`` (a floating target gets a zero tangent)."""
    primals = tuple(p.detach() for p in params)
    gradient = grad(f)
    with warnings.catch_warnings():  # torch's constant folding inside linearize warns about its own graph
        warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node", category=UserWarning)
        if isinstance(target, torch.Tensor) and target.is_floating_point():
            _, jvp_fn = linearize(gradient, primals, target)
            zero = torch.zeros_like(target)
            return lambda v: jvp_fn(tuple(v), zero)
        _, jvp_fn = linearize(lambda p: gradient(p, target), primals)
    return lambda v: jvp_fn(tuple(v))
