"""The PyTorch backend."""

from .backend import HVP_CHOICES, TorchBackend

__all__ = ["HVP_CHOICES", "TorchBackend"]
