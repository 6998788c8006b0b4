"""The model as the products see it: a snapshot that tells whether anything they kept is still the model.

Products keep work across calls (first-order graphs, linearisations: :mod:`.products`), each valid
only while the model computes the same function. :class:`Snapshot` records what that function
depends on and :meth:`Snapshot.unchanged` tells whether it still holds:

* every module's ``_modules``, ``_parameters`` and ``_buffers`` entries, the objects themselves
  (a replaced module, parameter or buffer is seen) and each dict's length (an added entry);
* each module's train or eval mode (``model.train()`` changes dropout and BatchNorm);
* each tensor's data pointer and version counter (``p.data = ...`` and any in-place change
  through autograd are seen at the cost of two reads);
* a copy of each tensor's values, compared with :func:`torch.equal`: ``p.data.add_()`` and
  ``p.data.copy_()``, as hand-written training loops update weights, change neither the data
  pointer nor the version counter (``.data`` has a counter of its own), so only the values show
  them. The copy costs the memory of the model's parameters and buffers once, and each check reads
  them twice (its cost per product: ``docs/performance.md``).
"""

from __future__ import annotations

import torch
from torch import nn


class Snapshot:
    """What ``model`` is now: its modules, parameters, buffers, modes, and a copy of its values (module docstring)."""

    def __init__(self, model: nn.Module):
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
                        if id(obj) not in seen:  # a tied weight is copied once
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
        return all(torch.equal(t, copy) for t, copy in self.values)
