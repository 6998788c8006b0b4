"""The JAX backend."""

from .backend import HVP_MODES, JaxBackend

__all__ = ["HVP_MODES", "JaxBackend"]
