"""Reproductions of the source papers' results: one module per paper, each with ``run(quick) -> Verdict``.

Every module writes a figure to ``docs/img/repro_<name>.png`` and returns a short
markdown verdict; ``python -m benchmarks reproduce`` collects them into
``docs/reproductions.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NAMES = ("ghorbani", "sketching", "pyhessian", "layerwise")


@dataclass
class Verdict:
    """What a reproduction found: a title, the markdown body, the figures it wrote, its wall time."""

    title: str
    body: str
    figures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    command: str = ""
    load: float = float("nan")  # the machine's 1-minute load average when it started
