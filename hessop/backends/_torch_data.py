"""Data for the PyTorch backend: ``(x, y)`` batches, sample counts and determinism checks.

The user's data may be one ``(x, y)`` batch, a list of batches, or any
re-iterable of batches such as a ``DataLoader``. Every Hessian-vector product
passes over all of it, so a one-shot iterator (a generator) is refused, and a
loader that changes between passes (shuffling, random augmentation) makes "the
Hessian" a different matrix at each product; :func:`check_loader` catches that
on the first batch.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
from torch import nn

Batch = tuple[Any, torch.Tensor]


class Batches:
    """The data as a re-iterable sequence of ``(x, y)`` batches on the parameters' device.

    Floating-point inputs and targets are cast to the model's dtype, so float64
    ground-truth models run on float32 data unchanged; integer targets (class
    indices) are left alone. Empty batches are skipped.
    """

    def __init__(self, data: Any, device: torch.device, dtype: torch.dtype):
        self.device = device
        self.dtype = dtype
        if _is_batch(data):
            self.source: Iterable = [tuple(data)]
        elif isinstance(data, (list, tuple)):
            self.source = list(data)
        elif not hasattr(data, "__iter__"):
            raise TypeError(
                f"data must be one (x, y) batch, a list of (x, y) batches or a DataLoader, not {type(data).__name__}"
            )
        elif iter(data) is data:
            raise TypeError(
                "data is a one-shot iterator (e.g. a generator), but every Hessian-vector product passes over "
                "all the data again; pass a list of (x, y) batches or a DataLoader instead"
            )
        else:
            self.source = data
        self.is_list = isinstance(self.source, list)

    def __iter__(self) -> Iterator[tuple[int, Any, torch.Tensor]]:
        """``(index, x, y)`` for every non-empty batch; ``index`` counts the user's batches."""
        for index, batch in enumerate(self.source):
            x, y = self.prepare(batch, index)
            if batch_size(x, y) > 0:
                yield index, x, y

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def first(self) -> Batch:
        """The first non-empty batch; raises if there is none."""
        for _, x, y in self:
            return x, y
        raise ValueError("the data holds no samples: it has no batches, or only empty ones")

    def prepare(self, batch: Any, index: int) -> Batch:
        """One user batch moved to the device, floating tensors cast to the model's dtype."""
        x, y = _pair(batch, index)
        return self._move(x), self._move(y)

    def _move(self, t: Any) -> Any:
        if isinstance(t, (tuple, list)):  # a model with several inputs
            return type(t)(self._move(u) for u in t)
        if not isinstance(t, torch.Tensor):
            return t
        dtype = self.dtype if t.is_floating_point() else None
        return t.to(device=self.device, dtype=dtype, non_blocking=True)

    def count(self) -> int:
        """The number of samples, without loading data when the loader allows it."""
        if self.is_list:
            return sum(batch_size(*_pair(b, i)) for i, b in enumerate(self.source))
        sampler = getattr(self.source, "batch_sampler", None)
        iterable = isinstance(getattr(self.source, "dataset", None), torch.utils.data.IterableDataset)
        if sampler is not None and not iterable:
            try:
                return sum(len(indices) for indices in sampler)
            except TypeError:
                pass
        return sum(batch_size(x, y) for _, x, y in self)


def _pair(batch: Any, index: int) -> Batch:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise TypeError(
            f"batch {index} is a {type(batch).__name__}; each batch must be an (x, y) pair of input and target"
        )
    return batch[0], batch[1]


def _is_batch(data: Any) -> bool:
    return isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor)


def batch_size(x: Any, y: Any) -> int:
    """The number of samples in a batch: the leading dimension of the target (or input)."""
    for t in (y, x):
        if isinstance(t, torch.Tensor) and t.ndim > 0:
            return int(t.shape[0])
    raise TypeError("cannot tell the batch size: neither the input nor the target is a tensor with a batch dimension")


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
    return a is b or bool(a == b)


def _tol(t: torch.Tensor) -> float:
    return float(torch.finfo(t.dtype).eps) ** 0.5 if t.is_floating_point() else 0.0


def _scale(t: torch.Tensor) -> float:
    return float(t.detach().abs().max()) if t.numel() else 0.0
