"""Shared test configuration: float64 by default for ground-truth comparisons, Agg plotting."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
