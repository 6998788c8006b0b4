"""Checks of the PyTorch backend's inputs and products that name what is wrong and where.

* :func:`check_finite_model` and :func:`check_finite_batch`: NaN or infinite
  values in the model's weights or in the first batch, found when the operator is
  built, before any arithmetic turns them into an unrelated error.
* :func:`check_first_batch`: the loss of the first batch is a finite scalar,
  and two forward passes over it agree.
* :func:`check_repeatable_product`: the same vector multiplied twice on the same
  batch must give the same product; a model that draws random numbers in its
  forward pass (dropout in train mode) makes the operator a random matrix,
  on which every solver would report meaningless results as converged.
* :func:`check_repeatable_loss`: over a kept first-order graph, the first
  product's check is a second forward pass whose loss must agree (one pass, not
  a second graph and product).
* :func:`raise_nonfinite`: the first batch whose loss, gradient or product is
  NaN or infinite; :func:`dict_input_refused`: a dict input ``forward`` refused.

They check values and call the functions they are given; none imports anything
above the product functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .data import check_repeatable_forward


def check_finite_model(model: nn.Module) -> None:
    """Raise naming the first parameter or buffer of ``model`` that holds NaN or infinite values."""
    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in named:
            if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
                raise FloatingPointError(
                    f"the model's weights hold NaN or infinite values: {kind} {name!r} has "
                    f"{_bad_count(t)} of its {t.numel()} entries NaN or infinite; load weights from before "
                    "training diverged (or re-initialise them)"
                )


def check_finite_batch(batches: Any) -> None:
    """Raise naming the tensor of the first batch (input or target) that holds NaN or infinite values."""
    for index, batch in enumerate(batches.source):  # the first batch, before it is weighed
        x, y = batches.prepare(batch, index)
        _check_finite_batch(x, y, index)
        return


def _check_finite_batch(x: Any, y: Any, index: int) -> None:
    for where, t in [*_tensors(x, "input"), *_tensors(y, "target")]:
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            raise FloatingPointError(
                f"the data holds NaN or infinite values: the {where} of batch {index} has {_bad_count(t)} of its "
                f"{t.numel()} entries NaN or infinite; clean or impute the data before building the operator"
            )


def _tensors(t: Any, path: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(t, torch.Tensor):
        yield path, t
    elif isinstance(t, Mapping):
        for key, u in t.items():
            yield from _tensors(u, f"{path}[{key!r}]")
    elif isinstance(t, (tuple, list)):
        for i, u in enumerate(t):
            yield from _tensors(u, f"{path}[{i}]")


def _bad_count(t: torch.Tensor) -> int:
    return int((~torch.isfinite(t)).sum())


def check_first_batch(model_fn: Callable, loss_of_output: Callable, params: tuple, check_determinism: bool) -> None:
    """The loss of the first batch is a finite scalar; with ``check_determinism``, two forward passes agree."""
    with torch.no_grad():
        out = model_fn(params)
        value = loss_of_output(out)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"the loss must return a scalar but returned {shape}; use a loss with reduction='mean' or 'sum'"
            )
        if not bool(torch.isfinite(value)):  # the data and the weights were found finite before
            raise FloatingPointError(
                f"the loss of the first batch is {float(value)} although its data and the model's weights are "
                "finite; look for a log of zero, a division by zero or an overflow in the model or the loss"
            )
        if check_determinism:
            again = model_fn(params)
            if isinstance(out, torch.Tensor) and isinstance(again, torch.Tensor):
                check_repeatable_forward(out, again)
            else:
                check_repeatable_forward(value.reshape(()), loss_of_output(again).reshape(()))


def agree_to_rounding(found: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> tuple[bool, float]:
    """Whether two products agree to ``sqrt(eps)`` relative to ``reference``, and their relative difference."""
    diff = math.sqrt(sum(float((a.double() - b.double()).square().sum()) for a, b in zip(found, reference)))
    norm = math.sqrt(sum(float(b.double().square().sum()) for b in reference))
    eps = max(float(torch.finfo(b.dtype).eps) for b in reference)
    return diff <= math.sqrt(eps) * norm or diff == 0, diff / max(norm, 1e-300)


def check_repeatable_product(first: Sequence[torch.Tensor], again: Sequence[torch.Tensor], index: int) -> None:
    """Two products of the same vector on batch ``index`` must agree to rounding (module docstring)."""
    same, gap = agree_to_rounding(again, first)
    if same:
        return
    raise RuntimeError(
        f"the curvature-vector product is not repeatable: the same vector multiplied twice on batch {index} gave "
        f"products {gap:.2g} apart (relative), so the operator is a random matrix and no "
        "eigenvalue, trace or density of it would mean anything. Likely causes: dropout in train mode or a "
        "random layer in forward(); call model.eval() (check_determinism=False does not allow this)"
    )


def raise_nonfinite(flags: list[tuple[int, torch.Tensor]], what: str) -> None:
    """Raise naming the first batch whose value was NaN or infinite (one host sync per pass)."""
    if not flags:
        return
    bad = torch.stack([flag for _, flag in flags])
    if bool(bad.any()):
        index = flags[int(torch.nonzero(bad)[0, 0])][0]
        raise FloatingPointError(
            f"the {what} of batch {index} is NaN or infinite; check that batch's data and the model's "
            "parameters (a diverged model, a log of zero, an overflow in low precision)"
        )


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


def dict_input_refused(inputs: Mapping, err: TypeError) -> TypeError:
    """The error for an ``(inputs, y)`` batch with a dict ``inputs`` that the model's ``forward`` refused."""
    keys = ", ".join(repr(k) for k in list(inputs)[:4])
    return TypeError(
        f"the model refused the first batch's inputs ({err}): for a batch (inputs, y) whose inputs are a dict "
        f"(keys {keys}), hessop calls model(**inputs), each key a keyword argument of forward(); for a model "
        "whose forward() takes the dict itself, give each batch as ((inputs,), y): a tuple of inputs is passed "
        "as positional arguments, so the model is called as model(inputs)"
    )
