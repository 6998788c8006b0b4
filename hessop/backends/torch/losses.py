"""How the PyTorch backend reads a loss: the model's output, token layouts, and each batch's weight.

A batch's weight ``w_b`` is the number of loss terms its mean is over (the rule
and the mean over all ranks: :mod:`hessop.backends.base`). Here it is

* ``weight_fn(batch)`` when given (``batch`` as the user gave it, on the device:
  an ``(x, y)`` pair or a dict);
* ``nn.CrossEntropyLoss`` and ``nn.NLLLoss``: the number of targets that are not
  ``ignore_index`` (tokens, for a language model), or, with class weights, the
  sum of the weights of those targets: torch's mean divides by exactly that;
* a loss the model computes itself (``loss=None``): ``weight_fn`` is required
  when there is more than one batch, since only the model knows its count
  (a causal language model counts the shifted labels that are not ignored);
* any other loss: the number of elements of the target, which is what torch's
  losses with ``reduction="mean"`` divide by (``mse_loss``, ``l1_loss``, a
  cross-entropy over flattened tokens, ...), counted relative to the first
  batch's elements per sample: where every batch's target has the same shape
  beyond the first dimension this is the number of samples, the leading
  dimension of the target, which must equal the input's (a target that would
  broadcast is refused). Where the shapes differ (sequences of unequal length)
  a batch of twice the elements weighs twice as much, as in the mean over all
  elements of all the data. A loss given as a function, whose reduction
  hessop cannot read, over such batches also warns once: a loss that averages
  per sample first, or skips padding, needs ``weight_fn``.

A cross-entropy or NLL loss also takes ``(B, T, V)`` logits with ``(B, T)``
targets (the language-model layout): both are flattened to ``(B·T, V)`` and
``(B·T,)``. Torch's own layout ``(B, V, T)`` is used as is; when ``V == T`` the
two cannot be told apart and torch's layout wins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..._warnings import warn
from .data import first_tensor

TOKEN_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss)


def logits_of(output: Any) -> Any:
    """The tensor a loss reads from a model's output: itself, or its ``logits`` (HF-style outputs)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    logits = getattr(output, "logits", None)
    return output if logits is None else logits


def loss_of_model(output: Any) -> torch.Tensor:
    """The loss a model returned with its output (``output.loss`` or ``output["loss"]``)."""
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if not isinstance(loss, torch.Tensor):
        raise ValueError(
            f"loss=None needs a model whose output carries its loss (output.loss, as Hugging Face models return "
            f"when the batch holds labels), but a {type(output).__name__} without one was returned; pass the labels "
            "in the batch, or give a loss(output, target)"
        )
    return loss


def adapt_loss(loss: Callable[[Any, Any], torch.Tensor]) -> Callable[[Any, Any], torch.Tensor]:
    """``loss(output, target)`` reading logits from structured outputs, token layouts flattened for CE/NLL."""
    token = isinstance(loss, TOKEN_LOSSES)

    def call(output: Any, target: Any) -> torch.Tensor:
        out = logits_of(output)
        if token and _token_layout(out, target):
            out, target = out.reshape(-1, out.shape[-1]), target.reshape(-1)
        return loss(out, target)

    return call


def _token_layout(out: Any, target: Any) -> bool:
    """``(B, T, V)`` output with ``(B, T)`` integer target, not torch's own ``(B, V, T)`` layout."""
    if not (isinstance(out, torch.Tensor) and isinstance(target, torch.Tensor)) or target.is_floating_point():
        return False
    if out.ndim != target.ndim + 1 or target.ndim < 2 or out.shape[:-1] != target.shape:
        return False
    return out.shape[2:] != target.shape[1:]


class Counter:
    """``counter(x, y, index)``: the number of loss terms of one batch (module docstring)."""

    def __init__(self, loss: Any, weight_fn: Callable[[Any], Any] | None):
        if weight_fn is not None and not callable(weight_fn):
            raise TypeError(f"weight_fn must be callable as weight_fn(batch), not {type(weight_fn).__name__}")
        self.loss = loss
        self.weight_fn = weight_fn
        self.samples_only = weight_fn is None and not isinstance(loss, TOKEN_LOSSES) and loss is not None
        self.per_sample: int | None = None  # the first batch's target elements per sample
        self.uneven = False  # batches' targets differ in shape beyond the first dimension

    def check_known(self, one_batch: bool) -> None:
        """A loss the model computes needs ``weight_fn`` unless the data is one batch."""
        if self.loss is None and self.weight_fn is None and not one_batch:
            raise ValueError(
                "loss=None takes the loss the model returns, whose number of terms (tokens) only the model knows: "
                "state each batch's weight with weight_fn=lambda batch: ..., e.g. for a causal language model "
                "weight_fn=lambda b: (b['labels'][:, 1:] != -100).sum()"
            )

    def __call__(self, x: Any, y: Any, index: int) -> float:
        if self.weight_fn is not None:
            return _number(self.weight_fn(x if y is None and isinstance(x, Mapping) else (x, y)), index)
        if self.loss is None:
            return 1.0  # one batch only (checked by the backend): its weight cancels
        _check_leading(x, y, index)
        if isinstance(self.loss, TOKEN_LOSSES) and isinstance(y, torch.Tensor) and not y.is_floating_point():
            kept = y != self.loss.ignore_index
            if self.loss.weight is not None:
                return float(self.loss.weight[y[kept]].sum())
            return float(kept.sum())
        return self._elements(x, y)

    def _elements(self, x: Any, y: Any) -> float:
        """The target's elements over the first batch's elements per sample: its samples where shapes agree."""
        target = first_tensor(target_tensor(x, y))
        if target is None:
            return float(samples(x, y))
        rows = int(target.shape[0])
        per = target.numel() // rows if rows else 0
        if self.per_sample is None and per:
            self.per_sample = per
        elif per and per != self.per_sample and not self.uneven:
            self.uneven = True
            if not isinstance(self.loss, nn.modules.loss._Loss):
                warn(
                    f"the batches' targets differ in shape beyond the first dimension ({per} elements per sample "
                    f"against {self.per_sample}), so each batch is weighted by its target's number of elements, as "
                    "torch's mean losses divide by it; if the loss function averages per sample first or skips "
                    "padding, state each batch's weight with weight_fn=lambda batch: ...",
                    UserWarning,
                )
        return rows * per / self.per_sample if per and self.per_sample else float(rows)


def target_tensor(x: Any, y: Any) -> Any:
    """What a batch's weight is read from: the target ``y``; for a dict batch its ``labels``, else the batch."""
    if y is None and isinstance(x, Mapping):
        labels = x.get("labels")
        return labels if isinstance(labels, torch.Tensor) else x
    return y if y is not None else x


def samples(x: Any, y: Any) -> int:
    """The number of samples in a batch: the leading dimension of the target (or input)."""
    for t in (y, x):
        t = first_tensor(t)
        if t is not None:
            return int(t.shape[0])
    raise TypeError(
        "cannot tell the batch size: neither the input nor the target is a tensor with a batch dimension; "
        "state each batch's weight with weight_fn=lambda batch: ..."
    )


def _check_leading(x: Any, y: Any, index: int) -> None:
    tx, ty = first_tensor(x), first_tensor(y) if isinstance(y, torch.Tensor) else None
    if tx is not None and ty is not None and tx.shape[0] != ty.shape[0]:
        raise ValueError(
            f"batch {index}: the input has {tx.shape[0]} samples (leading dimension) but the target has "
            f"{ty.shape[0]} (shape {tuple(ty.shape)}), so the loss would broadcast one against the other and the "
            "batch would be weighted by the wrong count; give one target row per input, or state each batch's "
            "weight with weight_fn=lambda batch: ..."
        )


def _number(value: Any, index: int) -> float:
    w = float(value.detach().sum()) if isinstance(value, torch.Tensor) else float(value)
    if not w >= 0 or w == float("inf"):
        raise ValueError(f"weight_fn returned {w} for batch {index}; a batch's weight is a count of loss terms >= 0")
    return w
