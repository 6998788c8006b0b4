"""One adapter per tool: build its Hessian on a :class:`~benchmarks._problems.Problem`, then run tasks.

Every adapter returns a dict ``task -> fn(counter)``; each ``fn`` returns a
dict of what the task produced (``eigenvalues``, ``trace``, ``nodes`` and
``weights`` of a spectral measure, or a ``grid`` and ``density``), and sets
``counter.count`` to the Hessian-vector products it made. A tool that is not
installed raises :class:`Missing` at construction.

Settings are each tool's documented defaults unless a common budget makes the
comparison fairer (96 products for trace estimators, 90 Lanczos steps and one
probe for densities); the tables say which.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from ._problems import HVP

TRACE_BUDGET = 96
DENSITY_STEPS = 90


class Missing(Exception):
    """The tool is not installed in this environment."""


def _flat(tensors) -> np.ndarray:
    return np.concatenate([t.detach().reshape(-1).double().numpy() for t in tensors])


def _vector(n: int, seed: int = 0):
    import torch

    return torch.from_numpy(np.random.default_rng(seed).standard_normal(n).astype(np.float32))


# -- hessop -----------------------------------------------------------------------------------

def hessop_tasks(problem, ks=(1, 20)) -> dict[str, Callable]:
    import hessop
    from hessop.solvers.density import density
    from hessop.solvers.eigsh import eigsh
    from hessop.solvers.trace import trace

    H = hessop.hessian(problem.model, problem.loss, problem.data, hvp=HVP)
    v = _vector(H.shape[0])

    def counted(fn):
        def run(counter):
            before = H.num_matvecs
            out = fn()
            counter.count = H.num_matvecs - before
            return out
        return run

    tasks = {"hvp": counted(lambda: {"hv": H.apply(v)})}
    for k in ks:
        tasks[f"top{k}"] = counted(lambda k=k: {"eigenvalues": eigsh(H, k=k).eigenvalues})
    for method in ("xtrace", "hutch++", "hutchinson"):
        def tr(method=method):
            r = trace(H, method=method, max_matvecs=TRACE_BUDGET, check_symmetric=False)
            return {"trace": r.estimate, "stderr": r.stderr}
        tasks[f"trace:{method}"] = counted(tr)

    def dens():
        rho = density(H, num_probes=1, num_steps=DENSITY_STEPS, check_symmetric=False)
        return {"nodes": rho.nodes.ravel(), "weights": rho.weights.ravel() / rho.num_probes}
    tasks["density"] = counted(dens)
    return tasks


def scipy_tasks(problem, ks=(1, 20)) -> dict[str, Callable]:
    """scipy's ARPACK ``eigsh`` on hessop's operator (host path: numpy in, numpy out)."""
    import scipy.sparse.linalg as sla

    import hessop

    H = hessop.hessian(problem.model, problem.loss, problem.data, hvp=HVP)
    tasks = {}
    for k in ks:
        def run(counter, k=k):
            before = H.num_matvecs
            w = sla.eigsh(H, k=k, which="LA", return_eigenvectors=False, v0=np.ones(H.shape[0], H.dtype))
            counter.count = H.num_matvecs - before
            return {"eigenvalues": w}
        tasks[f"top{k}"] = run
    return tasks


# -- PyHessian --------------------------------------------------------------------------------

_PH = {"count": 0}


def _pyhessian():
    try:
        import pyhessian  # noqa: F401
    except ImportError as exc:
        raise Missing("pyhessian") from exc
    import torch

    mod = sys.modules["pyhessian.hessian"]
    if not getattr(mod, "_bench_counted", False):
        hvp, loader_hvp = mod.hessian_vector_product, mod.hessian.dataloader_hv_product

        def counted_hvp(*a, **k):
            _PH["count"] += 1
            return hvp(*a, **k)

        def counted_loader(self, v):
            _PH["count"] += 1
            return loader_hvp(self, v)

        mod.hessian_vector_product, mod.hessian.dataloader_hv_product = counted_hvp, counted_loader
        mod._bench_counted = True
    if not getattr(torch.eig, "_bench_shim", False):
        # PyHessian 0.1's density() calls torch.eig, removed from PyTorch (a stub that raises since 2.0):
        # supply it from eigh, in this benchmark process only.
        def eig(T, eigenvectors=True):
            w, V = torch.linalg.eigh(T)
            return torch.stack([w, torch.zeros_like(w)], 1), V
        eig._bench_shim = True
        torch.eig = eig
    return mod.hessian


def pyhessian_tasks(problem, ks=(1, 20)) -> dict[str, Callable]:
    import torch

    cls = _pyhessian()
    problem.model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    ph = cls(problem.model, problem.loss, data=problem.data, cuda=False)
    mod = sys.modules["pyhessian.hessian"]
    v = list(torch.split(_vector(sum(p.numel() for p in ph.params)), [p.numel() for p in ph.params]))
    v = [a.reshape(p.shape) for a, p in zip(v, ph.params)]

    def counted(fn):
        def run(counter):
            torch.manual_seed(0)
            before = _PH["count"]
            out = fn()
            counter.count = _PH["count"] - before
            return out
        return run

    tasks = {"hvp": counted(lambda: {"hv": mod.hessian_vector_product(ph.gradsH, ph.params, v)})}
    for k in ks:
        tasks[f"top{k}"] = counted(lambda k=k: {"eigenvalues": np.array(ph.eigenvalues(top_n=k)[0])})
    def trace():
        # The common budget: its stopping rule (relative change of the running mean, divided by the
        # *signed* mean) never fires with tol=-inf, so it makes exactly TRACE_BUDGET products. With its
        # default tol=1e-3 it stopped after 2 to 53 products, at a larger error, which made its rows
        # incomparable with the others (and a negative running mean stops it at once).
        s = ph.trace(maxIter=TRACE_BUDGET, tol=float("-inf"))
        return {"trace": float(np.mean(s)), "stderr": float(np.std(s, ddof=1) / np.sqrt(len(s)))}
    tasks["trace:hutchinson"] = counted(trace)

    def dens():
        nodes, weights = ph.density(iter=DENSITY_STEPS, n_v=1)
        return {"nodes": np.array(nodes[0], dtype=np.float64), "weights": np.array(weights[0], dtype=np.float64)}
    tasks["density"] = counted(dens)
    return tasks


# -- curvlinops -------------------------------------------------------------------------------

def curvlinops_tasks(problem, ks=(1, 20)) -> dict[str, Callable]:
    try:
        import curvlinops
    except ImportError as exc:
        raise Missing("curvlinops-for-pytorch") from exc
    import scipy.sparse.linalg as sla

    params = [p for p in problem.model.parameters() if p.requires_grad]
    C = curvlinops.HessianLinearOperator(problem.model, problem.loss, params, [problem.data])
    box = {"count": 0}
    inner = C._matmat

    def counted_matmat(M):
        box["count"] += int(M[0].shape[-1])
        return inner(M)
    C._matmat = counted_matmat
    v = _vector(C.shape[0])

    def counted(fn):
        def run(counter):
            import torch

            torch.manual_seed(0)
            before = box["count"]
            out = fn()
            counter.count = box["count"] - before
            return out
        return run

    tasks = {"hvp": counted(lambda: {"hv": C @ v})}
    S = C.to_scipy()
    for k in ks:
        tasks[f"top{k}"] = counted(lambda k=k: {"eigenvalues": sla.eigsh(
            S, k=k, which="LA", return_eigenvectors=False, v0=np.ones(S.shape[0], S.dtype))})
    for name, fn in (("xtrace", curvlinops.xtrace), ("hutch++", curvlinops.hutchpp_trace),
                     ("hutchinson", curvlinops.hutchinson_trace)):
        tasks[f"trace:{name}"] = counted(lambda fn=fn: {"trace": float(fn(C, TRACE_BUDGET))})

    def dens():
        grid, d = curvlinops.lanczos_approximate_spectrum(C, ncv=DENSITY_STEPS, num_repeats=1)
        return {"grid": grid.double().numpy(), "density": d.double().numpy()}
    tasks["density"] = counted(dens)
    return tasks


# -- hessian-eigenthings ------------------------------------------------------------------------

def eigenthings_tasks(problem, ks=(1, 20)) -> dict[str, Callable]:
    try:
        import hessian_eigenthings as he
    except ImportError as exc:
        raise Missing("hessian-eigenthings") from exc

    op = he.HessianOperator(problem.model, [problem.data], he.supervised_loss(problem.loss))
    box = {"count": 0}
    inner = op.matvec

    def counted_matvec(x):
        box["count"] += 1
        return inner(x)
    op.matvec = counted_matvec
    v = _vector(op.size)

    def counted(fn):
        def run(counter):
            before = box["count"]
            out = fn()
            counter.count = box["count"] - before
            return out
        return run

    tasks: dict[str, Any] = {"hvp": counted(lambda: {"hv": op.matvec(v)})}
    for k in ks:
        tasks[f"top{k}"] = counted(lambda k=k: {"eigenvalues": he.lanczos(op, k=k, which="LA", seed=0)
                                                .eigenvalues.double().numpy()})
    tasks["top1:power"] = counted(lambda: {"eigenvalues": he.deflated_power_iteration(op, k=1, seed=0)
                                           .eigenvalues.double().numpy()})
    tasks["trace:hutch++"] = counted(lambda: {"trace": float(he.trace(op, num_matvecs=TRACE_BUDGET,
                                                                      method="hutch++", seed=0).estimate)})

    def dens():
        r = he.spectral_density(op, num_runs=1, lanczos_steps=DENSITY_STEPS, seed=0)
        return {"nodes": r.raw_eigenvalues.double().numpy().ravel(), "weights": r.raw_weights.double().numpy().ravel()}
    tasks["density"] = counted(dens)
    return tasks


TOOLS: dict[str, Callable] = {
    "hessop": hessop_tasks,
    "scipy ARPACK on hessop": scipy_tasks,
    "PyHessian": pyhessian_tasks,
    "curvlinops": curvlinops_tasks,
    "hessian-eigenthings": eigenthings_tasks,
}
