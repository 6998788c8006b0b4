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
"""

from __future__ import annotations

import time
import warnings
from typing import Callable, Iterable

import torch

from .hvp import STRATEGIES


def choose(run: Callable[[str], object], batched: bool, kept: bool, device: torch.device) -> str:
    """The strategy for vectors (``batched=False``) or blocks, ``kept``: the first batch's graph is kept."""
    if kept and not batched:
        return "double-backward"
    names = [n for n in STRATEGIES if batched or not n.endswith("vmap")]  # the same for one vector
    if kept:
        names = [n for n in names if n.startswith("double-backward")]
    return fastest(run, names, device)


def fastest(run: Callable[[str], object], names: Iterable[str], device: torch.device) -> str:
    """The name among ``names`` whose second ``run(name)`` takes least time (module docstring)."""
    times: dict[str, float] = {}
    errors: dict[str, Exception] = {}
    for name in names:
        try:
            run(name)
            _synchronize(device)
            start = time.perf_counter()
            run(name)
            _synchronize(device)
            times[name] = time.perf_counter() - start
        except (RuntimeError, NotImplementedError) as err:  # e.g. an op without a vmap or forward-mode rule
            errors[name] = err
    if times:
        return min(times, key=times.__getitem__)
    why = "; ".join(f"{n}: {str(e).splitlines()[0][:160]}" for n, e in errors.items())
    warnings.warn(
        f"no exact Hessian-vector product runs on this model ({why}); using hvp='finite-difference', a central "
        "difference of two gradient passes, accurate to about eps^(2/3) relative (docs/transformers.md)",
        RuntimeWarning,
        stacklevel=4,
    )
    return "finite-difference"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
