"""Keyword arguments that were renamed: the old name still works for a while, with a DeprecationWarning.

One vocabulary across the library: a parameter that *limits* products is ``max_matvecs``
(``trace_max_matvecs`` for the trace inside an analysis); a result's ``num_matvecs`` counts the
products *spent*. Budgets once called ``num_matvecs`` / ``trace_matvecs`` keep working through
:func:`renamed`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from ._warnings import warn

__all__ = ["renamed"]


BUDGET = "a budget of products is max_matvecs; a result's num_matvecs counts the products spent"
"""Why a budget was renamed, said in the warning of every ``*max_matvecs`` rename."""


def renamed(**old_to_new: str) -> Callable:
    """Decorate a function so that keyword ``old=`` is accepted as ``new=`` with a ``DeprecationWarning``.

    Passing both names is a ``TypeError``. The signature and docstring shown are the function's
    own (``functools.wraps``).
    """

    def wrap(fn: Callable) -> Callable:
        name = fn.__qualname__.replace(".__init__", "")

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{name}() got both {old}= and {new}=; pass only {new}= "
                                        f"({old}= is its deprecated name)")
                    warn(f"{name}({old}=...) is now {name}({new}=...)"
                         + (f" ({BUDGET})" if new.endswith("max_matvecs") else "")
                         + f"; the name {old}= will be removed", DeprecationWarning)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return inner

    return wrap
