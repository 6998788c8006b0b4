"""``hvp="linearize"``: each batch's gradient linearised once, then one tangent pass per product.

:func:`torch.func.linearize` of the gradient traces ``jvp(grad(f))`` at the
current parameters and keeps, as constants, every value that does not depend on
the tangent (the forward pass, the gradient and their intermediates). What is
left to run for each vector is the tangent part only: on the conv net with
BatchNorm of ``docs/performance.md`` about 1.5 gradient passes, against about 3
for a second backward pass over a kept first-order graph, whose nodes
differentiate each backward operation again. It is the analogue of the JAX
backend's ``hvp="linearize"``.

The price is the tracing (seconds per batch on the CPU, where a product takes
milliseconds) and the memory of the kept values, about that of a kept
first-order graph. For a list of batches each batch's linearisation is kept
while the model is unchanged (the test of :mod:`hessop.backends.torch.kept`:
the same modules, parameters and buffers, with the same data and versions) and
in eval mode; with a ``DataLoader`` or a model in train mode it is rebuilt at
every product, which only pays for blocks. ``hvp="auto"`` never chooses it.

With ``compile=True`` (and kept linearisations) the tangent pass itself goes
through ``torch.compile``: the kept values become arguments of a graph that no
longer holds any tensor (:func:`_skeleton`), so every batch of the same shapes
shares one compilation, and Inductor fuses the elementwise work of the tangent
pass (BatchNorm, activations, sums) that runs as separate kernels in eager mode.
The first product of each compiled graph is compared with the eager one.
"""

from __future__ import annotations

import operator
import warnings
from typing import Any, Callable

import torch
import torch.autograd.forward_ad as fwAD
from torch import fx, nn
from torch.func import grad
from torch.fx.experimental import const_fold
from torch.fx.experimental.proxy_tensor import make_fx

from .compiled import check_compiled, compiler_failure
from .hvp import Loss, Tensors
from .kept import snapshot, unchanged


class Linearized:
    """Per batch, the linearised gradient (module docstring)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.fns: dict[int, Callable[[Tensors], Tensors]] = {}
        self.entries: list | None = None
        self.compiled: dict[tuple, Callable] = {}  # a skeleton's code and layouts -> its compiled function

    def kept(self, keep: bool) -> bool:
        """Whether linearisations are kept (list data, model in eval mode), which compiling needs to pay."""
        return keep and not self.model.training

    def product(self, index: int, f: Loss, params: Tensors, target: Any, v: Tensors, batched: bool,
                keep: bool, compile: bool = False) -> Tensors:
        """``H_b v`` for batch ``index`` (``keep``: the data is a list, so a kept linearisation can be reused;
        ``compile``: the tangent pass through ``torch.compile``, module docstring)."""
        keep = self.kept(keep)
        if self.entries is None or not unchanged(self.entries):
            self.fns, self.entries = {}, snapshot(self.model)
        fn = self.fns.get(index)
        if fn is None:
            fn = _linearized_gradient(f, params, target)
            if compile:
                fn = self._compiled(fn, index, v, batched)
            if keep:
                self.fns[index] = fn
        if not batched:
            return fn(v)
        cols = [fn(tuple(vi[c] for vi in v)) for c in range(v[0].shape[0])]
        return tuple(torch.stack(parts) for parts in zip(*cols))

    def _compiled(self, eager: "TangentPass", index: int, v: Tensors, batched: bool) -> Callable[[Tensors], Tensors]:
        """``eager``'s tangent pass through the compiled function of its skeleton, compiled at its first use.

        Compilations are keyed by the skeleton's code and its constants' layouts, so every new
        compilation, whatever triggers it, is checked against the eager product once.
        """
        skeleton, constants = _skeleton(eager.graph)
        key = (skeleton.code, tuple((c.shape, c.stride(), c.dtype, c.device) for c in constants))
        fn = self.compiled.get(key)
        first = fn is None
        if first:
            fn = self.compiled[key] = torch.compile(skeleton, dynamic=False)
        zeros = eager.zeros  # the eager graph is not held: the compiled product needs only its constants

        def run(vs: Tensors) -> Tensors:
            try:
                return tuple(fn(*constants, *vs, *zeros))
            except Exception as err:  # the compiler's own errors are of many types (BackendCompilerFailed, ...)
                raise compiler_failure(err) from err

        if first:  # the first product of a new compilation must equal the eager one to rounding
            check = tuple(t[0] for t in v) if batched else tuple(v)
            check_compiled(run(check), eager(check), index)
        return run


class TangentPass:
    """``v ↦ H v`` at fixed parameters: the tangent part of ``jvp(grad f)``, traced once (``graph``).

    ``zeros`` are the tangents of further primals (a floating target), appended to every call.
    """

    def __init__(self, graph: fx.GraphModule, zeros: Tensors):
        self.graph, self.zeros = graph, tuple(zeros)

    def __call__(self, v: Tensors) -> Tensors:
        return tuple(self.graph(*v, *self.zeros))


def _linearized_gradient(f: Loss, params: Tensors, target: Any) -> TangentPass:
    """The linearisation of ``grad f`` at ``params`` (as :func:`torch.func.linearize`, keeping its graph).

    The tangent pass of ``jvp(grad f)`` is traced by ``make_fx`` and every value that does
    not depend on the tangent is folded into a constant. A floating target is traced as a
    primal with a zero tangent (tracing the backward pass with it as a plain constant crashes
    torch 2.13).
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
        graph = const_fold.split_const_subgraphs(traced)
        graph.run_folding()
    return TangentPass(graph, tuple(torch.zeros_like(t) for t in extra))


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
