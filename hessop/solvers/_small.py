"""Small dense eigenproblems on the host, run on one BLAS thread.

The Krylov solvers diagonalise their projected matrix (order ``ncv``, tens) after
every product. numpy's OpenBLAS parallelises ``eigh`` from about order 32 on
(``ncv = 41`` for ``k = 20``): its worker threads wake for microseconds of work and
then keep spinning, waiting for more, on the cores the framework's own threads
need for the next product. On 2 cores that made each step of ``eigsh(H, k=20)``
cost 2.4 times the product (docs/performance.md, "Solvers"). Matrices this small
gain nothing from threads, so the call runs on one, through ``threadpoolctl``.
"""

from __future__ import annotations

import numpy as np

_controller = None  # a threadpoolctl.ThreadpoolController, built at the first call (about 1 ms)


def _one_blas_thread():
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


def eigh(H: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``numpy.linalg.eigh`` of a small symmetric host matrix, on one BLAS thread."""
    with _one_blas_thread():
        return np.linalg.eigh(H)
