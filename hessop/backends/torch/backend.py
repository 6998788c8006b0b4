"""The PyTorch backend: curvature-vector products of an ``nn.Module``'s loss over all the data.

The model is called through :func:`torch.func.functional_call` with the
differentiated parameters swapped for fresh tensors, so any subset of the
parameters can be differentiated (the rest held fixed) and the loss can be
evaluated at other parameter values, without touching the model. Parameters and
buffers are read live at every product: the operator follows the model as it
trains.

Strategies for the Hessian (``hvp=``), see :mod:`hessop.backends.torch.hvp`:

``"double-backward"``
    reverse over reverse; a block as one second pass per column over a shared
    first pass (``"double-backward-loop"``, its former name, is still accepted).
``"double-backward-vmap"``
    reverse over reverse; a block as one batched second pass through
    ``is_grads_batched``.
``"forward-over-reverse"``
    ``jvp`` of ``grad``; a block through ``vmap``.
``"linearize"``
    each batch's gradient linearised once (``torch.func.linearize``) and kept, for a
    list of batches, while the model is unchanged; a product is then one tangent
    pass (:mod:`hessop.backends.torch.linearized`). Never chosen by ``"auto"``.
``"finite-difference"``
    a central difference of two gradient passes (an approximation, for models
    whose second derivative torch cannot take: fused kernels, checkpointing).
``"auto"`` (default)
    one choice for vectors and one for blocks (of any width), each made at the
    first product of its kind and kept for the operator's life
    (:mod:`hessop.backends.torch.strategy`): a vector over a kept first-order
    graph takes ``"double-backward"`` without timing anything (one backward pass,
    which no other strategy can undercut); otherwise the exact strategies are
    timed once on the first batch (for blocks with a kept graph, only the two
    that use it; on a GPU the leanest of those within 10% of the fastest). A
    strategy that fails on the model (e.g. an op without a ``vmap`` rule) is
    skipped; when all fail, ``"finite-difference"`` is used, with a warning.

``compile=True`` runs each batch's Hessian product through ``torch.compile``:
over a list of batches with the model in eval mode, the tangent pass of each
batch's linearised gradient (:mod:`hessop.backends.torch.linearized`; one
compilation for all batches of one shape), otherwise the whole
forward-over-reverse product (:mod:`hessop.backends.torch.compiled`).
``"auto"`` never compiles by itself, since compiling costs seconds to minutes.

Products run with attention kernels that have second derivatives
(:mod:`hessop.backends.torch.attention`), so models using
``F.scaled_dot_product_attention``, ``nn.MultiheadAttention`` or
``nn.TransformerEncoder`` work unchanged. The first product multiplies the
first batch twice and refuses a product that is not repeatable
(:mod:`hessop.backends.torch.checks`). The data rules (forms accepted, one-shot
iterators, batch weights through ``weight_fn``, the mean over all loss terms of
all ranks) are the backend contract's, :mod:`hessop.backends.base`; batches of
any structure: :mod:`hessop.backends.torch.data`; each batch's default weight
(tokens for language models): :mod:`hessop.backends.torch.losses`.

With the double-backward strategies and data given as a list of batches, each
batch's first-order graph (forward pass and gradient with ``create_graph=True``)
is built once and reused by every product until a parameter or buffer changes
in place, for as many batches as fit the ``graph_cache_bytes`` budget
(:mod:`hessop.backends.torch.graphs`): a kept batch then costs one backward
pass per product, the others are recomputed (see ``docs/performance.md``). Once every batch's graph is kept, a
vector's product skips the general path's per-call work (:mod:`hessop.backends.torch.kept`).

float16/bfloat16 models: vectors, products and sums over batches are float32;
each batch's product runs in the model's dtype on the vector cast to it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ..._array import namespace
from ..base import CURVATURES, Backend
from .attention import exact_attention
from .checks import (
    check_finite_batch,
    check_finite_model,
    check_first_batch,
    check_repeatable,
    dict_input_refused,
    raise_nonfinite,
    raise_nonfinite_product,
)
from .compiled import CompiledProduct
from .data import Batches, arguments, check_loader, check_train_mode, target_of
from .finite_difference import FiniteDifference
from .functional import Snapshot
from .graphs import GraphCache, budget_of
from .hvp import ALIASES, INEXACT, STRATEGIES, Tensors, ggn
from .kept import KeptProducts
from .linearized import Linearized
from .losses import Counter, adapt_loss, logits_of, loss_of_model
from .params import device_and_dtype, flatten, param_views, reduction_of, select_params, split, tensors_of
from .strategy import hessian

HVP_CHOICES = ("auto", *STRATEGIES, "linearize", *INEXACT, *ALIASES)


class TorchBackend(Backend):
    """Curvature-vector products of ``loss(model(x), y)`` summed over the batches of ``data``.

    Parameters
    ----------
    model : torch.nn.Module
        The network; its parameters' device is where vectors live.
    loss : callable or None
        ``loss(output, target)`` returning a scalar, e.g. ``nn.CrossEntropyLoss()``
        (an output with ``logits``, as Hugging Face models return, passes its
        logits); ``None``: the loss the model returns (``output.loss``).
    data : DataLoader, list of batches, or one batch
        All the data (forms: :mod:`hessop.backends.base`); every product passes over it once.
        A batch is ``(x, y)`` or a dict of the model's keyword arguments (:mod:`.data`).
    curvature : {"hessian", "ggn", "residual"}
    params : sequence of tensors or names, optional
        The parameters to differentiate (default: every ``requires_grad`` one).
    hvp : {"auto", "double-backward", "double-backward-vmap", "forward-over-reverse", "linearize", "finite-difference"}
        How Hessian-vector products are computed (module docstring).
    reduction : {"mean", "sum"}, optional
        How the loss reduces over samples; read from ``loss.reduction`` when omitted.
    weight_fn : callable, optional
        ``weight_fn(batch)``: the number of loss terms a batch's mean is over (default:
        non-ignored targets for cross-entropy and NLL, else samples; :mod:`.losses`).
    check_determinism : bool
        Refuse train-mode dropout and BatchNorm, random forward passes and shuffling loaders when the
        operator is built. Whatever it says, the first product refuses a product that is not repeatable.
    progress : bool
        Show a progress bar over the batches of each product.
    graph_cache : {"auto", True, False}, graph_cache_bytes : int, optional
        Keep batches' first-order graphs across products (module docstring) under ``graph_cache_bytes``
        (default: min(2 GiB, (free memory - a product's working memory) / 4), :mod:`.graphs`;
        ``True``: no limit; ``False`` or 0: keep none).
    compile : bool
        Run each batch's Hessian product through ``torch.compile`` (module docstring: the linearised
        tangent pass over a list in eval mode, else the whole product); the first product of each
        compilation is compared with the eager product. Not with ``curvature="ggn"`` or a named ``hvp``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: Callable[[Any, Any], torch.Tensor],
        data: Any,
        *,
        curvature: str = "hessian",
        params: Sequence[torch.Tensor | str] | None = None,
        hvp: str = "auto",
        reduction: str | None = None,
        check_determinism: bool = True,
        progress: bool = False,
        graph_cache: bool | str = "auto",
        graph_cache_bytes: int | None = None,
        weight_fn: Callable[[Any], Any] | None = None,
        compile: bool = False,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        if loss is not None and not callable(loss):
            raise TypeError(f"loss must be callable as loss(output, target) or None, not {type(loss).__name__}")
        if loss is None and curvature != "hessian":
            raise ValueError(f"the {curvature} needs the loss of the model's output: pass loss(output, target)")
        if curvature not in CURVATURES:
            raise ValueError(f"unknown curvature {curvature!r}; choose one of {CURVATURES}")
        if hvp not in HVP_CHOICES:
            raise ValueError(f"unknown hvp strategy {hvp!r}; choose one of {HVP_CHOICES}")
        if not isinstance(compile, bool):
            raise TypeError(f"compile must be True or False, not {compile!r}")
        if compile and (curvature == "ggn" or hvp not in ("auto", "forward-over-reverse")):
            raise ValueError(
                "compile=True compiles the Hessian's forward-over-reverse product; leave hvp='auto' "
                f"(got hvp={hvp!r}, curvature={curvature!r}) or pass compile=False"
            )
        self.compile = bool(compile)
        self.graph_budget = budget_of(graph_cache, graph_cache_bytes)
        self.model = model
        self.loss_fn = None if loss is None else adapt_loss(loss)
        self.curvature = curvature
        self.hvp = ALIASES.get(hvp, hvp)
        self.progress = progress
        self.reduction = reduction_of(loss, reduction)
        self.normalize = self.reduction == "mean"
        self._set_params(select_params(model, params))
        counter = self._counter = Counter(loss, weight_fn)
        self.batches = Batches(data, self.device, self._data_dtype, counter)
        counter.check_known(self.batches.is_list and len(self.batches) == 1)
        if check_determinism:
            check_train_mode(model)
        check_finite_model(model)
        check_finite_batch(self.batches)
        x, y = self.batches.first()
        self._check_first_batch(x, y, check_determinism)
        self.local_count = self.batches.count(counter.samples_only)
        self.chosen: dict[str, str] = {}
        self._repeatable = False  # set by the first product's check

    # -- parameters ------------------------------------------------------------------------
    def _set_params(self, names: list[str]) -> None:
        tensors = tensors_of(self.model, names)
        self.param_names = names
        self.param_sizes = [int(t.numel()) for t in tensors]
        self.param_shapes = [tuple(t.shape) for t in tensors]
        self.module_names = [n.rpartition(".")[0] or n for n in names]
        self.device, dtype = device_and_dtype(tensors)
        self._data_dtype = dtype  # floating data is cast to the differentiated parameters' dtype
        self.dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        self.xp = namespace(torch.empty(0, dtype=self.dtype, device=self.device))
        self._param_dtypes = [t.dtype for t in tensors]
        self._graphs = GraphCache(self.graph_budget)
        self._kept: KeptProducts | None = None  # the vector products over kept graphs, once all are kept
        self._compiled: CompiledProduct | None = None
        self._linearized = Linearized(self.model, self.graph_budget)
        self._finite_difference = FiniteDifference()
        self._snapshot: Snapshot | None = None  # the model the kept graphs and linearisations were built at

    @property
    def product_error(self) -> float | None:
        """The products' relative error: 0.0 when exact, the finite difference's measured error (None until its
        first product, :mod:`.finite_difference`)."""
        if self.curvature != "ggn" and "finite-difference" in (self.hvp, *self.chosen.values()):
            return self._finite_difference.error
        return 0.0

    def _forget_if_changed(self) -> None:
        """Drop every kept graph and linearisation when the model changed since they were built."""
        if self._snapshot is not None and not self._snapshot.unchanged():
            self._graphs.clear()
            self._linearized.clear()
            self._kept = None
            self._snapshot = None

    def _remember(self) -> None:
        """Snapshot the model once something built at its current state is kept (:mod:`.functional`)."""
        if self._snapshot is None and (self._graphs.graphs or self._linearized.fns or self._kept is not None):
            self._snapshot = Snapshot(self.model)

    def _current(self) -> list[torch.Tensor]:
        named = dict(self.model.named_parameters())
        return [named[n].detach() for n in self.param_names]

    def _fixed(self) -> dict[str, torch.Tensor]:
        """Every parameter and buffer of the model, detached (the chosen ones are overridden per call)."""
        state = {n: t.detach() for n, t in self.model.named_parameters()}
        # Train-mode BatchNorm updates its running statistics in place: give it copies, not the model's.
        copy_buffers = self.model.training
        state.update((n, b.clone() if copy_buffers else b) for n, b in self.model.named_buffers())
        return state

    def _split(self, V: torch.Tensor) -> Tensors:
        """A flat vector (n,) or block (n, k) as parameter-shaped tensors ((k, *shape) for a block)."""
        return split(V, self.param_sizes, self.param_shapes, self._param_dtypes)

    def _flatten(self, parts: Sequence[torch.Tensor], batched: bool) -> torch.Tensor:
        return flatten(parts, batched, self.dtype)

    def flat_params(self) -> torch.Tensor:
        return self._flatten(self._current(), False)

    # -- one batch -----------------------------------------------------------------------------
    def _closures(self, x: Any, y: Any, state: dict[str, torch.Tensor] | None = None):
        state = self._fixed() if state is None else state
        names = self.param_names

        args, kwargs = arguments(x)
        y = target_of(x, y)
        output = logits_of if self.loss_fn is not None else (lambda out: out)

        def model_fn(p: Tensors) -> torch.Tensor:
            return output(functional_call(self.model, {**state, **dict(zip(names, p))}, args, kwargs))

        def loss_of_output(out: torch.Tensor, target: Any = y) -> torch.Tensor:
            return loss_of_model(out) if self.loss_fn is None else self.loss_fn(out, target)

        def f(p: Tensors, target: Any = y) -> torch.Tensor:
            return loss_of_output(model_fn(p), target)

        return model_fn, loss_of_output, f

    def _check_first_batch(self, x: Any, y: Any, check_determinism: bool) -> None:
        model_fn, loss_of_output, _ = self._closures(x, y)
        try:
            check_first_batch(model_fn, loss_of_output, tuple(self._current()), check_determinism)
        except TypeError as err:
            if isinstance(x, Mapping) and y is not None:
                raise dict_input_refused(x, err) from err
            raise
        if check_determinism:
            check_loader(self.batches, (x, y))

    def _weight(self, count: float) -> float:
        return count if self.normalize else 1.0

    def _iter(self, what: str):
        it = self.batches.weighted()
        if self.progress:
            from tqdm.auto import tqdm

            total = len(self.batches) if self.batches.is_list else None
            it = tqdm(it, total=total, desc=what, leave=False)
        return it

    # -- products ------------------------------------------------------------------------------
    def hvp_sum(self, V: torch.Tensor) -> torch.Tensor:
        self._forget_if_changed()
        kept = self._kept
        if kept is not None and V.ndim == 1 and type(V) is torch.Tensor:
            out = kept.vector(V)
            if math.isfinite(float(out.sum())):
                return out
            self._kept = None  # the general path finds the batch whose product is not finite
        with exact_attention():  # attention kernels with second derivatives, for the products only
            out = self._hvp_sum(V)
        if V.ndim == 1:
            self._kept = self._kept_products()
        self._remember()
        return out

    def _kept_products(self) -> KeptProducts | None:
        """Products over the kept graphs, when every batch's graph is kept and no cast is needed."""
        if not (self.curvature == "hessian" and self.batches.is_list and self._repeatable
                and self.chosen.get("vector") == "double-backward" and not self.model.training
                and all(d == self.dtype for d in self._param_dtypes)):
            return None
        graphs = []
        for index, _, _, count in self.batches.weighted():
            graph = self._graphs.graphs.get(index)
            if graph is None:
                return None
            graphs.append((graph, float(self._weight(count))))
        return KeptProducts(graphs, self.param_sizes, self.param_shapes, True)

    def _hvp_sum(self, V: torch.Tensor) -> torch.Tensor:
        batched = V.ndim == 2
        vs = self._split(V)
        acc = torch.zeros(V.shape, dtype=V.dtype, device=V.device)  # contiguous, whatever V's strides
        views = param_views(acc, self.param_sizes, self.param_shapes)  # each batch adds in place, no concatenation
        count = 0.0
        for index, x, y, c in self._iter("Hessian-vector product"):
            count += c
            parts = self._product(index, x, y, vs, batched)
            if not self._repeatable:  # the first product: a fresh pass must agree
                if all(bool(torch.isfinite(p).all()) for p in parts):
                    check_repeatable(self, index, x, y, vs, batched, parts)
                    self._repeatable = True
                else:  # NaN never equals NaN: not a question of repeatability (the sum's check below says what)
                    check_finite_model(self.model)
            for view, part in zip(views, parts):
                view.add_(part, alpha=self._weight(c))
        self._check_count(count)
        # NaN and inf propagate into the sum: one cheap reduction, the full check only when it trips
        if not bool(torch.isfinite(acc.sum())) and not bool(torch.isfinite(acc).all()):
            raise_nonfinite_product(self, vs, batched)
        return acc

    def _product(self, index: int, x: Any, y: Any, vs: Tensors, batched: bool, fresh: bool = False) -> Tensors:
        if self.curvature == "ggn":
            return self._ggn(x, y, vs, batched)
        hv = hessian(self, index, x, y, vs, batched, fresh)
        if self.curvature == "residual":
            gv = self._ggn(x, y, vs, batched)
            return tuple(a - b for a, b in zip(hv, gv))
        return hv

    def _ggn(self, x: Any, y: Any, vs: Tensors, batched: bool) -> Tensors:
        model_fn, loss_of_output, _ = self._closures(x, y)
        return ggn(model_fn, loss_of_output, self._current(), target_of(x, y), vs, batched)

    def _check_count(self, count: float) -> None:
        if count != self.local_count:
            raise RuntimeError(
                f"the data held {count:g} loss terms (samples or tokens) in this pass but {self.local_count:g} when "
                "the operator was built; the data must not change while the operator is in use (build a new operator)"
                + (". The batches' targets differ in shape beyond the first dimension, which counting the loader's "
                   "samples did not see: state each batch's weight with weight_fn=lambda batch: ..."
                   if self._counter.uneven else "")
            )

    # -- loss and gradient -----------------------------------------------------------------------
    def loss_sum(self) -> float:
        return self._loss_sum(self._current())

    def loss_at(self, flat: torch.Tensor) -> float:
        if flat.ndim != 1 or flat.shape[0] != self.n:
            raise ValueError(f"expected a parameter vector of shape ({self.n},); got {tuple(flat.shape)}")
        return self._loss_sum(list(self._split(flat.to(device=self.device, dtype=self.dtype))))

    def _loss_sum(self, params: Sequence[torch.Tensor]) -> float:
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        flags = []
        state = self._fixed()
        with torch.no_grad():
            for index, x, y, c in self._iter("loss"):
                _, _, f = self._closures(x, y, state)
                value = f(tuple(params)).to(torch.float64)
                flags.append((index, ~torch.isfinite(value)))
                total += value * self._weight(c)
        raise_nonfinite(flags, "loss")
        return float(total)

    def grad_sum(self) -> torch.Tensor:
        acc = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        flags = []
        state = self._fixed()
        for index, x, y, c in self._iter("gradient"):
            _, _, f = self._closures(x, y, state)
            params = tuple(p.requires_grad_() for p in self._current())
            with torch.enable_grad():
                g = torch.autograd.grad(f(params), params, allow_unused=True)
            part = self._flatten([torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, params)], False)
            flags.append((index, ~torch.isfinite(part).all()))
            acc.add_(part, alpha=self._weight(c))
        raise_nonfinite(flags, "gradient")
        return acc

    # -- subsets -----------------------------------------------------------------------------------
    def restrict(self, names: Sequence[str]) -> TorchBackend:
        unknown = [n for n in names if n not in self.param_names]
        if unknown or not names:
            raise ValueError(
                f"restrict: {unknown or 'an empty list'} is not a subset of this operator's parameters "
                f"{self.param_names[:4]}{' ...' if len(self.param_names) > 4 else ''}"
            )
        other = copy.copy(self)
        other.chosen = {}
        other._set_params([n for n in self.param_names if n in set(names)])
        return other
