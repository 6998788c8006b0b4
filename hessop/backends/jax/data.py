"""Data for the JAX backend: the batches, kept on the device or re-iterated, and each batch's weight.

The rules every backend follows (the data forms accepted, one-shot iterators read
once and kept, batch weights through ``weight_fn``) are stated once in
:mod:`hessop.backends.base`. Here a batch is any pytree (a ``tuple``, ``dict`` or
array); with ``model_fn`` it is an ``(inputs, targets)`` pair. Every batch must
have the first one's pytree structure. A batch's default weight is the leading
dimension of its first leaf, its samples; for an ``(inputs, targets)`` pair it is the
targets' number of elements over the first batch's elements per sample, which is the
same wherever the targets' shapes agree and the mean over every target element (every
token) where they differ, as a mean loss divides by them. The loss is a function hessop
cannot read, so batches whose shapes differ beyond the first dimension also warn once:
a loss that averages per sequence or skips padding needs ``weight_fn``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import numpy as np

from ..._warnings import warn


class Batches:
    """The batches: kept as a list of device arrays when possible, else re-iterated each pass."""

    def __init__(self, data: Any, device, weight_fn, pairs: bool):
        self._device, self._weight_fn, self._pairs = device, weight_fn, pairs
        self._per_sample: int | None = None  # the first batch's target elements per sample
        self._shapes: list[tuple] | None = None  # the first batch's leaf shapes beyond the first dimension
        self._warned = False
        if isinstance(data, list):
            batches: Iterable | None = data
        elif isinstance(data, (tuple, dict)) or hasattr(data, "shape"):
            batches = [data]
        elif isinstance(data, Iterable):
            batches = list(data) if iter(data) is data else None
        else:
            raise TypeError(
                f"data must be a list of batches, one batch (tuple, dict or array) or an iterable of batches, "
                f"not {type(data).__name__}"
            )
        self._source = data
        self.cached = batches is not None
        self._structure: Any
        if batches is not None:
            self._batches = [self._prepare(b) for b in batches]
            if not self._batches:
                raise ValueError("data holds no batches; pass at least one batch")
            self.first = self._batches[0]
            self._structure = jax.tree_util.tree_structure(self.first)
            for batch in self._batches[1:]:
                self._check(batch)
        else:
            first = next(iter(data), None)
            if first is None:
                raise ValueError("data holds no batches; pass at least one batch")
            self.first = self._prepare(first)
            self._structure = jax.tree_util.tree_structure(self.first)
        self.total = sum(self.count(b) for b in self)

    def __len__(self) -> int:
        if not self.cached:
            raise TypeError("the number of batches of a re-iterable data source is not known in advance")
        return len(self._batches)

    def _prepare(self, batch):
        if self._pairs and not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError(
                f"with model_fn every batch must be an (inputs, targets) pair; got a {type(batch).__name__}"
            )
        return jax.tree_util.tree_map(lambda a: _to_device(a, self._device), batch)

    def __iter__(self):
        if self.cached:
            yield from self._batches
            return
        for batch in self._source:
            batch = self._prepare(batch)
            self._check(batch)
            yield batch

    def _check(self, batch) -> None:
        structure = jax.tree_util.tree_structure(batch)
        if structure != self._structure:
            raise ValueError(
                f"batches change structure: the first is {self._structure} but another is {structure}; "
                "every batch must have the same (nested) layout"
            )

    def count(self, batch) -> float:
        if self._weight_fn is not None:
            return float(self._weight_fn(batch))
        leaves = jax.tree_util.tree_leaves(batch)
        if not leaves or not getattr(leaves[0], "ndim", 0):
            raise ValueError(
                "cannot count the samples of a batch whose first leaf is not an array with a leading batch "
                "dimension; pass weight_fn=lambda batch: ..."
            )
        rows = int(leaves[0].shape[0])
        shapes = [tuple(getattr(a, "shape", ()))[1:] for a in leaves]
        if self._shapes is None:
            self._shapes = shapes
        elif shapes != self._shapes and not self._warned:
            self._warned = True
            warn(
                f"the batches differ in shape beyond the first dimension ({shapes} against {self._shapes}), so "
                "each (inputs, targets) batch is weighted by its targets' number of elements, as a mean loss "
                "divides by them (other batches by their samples); if the loss averages per sample first or skips "
                "padding, state each batch's weight with weight_fn=lambda batch: ...",
                UserWarning,
            )
        targets = jax.tree_util.tree_leaves(batch[1]) if _is_pair(batch) else []
        if not targets or not getattr(targets[0], "ndim", 0) or targets[0].shape[0] != rows or rows == 0:
            return rows
        per = int(targets[0].size) // rows
        if self._per_sample is None:
            self._per_sample = per
        return rows * per / self._per_sample if per and self._per_sample else rows


def _is_pair(batch) -> bool:
    return isinstance(batch, (tuple, list)) and len(batch) == 2


def _to_device(a, device):
    if isinstance(a, jax.Array) or not hasattr(a, "__array__"):
        return a
    return jax.device_put(np.asarray(a), device)
