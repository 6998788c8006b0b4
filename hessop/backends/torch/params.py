"""The PyTorch backend's parameters: which are differentiated, their flat layout, and the loss's reduction.

The flat vector concatenates the chosen parameters in the order the user gave them
(``params=[...]``), or in model order (``named_parameters()``) by default; a block
``(n, k)`` of vectors splits into parameter-shaped tensors with the block index
first, ``(k, *shape)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def select_params(model: nn.Module, params: Sequence[torch.Tensor | str] | None) -> list[str]:
    """Names of the parameters to differentiate: in the order given, or in model order for ``params=None``."""
    named = list(model.named_parameters())
    if params is None:
        names = [n for n, p in named if p.requires_grad]
        if not names:
            raise ValueError(
                "the model has no trainable parameters (none with requires_grad=True); "
                "unfreeze some, or pass params=[...] explicitly"
            )
        return names
    if isinstance(params, (str, torch.Tensor)):
        params = [params]
    by_id = {id(p): n for n, p in named}
    wanted: list[str] = []
    for p in params:
        if isinstance(p, str):
            if p not in dict(named):
                examples = [n for n, _ in named[:4]]
                raise ValueError(f"params: {p!r} is not a parameter of the model; names are like {examples}")
            name = p
        elif isinstance(p, torch.Tensor):
            if id(p) not in by_id:
                raise ValueError(
                    f"params: a tensor of shape {tuple(p.shape)} is not a parameter of the model; pass tensors from "
                    "model.parameters() (not copies) or parameter names"
                )
            name = by_id[id(p)]
        else:
            raise TypeError(f"params must hold tensors or names, not {type(p).__name__}")
        if name in wanted:
            raise ValueError(f"params: {name!r} is given twice; name each parameter once")
        wanted.append(name)
    if not wanted:
        raise ValueError("params is empty: pass at least one parameter tensor or name, or params=None for all")
    return wanted


def reduction_of(loss: Any, reduction: str | None) -> str:
    """How the loss reduces over samples: the given ``reduction``, else ``loss.reduction``, else "mean"."""
    own = getattr(loss, "reduction", None)
    if reduction is None:
        reduction = own if isinstance(own, str) else "mean"
    elif isinstance(own, str) and own != reduction:
        raise ValueError(f"reduction={reduction!r} contradicts the loss's own reduction={own!r}; drop one of them")
    if reduction not in ("mean", "sum"):
        raise ValueError(
            f"the loss reduces with {reduction!r}; it must return a scalar mean or sum over samples "
            "(reduction='mean' or 'sum')"
        )
    return reduction


def tensors_of(model: nn.Module, names: Sequence[str]) -> list[torch.Tensor]:
    """The model's parameters of these names, in this order."""
    named = dict(model.named_parameters())
    return [named[n] for n in names]


def device_and_dtype(tensors: Sequence[torch.Tensor]) -> tuple[torch.device, torch.dtype]:
    """The one device the parameters live on and the floating dtype they promote to."""
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(
            f"the parameters live on several devices {sorted(map(str, devices))}; "
            "move the model to one device (model.to(device))"
        )
    floating = [t.dtype for t in tensors if t.dtype.is_floating_point]
    if len(floating) < len(tensors):
        bad = next(t.dtype for t in tensors if not t.dtype.is_floating_point)
        raise TypeError(f"parameters of dtype {bad} cannot be differentiated; use a floating-point model")
    dtype = floating[0]
    for d in floating[1:]:
        dtype = torch.promote_types(dtype, d)
    return tensors[0].device, dtype


def split(V: torch.Tensor, sizes: list[int], shapes: Sequence[tuple[int, ...]],
          dtypes: Sequence[torch.dtype]) -> tuple[torch.Tensor, ...]:
    """A flat vector (n,) or block (n, k) as parameter-shaped tensors of the parameters' dtypes."""
    if V.ndim == 1:
        parts = torch.split(V, sizes)
        return tuple(p.reshape(s).to(d) for p, s, d in zip(parts, shapes, dtypes))
    k = V.shape[1]
    parts = torch.split(V.T, sizes, dim=1)
    return tuple(p.reshape(k, *s).to(d) for p, s, d in zip(parts, shapes, dtypes))


def param_views(flat: torch.Tensor, sizes: list[int],
                shapes: Sequence[tuple[int, ...]]) -> tuple[torch.Tensor, ...]:
    """Parameter-shaped views into a contiguous flat vector (n,) or block (n, k): writing them writes ``flat``."""
    if flat.ndim == 1:
        return tuple(p.view(s) for p, s in zip(torch.split(flat, sizes), shapes))
    k = flat.shape[1]
    return tuple(p.view(k, *s) for p, s in zip(torch.split(flat.T, sizes, dim=1), shapes))


def flatten(parts: Sequence[torch.Tensor], batched: bool, dtype: torch.dtype) -> torch.Tensor:
    """Parameter-shaped tensors (block index first when ``batched``) as one flat vector (n,) or block (n, k)."""
    if not batched:
        return torch.cat([p.reshape(-1).to(dtype) for p in parts])
    k = parts[0].shape[0]
    return torch.cat([p.reshape(k, -1).to(dtype) for p in parts], dim=1).T
