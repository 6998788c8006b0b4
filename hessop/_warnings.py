"""Warnings attributed to the user's line: the first frame of the call stack outside the hessop package.

A fixed ``stacklevel`` points into hessop whenever the warning is raised a different number of calls
deep (a solver called through another, a backend reached through the operator), so the user is shown a
line of the library instead of their own call.
"""

from __future__ import annotations

import os
import sys
import warnings
from types import FrameType

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """``warnings.warn(message, category)`` shown at the innermost caller outside hessop."""
    level, frame = 2, sys._getframe(1)  # stacklevel 2: the caller of this function
    caller: FrameType | None = frame
    while caller is not None and caller.f_code.co_filename.startswith(_PACKAGE):
        caller, level = caller.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
