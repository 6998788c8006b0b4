"""The contract between a framework and :class:`hessop.HessianOperator`.

A backend knows one framework (PyTorch, JAX, ...). It owns the parameters as one
flat vector, the data, and the curvature-vector product over *this process's*
data. It returns *sums* over samples, never means: the operator adds the sums
of all processes with one all-reduce and divides by the global sample count, so
unequal batches and unequal shards are exact and every backend is data-parallel
for free.

Data rules (every backend; stated here once)
--------------------------------------------
* **Forms accepted.** ``data`` is one batch, a ``list`` of batches, or any other
  iterable of batches. A list (and one batch, held as a list of one) is kept and
  read at every product; a re-iterable source such as a ``DataLoader`` is
  iterated afresh at every product and must yield the same batches each time.
* **One-shot iterators.** An iterator or generator (``iter(data) is data``)
  cannot be read twice, so it is read once when the operator is built and kept
  as a list of batches.
* **Batch weights.** A batch's weight ``w_b`` is the number of loss terms its
  mean is over: ``weight_fn(batch)`` when given (e.g. the non-padding tokens of
  a language-model batch), else a framework default (samples, or non-ignored
  targets: each backend says which). A default must equal what the loss's mean
  divides by wherever the backend can know it: the PyTorch backend counts a
  target's elements (what torch's mean losses divide by; the samples where
  every batch's target has the same shape beyond the first dimension) and warns
  when batches of a loss given as a function differ there, since a function may
  average otherwise. Batches of weight zero add nothing.
* **The mean over everything.** For a loss with ``reduction="mean"`` each
  batch's product is weighted by its weight (``Σ_b w_b · C_b v``) and
  :attr:`Backend.local_count` is ``Σ_b w_b``; the operator divides the sum over
  all ranks by the total over all ranks, so it is the curvature of the mean over
  all loss terms of all the data on all ranks, whatever the batch and shard
  sizes. For ``reduction="sum"`` batches add up unweighted and the operator does
  not divide (:attr:`Backend.normalize` is False).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from .._array import Array

CURVATURES = ("hessian", "ggn", "residual")


class Backend(ABC):
    """One framework's curvature-vector products over the local data.

    Attributes a subclass sets
    --------------------------
    xp : the array-API namespace of the native vectors
    device : the device vectors live on
    dtype : the native dtype of vectors (float16/bfloat16 models use float32 here)
    param_names : names of the parameter tensors this backend differentiates, in order
    param_sizes : number of entries of each, same order; the flat vector concatenates them
    param_shapes : the shape of each, same order (the analyses read filters and layers from them)
    module_names : for each parameter, the name of the block (module) it belongs to
    curvature : one of ``CURVATURES``
    normalize : True for mean-reduced losses (divide by the global sample count)
    local_count : number of samples on this process (the weight total for mean losses)
    """

    xp: Any
    device: Any
    dtype: Any
    param_names: list[str]
    param_sizes: list[int]
    param_shapes: list[tuple[int, ...]]
    module_names: list[str]
    curvature: str
    normalize: bool
    local_count: float

    @property
    def n(self) -> int:
        """Length of the flat parameter vector."""
        return int(sum(self.param_sizes))

    @abstractmethod
    def hvp_sum(self, V: Array) -> Array:
        """``Σ_b w_b C_b V`` over the local batches for the curvature C.

        ``V`` is a native array of shape ``(n,)`` or ``(n, k)`` with this backend's
        dtype and device; the result has the same shape, dtype and device.
        """

    @abstractmethod
    def loss_sum(self) -> float:
        """``Σ_b w_b L_b`` over the local batches, as a Python float."""

    @abstractmethod
    def grad_sum(self) -> Array:
        """``Σ_b w_b ∇L_b`` over the local batches, a native vector of length n."""

    @abstractmethod
    def restrict(self, names: Sequence[str]) -> Backend:
        """A backend over the named parameters only, every other parameter held fixed."""

    @abstractmethod
    def flat_params(self) -> Array:
        """The current parameter values as one native vector of length n."""

    def loss_at(self, flat: Array) -> float:  # pragma: no cover - optional capability
        """``Σ_b w_b L_b`` with the parameters set to ``flat`` (for loss landscapes)."""
        raise NotImplementedError(f"{type(self).__name__} cannot evaluate the loss at other parameters")
