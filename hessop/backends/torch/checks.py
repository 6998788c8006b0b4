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
* :func:`check_compiled`: a compiled product agrees with the eager one.
* :func:`check_train_mode`, :func:`check_repeatable_forward`, :func:`check_loader`:
  dropout or BatchNorm in train mode, a random forward pass, a loader that
  shuffles or augments (``check_determinism``).

They check values and call the functions they are given; none imports anything
above the product functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .data import Batch, Batches


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


def check_compiled(compiled: Sequence[torch.Tensor], eager: Sequence[torch.Tensor], index: int) -> None:
    """The compiled product of batch ``index`` must equal the eager one to rounding (sqrt(eps) relative)."""
    same, gap = agree_to_rounding(compiled, eager)
    if same:
        return
    raise RuntimeError(
        f"the compiled Hessian-vector product of batch {index} differs from the eager one by "
        f"{gap:.2g} (relative), more than rounding; pass compile=False to use the eager products"
    )


# -- determinism of the model and the data ---------------------------------------------------------

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
