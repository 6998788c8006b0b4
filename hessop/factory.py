"""``hessop.hessian``: build a :class:`HessianOperator` from a model in any supported framework."""

from __future__ import annotations

import sys
from typing import Any

from ._collective import check_arguments, together
from .backends.base import CURVATURES
from .operator import HessianOperator

BACKENDS = ("torch", "jax")


def hessian(
    model: Any,
    loss: Any,
    data: Any,
    *,
    curvature: str = "hessian",
    backend: str | None = None,
    comm: Any = None,
    **options: Any,
) -> HessianOperator:
    """The curvature of a loss over all of ``data`` as a scipy ``LinearOperator``.

    PyTorch: ``hessian(model, loss_fn, data)`` with an ``nn.Module``, a loss
    ``loss_fn(output, target)`` and data as a ``DataLoader``, a list of
    ``(x, y)`` batches or one ``(x, y)`` batch.

    JAX: ``hessian(loss_fn, params, data)`` with ``loss_fn(params, batch)``
    returning a scalar and ``params`` a pytree.

    Parameters
    ----------
    curvature : {"hessian", "ggn", "residual"}
        The Hessian, the generalised Gauss-Newton matrix ``Jᵀ ∇²ℓ J``, or their
        difference (Hessian minus GGN).
    backend : {"torch", "jax"}, optional
        The framework; detected from ``model`` when omitted.
    comm : optional
        An ``mpi4py`` (or hessop) communicator when each process holds a shard
        of the data; products are summed over processes.
    **options
        Passed to the backend (for PyTorch: ``params``, ``hvp``, ``reduction``,
        ``check_determinism``, ``progress``, ``graph_cache``, ``weight_fn``,
        ``graph_cache_bytes``, ``compile`` (``True``: each batch's Hessian product through
        ``torch.compile``, checked against the eager product at the first product); for JAX: ``model_fn``, ``hvp``,
        ``reduction``, ``weight_fn``). ``weight_fn(batch)``, the same in both, is the number of loss terms a
        batch's mean is over (tokens, for a language model). With JAX and ``model_fn``, ``loss`` is
        ``loss_fn(outputs, targets)`` and batches are ``(inputs, targets)``, as
        with PyTorch; the GGN and residual curvatures need that form.

    Examples
    --------
    >>> import torch, scipy.sparse.linalg
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    >>> x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
    >>> H = hessian(model, nn.CrossEntropyLoss(), [(x, y)])
    >>> H.shape, H.dtype
    ((26, 26), dtype('float32'))
    >>> params = [p.detach() for p in model.parameters()]     # against the dense autograd Hessian
    >>> def loss_of(*ps):
    ...     out = torch.func.functional_call(model, dict(zip(dict(model.named_parameters()), ps)), (x,))
    ...     return nn.functional.cross_entropy(out, y)
    >>> blocks = torch.autograd.functional.hessian(loss_of, tuple(params))
    >>> dense = torch.cat([torch.cat([b.reshape(p.numel(), q.numel()) for b, q in zip(row, params)], 1)
    ...                    for row, p in zip(blocks, params)])
    >>> v = torch.randn(26)
    >>> bool(torch.allclose(H.apply(v), dense @ v, atol=1e-5))
    True
    >>> top = scipy.sparse.linalg.eigsh(H, k=1, which="LA")[0]   # scipy works on it unchanged
    """
    if curvature not in CURVATURES:
        raise ValueError(f"unknown curvature {curvature!r}; choose one of {CURVATURES}")
    name = backend or _detect(model, loss)
    sharded = False
    if name == "torch":  # DDP unwrapped, FSDP2 detected (comm from its mesh), the old FSDP wrapper refused
        from .backends.torch.meshes import unwrap

        model, comm, sharded = unwrap(model, comm)

    def build() -> Any:  # on this rank's shard; a failure on any rank raises on every rank (together)
        if sharded:
            from .backends.torch.sharded import ShardedTorchBackend

            return ShardedTorchBackend(model, loss, data, curvature=curvature, **options)
        if name == "torch":
            from .backends.torch import TorchBackend

            return TorchBackend(model, loss, data, curvature=curvature, **options)
        if name == "jax":
            from .backends.jax import JaxBackend

            return JaxBackend(model, loss, data, curvature=curvature, **options)
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")

    impl = together(comm, build, "while building the Hessian")
    check_arguments("hessian", comm=comm, n=impl.n, dtype=str(impl.dtype), curvature=curvature, backend=name)
    return HessianOperator(impl, comm)


def _detect(model: Any, params: Any) -> str:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        return "torch"
    if "jax" in sys.modules and callable(model):
        import jax

        leaves = jax.tree_util.tree_leaves(params)
        if leaves and all(isinstance(leaf, jax.Array) for leaf in leaves):
            return "jax"
    raise TypeError(
        f"cannot tell the framework of a {type(model).__name__}: pass a torch.nn.Module, "
        "or a JAX loss_fn(params, batch) with a pytree of jax arrays, or say backend='torch'/'jax'"
    )
