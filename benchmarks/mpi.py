"""MPI benchmark: data-parallel Hessian-vector products and the all-reduce that joins them.

Run ``python benchmarks/mpi.py`` (it launches ``mpiexec`` itself) and it prints
three markdown tables:

1. **Speed-up.** One full-data HVP of an MLP (~300k parameters, 4096 samples)
   on 1 rank x 1 thread (the baseline), 1 rank x 2 threads and 2 ranks x 1
   thread (the data split in two shards), as time ratios against the baseline.
   The goal is a 2-rank speed-up of at least 1.7x on a 2-core machine.
2. **All-reduce.** ``MPIComm.allreduce`` of ``n`` float32 values (a torch tensor,
   as the operator sends them) on 2 ranks, with the fitted cost ``alpha + beta n``.
3. **Cost model.** Per-rank HVP time of MLPs of several sizes on several numbers
   of samples per rank, against the all-reduce of their ``n`` parameters.

Times are the minimum over repetitions (the least disturbed run) on this
machine; ``--quick`` shrinks everything for a smoke test. Workers are this same
file run with ``--worker``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# -- workers (run under mpiexec) ------------------------------------------------------------------
def _mlp(width: int, depth: int = 2, inputs: int = 64, classes: int = 10):
    import torch
    from torch import nn

    torch.manual_seed(0)
    widths = [inputs] + [width] * depth
    layers: list = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], classes))


def _batches(samples: int, batch: int, inputs: int = 64, classes: int = 10):
    import torch

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(samples, inputs, generator=gen)
    y = torch.randint(0, classes, (samples,), generator=gen)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, samples, batch)]


def _best(fn, reps: int, comm) -> float:
    """Minimum wall time of ``fn()`` over ``reps`` calls, every rank starting together."""
    times = []
    for _ in range(reps):
        comm.barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def worker_hvp(args, comm) -> dict:
    """Full-data HVP time with the data sharded over the ranks, and its compute / all-reduce split.

    Besides wall-clock times, the local product's CPU time (``time.process_time``) is
    recorded: other processes on the machine do not inflate it, so it isolates the work
    each rank does from the contention it suffers.
    """
    import numpy as np
    import torch
    from torch import nn

    from hessop.distributed import shard
    from hessop.factory import hessian

    model = _mlp(args.width)
    data = shard(_batches(args.samples, args.batch), comm, how="contiguous")
    H = hessian(model, nn.CrossEntropyLoss(), data, comm=comm)
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(2))
    H.apply(v)  # warm-up (and the choice of HVP strategy)
    local = H.backend.hvp_sum(v)
    cpu = []
    for _ in range(args.reps):
        t0 = time.process_time()
        H.backend.hvp_sum(v)
        cpu.append(time.process_time() - t0)
    return {
        "n": H.shape[0],
        "hvp": _best(lambda: H.apply(v), args.reps, comm),
        "compute": _best(lambda: H.backend.hvp_sum(v), args.reps, comm),
        "cpu": float(comm.allreduce_max(np.array([min(cpu)]))[0]),  # the slowest rank's CPU seconds
        "allreduce": _best(lambda: comm.allreduce(local), args.reps, comm) if comm.size > 1 else 0.0,
    }


def worker_allreduce(args, comm) -> dict:
    """Time of ``comm.allreduce`` of ``n`` float32 entries (torch CPU tensor), for each ``n``."""
    import torch

    out = {}
    for n in args.sizes:
        x = torch.ones(n)
        comm.allreduce(x)
        reps = max(5, min(200, int(2e7 // n)))
        out[str(n)] = _best(lambda: comm.allreduce(x), reps, comm)
    return out


def worker_sizes(args, comm) -> dict:
    """Per-rank HVP sum (no communication) for MLP widths x samples per rank."""
    import torch
    from torch import nn

    from hessop.factory import hessian

    out = []
    for width in args.widths:
        for samples in args.per_rank:
            model = _mlp(width)
            H = hessian(model, nn.CrossEntropyLoss(), _batches(samples, min(samples, 512)))
            v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(2))
            H.backend.hvp_sum(v)
            reps = 3 if H.shape[0] * samples > 1e8 else 7
            out.append({"width": width, "samples": samples, "n": H.shape[0],
                        "compute": _best(lambda: H.backend.hvp_sum(v), reps, comm)})
    return {"rows": out}


WORKERS = {"hvp": worker_hvp, "allreduce": worker_allreduce, "sizes": worker_sizes}


def run_worker(args) -> None:
    import torch

    from hessop.distributed import abort_on_error, world

    torch.set_num_threads(args.threads)
    comm = world()
    with abort_on_error(comm):
        result = WORKERS[args.worker](args, comm)
        if comm.rank == 0:
            print("RESULT " + json.dumps(result), flush=True)


# -- launcher -------------------------------------------------------------------------------------
def launch(ranks: int, threads: int, worker: str, *extra: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = ["mpiexec", "-n", str(ranks), sys.executable, __file__, "--worker", worker,
           "--threads", str(threads), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def fit_line(xs, ys) -> tuple[float, float]:
    """Least-squares ``y = a + b x`` (intercept, slope), weighted towards relative error."""
    import numpy as np

    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    w = 1.0 / ys
    A = np.stack([np.ones_like(xs), xs], axis=1) * w[:, None]
    a, b = np.linalg.lstsq(A, ys * w, rcond=None)[0]
    return float(a), float(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, default=512, help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=4096, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=256, help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=7, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="*", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--widths", type=int, nargs="*", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--per-rank", type=int, nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_worker(args)

    q = args.quick
    load_before = os.getloadavg()[0]
    hvp = ["--width", "64" if q else "512", "--samples", "512" if q else "4096", "--reps", "2" if q else "5"]
    base = launch(1, 1, "hvp", *hvp)
    threads = launch(1, 2, "hvp", *hvp)
    two = launch(2, 1, "hvp", *hvp)
    print(f"### Full-data HVP, MLP n = {base['n']:,} parameters, {hvp[3]} samples\n")
    print("| configuration | HVP (wall) | local product (wall) | local product (CPU) | all-reduce | speed-up (wall) |")
    print("|---|---|---|---|---|---|")
    for name, r in [("1 rank x 1 thread", base), ("1 rank x 2 threads", threads), ("2 ranks x 1 thread", two)]:
        ar = f"{r['allreduce'] * 1e3:.2f} ms" if r["allreduce"] else "-"
        cpu = f"{r['cpu'] * 1e3:.1f} ms" + (" (both threads)" if "2 threads" in name else "")
        print(f"| {name} | {r['hvp'] * 1e3:.1f} ms | {r['compute'] * 1e3:.1f} ms | {cpu} | {ar} | "
              f"{base['hvp'] / r['hvp']:.2f}x |")
    speedup = base["hvp"] / two["hvp"]
    work = base["cpu"] / (two["cpu"] + two["allreduce"])
    verdict = "met" if speedup >= 1.7 else "NOT met"
    print(f"\n2-rank speed-up {speedup:.2f}x in wall-clock time: goal of 1.7x {verdict}. "
          f"From CPU time (the slowest rank's local product plus the all-reduce), {work:.2f}x.\n")

    sizes = [10**k for k in range(3, 6 if q else 8)]
    widths = [16, 64] if q else [16, 64, 256, 1024]
    per_rank = [32, 256] if q else [32, 256, 2048]
    grid = launch(1, 1, "sizes", "--widths", *map(str, widths), "--per-rank", *map(str, per_rank))["rows"]
    model_sizes = sorted({row["n"] for row in grid})
    ar = launch(2, 1, "allreduce", "--sizes", *map(str, sorted(set(sizes) | set(model_sizes))))
    alpha, beta = fit_line([int(k) for k in ar], list(ar.values()))
    print("### All-reduce of n float32 (torch CPU tensor), 2 ranks\n")
    print("| n | time | GB/s (4n bytes / time) |")
    print("|---|---|---|")
    for n in sizes:
        t = ar[str(n)]
        print(f"| {n:,} | {t * 1e6:.1f} us | {4 * n / t / 1e9:.2f} |")
    print(f"\nFit: alpha = {alpha * 1e6:.1f} us, beta = {beta * 1e9:.2f} ns per float.\n")

    print("### Per-rank HVP vs all-reduce of its n parameters (1 thread)\n")
    print("| width | n | samples per rank | per-rank HVP | all-reduce | all-reduce / HVP |")
    print("|---|---|---|---|---|---|")
    costs = []
    for row in grid:
        t_ar = ar[str(row["n"])]
        costs.append(row["compute"] / (row["n"] * row["samples"]))
        print(f"| {row['width']} | {row['n']:,} | {row['samples']} | {row['compute'] * 1e3:.2f} ms | "
              f"{t_ar * 1e3:.3f} ms | {t_ar / row['compute']:.3f} |")
    big = [c for c, row in zip(costs, grid) if row["n"] * row["samples"] >= 1e7] or costs
    c = sorted(big)[len(big) // 2]
    print(f"\nHVP cost c = {c * 1e9:.2f} ns per (parameter x sample) (median of the large rows); "
          f"all-reduce beats the HVP below s* = beta / c = {beta / c:.1f} samples per rank.")
    print(f"\n(1-minute load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, "
          f"on {os.cpu_count()} cores.)")


if __name__ == "__main__":
    main()
