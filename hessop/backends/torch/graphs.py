"""First-order graphs kept across products: which batches keep one, and the products over them.

A double-backward product of one batch costs a forward pass and a backward pass
with ``create_graph=True`` (the first-order graph, :class:`.hvp.FirstOrderGraph`),
then one more backward pass. Keeping each batch's graph makes every later
product cost that last pass only, at the price of holding the batch's saved
activations.

* :class:`GraphCache` keeps graphs, batch by batch, while their total stays
  under a budget in bytes; the batches beyond it are recomputed at every product
  as without a cache. Its owner (:class:`.products.Products`) drops them all
  when the model changes (:class:`.functional.Snapshot`). The default budget is
  a quarter of the memory left free once the first graph is built, less what a
  product needs beside the kept graphs (:func:`reserve`: four parameter-sized
  buffers and about one graph's size again for the second backward pass), and
  at most 2 GiB. A graph's size is the bytes of the distinct tensor storages its
  nodes saved (read from the nodes' ``_saved_*`` attributes after it is built)
  plus its gradient, the model's own parameters and buffers excluded: an
  estimate, not an allocator measurement. It is not recorded with
  ``saved_tensors_hooks``, under which every later backward pass unpacks each
  saved tensor through a Python call.
* :class:`KeptProducts` is the vector product once every batch's graph is kept
  and the first product has passed its checks: one backward pass per batch, with
  the general path's per-call work taken out (no reading of the model's state to
  key the cache, no attention-kernel context since no forward pass runs, one
  accumulator). The backward pass is handed to the autograd engine directly
  (``torch.autograd.graph._engine_run_backward``, what ``torch.autograd.grad``
  calls after checking its arguments in Python); the arguments are right by
  construction, and where that private function is missing or its signature
  differs, ``torch.autograd.grad`` is used.

Measurements (memory on GPT-2 small, the per-call cost taken out):
``docs/performance.md``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

import torch

from .hvp import FirstOrderGraph

try:
    from torch.autograd.graph import _engine_run_backward
except ImportError:  # pragma: no cover - older or newer torch
    _engine_run_backward = None  # type: ignore[assignment]

DEFAULT_CAP = 2 << 30  # bytes: the default budget is at most this (module docstring)
WORKING_BUFFERS = 4  # parameter-sized buffers a product allocates beside the graphs (module docstring)


class GraphCache:
    """First-order graphs by batch index, kept while their total size fits ``budget`` bytes.

    Parameters
    ----------
    budget : int or None
        The bytes the kept graphs may hold; ``None`` for :func:`default_budget`
        of the device of the first graph built; ``0`` keeps nothing.
    """

    def __init__(self, budget: int | None):
        self.budget = budget
        self.clear()

    def clear(self) -> None:
        """Drop every graph (the model changed, :mod:`.functional`)."""
        self.graphs: dict[int, FirstOrderGraph] = {}
        self.too_big: set[int] = set()
        self.used = 0

    def get(
        self, index: int, build: Callable[[], FirstOrderGraph], exclude: Iterable[torch.Tensor]
    ) -> FirstOrderGraph | None:
        """Batch ``index``'s graph: the kept one, or a new one from ``build`` (kept if it fits).

        ``None`` when the budget is spent or the graph was found too big before:
        the caller then computes the product without a kept graph.
        """
        graph = self.graphs.get(index)
        if graph is not None or self.budget == 0 or index in self.too_big:
            return graph
        graph, size = _measured(build, exclude)
        if self.budget is None:
            self.budget = default_budget(graph.params[0].device, reserve(graph, size))
        if self.used + size <= self.budget:
            self.graphs[index] = graph
            self.used += size
        else:
            self.too_big.add(index)
        return graph


def budget_of(graph_cache: bool | str, graph_cache_bytes: int | None) -> int | None:
    """The budget in bytes for the backend's ``graph_cache`` and ``graph_cache_bytes`` options (None: default)."""
    if graph_cache not in ("auto", True, False) or not (graph_cache_bytes is None or graph_cache_bytes >= 0):
        raise ValueError(
            "graph_cache must be 'auto', True or False and graph_cache_bytes None or a number of bytes >= 0; "
            f"got {graph_cache!r} and {graph_cache_bytes!r}"
        )
    if graph_cache is False:
        return 0
    if graph_cache_bytes is not None:
        return int(graph_cache_bytes)
    return None if graph_cache == "auto" else 1 << 62


def _measured(build: Callable[[], FirstOrderGraph], exclude: Iterable[torch.Tensor]) -> tuple[FirstOrderGraph, int]:
    """The graph ``build`` returns and the bytes of the storages its nodes saved, those of ``exclude`` left out."""
    graph = build()
    sizes: dict[int, int] = {}

    def add(t: object) -> None:
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            sizes[storage.data_ptr()] = storage.nbytes()
        elif isinstance(t, (tuple, list)):
            for u in t:
                add(u)

    roots = [graph.loss, *graph.grads]
    stack = [t.grad_fn for t in roots if t.grad_fn is not None]
    seen: set = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for attr in dir(node):  # built-in nodes' _saved_<name>; custom Functions' saved_tensors
            if attr.startswith("_saved_") or attr == "saved_tensors":
                try:
                    add(getattr(node, attr))
                except (RuntimeError, AttributeError):  # freed or not readable: holds nothing more
                    pass
        stack.extend(fn for fn, _ in node.next_functions)
    for t in [*exclude, *graph.params]:
        sizes.pop(t.untyped_storage().data_ptr(), None)
    return graph, sum(sizes.values()) + sum(g.numel() * g.element_size() for g in graph.grads)


def reserve(graph: FirstOrderGraph, size: int) -> int:
    """Bytes a product needs beside the kept graphs: four parameter-sized buffers and one graph's size again."""
    param_bytes = sum(p.numel() * p.element_size() for p in graph.params)
    return WORKING_BUFFERS * param_bytes + size


def default_budget(device: torch.device, reserved: int = 0) -> int:
    """The smaller of 2 GiB and a quarter of the device's free memory (the host's, for the CPU) less ``reserved``."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = _host_available()
    return min(DEFAULT_CAP, max(free - reserved, 0) // 4)


def _host_available() -> int:
    """The host's available memory in bytes (``MemAvailable`` on Linux, free pages elsewhere, else 8 GiB)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


class KeptProducts:
    """``Σ_b w_b H_b V`` over kept first-order graphs (module docstring).

    Parameters
    ----------
    graphs : each batch's kept graph, with its weight
    sizes, shapes : the flat vector's split into parameter tensors
    same_dtype : whether every differentiated parameter has the vectors' dtype (no casts)
    """

    def __init__(self, graphs: Sequence[tuple[FirstOrderGraph, float]], sizes: list[int], shapes: list[tuple],
                 same_dtype: bool):
        self.graphs = list(graphs)
        self.sizes = sizes
        self.shapes = shapes
        self.same_dtype = same_dtype
        self.layout = []  # (shape, contiguous strides, offset) of each parameter in the flat vector
        offset = 0
        for size, shape in zip(sizes, shapes):
            strides: list[int] = []
            step = 1
            for d in reversed(shape):
                strides.insert(0, step)
                step *= d
            self.layout.append((tuple(shape), tuple(strides), offset))
            offset += size

    def vector(self, v: torch.Tensor) -> torch.Tensor:
        """``Σ_b w_b H_b v`` for a vector ``v`` of the parameters' dtype."""
        if v.stride(0) == 1 and type(v) is torch.Tensor:  # parameter-shaped views without splitting
            base = v.storage_offset()
            vs = tuple(v.as_strided(shape, stride, base + offset) for shape, stride, offset in self.layout)
        else:
            vs = tuple(p.reshape(s) for p, s in zip(torch.split_with_sizes(v, self.sizes), self.shapes))
        if len(self.graphs) == 1:
            graph, weight = self.graphs[0]
            out = torch.cat([p.reshape(-1) for p in backward(graph, vs)])
            return out.mul_(weight) if weight != 1.0 else out
        acc = torch.zeros_like(v)
        views = [p.view(*s) for p, s in zip(torch.split_with_sizes(acc, self.sizes), self.shapes)]
        for graph, weight in self.graphs:
            for view, part in zip(views, backward(graph, vs)):
                view.add_(part, alpha=weight)
        return acc


_direct = _engine_run_backward is not None


def backward(graph: FirstOrderGraph, v: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """``graph.hvp(v)`` for one vector of plain tensors (the caller's check), through the autograd engine
    directly (module docstring)."""
    global _direct
    if not (_direct and graph.live):
        return graph.hvp(v)
    grads = tuple(graph.grads)
    try:
        out = _engine_run_backward(grads, tuple(v[i] for i in graph.live), True, False, graph.params, True,
                                   accumulate_grad=False)
    except TypeError:  # another signature in this torch: the public path from now on
        _direct = False
        return graph.hvp(v)
    return tuple(torch.zeros_like(vi) if o is None else o for o, vi in zip(out, v))
