"""Which Hessian-vector product strategy ``hvp="auto"`` uses: one choice for vectors, one for blocks.

Each choice is made once per operator, at the first product of its kind, and
holds for every later one (a block's choice for blocks of every width):

* a vector whose batch keeps its first-order graph takes ``"double-backward"``
  without timing: its product is one backward pass over the kept graph, and
  every other strategy redoes the forward pass and the gradient first;
* otherwise the exact strategies that apply are timed once on the first batch,
  one warm-up run and one timed run each (for a block with a kept graph only
  the two that use it: the column loop and ``is_grads_batched``). A strategy
  that fails on the model (an op without a ``vmap`` rule, a forward-mode rule,
  or a second derivative) is skipped. When none runs, the finite difference of
  gradients is used, with a warning that says what each exact strategy met.
  On a GPU the timed run also records the peak of allocated memory, and among
  the strategies within 10% of the fastest the leanest is taken: on GPT-2 small
  forward over reverse timed within noise of double backward but peaked at
  5.5 GiB against 2.4 GiB (docs/performance.md). On the CPU, where the
  allocator keeps no such count, the fastest is taken.

:func:`hessian` runs one batch's Hessian product by the strategy chosen for its
kind (the user's ``hvp``, the compiled product, or ``"auto"``'s choice), over
the batch's kept first-order graph where one is kept (:mod:`.graphs`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from .compiled import CompiledProduct
from .data import arguments, target_of
from .hvp import STRATEGIES, FirstOrderGraph, Tensors

if TYPE_CHECKING:
    from .backend import TorchBackend



def hessian(backend: TorchBackend, index: int, x: Any, y: Any, vs: Tensors, batched: bool,
            fresh: bool = False) -> Tensors:
    """Batch ``index``'s Hessian product by the strategy for vectors or blocks, chosen at the first of its kind."""
    key = "block" if batched else "vector"
    name = backend.chosen.get(key) or _choose(backend, key, index, x, y, vs, batched)
    return run(backend, name, index, x, y, vs, batched, fresh)


def run(backend: TorchBackend, name: str, index: int, x: Any, y: Any, vs: Tensors, batched: bool,
        fresh: bool = False) -> Tensors:
    """Batch ``index``'s product by strategy ``name``; ``fresh``: recomputed, no kept graph or linearisation."""
    if name == "compiled":
        return _run_compiled(backend, index, x, y, vs, batched, fresh)
    if name == "linearize":  # the first product's check compares with a plain forward-over-reverse product
        _, _, f = backend._closures(x, y)
        if fresh:
            return STRATEGIES["forward-over-reverse"](f, backend._current(), target_of(x, y), vs, batched)
        return backend._linearized.product(index, f, tuple(backend._current()), target_of(x, y), vs, batched,
                                           keep=backend.batches.is_list)
    graph = graph_of(backend, index, x, y) if name.startswith("double-backward") and not fresh else None
    if graph is not None:
        return graph.hvp_loop(vs) if batched and name == "double-backward" else graph.hvp(vs, batched=batched)
    _, _, f = backend._closures(x, y)
    product = backend._finite_difference if name == "finite-difference" else STRATEGIES[name]
    return product(f, backend._current(), target_of(x, y), vs, batched)


def _run_compiled(backend: TorchBackend, index: int, x: Any, y: Any, vs: Tensors, batched: bool,
                  fresh: bool) -> Tensors:
    """Batch ``index``'s product through ``torch.compile``; ``fresh`` (the first product): checked against eager.

    With kept linearisations (list data, model in eval mode, within the memory budget) the compiled
    function is the tangent pass of the linearised gradient (:mod:`.linearized`); otherwise the whole
    forward-over-reverse product (:mod:`.compiled`)."""
    if backend._linearized.kept(backend.batches.is_list):  # kept linearisations: compile the tangent pass
        _, _, f = backend._closures(x, y)
        if fresh:  # the repeatability check's reference: an eager product on a fresh pass
            return STRATEGIES["forward-over-reverse"](f, backend._current(), target_of(x, y), vs, batched)
        out = backend._linearized.product(index, f, tuple(backend._current()), target_of(x, y), vs, batched,
                                          keep=True, compile=True)
        if out is not None:
            return out  # else this batch's linearisation is beyond the memory budget: compile the whole product
    first = backend._compiled is None
    if first:
        backend._compiled = CompiledProduct(backend.model, backend.param_names, backend.loss_fn)
    args, kwargs = arguments(x)
    return backend._compiled.run(tuple(backend._current()), vs, backend._fixed(), args, kwargs, target_of(x, y),
                                 batched, check=index if fresh or first else None)


def _choose(backend: TorchBackend, key: str, index: int, x: Any, y: Any, vs: Tensors, batched: bool) -> str:
    """The strategy for vectors or for blocks: the user's, the compiled product, or ``auto``'s choice."""
    if backend.compile:
        backend.chosen[key] = "compiled"
    elif backend.hvp != "auto":
        backend.chosen[key] = backend.hvp
    else:
        kept = graph_of(backend, index, x, y) is not None and index in backend._graphs.graphs
        runner = lambda name: run(backend, name, index, x, y, vs, batched)  # noqa: E731
        backend.chosen[key] = choose(runner, batched, kept, backend.device)
        if not any(n.startswith("double-backward") for n in backend.chosen.values()):
            backend._graphs.clear()  # graphs the timing kept that no chosen strategy reads: free their memory
    return backend.chosen[key]


def graph_of(backend: TorchBackend, index: int, x: Any, y: Any) -> FirstOrderGraph | None:
    """Batch ``index``'s first-order graph from the backend's cache (:mod:`.graphs`); ``None``: recompute."""
    if not backend.batches.is_list:
        return None
    state = backend._fixed()
    build = lambda: FirstOrderGraph(backend._closures(x, y, state)[2], backend._current(), target_of(x, y))  # noqa: E731
    return backend._graphs.get(index, build, state.values())


def choose(run: Callable[[str], object], batched: bool, kept: bool, device: torch.device) -> str:
    """The strategy for vectors (``batched=False``) or blocks, ``kept``: the first batch's graph is kept."""
    if kept and not batched:
        return "double-backward"
    names = [n for n in STRATEGIES if batched or not n.endswith("vmap")]  # the same for one vector
    if kept:
        names = [n for n in names if n.startswith("double-backward")]
    return fastest(run, names, device)


NEAR_TIE = 1.1
"""Strategies within this factor of the fastest time count as tied; the leanest of them is chosen."""


def fastest(run: Callable[[str], object], names: Iterable[str], device: torch.device) -> str:
    """The name among ``names`` whose second ``run(name)`` takes least time, or the leanest near tie (module
    docstring)."""
    times: dict[str, float] = {}
    peaks: dict[str, int] = {}
    errors: dict[str, Exception] = {}
    for name in names:
        try:
            run(name)
            _synchronize(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            run(name)
            _synchronize(device)
            times[name] = time.perf_counter() - start
            if device.type == "cuda":
                peaks[name] = torch.cuda.max_memory_allocated(device)
        except (RuntimeError, NotImplementedError) as err:  # e.g. an op without a vmap or forward-mode rule
            errors[name] = err
    if times:
        return pick(times, peaks)
    why = "; ".join(f"{n}: {str(e).splitlines()[0][:160]}" for n, e in errors.items())
    warnings.warn(
        f"no exact Hessian-vector product runs on this model ({why}); using hvp='finite-difference', a central "
        "difference of two gradient passes, accurate to about eps^(2/3) relative (docs/transformers.md)",
        RuntimeWarning,
        stacklevel=4,
    )
    return "finite-difference"


def pick(times: dict[str, float], peaks: dict[str, int]) -> str:
    """The fastest strategy, or, where peak memory was measured, the leanest of those within :data:`NEAR_TIE`."""
    best = min(times.values())
    tied = [n for n, t in times.items() if t <= NEAR_TIE * best]
    if all(n in peaks for n in tied):
        return min(tied, key=lambda n: (peaks[n], times[n]))
    return min(times, key=times.__getitem__)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
