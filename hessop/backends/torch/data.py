"""Data for the PyTorch backend: batches of any structure, their weights and determinism checks.

A batch is one of

* ``(x, y)``: the model is called as ``model(x)``, ``model(*x)`` for a tuple or
  list ``x``, ``model(**x)`` for a dict ``x``; the loss as ``loss(output, y)``;
* a dict (e.g. a tokenizer's output with ``labels``): the model is called as
  ``model(**batch)``; the loss as ``loss(output, batch)``, or, with ``loss=None``,
  the loss is the one the model returns (``output.loss`` or ``output["loss"]``).

The data forms and the one-shot iterator rule are the backend contract's
(:mod:`hessop.backends.base`); one batch here is a dict, or a pair whose second
element is a tensor. Tensors at any depth of a batch (tuples,
lists, dicts) are moved to the parameters' device and floating ones cast to the
model's dtype; integer tensors (class indices, token ids, masks) keep theirs.

A loader that changes between passes (shuffling, random augmentation) makes
"the Hessian" a different matrix at each product; :func:`.checks.check_loader`
catches that on the first batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

Batch = tuple[Any, Any]


class Batches:
    """The data as a re-iterable sequence of ``(x, y)`` batches on the parameters' device.

    A dict batch is held as ``(batch, None)``. ``count(x, y)`` gives a batch's
    weight (its number of loss terms, :mod:`hessop.backends.torch.losses`);
    batches of weight zero are skipped.
    """

    def __init__(self, data: Any, device: torch.device, dtype: torch.dtype,
                 count: Callable[[Any, Any, int], float]):
        self.device = device
        self.dtype = dtype
        self.count_of = count
        if is_one_batch(data):
            self.source: Iterable = [data]
        elif isinstance(data, (list, tuple)):
            self.source = list(data)
        elif not hasattr(data, "__iter__"):
            raise TypeError(
                "data must be one batch ((x, y) or a dict), a list of batches or a DataLoader, "
                f"not {type(data).__name__}"
            )
        elif iter(data) is data:  # a one-shot iterator: read once and kept (hessop.backends.base)
            self.source = list(data)
        else:
            self.source = data
        self.is_list = isinstance(self.source, list)
        self._counts: dict[int, float] = {}

    def __iter__(self) -> Iterator[tuple[int, Any, Any]]:
        """``(index, x, y)`` for every batch of non-zero weight; ``index`` counts the user's batches."""
        for index, x, y, _ in self.weighted():
            yield index, x, y

    def weighted(self) -> Iterator[tuple[int, Any, Any, float]]:
        """``(index, x, y, count)`` for every batch of non-zero weight."""
        for index, batch in enumerate(self.source):
            x, y = self.prepare(batch, index)
            count = self._counts.get(index) if self.is_list else None
            if count is None:
                count = self.count_of(x, y, index)
                if self.is_list:  # a list does not change: count its batches once
                    self._counts[index] = count
            if count > 0:
                yield index, x, y, count

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def first(self) -> Batch:
        """The first batch of non-zero weight; raises if there is none."""
        for _, x, y in self:
            return x, y
        raise ValueError("the data holds no samples: it has no batches, or only empty ones")

    def prepare(self, batch: Any, index: int) -> Batch:
        """One user batch moved to the device, floating tensors cast to the model's dtype."""
        x, y = _pair(batch, index)
        return self.move(x), self.move(y)

    def move(self, t: Any) -> Any:
        """``t`` with every tensor inside (tuples, lists, dicts, at any depth) on the device, floats cast."""
        if isinstance(t, Mapping):  # a plain dict, whatever the mapping type (BatchEncoding, ...)
            return {k: self.move(u) for k, u in t.items()}
        if isinstance(t, (tuple, list)):
            return type(t)(self.move(u) for u in t)
        if not isinstance(t, torch.Tensor):
            return t
        dtype = self.dtype if t.is_floating_point() else None
        return t.to(device=self.device, dtype=dtype, non_blocking=True)

    def count(self, samples_only: bool) -> float:
        """The total weight; counted from the loader's sampler, without loading data, when weights are samples."""
        sampler = getattr(self.source, "batch_sampler", None)
        iterable = isinstance(getattr(self.source, "dataset", None), torch.utils.data.IterableDataset)
        if samples_only and not self.is_list and sampler is not None and not iterable:
            try:
                return float(sum(len(indices) for indices in sampler))
            except TypeError:
                pass
        return float(sum(count for *_, count in self.weighted()))


def _pair(batch: Any, index: int) -> Batch:
    if isinstance(batch, Mapping):
        return batch, None
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise TypeError(
            f"batch {index} is a {type(batch).__name__}; each batch must be an (x, y) pair of input and target, "
            "or a dict of the model's keyword arguments"
        )
    return batch[0], batch[1]


def is_one_batch(data: Any) -> bool:
    """One batch, not a list of them: a dict, or a pair whose target (second element) is a tensor."""
    if isinstance(data, Mapping):
        return True
    return isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], torch.Tensor) and (
        isinstance(data, tuple) or isinstance(data[0], torch.Tensor)
    )


def arguments(x: Any) -> tuple[tuple, dict]:
    """The model's positional and keyword arguments for input ``x`` (a tensor, a tuple or list, a dict)."""
    if isinstance(x, Mapping):
        return (), dict(x)
    return (tuple(x) if isinstance(x, (tuple, list)) else (x,)), {}


def target_of(x: Any, y: Any) -> Any:
    """What the loss gets as its target: ``y``, or the whole batch for a dict batch."""
    return x if y is None and isinstance(x, Mapping) else y


def first_tensor(t: Any) -> torch.Tensor | None:
    """The first tensor with a batch dimension inside ``t`` (depth first), or None."""
    if isinstance(t, torch.Tensor):
        return t if t.ndim > 0 else None
    items = t.values() if isinstance(t, Mapping) else t if isinstance(t, (tuple, list)) else ()
    for u in items:
        found = first_tensor(u)
        if found is not None:
            return found
    return None
