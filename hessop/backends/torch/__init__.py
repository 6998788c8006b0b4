"""The PyTorch backend: :class:`TorchBackend` (``backend``) and the layers it is built from.

From the bottom: ``hvp`` (one batch's products, pure functions), ``data``, ``losses`` and
``params`` (batches, weights, the flat layout), ``attention``; ``functional`` (the model as a
function of its parameters) and ``checks`` (values checked at the boundary); ``graphs``,
``linearized``, ``compiled``, ``finite_difference`` and ``strategy`` (what the product strategies
keep and how ``"auto"`` chooses); ``products`` (the one owner of that state); ``backend`` (sums over
batches). Each imports only modules listed before it. The data rules are the backend contract's,
:mod:`hessop.backends.base`.
"""

from .backend import HVP_CHOICES, TorchBackend

__all__ = ["HVP_CHOICES", "TorchBackend"]
