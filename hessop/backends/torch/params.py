"""Which parameters the PyTorch backend differentiates, and how the loss reduces over samples."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn


def select_params(model: nn.Module, params: Sequence[torch.Tensor | str] | None) -> list[str]:
    """Names, in model order, of the parameters to differentiate."""
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
    wanted = set()
    for p in params:
        if isinstance(p, str):
            if p not in dict(named):
                examples = [n for n, _ in named[:4]]
                raise ValueError(f"params: {p!r} is not a parameter of the model; names are like {examples}")
            wanted.add(p)
        elif isinstance(p, torch.Tensor):
            if id(p) not in by_id:
                raise ValueError(
                    f"params: a tensor of shape {tuple(p.shape)} is not a parameter of the model; pass tensors from "
                    "model.parameters() (not copies) or parameter names"
                )
            wanted.add(by_id[id(p)])
        else:
            raise TypeError(f"params must hold tensors or names, not {type(p).__name__}")
    if not wanted:
        raise ValueError("params is empty: pass at least one parameter tensor or name, or params=None for all")
    return [n for n, _ in named if n in wanted]


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
