"""Hessian-vector products compiled by ``torch.compile`` (``hessian(..., compile=True)``).

The per-batch product is forward over reverse (``jvp`` of ``grad``, as
:func:`hessop.backends.torch.hvp.forward_over_reverse`) of the loss of
``functional_call(model, state, ...)``, traced whole by TorchDynamo, so the
forward pass, the gradient and its directional derivative become one graph that
Inductor fuses (generated C++/OpenMP on the CPU, Triton on CUDA). Everything that
changes between calls (the differentiated parameters, the other parameters and
buffers, the batch, the vector) is an argument of the compiled function, never
a constant of the trace, so the operator follows the model as it trains and one
compilation serves every batch of the same shapes. Shapes are static
(``dynamic=False``): a batch of another shape compiles once more. (With
torch's automatic dynamic shapes, the recompilation that a second shape or
layout triggers fails inside forward-mode AD on symbolic strides, torch 2.13.)

The first product compares the compiled product of the first batch with the
eager one (forward over reverse, the same vector) and refuses a difference
beyond rounding; a compiler that cannot run here (no C++ compiler, an
unsupported Python) fails at that first product with a sentence that says so.
A block is multiplied column by column through the one compiled function.
Compiling costs seconds to minutes (measured in ``docs/performance.md``), so
``hvp="auto"`` never compiles on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.func import functional_call

from .checks import check_compiled
from .hvp import Tensors, forward_over_reverse
from .losses import logits_of, loss_of_model


def _identity(out: Any) -> Any:
    return out


def _own_loss(out: Any, target: Any) -> torch.Tensor:
    return loss_of_model(out)


def _product(model, names, output, loss, params, vs, state, args, kwargs, target) -> Tensors:
    def f(p: Tensors, tgt: Any) -> torch.Tensor:
        return loss(output(functional_call(model, {**state, **dict(zip(names, p))}, args, kwargs)), tgt)

    return forward_over_reverse(f, params, target, vs, False)


class CompiledProduct:
    """``H_b v`` of one batch through one ``torch.compile``-d function (module docstring).

    Parameters
    ----------
    model : the network; names : the differentiated parameters' names
    loss : ``loss(output, target)`` of the model's output (its logits), or None: the loss the model returns
    """

    def __init__(self, model: torch.nn.Module, names: Sequence[str], loss: Callable | None):
        self.model, self.names = model, list(names)
        self.output = logits_of if loss is not None else _identity
        self.loss = loss if loss is not None else _own_loss
        self.fn: Callable | None = None

    def run(self, params: Tensors, vs: Tensors, state: dict, args: tuple, kwargs: dict, target: Any, batched: bool,
            check: int | None = None) -> Tensors:
        """The product; with ``check`` (a batch index, at the first product) first compared with the eager one."""
        call = (state, args, kwargs, target)
        if check is not None:
            first = tuple(v[0] for v in vs) if batched else vs
            check_compiled(self(params, first, *call, False), self.eager(params, first, *call), check)
        return self(params, vs, *call, batched)

    def __call__(self, params: Tensors, vs: Tensors, state: dict, args: tuple, kwargs: dict, target: Any,
                 batched: bool) -> Tensors:
        if batched:
            cols = [self(params, tuple(v[c] for v in vs), state, args, kwargs, target, False)
                    for c in range(vs[0].shape[0])]
            return tuple(torch.stack(parts) for parts in zip(*cols))
        if self.fn is None:
            self.fn = torch.compile(_product, dynamic=False)
        try:
            return self.fn(self.model, self.names, self.output, self.loss, params, vs, state, args, kwargs, target)
        except Exception as err:  # the compiler's own errors are of many types (BackendCompilerFailed, ...)
            raise compiler_failure(err) from err

    def eager(self, params: Tensors, vs: Tensors, state: dict, args: tuple, kwargs: dict, target: Any) -> Tensors:
        """The same product without the compiler (the reference of :func:`check_compiled`)."""
        return _product(self.model, self.names, self.output, self.loss, params, vs, state, args, kwargs, target)


def compiler_failure(err: Exception) -> RuntimeError:
    """The one-sentence error for a compiler that cannot run here."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    return RuntimeError(
        f"torch.compile could not compile the Hessian-vector product on this machine ({type(err).__name__}: "
        f"{first}); it needs a working C++ compiler on the CPU (Triton on CUDA) and a Python version torch "
        "supports for compiling. Pass compile=False to use the eager products"
    )
