"""One batch's Hessian product by the chosen strategy, and everything kept across products.

:class:`Products` is the one owner of the product strategies' state:

* ``chosen``: the strategy for vectors and the one for blocks, each fixed at the
  first product of its kind (the user's ``hvp``, ``"compiled"``, or
  ``"auto"``'s choice, :mod:`.strategy`);
* ``graphs`` (:class:`.graphs.GraphCache`): batches' first-order graphs, and
  ``kept`` (:class:`.graphs.KeptProducts`): the vector product over them once
  every batch's graph is kept;
* ``linearized`` (:class:`.linearized.Linearized`): batches' linearised gradients;
* ``compiled`` (:class:`.compiled.CompiledProduct`): the compiled whole product;
* ``finite_difference`` (:class:`.finite_difference.FiniteDifference`): its step
  and error, measured at its first product and again at the first product after
  the model changed (a snapshot without values, :class:`.functional.Snapshot`: an
  optimizer's step is seen, a ``p.data`` write is not; products are right either
  way, only the step and the error estimate could be stale);
* ``snapshot`` (:class:`.functional.Snapshot`): the model the kept graphs and
  linearisations were built at. :meth:`Products.refresh`, called once per
  product, drops them when the model changed, whatever the change (a replaced
  module, a mode, ``p.data.add_()``).

It reads the model only through :class:`.functional.FunctionalModel` and the
data through :class:`.data.Batches`; the backend (:mod:`.backend`) adds batches
up and runs the checks.
"""

from __future__ import annotations

from typing import Any

import torch

from . import strategy
from .compiled import CompiledProduct
from .data import Batches, arguments, target_of
from .finite_difference import FiniteDifference
from .functional import FunctionalModel, Snapshot
from .graphs import GraphCache, KeptProducts
from .hvp import STRATEGIES, FirstOrderGraph, Tensors
from .linearized import Linearized


class Products:
    """Hessian products of single batches by strategy, with their kept state (module docstring).

    Parameters
    ----------
    functional : the model as a function of the differentiated parameters
    batches : the data (a list keeps graphs and linearisations; a loader cannot)
    hvp : the user's strategy, ``"auto"`` for the timed choice
    compile : run products through ``torch.compile``
    budget : bytes kept graphs and linearisations may hold (None: the default, :mod:`.graphs`)
    """

    def __init__(self, functional: FunctionalModel, batches: Batches, hvp: str, compile: bool, budget: int | None):
        self.functional, self.batches = functional, batches
        self.hvp, self.compile = hvp, compile
        self.chosen: dict[str, str] = {}
        self.graphs = GraphCache(budget)
        self.kept: KeptProducts | None = None
        self.linearized = Linearized(functional.model, budget)
        self.compiled: CompiledProduct | None = None
        self.finite_difference = FiniteDifference()
        self.snapshot: Snapshot | None = None
        self.measured_at: Snapshot | None = None  # the model the finite difference's step was measured at

    # -- what is kept ----------------------------------------------------------------------------
    def refresh(self) -> None:
        """Drop every kept graph and linearisation if the model changed since they were built."""
        if self.snapshot is not None and not self.snapshot.unchanged():
            self.graphs.clear()
            self.linearized.clear()
            self.kept = None
            self.snapshot = None
        if self.measured_at is not None and not self.measured_at.unchanged():
            self.finite_difference = FiniteDifference()
            self.measured_at = None

    def remember(self) -> None:
        """Snapshot the model once something built at its current state is kept."""
        if self.snapshot is None and (self.graphs.graphs or self.linearized.fns or self.kept is not None):
            self.snapshot = self.functional.snapshot()
        if self.measured_at is None and self.finite_difference.factor is not None:
            self.measured_at = self.functional.snapshot(values=False)

    def keep_vector_products(self, weights: list[tuple[int, float]]) -> None:
        """Set up :attr:`kept` when every batch's graph is kept and products need no cast.

        ``weights``: ``(index, weight)`` of every batch, in order.
        """
        self.kept = None
        fn = self.functional
        if not (self.batches.is_list and self.chosen.get("vector") == "double-backward"
                and not fn.model.training and all(d == fn.dtype for d in fn.dtypes)):
            return
        graphs = []
        for index, weight in weights:
            graph = self.graphs.graphs.get(index)
            if graph is None:
                return
            graphs.append((graph, weight))
        self.kept = KeptProducts(graphs, fn.sizes, fn.shapes, True)

    def graph_used(self, index: int, batched: bool) -> FirstOrderGraph | None:
        """Batch ``index``'s kept graph if the strategy for vectors (or blocks) runs over it, else None."""
        if not self.chosen.get("block" if batched else "vector", "").startswith("double-backward"):
            return None
        return self.graphs.graphs.get(index)

    @property
    def product_error(self) -> float | None:
        """0.0 for exact strategies; the finite difference's measured error (None before its first product)."""
        if "finite-difference" in (self.hvp, *self.chosen.values()):
            return self.finite_difference.error
        return 0.0

    # -- one batch ---------------------------------------------------------------------------------
    def hessian(self, index: int, x: Any, y: Any, vs: Tensors, batched: bool, fresh: bool = False) -> Tensors:
        """Batch ``index``'s Hessian product by the strategy for vectors or blocks; ``fresh``: recomputed, no
        kept graph or linearisation (the first product's reference)."""
        key = "block" if batched else "vector"
        name = self.chosen.get(key) or self._choose(key, index, x, y, vs, batched)
        return self.run(name, index, x, y, vs, batched, fresh)

    def run(self, name: str, index: int, x: Any, y: Any, vs: Tensors, batched: bool, fresh: bool = False) -> Tensors:
        """Batch ``index``'s product by strategy ``name``."""
        fn = self.functional
        if name == "compiled":
            return self._compiled(index, x, y, vs, batched, fresh)
        if name == "linearize":
            _, _, f = fn.closures(x, y)
            if fresh:  # the first product's check compares with a plain forward-over-reverse product
                return STRATEGIES["forward-over-reverse"](f, fn.current(), target_of(x, y), vs, batched)
            out = self.linearized.product(index, f, tuple(fn.current()), target_of(x, y), vs, batched,
                                          keep=self.batches.is_list)
            assert out is not None  # None only when compiling
            return out
        graph = self.graph(index, x, y) if name.startswith("double-backward") and not fresh else None
        if graph is not None:
            return graph.hvp_loop(vs) if batched and name == "double-backward" else graph.hvp(vs, batched=batched)
        _, _, f = fn.closures(x, y)
        product = self.finite_difference if name == "finite-difference" else STRATEGIES[name]
        return product(f, fn.current(), target_of(x, y), vs, batched)

    def graph(self, index: int, x: Any, y: Any) -> FirstOrderGraph | None:
        """Batch ``index``'s first-order graph from the cache, built if it is not kept; None for a loader."""
        if not self.batches.is_list:
            return None
        fn = self.functional
        state = fn.fixed()
        build = lambda: FirstOrderGraph(fn.closures(x, y, state)[2], fn.current(), target_of(x, y))  # noqa: E731
        return self.graphs.get(index, build, state.values())

    def _compiled(self, index: int, x: Any, y: Any, vs: Tensors, batched: bool, fresh: bool) -> Tensors:
        """Through ``torch.compile``: the linearised tangent pass where linearisations are kept (a list, eval
        mode, within the budget), else the whole forward-over-reverse product; ``fresh`` (the first product):
        checked against eager."""
        fn = self.functional
        if self.linearized.kept(self.batches.is_list):
            _, _, f = fn.closures(x, y)
            if fresh:  # the repeatability check's reference: an eager product on a fresh pass
                return STRATEGIES["forward-over-reverse"](f, fn.current(), target_of(x, y), vs, batched)
            out = self.linearized.product(index, f, tuple(fn.current()), target_of(x, y), vs, batched,
                                          keep=True, compile=True)
            if out is not None:
                return out  # else this batch's linearisation is beyond the budget: compile the whole product
        first = self.compiled is None
        if self.compiled is None:
            self.compiled = CompiledProduct(fn.model, fn.names, fn.loss_fn)
        args, kwargs = arguments(x)
        return self.compiled.run(tuple(fn.current()), vs, fn.fixed(), args, kwargs, target_of(x, y), batched,
                                 check=index if fresh or first else None)

    def _choose(self, key: str, index: int, x: Any, y: Any, vs: Tensors, batched: bool) -> str:
        """The strategy for vectors or for blocks: the user's, the compiled product, or ``auto``'s choice."""
        if self.compile:
            self.chosen[key] = "compiled"
        elif self.hvp != "auto":
            self.chosen[key] = self.hvp
        else:
            kept = self.graph(index, x, y) is not None and index in self.graphs.graphs
            runner = lambda name: self.run(name, index, x, y, vs, batched)  # noqa: E731
            self.chosen[key] = strategy.choose(runner, batched, kept, torch.device(self.functional.device))
            if not any(n.startswith("double-backward") for n in self.chosen.values()):
                self.graphs.clear()  # graphs the timing kept that no chosen strategy reads: free their memory
        return self.chosen[key]
