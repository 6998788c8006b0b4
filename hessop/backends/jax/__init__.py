"""The JAX backend: :class:`JaxBackend` (``backend``), its batches (``data``) and parameter names (``params``).

The data rules are the backend contract's, :mod:`hessop.backends.base`.
"""

from .backend import HVP_MODES, JaxBackend

__all__ = ["HVP_MODES", "JaxBackend"]
