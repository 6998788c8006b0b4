"""Which Hessian-vector product strategy ``hvp="auto"`` uses: the fastest exact one that runs on the model.

Each exact strategy runs twice on the first batch, exactly as a real product
would (with the batch's kept first-order graph when it fits the budget); the
second run is timed. A strategy that fails on the model (an op without a
``vmap`` rule, a forward-mode rule, or a second derivative) is skipped. When
none runs, the finite difference of gradients is used, with a warning that
says what each exact strategy met.
"""

from __future__ import annotations

import time
import warnings
from typing import Callable, Iterable

import torch


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
