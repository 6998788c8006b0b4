"""Products over kept first-order graphs only: the per-call work reduced to the backward passes.

Once every batch's first-order graph is kept (:mod:`hessop.backends.torch.graphs`)
and the first product has passed its checks, a double-backward product is one
backward pass per batch. The general path around it (reading every parameter and
buffer of the model to key the graph cache, the attention-kernel context, a
zero-filled accumulator, per-parameter casts) cost about 0.3 ms per call, 40% of
the backward pass on a 2,410-parameter MLP. :class:`KeptProducts` is the
product over the kept graphs with that work taken out:

* whether the graphs are still valid is read once per product from a snapshot of
  the model (:class:`.functional.Snapshot`: the objects, modes and values), the
  test of every kept graph and linearisation;
* no forward pass runs, so no attention-kernel context is needed (the kernels
  were chosen when the graphs were built);
* the backward pass is handed to the autograd engine directly
  (``torch.autograd.graph._engine_run_backward``, what ``torch.autograd.grad``
  calls after checking its arguments in Python: 30-80 µs here); the arguments
  are right by construction (the vector's pieces have the parameters' shapes,
  dtype and device, and the engine checks them again). Where that private
  function is missing or its signature differs, ``torch.autograd.grad`` is used;
* one batch is flattened by concatenation; several add into one accumulator.

A model that no longer matches the snapshot sends the call back to the general
path, which rebuilds the graphs and a new :class:`KeptProducts`.

The first product over a kept graph checks repeatability with a second forward
pass (:func:`check_repeatable_loss`) instead of a second product on a graph
built afresh: a forward pass that draws random numbers (dropout in train mode,
noise layers) gives another loss, and the product built on it another matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .hvp import FirstOrderGraph

try:
    from torch.autograd.graph import _engine_run_backward
except ImportError:  # pragma: no cover - older or newer torch
    _engine_run_backward = None


class KeptProducts:
    """``Σ_b w_b H_b V`` over kept first-order graphs (module docstring).

    Parameters
    ----------
    graphs : each batch's kept graph, with its weight
    sizes, shapes : the flat vector's split into parameter tensors
    same_dtype : whether every differentiated parameter has the vectors' dtype (no casts)
    """

    def __init__(self, graphs: Sequence[tuple[FirstOrderGraph, float]], sizes: list[int], shapes: list[tuple],
                 same_dtype: bool):
        self.graphs = list(graphs)
        self.sizes = sizes
        self.shapes = shapes
        self.same_dtype = same_dtype
        self.layout = []  # (shape, contiguous strides, offset) of each parameter in the flat vector
        offset = 0
        for size, shape in zip(sizes, shapes):
            strides, step = [], 1
            for d in reversed(shape):
                strides.insert(0, step)
                step *= d
            self.layout.append((tuple(shape), tuple(strides), offset))
            offset += size

    def vector(self, v: torch.Tensor) -> torch.Tensor:
        """``Σ_b w_b H_b v`` for a vector ``v`` of the parameters' dtype."""
        if v.stride(0) == 1 and type(v) is torch.Tensor:  # parameter-shaped views without splitting
            base = v.storage_offset()
            vs = tuple(v.as_strided(shape, stride, base + offset) for shape, stride, offset in self.layout)
        else:
            vs = tuple(p.reshape(s) for p, s in zip(torch.split_with_sizes(v, self.sizes), self.shapes))
        if len(self.graphs) == 1:
            graph, weight = self.graphs[0]
            out = torch.cat([p.reshape(-1) for p in backward(graph, vs)])
            return out.mul_(weight) if weight != 1.0 else out
        acc = torch.zeros_like(v)
        views = [p.view(*s) for p, s in zip(torch.split_with_sizes(acc, self.sizes), self.shapes)]
        for graph, weight in self.graphs:
            for view, part in zip(views, backward(graph, vs)):
                view.add_(part, alpha=weight)
        return acc


_direct = _engine_run_backward is not None


def backward(graph: FirstOrderGraph, v: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """``graph.hvp(v)`` for one vector of plain tensors (the caller's check), through the autograd engine
    directly (module docstring)."""
    global _direct
    if not (_direct and graph.live):
        return graph.hvp(v)
    grads = tuple(graph.grads)
    try:
        out = _engine_run_backward(grads, tuple(v[i] for i in graph.live), True, False, graph.params, True,
                                   accumulate_grad=False)
    except TypeError:  # another signature in this torch: the public path from now on
        _direct = False
        return graph.hvp(v)
    return tuple(torch.zeros_like(vi) if o is None else o for o, vi in zip(out, v))


def check_repeatable_loss(kept: torch.Tensor, again: torch.Tensor, index: int) -> None:
    """The kept graph's loss of batch ``index`` and a fresh forward pass's must agree to rounding."""
    a, b = float(kept.detach()), float(again.detach())
    eps = float(torch.finfo(kept.dtype).eps)
    if a == b or abs(a - b) <= math.sqrt(eps) * max(abs(a), abs(b)):
        return
    raise RuntimeError(
        f"the curvature-vector product is not repeatable: two forward passes over batch {index} gave losses "
        f"{abs(a - b) / max(abs(a), abs(b)):.2g} apart (relative), so the operator is a random matrix and no "
        "eigenvalue, trace or density of it would mean anything. Likely causes: dropout in train mode or a "
        "random layer in forward(); call model.eval() (check_determinism=False does not allow this)"
    )
