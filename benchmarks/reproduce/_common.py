"""Small helpers shared by the reproduction scripts."""

from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMG = os.path.join(ROOT, "docs", "img")


def figure_path(name: str) -> str:
    """``docs/img/repro_<name>.png`` (absolute), creating the folder.

    ``$HESSOP_BENCH_FIGURES`` names another folder: runs that do not write the docs (``--quick``,
    ``--no-write``) put their figures there, so they never overwrite the published ones.
    """
    folder = os.environ.get("HESSOP_BENCH_FIGURES", IMG)
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"repro_{name}.png")


def pyplot():
    """matplotlib's pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def rel(path: str) -> str:
    """``path`` relative to ``docs/`` (for links from docs/reproductions.md)."""
    return os.path.relpath(path, os.path.join(ROOT, "docs"))
