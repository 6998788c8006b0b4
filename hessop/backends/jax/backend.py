"""The JAX backend: curvature-vector products of ``loss_fn(params, batch)`` over a pytree.

Two ways to state the loss
--------------------------
* ``hessian(loss_fn, params, data)``: ``loss_fn(params, batch)`` returns a scalar.
* ``hessian(loss_fn, params, data, model_fn=apply_fn)``: the PyTorch convention.
  Each batch is a pair ``(inputs, targets)``, the network is
  ``model_fn(params, inputs) -> outputs`` and the loss is ``loss_fn(outputs, targets)``.
  This form is required for ``curvature="ggn"`` and ``"residual"``, whose
  Gauss-Newton factor ``Jᵀ ∇²ℓ J`` needs the outputs (Schraudolph 2002).

Data and weighting
------------------
The data forms, one-shot iterators, batch weights (``weight_fn``) and the mean over
all loss terms follow the backend contract, :mod:`hessop.backends.base`. Here a
batch is any pytree (a ``tuple``, ``dict`` or array; with ``model_fn`` an
``(inputs, targets)`` pair) and its default weight is the leading dimension of its
first leaf (:mod:`hessop.backends.jax.data`). With ``reduction="mean"`` (the
default) ``loss_fn`` averages over its batch. ``batch_size_fn``, the former name of
``weight_fn``, still works and warns.

Parameters and dtypes
---------------------
Parameter names are the pytree key paths joined by ``"."`` (``{"layer1": {"w": ...}}``
gives ``"layer1.w"``), so ``H.restrict("layer1")`` selects a sub-dictionary as it
selects a PyTorch module (:mod:`hessop.backends.jax.params`). The vectors have the parameters' dtype
(float32 for float16 and bfloat16 models). JAX computes in float32 unless the user enables 64-bit mode
(``jax.config.update("jax_enable_x64", True)``); this backend never flips that
global switch and refuses float64 parameters while it is off.

Products are forward-over-reverse (``jax.jvp`` of ``jax.grad``, Pearlmutter 1994),
jit-compiled once per batch shape, with ``jax.vmap`` over the columns of a block.
``hvp="linearize"`` instead linearises the gradient once per batch and reuses it
for every product, skipping the primal forward and backward pass (about 15% faster
in ``benchmarks/hvp_jax.py``) at the cost of keeping every batch's linearisation in
memory. ``hvp="auto"`` (the default) linearises when the data is a single batch,
whose linearisation costs about the memory of one gradient pass, and uses
``"forward-over-reverse"`` otherwise (the PyTorch backend's name for the same product;
``"jvp"``, its former name here, still works with a ``DeprecationWarning``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import array_api_compat
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ..._warnings import warn
from ..base import CURVATURES, Backend
from .data import Batches
from .params import as_float_leaf, module_of, path_name

HVP_MODES = ("auto", "forward-over-reverse", "linearize")
RENAMED_MODES = {"jvp": "forward-over-reverse"}
"""Former names of strategies: accepted with a DeprecationWarning."""


class JaxBackend(Backend):
    """Curvature-vector products of a JAX loss over a list or iterable of batches.

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(params, batch) -> scalar``; with ``model_fn``, ``loss_fn(outputs, targets)``.
    params : pytree
        The point at which the curvature is taken; every leaf a floating array.
    data : list, batch or iterable
        The batches the loss is averaged (or summed) over (forms and weights: :mod:`hessop.backends.base`).
    curvature : {"hessian", "ggn", "residual"}
        The Hessian, the generalised Gauss-Newton matrix, or the Hessian minus the GGN.
    model_fn : callable, optional
        ``model_fn(params, inputs) -> outputs``; batches are then ``(inputs, targets)`` pairs.
    reduction : {"mean", "sum"}
        How ``loss_fn`` reduces over the samples of its batch.
    weight_fn : callable, optional
        ``weight_fn(batch) -> number``, the number of loss terms a batch's mean is
        over (default: the leading dimension of its first leaf). Formerly ``batch_size_fn``.
    hvp : {"auto", "forward-over-reverse", "linearize"}
        Recompute the gradient's linearisation on every product, cache it per batch,
        or cache it only when the data is one batch (the default).
    """

    def __init__(
        self,
        loss_fn: Callable,
        params: Any,
        data: Any,
        *,
        curvature: str = "hessian",
        model_fn: Callable | None = None,
        reduction: str = "mean",
        weight_fn: Callable[[Any], Any] | None = None,
        hvp: str = "auto",
        batch_size_fn: Callable[[Any], int] | None = None,
    ):
        if batch_size_fn is not None:
            if weight_fn is not None:
                raise ValueError("pass weight_fn only: batch_size_fn is its former name")
            warn("batch_size_fn is renamed weight_fn (the same in the PyTorch backend); pass weight_fn=",
                 DeprecationWarning)
            weight_fn = batch_size_fn
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, not {type(loss_fn).__name__}")
        if curvature not in CURVATURES:
            raise ValueError(f"unknown curvature {curvature!r}; choose one of {CURVATURES}")
        if curvature != "hessian" and model_fn is None:
            raise ValueError(
                f"curvature={curvature!r} needs the network's outputs: pass model_fn=apply_fn with "
                "apply_fn(params, inputs) -> outputs, a loss_fn(outputs, targets) and (inputs, targets) batches"
            )
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
        if hvp in RENAMED_MODES:
            warn(f"hvp={hvp!r} is now hvp={RENAMED_MODES[hvp]!r}, the PyTorch backend's name for the same "
                 f"product; the name {hvp!r} will be removed", DeprecationWarning)
            hvp = RENAMED_MODES[hvp]
        if hvp not in HVP_MODES:
            raise ValueError(f"hvp must be one of {HVP_MODES}, not {hvp!r}")
        if hvp == "linearize" and curvature != "hessian":
            raise ValueError("hvp='linearize' caches the Hessian only; use hvp='forward-over-reverse' for the GGN and "
                             "residual")
        self.curvature = curvature
        self.normalize = reduction == "mean"
        self._loss_fn, self._model_fn, self._weight_fn = loss_fn, model_fn, weight_fn

        paths_leaves, self._treedef = jax.tree_util.tree_flatten_with_path(params)
        if not paths_leaves:
            raise ValueError("params holds no arrays; pass the pytree of the model's parameters")
        self._all_names = [path_name(path) for path, _ in paths_leaves]
        self._all_leaves = [as_float_leaf(name, leaf) for name, (_, leaf) in zip(self._all_names, paths_leaves)]
        self._device = next(iter(self._all_leaves[0].devices()))

        self._data = Batches(data, self._device, weight_fn, model_fn is not None)
        if hvp == "linearize" and not self._data.cached:
            raise ValueError("hvp='linearize' caches one linearisation per batch; pass the data as a list of batches")
        if hvp == "auto":
            single = self._data.cached and len(self._data) == 1
            hvp = "linearize" if single and curvature == "hessian" else "forward-over-reverse"
        self._hvp_mode = hvp
        self.local_count = float(self._data.total)
        self._select(list(self._all_names))
        self._check_loss(self._data.first)

    # -- the active parameter set -------------------------------------------------------
    def _select(self, names: Sequence[str]) -> None:
        chosen = set(names)
        self._active = [i for i, name in enumerate(self._all_names) if name in chosen]
        if not self._active:
            raise ValueError("restrict selected no parameter")
        self._fixed = [i for i, name in enumerate(self._all_names) if name not in chosen]
        leaves = [self._all_leaves[i] for i in self._active]
        vec_dtype = jnp.result_type(*leaves)
        if jnp.finfo(vec_dtype).bits < 32:
            vec_dtype = jnp.float32
        self._flat, self._unravel = ravel_pytree([leaf.astype(vec_dtype) for leaf in leaves])
        self._leaf_dtypes = [leaf.dtype for leaf in leaves]
        self._fixed_leaves = tuple(self._all_leaves[i] for i in self._fixed)
        self.param_names = [self._all_names[i] for i in self._active]
        self.param_sizes = [int(self._all_leaves[i].size) for i in self._active]
        self.param_shapes = [tuple(self._all_leaves[i].shape) for i in self._active]
        self.module_names = [module_of(name) for name in self.param_names]
        self.dtype = self._flat.dtype
        self.xp = array_api_compat.array_namespace(self._flat)
        self.device = array_api_compat.device(self._flat)
        self._compile()

    def _params(self, flat, fixed):
        """The full parameter pytree from the active flat vector and the fixed leaves."""
        leaves: list[Any] = [None] * len(self._all_names)
        for i, leaf, dtype in zip(self._active, self._unravel(flat), self._leaf_dtypes):
            leaves[i] = leaf.astype(dtype)
        for i, leaf in zip(self._fixed, fixed):
            leaves[i] = leaf
        return jax.tree_util.tree_unflatten(self._treedef, leaves)

    def _compile(self) -> None:
        model_fn, loss_fn = self._model_fn, self._loss_fn

        def loss(flat, fixed, batch):
            params = self._params(flat, fixed)
            if model_fn is None:
                return loss_fn(params, batch)
            inputs, targets = batch
            return loss_fn(model_fn(params, inputs), targets)

        def hess_vec(flat, fixed, batch, v):
            return jax.jvp(lambda p: jax.grad(loss)(p, fixed, batch), (flat,), (v,))[1]

        def ggn_setup(flat, fixed, batch):
            inputs, targets = batch
            net = lambda p: model_fn(self._params(p, fixed), inputs)  # noqa: E731
            outputs, pullback = jax.vjp(net, flat)
            out_grad = jax.grad(lambda o: loss_fn(o, targets))
            return net, outputs, pullback, out_grad

        def ggn_vec(flat, fixed, batch, v):
            net, outputs, pullback, out_grad = ggn_setup(flat, fixed, batch)
            jv = jax.jvp(net, (flat,), (v,))[1]
            return pullback(jax.jvp(out_grad, (outputs,), (jv,))[1])[0]

        def ggn_block(flat, fixed, batch, V):  # one forward and one pullback setup for k columns
            net, outputs, pullback, out_grad = ggn_setup(flat, fixed, batch)

            def column(v):
                jv = jax.jvp(net, (flat,), (v,))[1]
                return pullback(jax.jvp(out_grad, (outputs,), (jv,))[1])[0]

            return jax.vmap(column, in_axes=1, out_axes=1)(V)

        def product(flat, fixed, batch, V, weight):
            if V.ndim == 1:
                h = lambda: hess_vec(flat, fixed, batch, V)  # noqa: E731
                g = lambda: ggn_vec(flat, fixed, batch, V)  # noqa: E731
            else:
                h = lambda: jax.vmap(lambda v: hess_vec(flat, fixed, batch, v), in_axes=1, out_axes=1)(V)  # noqa: E731
                g = lambda: ggn_block(flat, fixed, batch, V)  # noqa: E731
            out = h() if self.curvature == "hessian" else g() if self.curvature == "ggn" else h() - g()
            return (weight * out).astype(V.dtype)

        def linearise(flat, fixed, batch):
            return jax.linearize(lambda p: jax.grad(loss)(p, fixed, batch), flat)[1]

        def apply_linear(lin, V, weight):
            out = lin(V) if V.ndim == 1 else jax.vmap(lin, in_axes=1, out_axes=1)(V)
            return (weight * out).astype(V.dtype)

        self._loss = jax.jit(loss)
        self._grad = jax.jit(jax.grad(loss))
        self._product = jax.jit(product)
        self._linearise = jax.jit(linearise)
        self._apply_linear = jax.jit(apply_linear)
        self._linear_cache: list | None = None

    # -- Backend protocol ---------------------------------------------------------------
    def hvp_sum(self, V):
        weight = self._weight
        if self._hvp_mode == "linearize":
            if self._linear_cache is None:
                self._linear_cache = [self._linearise(self._flat, self._fixed_leaves, b) for b in self._data]
            return sum(
                self._apply_linear(lin, V, weight(b)) for lin, b in zip(self._linear_cache, self._data)
            )
        return sum(self._product(self._flat, self._fixed_leaves, b, V, weight(b)) for b in self._data)

    def loss_sum(self) -> float:
        return self.loss_at(self._flat)

    def loss_at(self, flat) -> float:
        flat = self._as_vector(flat)
        total = float(sum(self._weight(b) * self._loss(flat, self._fixed_leaves, b) for b in self._data))  # one sync
        if not math.isfinite(total):
            raise FloatingPointError(f"the loss is {total} on some batch; check the model, data and parameters")
        return total

    def grad_sum(self):
        return sum(self._weight(b) * self._grad(self._flat, self._fixed_leaves, b) for b in self._data)

    def flat_params(self):
        return self._flat

    def restrict(self, names: Sequence[str]) -> JaxBackend:
        unknown = [name for name in names if name not in self._all_names]
        if unknown:
            raise ValueError(f"restrict: no parameter named {unknown}; parameters are {self._all_names}")
        if not names:
            raise ValueError("restrict needs at least one parameter name")
        out = copy.copy(self)
        out._select(names)
        return out

    # -- helpers ------------------------------------------------------------------------
    def _weight(self, batch) -> float:
        return float(self._data.count(batch)) if self.normalize else 1.0

    def _as_vector(self, flat):
        if getattr(flat, "shape", None) != (self.n,):
            raise ValueError(f"expected a parameter vector of shape ({self.n},); got {getattr(flat, 'shape', None)}")
        return jnp.asarray(flat, dtype=self.dtype)

    def _check_loss(self, batch) -> None:
        out = jax.eval_shape(self._loss, self._flat, self._fixed_leaves, batch)
        if out.shape != ():
            raise ValueError(
                f"loss_fn must return a scalar but returned shape {out.shape}; reduce it over the batch "
                "(jnp.mean for reduction='mean', jnp.sum with reduction='sum')"
            )
        value = float(self._loss(self._flat, self._fixed_leaves, batch))
        if not math.isfinite(value):
            raise FloatingPointError(
                f"loss_fn returned {value} on the first batch; check the parameters (initialisation) and the data"
            )
