"""The ``hessop`` command line: ``hessop demo`` and ``hessop analyze``.

``hessop demo`` trains a small network on scikit-learn's handwritten digits
and writes a curvature report; ``hessop analyze`` does the same for a user's
model and data given as ``module:factory`` paths. Both save every finished
analysis step as it completes, so an interrupted run keeps its work and
``--resume`` continues it. See ``docs/cli.md``.
"""

from .main import main

__all__ = ["main"]
