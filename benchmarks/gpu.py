"""hessop on one GPU in at most 8 minutes: the GPU tests, CuPy, eager and compiled products, top-20 and trace.

    python benchmarks/gpu.py                        # on a CUDA machine: writes gpu-run/gpu.json and gpu.md
    python benchmarks/gpu.py --out DIR --budget 480
    python benchmarks/gpu.py --dry-run              # the same logic on the CPU with tiny models (seconds)

Sections, in this order, each recorded in the JSON with its seconds, its rows, and an error or the reason it
was skipped (a failing section never stops the others):

tests
    ``python -m pytest -m gpu -p no:xdist -q tests`` (the GPU-marked tests), its exit code and summary line.
cupy
    ``cupyx.scipy.sparse.linalg.eigsh(hessop.to_cupy(H), k=5)`` on the small ResNet's Hessian against
    ``hessop.eigsh(H, k=5)`` (eigenvalues and seconds).
spectrum
    on the ResNet-18-size network: top-20 eigenvalues by ``hessop.eigsh`` (thick restart) against
    PyHessian's algorithm, deflated power iteration (``hessop.eigsh(method="power")`` with PyHessian's
    relative-change stop ``1e-3``), and the trace by ``hessop.trace`` (XTrace) against Hutchinson with
    the same budget (PyHessian's estimator): products, seconds, agreement.
products
    on a ResNet-18-size network (the CIFAR ResNet at width 104: about 11.4 M parameters, as ResNet-18's
    11.7 M) and on GPT-2 small (``GPTConfig.gpt2_small()``, 124 M, 8 sequences of 128 tokens): a gradient
    pass, ``H.apply(v)`` eager (``hvp="auto"``, its choice recorded), linearised (``hvp="linearize"``) and
    compiled (``compile=True``: the data is a list and the models are in eval mode, so the linearised
    tangent pass is what is compiled), each as a multiple of the gradient; the first linearised and compiled
    products (tracing, compilation and the eager check) reported apart.

Each section starts only if the time left in ``--budget`` (seconds, default 480) is above its estimate,
and each model's linearisation or compilation only if the time it may need is left (``NEEDS``);
otherwise it is recorded as skipped. ``--dry-run`` runs every section on the CPU with tiny models and
budgets (the GPU tests and CuPy are recorded as skipped there; the products of a small CNN stand in for the
ResNet's) so that the logic can be tested anywhere.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

ESTIMATES = {"tests": 60, "cupy": 20, "spectrum": 90, "products": 60}
"""Seconds each section is expected to need on one H100/H200-class GPU (a guess until the first run)."""
NEEDS = {"linearized": 90, "compiled": {"ResNet": 120, "GPT": 180}}
"""Seconds that must be left to start linearising or compiling a model's product (guesses, as above):
compilation cannot be interrupted, so it starts only where it should end inside the budget."""


class Run:
    """The run's sections, its deadline and its record."""

    def __init__(self, budget: float, dry: bool, device: str):
        self.start = time.perf_counter()
        self.budget = budget
        self.dry = dry
        self.device = device
        self.record: dict[str, Any] = {"device": device, "dry_run": dry, "budget_s": budget, "torch": torch.__version__,
                                       "python": platform.python_version(), "sections": {}}
        if device.startswith("cuda"):
            self.record["gpu"] = torch.cuda.get_device_name(0)

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)

    def section(self, name: str, fn: Callable[[Run], dict], skip: str | None = None) -> None:
        entry: dict[str, Any] = {}
        estimate = 0 if self.dry else ESTIMATES[name]
        if skip is None and self.left() < estimate:
            skip = f"out of time: {self.left():.0f} s left, about {estimate} s needed"
        if skip is not None:
            entry["skipped"] = skip
        else:
            start = time.perf_counter()
            try:
                entry.update(fn(self))
            except Exception as err:  # recorded, and the next section still runs
                entry["error"] = f"{type(err).__name__}: {err}"
                entry["traceback"] = traceback.format_exc(limit=6)
            entry["seconds"] = time.perf_counter() - start
        self.record["sections"][name] = entry
        print(f"[{time.perf_counter() - self.start:6.1f} s] {name}: "
              f"{entry.get('skipped') or entry.get('error') or 'done'}", file=sys.stderr, flush=True)

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()


def timed(run: Run, fn: Callable[[], Any], repeats: int = 3) -> float:
    """Fastest of ``repeats`` calls after one warm-up (one call in a dry run), synchronised."""
    if run.dry:
        repeats = 1
    fn()
    run.sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        run.sync()
        best = min(best, time.perf_counter() - t)
    return best


# -- problems ---------------------------------------------------------------------------------------

def resnet_problem(run: Run, big: bool, traced: bool = False):
    """A CIFAR ResNet with its batch on the run's device: ResNet-18 size when ``big``, else a small one.

    A dry run takes a tiny ResNet, or where the products are traced (``traced``: linearised and
    compiled) a two-convolution CNN with BatchNorm, whose tracing takes a third of the time.
    """
    from hessop.models.resnet import resnet
    from hessop.models.small import SmallCNN, random_batches

    torch.manual_seed(0)
    if run.dry:
        model, batch = (SmallCNN(3, 10) if traced else resnet(8, width=2)), 4
    elif big:
        model, batch = resnet(20, width=104), 128
    else:
        model, batch = resnet(20), 128
    side = 8 if run.dry else 32
    (x, y), = random_batches((3, side, side), [batch], num_classes=10, seed=0)
    return model.to(run.device).eval(), [(x.to(run.device), y.to(run.device))]


def gpt_problem(run: Run):
    """GPT-2 small (a two-layer toy in a dry run) with a batch of random tokens on the run's device."""
    from hessop.models.gpt import GPT, GPTConfig

    config = GPTConfig.char(50, block_size=16, n_layer=1, n_head=2, n_embd=16) if run.dry else GPTConfig.gpt2_small()
    batch, length = (2, 16) if run.dry else (8, 128)
    idx = torch.randint(0, config.vocab_size, (batch, length + 1), generator=torch.Generator().manual_seed(0))
    idx = idx.to(run.device)
    return GPT(config).to(run.device).eval(), [(idx[:, :-1], idx[:, 1:])]


def gradient_pass(model: nn.Module, loss: nn.Module, data: list) -> Callable[[], Any]:
    params = [p for p in model.parameters() if p.requires_grad]

    def go():
        for x, y in data:
            out = model(x)
            torch.autograd.grad(loss(out.reshape(-1, out.shape[-1]), y.reshape(-1)), params)

    return go


# -- sections --------------------------------------------------------------------------------------

def tests(run: Run) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:xdist", "-q", "tests"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(30, run.left() - 240))
    lines = [s for s in out.stdout.strip().splitlines() if s.strip()]
    return {"command": " ".join(cmd[1:]), "returncode": out.returncode, "summary": lines[-1] if lines else ""}


def cupy_section(run: Run) -> dict:
    import cupyx.scipy.sparse.linalg as csl

    import hessop

    model, data = resnet_problem(run, big=False)
    H = hessop.hessian(model, nn.CrossEntropyLoss(), data)
    start = time.perf_counter()
    vals = csl.eigsh(hessop.to_cupy(H), k=5, which="LA", return_eigenvectors=False)
    cupy_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = hessop.eigsh(H, k=5)
    ours_s = time.perf_counter() - start
    top_cupy = sorted((float(v) for v in vals.get()), reverse=True)
    top_ours = [float(v) for v in ours.eigenvalues]
    rel = max(abs(a - b) / abs(b) for a, b in zip(top_cupy, top_ours))
    return {"rows": [{"solver": "cupyx eigsh(to_cupy(H))", "top5": top_cupy, "seconds": cupy_s},
                     {"solver": "hessop.eigsh", "top5": top_ours, "seconds": ours_s, "matvecs": ours.num_matvecs}],
            "max_relative_difference": rel}


def products(run: Run) -> dict:
    import hessop

    rows = []
    resnet_label = "ResNet-18 size (CIFAR ResNet, width 104)"
    for label, make in ((resnet_label, lambda: resnet_problem(run, big=True, traced=True)),
                        ("GPT-2 small", lambda: gpt_problem(run))):
        model, data = make()
        loss = nn.CrossEntropyLoss()
        eager = hessop.hessian(model, loss, data)
        v = torch.randn(eager.shape[0], generator=torch.Generator().manual_seed(0)).to(run.device)
        gradient = timed(run, gradient_pass(model, loss, data))
        eager_s = timed(run, lambda: eager.apply(v))
        row = {"model": label, "n": eager.shape[0], "gradient_s": gradient, "eager_s": eager_s,
               "eager_x": eager_s / gradient, "eager_strategy": eager.backend.chosen.get("vector")}
        if run.left() < NEEDS["linearized"] and not run.dry:
            row["linearized"] = f"skipped: {run.left():.0f} s left"
        else:
            linearized = hessop.hessian(model, loss, data, hvp="linearize")
            start = time.perf_counter()
            linearized.apply(v)
            run.sync()
            row["linearize_s"] = time.perf_counter() - start
            row["linearized_s"] = timed(run, lambda: linearized.apply(v))
            row["linearized_x"] = row["linearized_s"] / gradient
            del linearized
        need = NEEDS["compiled"]["GPT" if label.startswith("GPT") else "ResNet"]
        if run.left() < need and not run.dry:
            row["compiled"] = f"skipped: {run.left():.0f} s left"
        else:
            compiled = hessop.hessian(model, loss, data, compile=True)
            start = time.perf_counter()
            first = compiled.apply(v)
            run.sync()
            row["compile_s"] = time.perf_counter() - start
            reference = eager.apply(v)
            row["compiled_vs_eager_rel"] = float((first - reference).norm() / reference.norm())
            row["compiled_s"] = timed(run, lambda: compiled.apply(v))
            row["compiled_x"] = row["compiled_s"] / gradient
        rows.append(row)
        model = data = eager = compiled = None  # free the device memory before the next model
        if run.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return {"rows": rows}


def spectrum(run: Run) -> dict:
    import hessop

    model, data = resnet_problem(run, big=True)
    H = hessop.hessian(model, nn.CrossEntropyLoss(), data)
    k, budget = (3, 90) if run.dry else (20, 800)
    rows = []
    for label, kwargs in (("hessop thick-restart", {}),
                          ("power iteration (PyHessian's algorithm)", {"method": "power", "tol": 1e-3})):
        start = time.perf_counter()
        res = hessop.eigsh(H, k=k, max_matvecs=budget, **kwargs)
        run.sync()
        rows.append({"task": f"top-{k}", "solver": label, "seconds": time.perf_counter() - start,
                     "matvecs": res.num_matvecs, "converged": int(res.converged.sum()),
                     "eigenvalues": [float(e) for e in res.eigenvalues]})
    trace_budget = 16 if run.dry else 192
    for method in ("xtrace", "hutchinson"):
        start = time.perf_counter()
        res = hessop.trace(H, method=method, max_matvecs=trace_budget)
        run.sync()
        rows.append({"task": "trace", "solver": method, "seconds": time.perf_counter() - start,
                     "matvecs": res.num_matvecs, "estimate": res.estimate, "stderr": res.stderr})
    return {"rows": rows, "n": H.shape[0]}


# -- report -------------------------------------------------------------------------------------------

def table(record: dict) -> str:
    """The record as markdown: one line per section, then each section's rows."""
    lines = [f"# hessop GPU run ({record.get('gpu', record['device'])}, torch {record['torch']}"
             f"{', dry run' if record['dry_run'] else ''})", "", "| section | status | seconds |", "|---|---|---:|"]
    for name, entry in record["sections"].items():
        status = entry.get("skipped") or (entry.get("error", "").splitlines() or ["done"])[0] or "done"
        lines.append(f"| {name} | {status[:120]} | {entry.get('seconds', 0):.1f} |")
    tests_entry = record["sections"].get("tests", {})
    if "summary" in tests_entry:
        lines += ["", f"GPU tests: `{tests_entry['summary']}` (exit code {tests_entry['returncode']})"]
    prod = record["sections"].get("products", {}).get("rows", [])
    if prod:
        lines += ["", "| model | n | gradient | eager HVP | linearized HVP | compiled HVP | linearize time | "
                  "compile time | compiled vs eager |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in prod:
            cell = lambda k: (f"{r[k + '_s'] * 1e3:.1f} ms ({r[k + '_x']:.2f}x)" if k + "_s" in r  # noqa: E731
                              else r.get(k, ""))
            lines.append(f"| {r['model']} | {r['n']} | {r['gradient_s'] * 1e3:.1f} ms | {r['eager_s'] * 1e3:.1f} ms "
                         f"({r['eager_x']:.2f}x, {r['eager_strategy']}) | {cell('linearized')} | {cell('compiled')} | "
                         f"{r.get('linearize_s', float('nan')):.1f} s | {r.get('compile_s', float('nan')):.1f} s"
                         f" | {r.get('compiled_vs_eager_rel', float('nan')):.1e} |")
    spec = record["sections"].get("spectrum", {}).get("rows", [])
    if spec:
        lines += ["", "| task | solver | products | seconds | result |", "|---|---|---:|---:|---|"]
        for r in spec:
            result = (f"{r['converged']} converged, top {r['eigenvalues'][0]:.4g}" if "eigenvalues" in r
                      else f"{r['estimate']:.4g} ± {r['stderr']:.2g}")
            lines.append(f"| {r['task']} | {r['solver']} | {r['matvecs']} | {r['seconds']:.2f} | {result} |")
    cupy_rows = record["sections"].get("cupy", {}).get("rows", [])
    if cupy_rows:
        lines += ["", "| CuPy check | top 5 | seconds |", "|---|---|---:|"]
        lines += [f"| {r['solver']} | {', '.join(f'{v:.4g}' for v in r['top5'])} | {r['seconds']:.2f} |"
                  for r in cupy_rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-run", help="folder for gpu.json and gpu.md")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny models: test the logic")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device is visible; run on a GPU machine, or pass --dry-run to test the logic on the CPU")
    run = Run(args.budget, args.dry_run, "cpu" if args.dry_run else "cuda")
    run.section("tests", tests, skip="dry run: the GPU tests need a CUDA device" if run.dry else None)
    try:
        import cupy  # noqa: F401
        cupy_skip = "dry run: CuPy needs a CUDA device" if run.dry else None
    except ImportError:
        cupy_skip = "CuPy is not installed (pip install cupy-cuda12x)"
    run.section("cupy", cupy_section, skip=cupy_skip)
    run.section("spectrum", spectrum)
    run.section("products", products)  # last: compilation is the part whose time is least known
    run.record["total_s"] = time.perf_counter() - run.start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(run.record, indent=1))
    (out / "gpu.md").write_text(table(run.record))
    print(table(run.record))
    return run.record


if __name__ == "__main__":
    main()
