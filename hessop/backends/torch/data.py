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
"the Hessian" a different matrix at each product; :func:`check_loader` catches
that on the first batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

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


# -- determinism ------------------------------------------------------------------------------

_RANDOM_LAYERS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_BATCHNORM = (nn.modules.batchnorm._BatchNorm,)


def check_train_mode(model: nn.Module) -> None:
    """Refuse a model in train mode whose dropout or BatchNorm layers make the loss ill-defined."""
    if not model.training:
        return
    dropout = [n for n, m in model.named_modules() if isinstance(m, _RANDOM_LAYERS) and m.training and m.p > 0]
    batchnorm = [n for n, m in model.named_modules() if isinstance(m, _BATCHNORM) and m.training]
    if not (dropout or batchnorm):
        return
    what = []
    if dropout:
        what.append(f"dropout ({', '.join(dropout[:3])}) draws a new random mask at every pass")
    if batchnorm:
        what.append(
            f"BatchNorm ({', '.join(batchnorm[:3])}) normalises by each batch's statistics and updates its "
            "running statistics at every pass"
        )
    raise RuntimeError(
        "the model is in train mode, so the Hessian is not a fixed matrix: "
        + "; ".join(what)
        + ". Call model.eval() first, or pass check_determinism=False to study train-mode curvature knowingly"
    )


def check_repeatable_forward(out1: torch.Tensor, out2: torch.Tensor) -> None:
    """Two forward passes over the first batch (their outputs, or their losses) must agree up to rounding."""
    if out1.is_floating_point() and bool(torch.isnan(out1).any()):
        raise FloatingPointError("the model's output on the first batch holds NaN; check that batch's data and the "
                                 "model's parameters")
    if out1.shape == out2.shape and torch.allclose(out1, out2, rtol=_tol(out1), atol=_tol(out1) * _scale(out1)):
        return
    raise RuntimeError(
        "two forward passes over the first batch gave different outputs, so the Hessian is not a fixed matrix; "
        "likely causes: dropout or BatchNorm in train mode (call model.eval()), or a random layer in forward(). "
        "Pass check_determinism=False to proceed anyway"
    )


def check_loader(batches: Batches, first: Batch) -> None:
    """A re-iterable loader must yield the same first batch on a second pass."""
    if batches.is_list:
        return
    x2, y2 = batches.first()
    x1, y1 = first
    if _same(x1, x2) and _same(y1, y2):
        return
    shuffled = isinstance(getattr(batches.source, "sampler", None), torch.utils.data.RandomSampler)
    if shuffled or not _same(y1, y2):
        raise RuntimeError(
            "the data loader yields a different first batch on each pass (shuffling: DataLoader(shuffle=True) or a "
            "random sampler), so each Hessian-vector product would see different data; use shuffle=False, or "
            "pass check_determinism=False"
        )
    raise RuntimeError(
        "the data loader yields the same targets but different inputs on a second pass (random augmentation "
        "in the dataset's transforms?), so the Hessian is not a fixed matrix; disable the augmentation, or "
        "pass check_determinism=False"
    )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(u, w) for u, w in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a is b or bool(a == b)


def _tol(t: torch.Tensor) -> float:
    return float(torch.finfo(t.dtype).eps) ** 0.5 if t.is_floating_point() else 0.0


def _scale(t: torch.Tensor) -> float:
    return float(t.detach().abs().max()) if t.numel() else 0.0
