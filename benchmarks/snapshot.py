"""The cost of the model snapshot that kept products check once per product, against the product itself.

    python benchmarks/snapshot.py          # digits MLP 64-32-10, all 1,797 digits as one batch, one thread

Every product over kept first-order graphs or linearisations first asks whether the model changed
(``hessop.backends.torch.functional.Snapshot.unchanged``: its objects, modes, data pointers, versions
and a copy of its values compared with ``torch.equal``). Medians of 2,000 checks and of 500 products
(``H.apply(v)`` over the kept graph, the check included), three rounds.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from speed import digits_mlp  # noqa: E402
from torch import nn  # noqa: E402

import hessop  # noqa: E402
from hessop.backends.torch.functional import Snapshot  # noqa: E402


def _median(fn: Callable[[], object], calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    model, batch = digits_mlp()
    H = hessop.hessian(model, nn.CrossEntropyLoss(), batch)
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(0))
    H.apply(v)  # keeps the graph and takes the snapshot
    snapshot = Snapshot(model)
    print("| round | snapshot check | product H.apply(v) | check / product |\n|---:|---:|---:|---:|")
    for round_ in range(3):
        check, product = _median(snapshot.unchanged, 2000), _median(lambda: H.apply(v), 500)
        print(f"| {round_ + 1} | {check * 1e6:.1f} µs | {product * 1e3:.3f} ms | {check / product:.2%} |")


if __name__ == "__main__":
    main()
