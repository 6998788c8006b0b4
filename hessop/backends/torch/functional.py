"""The model as a function of the differentiated parameters: the bottom layer of the PyTorch backend.

:class:`FunctionalModel` owns what a product reads of the model: which parameters are
differentiated and their flat layout, their current values, every other parameter and buffer
(held fixed), and the closures ``f(params, target)`` of one batch, which call the model through
:func:`torch.func.functional_call` with the differentiated parameters swapped for the tensors
given. Any subset of the parameters can be differentiated and the loss evaluated at other values
without touching the model; values are read live at every call, so the backend follows the model
as it trains. Nothing here keeps work across products: that is :mod:`.products`'s.

:class:`Snapshot` records what the products' kept work depends on and
:meth:`Snapshot.unchanged` tells whether it still holds:

* every module's ``_modules``, ``_parameters`` and ``_buffers`` entries, the objects themselves
  (a replaced module, parameter or buffer is seen) and each dict's length (an added entry);
* each module's train or eval mode (``model.train()`` changes dropout and BatchNorm);
* each tensor's data pointer and version counter (``p.data = ...`` and any in-place change
  through autograd are seen at the cost of two reads);
* a copy of each tensor's values, compared with :func:`torch.equal`: ``p.data.add_()`` and
  ``p.data.copy_()``, as hand-written training loops update weights, change neither the data
  pointer nor the version counter (``.data`` has a counter of its own), so only the values show
  them. The copy costs the memory of the model's parameters and buffers once, and each check reads
  them twice (its cost per product: ``docs/performance.md``). A snapshot without values
  (``values=False``) keeps none of that memory and sees every change but ``.data`` writes.

A model split across processes (FSDP2) would subclass :class:`FunctionalModel`: the products
above it see only ``current``, ``fixed``, ``closures``, ``split`` and ``flatten``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from .data import arguments, target_of
from .hvp import Tensors
from .losses import logits_of, loss_of_model
from .params import device_and_dtype, flatten, split, tensors_of


class FunctionalModel:
    """``model`` as a function of the parameters ``names`` (module docstring).

    Parameters
    ----------
    model : the network
    names : the differentiated parameters, in the flat vector's order
    loss_fn : ``loss(output, target)`` (adapted, :func:`.losses.adapt_loss`), or None: the loss the model returns

    Attributes
    ----------
    sizes, shapes, dtypes : of each differentiated parameter, in order
    device : where they live; param_dtype : the floating dtype they promote to (data is cast to it)
    dtype : the vectors' dtype (float32 for float16/bfloat16 models)
    """

    def __init__(self, model: nn.Module, names: list[str], loss_fn: Callable[[Any, Any], torch.Tensor] | None):
        tensors = tensors_of(model, names)
        self.model, self.names, self.loss_fn = model, list(names), loss_fn
        self.sizes = [int(t.numel()) for t in tensors]
        self.shapes = [tuple(t.shape) for t in tensors]
        self.dtypes = [t.dtype for t in tensors]
        self.device, self.param_dtype = device_and_dtype(tensors)
        self.dtype = torch.float32 if self.param_dtype in (torch.float16, torch.bfloat16) else self.param_dtype

    def current(self) -> list[torch.Tensor]:
        """The differentiated parameters' current values, detached."""
        named = dict(self.model.named_parameters())
        return [named[n].detach() for n in self.names]

    def fixed(self) -> dict[str, torch.Tensor]:
        """Every parameter and buffer of the model, detached (the differentiated ones are overridden per call)."""
        state = {n: t.detach() for n, t in self.model.named_parameters()}
        # Train-mode BatchNorm updates its running statistics in place: give it copies, not the model's.
        copy_buffers = self.model.training
        state.update((n, b.clone() if copy_buffers else b) for n, b in self.model.named_buffers())
        return state

    def split(self, V: torch.Tensor) -> Tensors:
        """A flat vector (n,) or block (n, k) as parameter-shaped tensors ((k, *shape) for a block)."""
        return split(V, self.sizes, self.shapes, self.dtypes)

    def flatten(self, parts: Sequence[torch.Tensor], batched: bool) -> torch.Tensor:
        """Parameter-shaped tensors (block index first when ``batched``) as a flat vector (n,) or block (n, k)."""
        return flatten(parts, batched, self.dtype)

    def closures(self, x: Any, y: Any, state: dict[str, torch.Tensor] | None = None):
        """``(model_fn, loss_of_output, f)`` of one batch: ``model_fn(params)`` the output (its logits),
        ``loss_of_output(output, target=y)`` and ``f(params, target=y)`` the loss; ``state`` defaults to
        :meth:`fixed`."""
        state = self.fixed() if state is None else state
        names, model, loss_fn = self.names, self.model, self.loss_fn
        args, kwargs = arguments(x)
        y = target_of(x, y)
        output = logits_of if loss_fn is not None else (lambda out: out)

        def model_fn(p: Tensors) -> torch.Tensor:
            return output(functional_call(model, {**state, **dict(zip(names, p))}, args, kwargs))

        def loss_of_output(out: torch.Tensor, target: Any = y) -> torch.Tensor:
            return loss_of_model(out) if loss_fn is None else loss_fn(out, target)

        def f(p: Tensors, target: Any = y) -> torch.Tensor:
            return loss_of_output(model_fn(p), target)

        return model_fn, loss_of_output, f

    def snapshot(self, values: bool = True) -> Snapshot:
        """What the model is now (:class:`Snapshot`); ``values=False``: without the copy of its values."""
        return Snapshot(self.model, values)


class Snapshot:
    """What ``model`` is now: its modules, parameters, buffers, modes, and a copy of its values (module docstring)."""

    def __init__(self, model: nn.Module, values: bool = True):
        self.model = model
        self.entries: list[tuple] = []  # (owner dict, name, object, data pointer, version) or (dict, None, length)
        self.modes = [(module, module.training) for module in model.modules()]
        self.values: list[tuple[torch.Tensor, torch.Tensor]] = []
        seen: set[int] = set()
        for module, _ in self.modes:
            for table in (module._modules, module._parameters, module._buffers):
                self.entries.append((table, None, len(table), None, None))
                for name, obj in table.items():
                    if isinstance(obj, torch.Tensor):
                        self.entries.append((table, name, obj, obj.data_ptr(), obj._version))
                        if values and id(obj) not in seen:  # a tied weight is copied once
                            seen.add(id(obj))
                            self.values.append((obj, obj.detach().clone()))
                    else:
                        self.entries.append((table, name, obj, None, None))

    def unchanged(self) -> bool:
        """Whether the model still holds the same objects, modes and values as when this snapshot was taken."""
        for table, name, obj, ptr, version in self.entries:
            if name is None:
                if len(table) != obj:
                    return False
            elif table.get(name) is not obj or (ptr is not None and (obj._version != version or obj.data_ptr() != ptr)):
                return False
        if any(module.training != mode for module, mode in self.modes):
            return False
        return same_values(self.values)


def same_values(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], one_sync: bool | None = None) -> bool:
    """Whether each tensor equals its copy (NaN never does): :func:`torch.equal` on the CPU; elsewhere
    (``one_sync``) one reduction per tensor and one host sync for all, not one sync per tensor."""
    if one_sync is None:
        one_sync = any(t.device.type != "cpu" for t, _ in pairs)
    if not one_sync:
        return all(torch.equal(t, copy) for t, copy in pairs)
    if any(t.shape != copy.shape for t, copy in pairs):
        return False
    flags = [torch.ne(t, copy).any() for t, copy in pairs if t.numel()]
    return not flags or not bool(torch.stack([f.to(flags[0].device) for f in flags]).any())
