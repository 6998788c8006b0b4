"""Which Hessian-vector product strategy ``hvp="auto"`` uses: one choice for vectors, one for blocks.

Each choice is made once per operator, at the first product of its kind, and
holds for every later one (a block's choice for blocks of every width;
:class:`.products.Products` keeps it):

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
  the strategies within 10% of the fastest the leanest is taken (why, measured
  on GPT-2 small: ``docs/performance.md``); on the CPU, where the allocator keeps
  no such count, the fastest.

The functions here take a ``run(name)`` that multiplies by strategy ``name``;
they hold no state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch

from ..._warnings import warn
from .hvp import STRATEGIES


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
    warn(
        f"no exact Hessian-vector product runs on this model ({why}); using hvp='finite-difference', a central "
        "difference of two gradient passes, accurate to about eps^(2/3) relative (docs/transformers.md)",
        RuntimeWarning,
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
