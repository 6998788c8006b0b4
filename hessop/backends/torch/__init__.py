"""The PyTorch backend: :class:`TorchBackend` (``backend``) and the modules it is built from.

``data`` (batches of any structure), ``losses`` (reading a loss, each batch's
weight), ``params`` (which parameters, the flat layout), ``hvp`` (one batch's
products), ``strategy`` (which product runs a batch, and ``hvp="auto"``'s
choice), ``graphs`` and ``kept`` (first-order graphs kept across products),
``linearized``, ``compiled``, ``attention`` and ``checks`` (inputs and the first
product). The data rules are the backend contract's, :mod:`hessop.backends.base`.
"""

from .backend import HVP_CHOICES, TorchBackend

__all__ = ["HVP_CHOICES", "TorchBackend"]
