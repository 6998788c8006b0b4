"""``hvp="linearize"``: each batch's gradient linearised once, then one tangent pass per product.

As :func:`torch.func.linearize`, the tangent pass of ``jvp(grad(f))`` is traced
(``make_fx``) at the current parameters and every value that does not depend on
the tangent (the forward pass, the gradient and their intermediates) is folded
into a constant. What is left to run for each vector is the tangent part only,
cheaper than a second backward pass over a kept first-order graph, whose nodes
differentiate each backward operation again (measured in ``docs/performance.md``).
It is the analogue of the JAX backend's ``hvp="linearize"``.

The traced graph is kept as a *skeleton* that holds no tensor, with the
constants as its leading arguments (:func:`_skeleton`): the constants are all
the memory a linearisation holds, and every batch of the same shapes has the
same skeleton. The price is the tracing (seconds per batch on the CPU, where a
product takes milliseconds) and that memory, a few times a kept first-order
graph's. For a list of batches each batch's linearisation is kept while the model is
unchanged (the caller's test, :class:`.functional.Snapshot`: the same modules,
parameters and buffers, with the same values), the model is in eval
mode, and the kept constants fit the budget of the graph cache
(:mod:`.graphs`), checked by the owner (:mod:`.products`); otherwise it is rebuilt at every product,
which only pays for blocks. ``hvp="auto"`` never chooses it.

With ``compile=True`` a kept linearisation's skeleton goes through
``torch.compile``: one compilation serves every batch of the same shapes, each
called with its own constants, and Inductor fuses the elementwise work of the
tangent pass (BatchNorm, activations, sums) that runs op by op in eager mode.
The first product of each compilation is compared with the eager one. A batch
whose linearisation cannot be kept is left to the caller (:meth:`Linearized.product`
returns None), which compiles the whole product instead.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import fx, nn
from torch.func import grad
from torch.fx.experimental import const_fold
from torch.fx.experimental.proxy_tensor import make_fx

from .checks import check_compiled
from .compiled import compiler_failure
from .graphs import WORKING_BUFFERS, default_budget
from .hvp import Loss, Tensors


class Linearized:
    """Per batch, the linearised gradient, kept under a memory budget (module docstring).

    Parameters
    ----------
    model : the network (linearisations are kept only in eval mode; the caller clears them when it changes)
    budget : bytes the kept constants may hold; None for the graph cache's default
        (:func:`~hessop.backends.torch.graphs.default_budget`), 0 to keep none
    """

    def __init__(self, model: nn.Module, budget: int | None = None):
        self.model, self.budget = model, budget
        self.compiled: dict[tuple, Callable] = {}  # a skeleton's code and layouts -> its compiled function
        self.clear()

    def clear(self) -> None:
        """Drop every kept linearisation (the model changed)."""
        self.fns: dict[int, TangentPass] = {}
        self.too_big: set[int] = set()
        self.used = 0

    def kept(self, keep: bool) -> bool:
        """Whether linearisations can be kept (list data, model in eval mode), which compiling needs to pay."""
        return keep and not self.model.training

    def product(self, index: int, f: Loss, params: Tensors, target: Any, v: Tensors, batched: bool,
                keep: bool, compile: bool = False) -> Tensors | None:
        """``H_b v`` for batch ``index`` (``keep``: the data is a list, so a kept linearisation can be reused).

        With ``compile`` the kept tangent pass runs compiled; None when this batch's
        linearisation cannot be kept (the caller then compiles the whole product).
        """
        keep = self.kept(keep)
        tangent = self.fns.get(index)
        if tangent is None:
            if compile and (not keep or index in self.too_big):
                return None
            tangent = _linearized_gradient(f, params, target)
            if keep and self._fits(index, tangent, params):
                self.fns[index] = tangent
            elif compile:
                return None
            if compile:
                tangent.compiled = self._compiled(tangent, index, v, batched)
        if not batched:
            return tangent(v)
        cols = [tangent(tuple(vi[c] for vi in v)) for c in range(v[0].shape[0])]
        return tuple(torch.stack(parts) for parts in zip(*cols))

    def _fits(self, index: int, tangent: TangentPass, params: Tensors) -> bool:
        """Keep ``tangent`` if its constants fit what is left of the budget (else remember the batch as too big)."""
        size = tangent.nbytes(params)
        if self.budget is None:
            param_bytes = sum(p.numel() * p.element_size() for p in params)
            self.budget = default_budget(params[0].device, WORKING_BUFFERS * param_bytes + size)
        if self.used + size <= self.budget:
            self.used += size
            return True
        self.too_big.add(index)
        return False

    def _compiled(self, tangent: TangentPass, index: int, v: Tensors, batched: bool) -> Callable:
        """The compiled function of ``tangent``'s skeleton, compiled at its first use and checked then.

        Compilations are keyed by the skeleton's code and its constants' layouts, so every new
        compilation, whatever triggers it, is checked against the eager product once.
        """
        key = (tangent.skeleton.code, tuple((c.shape, c.stride(), c.dtype, c.device) for c in tangent.constants))
        fn = self.compiled.get(key)
        if fn is None:
            fn = self.compiled[key] = torch.compile(tangent.skeleton, dynamic=False)
            check = tuple(t[0] for t in v) if batched else tuple(v)
            check_compiled(_run_compiled(fn, tangent, check), tangent.eager(check), index)
        return fn


class TangentPass:
    """``v ↦ H v`` at fixed parameters: the skeleton of the traced tangent pass and its constants.

    ``zeros`` are the tangents of further primals (a floating target), appended to every call;
    ``compiled``, when set, runs the skeleton instead of the eager one.
    """

    def __init__(self, skeleton: fx.GraphModule, constants: list[torch.Tensor], zeros: Tensors):
        self.skeleton, self.constants, self.zeros = skeleton, constants, tuple(zeros)
        self.compiled: Callable | None = None

    def __call__(self, v: Tensors) -> Tensors:
        if self.compiled is not None:
            return _run_compiled(self.compiled, self, v)
        return self.eager(v)

    def eager(self, v: Tensors) -> Tensors:
        return tuple(self.skeleton(*self.constants, *v, *self.zeros))

    def nbytes(self, params: Tensors) -> int:
        """Bytes of the distinct storages of the constants, the parameters' own excluded."""
        sizes = {c.untyped_storage().data_ptr(): c.untyped_storage().nbytes() for c in self.constants}
        for p in params:
            sizes.pop(p.untyped_storage().data_ptr(), None)
        return sum(sizes.values())


def _run_compiled(fn: Callable, tangent: TangentPass, v: Tensors) -> Tensors:
    try:
        return tuple(fn(*tangent.constants, *v, *tangent.zeros))
    except Exception as err:  # the compiler's own errors are of many types (BackendCompilerFailed, ...)
        raise compiler_failure(err) from err


def _linearized_gradient(f: Loss, params: Tensors, target: Any) -> TangentPass:
    """The linearisation of ``grad f`` at ``params`` (module docstring).

    A floating target is traced as a primal with a zero tangent (tracing the
    backward pass with it as a plain constant crashes torch 2.13).
    """
    primals = tuple(p.detach() for p in params)
    floating = isinstance(target, torch.Tensor) and target.is_floating_point()
    extra = (target.detach(),) if floating else ()
    gradient = grad(f)

    def tangents(vs: Tensors) -> Tensors:
        with fwAD.dual_level():
            duals = tuple(fwAD.make_dual(p, t) for p, t in zip(primals + extra, vs))
            out = gradient(duals[:len(primals)], duals[-1] if floating else target)
            return tuple(_tangent_of(o) for o in out)

    with warnings.catch_warnings():  # torch's constant folding warns about its own graph
        warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node", category=UserWarning)
        traced = make_fx(tangents)(tuple(p.new_empty(()).expand_as(p) for p in primals + extra))
        folded = const_fold.split_const_subgraphs(traced)
        folded.run_folding()
    return TangentPass(*_skeleton(folded), tuple(torch.zeros_like(t) for t in extra))


def _tangent_of(dual: torch.Tensor) -> torch.Tensor:
    tangent = fwAD.unpack_dual(dual).tangent
    return torch.zeros_like(dual) if tangent is None else tangent


def _skeleton(graph: fx.GraphModule) -> tuple[fx.GraphModule, list[torch.Tensor]]:
    """``graph`` with every tensor it holds turned into a leading argument: ``(skeleton, those tensors)``.

    Two batches of the same shapes trace to the same skeleton (the same code), so one
    compiled function serves both, each called with its own constants.
    """
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    constants: list[torch.Tensor] = []
    inputs = []
    for node in graph.graph.nodes:  # the constants, as placeholders before the tangents
        if node.op == "get_attr":
            value = _attribute(graph, node.target)
            if isinstance(value, torch.Tensor):
                env[node] = g.placeholder(f"constant_{len(constants)}")
                constants.append(value.detach())
            else:  # a list of folded constants, read by getitem
                for user in node.users:
                    if user.op != "call_function" or user.target is not operator.getitem:
                        raise RuntimeError("unexpected use of a folded constant list in a linearised graph")
                    env[user] = g.placeholder(f"constant_{len(constants)}")
                    constants.append(value[user.args[1]].detach())
        elif node.op == "placeholder":
            inputs.append(node)
    for node in inputs:
        env[node] = g.placeholder(node.name)
    for node in graph.graph.nodes:
        if node in env or node.op in ("get_attr", "placeholder"):
            continue
        env[node] = g.node_copy(node, lambda n: env[n])
    return fx.GraphModule(torch.nn.Module(), g), constants


def _attribute(module: nn.Module, target: str) -> Any:
    for name in target.split("."):
        module = getattr(module, name)
    return module
