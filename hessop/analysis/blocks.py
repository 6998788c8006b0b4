"""Parameter blocks: the groups of parameters whose diagonal Hessian blocks the analyses read.

One word throughout the package: a *block* is a named set of parameters
(:attr:`HessianOperator.blocks` lists the modules' blocks as slices,
:meth:`HessianOperator.restrict` builds the operator of a block).
:func:`resolve_blocks` turns what a user asks for (``"modules"``, ``"stages"``,
patterns, a ``{name: patterns}`` mapping) into ``{block name: parameter names}``,
reading the parameter structure through the operator, so it works alike on
every backend.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from .._names import restrict_names
from .._warnings import warn

__all__ = ["resolve_blocks"]


def resolve_blocks(H: Any,
                   blocks: None | str | Mapping[str, Any] | Sequence[str] = None) -> OrderedDict[str, tuple[str, ...]]:
    """``{block name: parameter names}`` in model order.

    ``None`` or ``"modules"``: one block per module owning parameters;
    ``"stages"``: one per top-level module (``stem``, ``stage1``..``stage3``,
    ``head`` of a ResNet); a mapping ``{name: pattern or list of patterns}`` or a
    list of patterns: the parameters each pattern selects, with the rule of
    :meth:`HessianOperator.restrict` (exact name, module prefix or regex).
    """
    names = list(H.parameter_names)
    out: OrderedDict[str, tuple[str, ...]] = OrderedDict()
    if blocks is None or blocks in ("modules", "stages"):
        for name, module in zip(names, H.parameter_modules):
            key = module.split(".")[0] if blocks == "stages" else module
            out.setdefault(key, ())
            out[key] += (name,)
        return out
    if isinstance(blocks, str):
        raise ValueError(f"blocks={blocks!r} is not understood; use None, 'modules', 'stages', a list of "
                         "patterns or a {name: pattern} dict")
    items = blocks.items() if isinstance(blocks, Mapping) else ((p, p) for p in blocks)
    for key, patterns in items:
        patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        chosen = restrict_names(names, *patterns)
        if not chosen:
            raise ValueError(f"block {key!r}: patterns {list(patterns)} match no parameter; parameters are named "
                             f"like {names[:4]}" + (" ..." if len(names) > 4 else ""))
        out[str(key)] = tuple(chosen)
    if not out:
        raise ValueError("blocks is empty; name at least one block")
    return out


def block_groups(H: Any, groups: Any = None) -> OrderedDict[str, tuple[str, ...]]:
    """Deprecated name of :func:`resolve_blocks`."""
    warn("block_groups is now resolve_blocks (hessop.analysis.blocks): parameter groups are called blocks",
         DeprecationWarning)
    return resolve_blocks(H, groups)
