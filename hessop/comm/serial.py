"""The communicator of one process."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._array import Array
from .base import Communicator


class SerialComm(Communicator):
    """A communicator of one process: every reduction is the identity and costs nothing."""

    rank = 0
    size = 1

    def allreduce(self, x: Array) -> Array:
        """Sum of ``x`` over all processes (here: ``x`` itself)."""
        return x

    def allreduce_scalar(self, value: float) -> float:
        """Sum of a float over all processes."""
        return float(value)

    def allreduce_max(self, x: np.ndarray) -> np.ndarray:
        """Entry-wise maximum of a host array over all processes."""
        return np.asarray(x)

    def broadcast(self, obj: Any, root: int = 0) -> Any:
        """``obj`` as held by rank ``root``."""
        return obj

    def barrier(self) -> None:
        """Wait for every process (nothing to wait for here)."""

    def abort(self, code: int = 1) -> None:
        """End the program with exit status ``code``."""
        raise SystemExit(code)

    def __repr__(self) -> str:
        return "SerialComm()"
