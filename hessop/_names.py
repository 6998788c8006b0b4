"""Parameters chosen by name: the rule :meth:`hessop.HessianOperator.restrict` and the analyses' blocks use.

A pattern selects a parameter named exactly so, every parameter under a module of that name
(``"layer1"`` selects ``"layer1.0.conv1.weight"``), or every name it matches in full as a
regular expression.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


def _selects(pattern: str, name: str) -> bool:
    if name == pattern or name.startswith(pattern + "."):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def restrict_names(names: Sequence[str], *patterns: str) -> list[str]:
    """The subset of ``names`` selected by ``patterns`` (the rule :meth:`HessianOperator.restrict` uses)."""
    return [name for name in names if any(_selects(p, name) for p in patterns)]
