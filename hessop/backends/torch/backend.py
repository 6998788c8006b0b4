"""The PyTorch backend: curvature-vector products of an ``nn.Module``'s loss over all the data.

:class:`TorchBackend` composes the layers below it, each the one owner of its state:

* :mod:`.functional` (the model as a function of the differentiated parameters:
  their layout and current values, the fixed parameters and buffers, one batch's
  loss as a closure; the snapshot that tells whether the model changed);
* :mod:`.data` and :mod:`.losses` (batches of any structure, each batch's weight);
* :mod:`.checks` (values checked at the boundary: finite weights and data, the
  first batch, repeatable products);
* :mod:`.products` (the strategies of one batch's Hessian product and everything
  kept across products: kept first-order graphs, linearisations, compiled
  products, the finite difference's measured step);

and adds up batches, the GGN and the residual, the loss and the gradient.
Imports point one way: ``backend`` → ``products`` → (``graphs``, ``linearized``,
``compiled``, ``finite_difference``, ``strategy``) → (``functional``, ``checks``) →
(``hvp``, ``data``, ``losses``, ``params``, ``attention``).

Strategies for the Hessian (``hvp=``): ``"double-backward"`` (reverse over
reverse; a block as one second pass per column over a shared first pass),
``"double-backward-vmap"`` (a block through ``is_grads_batched``),
``"forward-over-reverse"`` (``jvp`` of ``grad``; a block through ``vmap``),
``"linearize"`` (each batch's gradient linearised once and kept, a product is
one tangent pass, :mod:`.linearized`), ``"finite-difference"`` (two gradient
passes, an approximation whose error is measured, :mod:`.finite_difference`),
and ``"auto"`` (default: :mod:`.strategy`). ``compile=True`` runs products
through ``torch.compile`` (:mod:`.compiled`, :mod:`.linearized`). With a list of
batches and a double-backward strategy, batches' first-order graphs are kept
under ``graph_cache_bytes`` (:mod:`.graphs`). Products run with attention
kernels that have second derivatives (:mod:`.attention`). The first product
multiplies the first batch twice and refuses a product that is not repeatable.
The data rules are the backend contract's (:mod:`hessop.backends.base`).
Measurements: ``docs/performance.md``.

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

from ..._array import namespace
from ..base import CURVATURES, Backend
from .attention import exact_attention
from .checks import (
    check_finite_batch,
    check_finite_model,
    check_first_batch,
    check_loader,
    check_repeatable_loss,
    check_repeatable_product,
    check_train_mode,
    dict_input_refused,
    raise_nonfinite,
)
from .data import Batches, target_of
from .functional import FunctionalModel
from .graphs import budget_of
from .hvp import ALIASES, INEXACT, STRATEGIES, Tensors, ggn
from .losses import Counter, adapt_loss
from .params import param_views, reduction_of, select_params
from .products import Products

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
        How Hessian-vector products are computed (module docstring); ``"double-backward-loop"``, a former
        name, is still accepted.
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
        self.check_determinism = check_determinism
        self.loss_fn = None if loss is None else adapt_loss(loss)
        self.curvature = curvature
        self.hvp = ALIASES.get(hvp, hvp)
        self.progress = progress
        self.reduction = reduction_of(loss, reduction)
        self.normalize = self.reduction == "mean"
        self.functional = FunctionalModel(model, select_params(model, params), self.loss_fn)
        counter = self.counter = Counter(loss, weight_fn)
        self.batches = Batches(data, self.functional.device, self.functional.param_dtype, counter)
        self.bind(self.functional)
        counter.check_known(self.batches.is_list and len(self.batches) == 1)
        if check_determinism:
            check_train_mode(model)
        check_finite_model(model)
        check_finite_batch(self.batches)
        x, y = self.batches.first()
        self._check_first_batch(x, y)
        self.local_count = self.batches.count(counter.samples_only)
        self._repeatable = False  # set by the first product's check

    def bind(self, functional: FunctionalModel) -> None:
        """Differentiate ``functional``'s parameters, with products of their own (nothing kept yet)."""
        self.functional = functional
        self.param_names = list(functional.names)
        self.param_sizes = list(functional.sizes)
        self.param_shapes = list(functional.shapes)
        self.module_names = [n.rpartition(".")[0] or n for n in functional.names]
        self.device, self.dtype = functional.device, functional.dtype
        self.xp = namespace(torch.empty(0, dtype=self.dtype, device=self.device))
        self.products = Products(functional, self.batches, self.hvp, self.compile, self.graph_budget)

    @property
    def chosen(self) -> dict[str, str]:
        """The strategy for vectors and for blocks, once chosen (:mod:`.products`)."""
        return self.products.chosen

    @property
    def product_error(self) -> float | None:
        """The products' relative error: 0.0 when exact, the finite difference's measured error (None until its
        first product, :mod:`.finite_difference`)."""
        return 0.0 if self.curvature == "ggn" else self.products.product_error

    def flat_params(self) -> torch.Tensor:
        return self.functional.flatten(self.functional.current(), False)

    # -- checks -----------------------------------------------------------------------------------
    def _check_first_batch(self, x: Any, y: Any) -> None:
        model_fn, loss_of_output, _ = self.functional.closures(x, y)
        try:
            check_first_batch(model_fn, loss_of_output, tuple(self.functional.current()), self.check_determinism)
        except TypeError as err:
            if isinstance(x, Mapping) and y is not None:
                raise dict_input_refused(x, err) from err
            raise
        if self.check_determinism:
            check_loader(self.batches, (x, y))

    def _check_repeatable(self, index: int, x: Any, y: Any, vs: Tensors, batched: bool, parts: Tensors) -> None:
        """The same vector again on a fresh pass must give the same product; over a kept graph, a fresh forward
        pass must give the same loss (one pass, not three)."""
        if not all(bool(torch.isfinite(p).all()) for p in parts):
            check_finite_model(self.model)  # NaN never equals NaN: name a weight turned NaN, else the sum's check
            return
        graph = self.products.graph_used(index, batched) if self.curvature == "hessian" else None
        if graph is not None:
            _, _, f = self.functional.closures(x, y)
            with torch.no_grad():
                check_repeatable_loss(graph.loss, f(tuple(self.functional.current())), index)
        else:
            check_repeatable_product(parts, self._product(index, x, y, vs, batched, fresh=True), index)
        self._repeatable = True

    def _raise_nonfinite_product(self, vs: Tensors, batched: bool) -> None:
        """Name the weight turned NaN or infinite since the operator was built, else the first batch whose
        product is NaN or infinite (a second pass, on the error path only)."""
        check_finite_model(self.model)
        flags = []
        for index, x, y in self.batches:
            parts = self._product(index, x, y, vs, batched)
            flags.append((index, ~torch.stack([torch.isfinite(p).all() for p in parts]).all()))
        raise_nonfinite(flags, f"{self.curvature}-vector product")
        raise FloatingPointError(
            f"the {self.curvature}-vector product overflowed while adding up the batches; use a float64 model"
        )

    def _check_count(self, count: float) -> None:
        if count != self.local_count:
            raise RuntimeError(
                f"the data held {count:g} loss terms (samples or tokens) in this pass but {self.local_count:g} when "
                "the operator was built; the data must not change while the operator is in use (build a new operator)"
                + (". The batches' targets differ in shape beyond the first dimension, which counting the loader's "
                   "samples did not see: state each batch's weight with weight_fn=lambda batch: ..."
                   if self.counter.uneven else "")
            )

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
        products = self.products
        products.refresh()
        kept = products.kept
        if kept is not None and V.ndim == 1 and type(V) is torch.Tensor:
            out = kept.vector(V)
            if math.isfinite(float(out.sum())):
                return out
            products.kept = None  # the general path finds the batch whose product is not finite
        with exact_attention():  # attention kernels with second derivatives, for the products only
            out = self._hvp_sum(V)
        if V.ndim == 1 and self.curvature == "hessian" and self._repeatable:
            products.keep_vector_products([(i, float(self._weight(c))) for i, _, _, c in self.batches.weighted()])
        products.remember()
        return out

    def _hvp_sum(self, V: torch.Tensor) -> torch.Tensor:
        batched = V.ndim == 2
        vs = self.functional.split(V)
        acc = torch.zeros(V.shape, dtype=V.dtype, device=V.device)  # contiguous, whatever V's strides
        views = param_views(acc, self.param_sizes, self.param_shapes)  # each batch adds in place, no concatenation
        count = 0.0
        for index, x, y, c in self._iter("Hessian-vector product"):
            count += c
            parts = self._product(index, x, y, vs, batched)
            if not self._repeatable:  # the first product: a fresh pass must agree
                self._check_repeatable(index, x, y, vs, batched, parts)
            for view, part in zip(views, parts):
                view.add_(part, alpha=self._weight(c))
        self._check_count(count)
        # NaN and inf propagate into the sum: one cheap reduction, the full check only when it trips
        if not bool(torch.isfinite(acc.sum())) and not bool(torch.isfinite(acc).all()):
            self._raise_nonfinite_product(vs, batched)
        return acc

    def _product(self, index: int, x: Any, y: Any, vs: Tensors, batched: bool, fresh: bool = False) -> Tensors:
        if self.curvature == "ggn":
            return self._ggn(x, y, vs, batched)
        hv = self.products.hessian(index, x, y, vs, batched, fresh)
        if self.curvature == "residual":
            gv = self._ggn(x, y, vs, batched)
            return tuple(a - b for a, b in zip(hv, gv))
        return hv

    def _ggn(self, x: Any, y: Any, vs: Tensors, batched: bool) -> Tensors:
        model_fn, loss_of_output, _ = self.functional.closures(x, y)
        return ggn(model_fn, loss_of_output, self.functional.current(), target_of(x, y), vs, batched)

    # -- loss and gradient -----------------------------------------------------------------------
    def loss_sum(self) -> float:
        return self._loss_sum(self.functional.current())

    def loss_at(self, flat: torch.Tensor) -> float:
        if flat.ndim != 1 or flat.shape[0] != self.n:
            raise ValueError(f"expected a parameter vector of shape ({self.n},); got {tuple(flat.shape)}")
        return self._loss_sum(list(self.functional.split(flat.to(device=self.device, dtype=self.dtype))))

    def _loss_sum(self, params: Sequence[torch.Tensor]) -> float:
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        flags = []
        state = self.functional.fixed()
        with torch.no_grad():
            for index, x, y, c in self._iter("loss"):
                _, _, f = self.functional.closures(x, y, state)
                value = f(tuple(params)).to(torch.float64)
                flags.append((index, ~torch.isfinite(value)))
                total += value * self._weight(c)
        raise_nonfinite(flags, "loss")
        return float(total)

    def grad_sum(self) -> torch.Tensor:
        acc = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        flags = []
        state = self.functional.fixed()
        for index, x, y, c in self._iter("gradient"):
            _, _, f = self.functional.closures(x, y, state)
            params = tuple(p.requires_grad_() for p in self.functional.current())
            with torch.enable_grad():
                g = torch.autograd.grad(f(params), params, allow_unused=True)
            part = self.functional.flatten([torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, params)],
                                           False)
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
        other.bind(FunctionalModel(self.model, [n for n in self.param_names if n in set(names)], self.loss_fn))
        return other
