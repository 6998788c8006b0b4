"""Progress bars that show the work that means something, in the style of eigsh's.

eigsh counts converged pairs out of ``k`` and shows the products spent and the worst residual
against ``tol`` (:meth:`hessop.solvers._ritz.Control.report`). The stochastic estimators do the
same with what they have: probes (or products) done out of those *planned* (never a budget that
an adaptive run may stop far short of), and, for an adaptive run, the standard error relative to
the estimate against ``rtol``.
"""

from __future__ import annotations

import dataclasses

from ._linear_map import LinearMap

__all__ = ["Progress"]


class Progress:
    """A tqdm bar of ``done / planned`` with a status line; every method is a no-op when hidden."""

    def __init__(self, show: bool, desc: str, unit: str, planned: int = 0):
        self.bar = None
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=int(planned), desc=desc, unit=unit)

    def plan(self, planned: int) -> None:
        """The work planned so far (an adaptive run raises it round by round)."""
        if self.bar is not None and int(planned) != self.bar.total:
            self.bar.total = int(planned)
            self.bar.refresh()

    def advance(self, n: int = 1) -> None:
        if self.bar is not None and n:
            self.bar.update(int(n))

    def error(self, estimate: float, stderr: float, rtol: float | None, products: int) -> None:
        """Show the products spent and the standard error relative to the estimate (against ``rtol``)."""
        if self.bar is None:
            return
        rel = stderr / abs(estimate) if estimate else float("inf")
        self.bar.set_postfix_str(f"{products} products, stderr {rel:.1e}" + (f" / {rtol:.0e}" if rtol else "")
                                 + " of |estimate|")

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def ticking(self, lm: LinearMap) -> LinearMap:
        """A copy of ``lm`` (same counter value) whose products advance the bar by their columns.

        For work done inside one call (a Lanczos run, a sketch in blocks), so the bar moves with
        every product instead of jumping at the end.
        """
        if self.bar is None:
            return lm
        product = lm.product

        def counted(V):
            out = product(V)
            self.advance(1 if V.ndim == 1 else int(V.shape[1]))
            return out

        return dataclasses.replace(lm, product=counted)

    def finish(self) -> None:
        """The run ended normally: whatever was done is the whole of it."""
        if self.bar is not None:
            self.bar.total = self.bar.n
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
