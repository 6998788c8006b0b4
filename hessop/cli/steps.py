"""The analysis steps a report is made of, each one call into the library.

A step takes the Hessian operator and the run's settings and returns a
JSON-able dict of numbers (and their quality: residuals, standard errors,
product counts): the result's own ``to_dict()`` where it has one. Arrays a later step needs (the
eigenvectors the landscapes follow) are kept in the run state, so a resumed run continues exactly where
it stopped. Each step draws its random numbers from its own seed, derived
from the run's seed and the step's name, so skipping finished steps does not
change the numbers of the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .._array import from_numpy, host_floats, to_numpy
from .._collective import together
from ..analysis.landscape import landscape_1d as line
from ..analysis.landscape import landscape_2d as plane
from ..analysis.layerwise import layerwise as per_block
from ..analysis.spectrum import density_to_dict
from ..solvers.density import density as slq
from ..solvers.eigsh import eigsh
from ..solvers.trace import trace as estimate_trace
from .errors import UsageError
from .run import RunState

ORDER = ("eigenvalues", "trace", "density", "landscape_1d", "landscape_2d", "layerwise")
"""Every analysis step, in the order a report runs them."""

TITLES = {
    "train": "Training",
    "eigenvalues": "Top eigenvalues",
    "trace": "Trace",
    "density": "Spectral density",
    "landscape_1d": "Loss along the top eigenvectors",
    "landscape_2d": "Loss surface on the top two eigenvectors",
    "layerwise": "Layer-wise curvature",
}


@dataclass(frozen=True)
class Budget:
    """How much work each analysis may do."""

    k: int = 10
    eig_tol: float | None = None  # None: eigsh's default, 1e-6 raised to the dtype's floor
    trace_rtol: float = 1e-2
    trace_max_matvecs: int = 2000
    density_steps: int = 80
    density_probes: int = 6
    points_1d: int = 41
    points_2d: int = 21
    layer_trace_max_matvecs: int = 60
    layer_density_steps: int = 60
    layer_probes: int = 2
    blocks: str | dict = "stages"  # or {block name: [parameter patterns]} (the language-model demo's)

    def to_dict(self) -> dict:
        """The budget as saved in the run configuration."""
        return asdict(self)


BUDGETS = {
    "full": Budget(),
    "small": Budget(
        k=3, trace_rtol=5e-2, trace_max_matvecs=100, density_steps=20, density_probes=2,
        points_1d=9, points_2d=5, layer_trace_max_matvecs=10, layer_density_steps=10, layer_probes=1,
    ),
}
"""``--budget full`` for real use, ``--budget small`` for a run of a few seconds (tests, smoke checks)."""


def step_seed(seed: int, name: str) -> int:
    """The seed of step ``name`` in a run seeded with ``seed`` (independent of which steps run)."""
    return int(np.random.SeedSequence([seed, ORDER.index(name)]).generate_state(1)[0])


def eigenvalues(H: Any, budget: Budget, seed: int, state: RunState, progress: bool) -> dict:
    """The ``k`` largest eigenvalues by thick-restart Lanczos; keeps the eigenvectors for the landscapes."""

    k = min(budget.k, H.shape[0] - 1)
    r = eigsh(H, k=k, which="LA", tol=budget.eig_tol, seed=seed, progress=progress)
    state.save_array("eigenvectors", to_numpy(r.eigenvectors), part=_part(H))
    out = {
        "eigenvalues": host_floats(r.eigenvalues),
        "residual_norms": host_floats(r.residual_norms),
        "converged": [bool(c) for c in np.asarray(r.converged).reshape(-1)],
        "stopped": r.stopped,
        "num_matvecs": int(r.num_matvecs),
    }
    error = getattr(H, "product_error", None)
    if error:  # finite-difference products (an FSDP2 model): no residual is reported below their error
        out["product_error"] = float(error)
    if budget.k > k:  # more than the model has: the report says what was computed instead
        out["requested"] = int(budget.k)
    return out


def trace(H: Any, budget: Budget, seed: int, state: RunState, progress: bool) -> dict:
    """The trace by stochastic estimation, with its standard error."""

    t = estimate_trace(H, max_matvecs=budget.trace_max_matvecs, rtol=budget.trace_rtol, seed=seed, progress=progress)
    n = H.shape[0]
    return {
        "trace": float(t.estimate),
        "stderr": float(t.stderr),
        "method": t.method,
        "converged": bool(t.converged),
        "calibrated": bool(t.calibrated),
        "mean_eigenvalue": float(t.estimate) / n,
        "num_matvecs": int(t.num_matvecs),
    }


def density(H: Any, budget: Budget, seed: int, state: RunState, progress: bool) -> dict:
    """The spectral density by stochastic Lanczos quadrature."""

    rho = slq(H, num_steps=budget.density_steps, num_probes=budget.density_probes, seed=seed, progress=progress)
    return {
        **density_to_dict(rho),
        "negative_mass": rho.negative_mass(),
        "negative_mass_below": -rho.sigma,
        "num_probes": int(rho.num_probes),
        "num_steps": budget.density_steps,
        "num_matvecs": int(rho.num_matvecs),
    }


def _part(H: Any) -> tuple[int, int] | None:
    """``(rank, ranks)`` for an operator whose vectors are split across processes (each keeps its own rows of
    the eigenvectors, :meth:`RunState.save_array`), else ``None`` (rank 0 keeps the whole ones).

    Numbered over every rank (``H.comm``), not over the ranks the vectors are split over: on a 2-D
    (HSDP) mesh, replicas keep the same rows, each in its own file."""
    return None if getattr(H, "split", None) is None else (H.comm.rank, H.comm.size)


def _dot(H: Any, a: Any, b: Any) -> float:
    """``aᵀ b`` of two native vectors: over the whole vectors for a split operator (one all-reduce)."""
    local = float(H.xp.sum(a * b))
    split = getattr(H, "split", None)
    return local if split is None else float(split.comm.allreduce_scalar(local))


def _directions(H: Any, state: RunState, count: int) -> tuple[list[Any], list[float]]:
    # on every rank together: a file missing or damaged on one rank fails them all, leaving none waiting
    vecs = together(H.comm, lambda: state.load_array("eigenvectors", rows=H.rows, part=_part(H)), known=(UsageError,))
    vals = state.result("eigenvalues")["eigenvalues"]
    if vecs.shape[1] < count:
        raise ValueError(f"the 2-D landscape needs two eigenvectors but only {vecs.shape[1]} were computed; "
                         "use --eig 2 or more")
    native = [from_numpy(vecs[:, i], H.xp, H.device, H.native_dtype) for i in range(count)]
    return native, vals[:count]


def landscape_radius(top_eigenvalue: float, rise: float = 2.0) -> float:
    """The step along the top eigenvector where the quadratic model has risen by ``rise``."""
    return math.sqrt(2.0 * rise / top_eigenvalue) if top_eigenvalue > 0 else 1.0


def landscape_1d(H: Any, budget: Budget, seed: int, state: RunState, progress: bool) -> dict:
    """The loss along each of the top two eigenvectors, and the quadratic model it is compared with."""

    dirs, vals = _directions(H, state, min(2, len(state.result("eigenvalues")["eigenvalues"])))
    radius = landscape_radius(vals[0])
    grad = H.gradient()
    curves = []
    for i, (d, lam) in enumerate(zip(dirs, vals), start=1):
        ls = line(H, d, radius=radius, num_points=budget.points_1d, label=f"v{i}", progress=progress)
        curves.append({**ls.to_dict(), "direction": f"v{i}", "eigenvalue": float(lam),
                       "slope": _dot(H, grad, d)})
    return {"radius": radius, "center_loss": float(ls.center_loss), "curves": curves}


def landscape_2d(H: Any, budget: Budget, seed: int, state: RunState, progress: bool) -> dict:
    """The loss on the plane of the top two eigenvectors."""

    (d1, d2), vals = _directions(H, state, 2)
    radius = landscape_radius(vals[0])
    ls = plane(H, d1, d2, radius=radius, num_points=budget.points_2d, labels=("v1", "v2"), progress=progress)
    return {**ls.to_dict(), "radius": radius, "eigenvalues": [float(v) for v in vals]}


def layerwise(H: Any, budget: Budget, seed: int, state: RunState, progress: bool) -> dict:
    """Top eigenvalue, trace and spectral distance to the full Hessian of each block (top-level modules or all)."""

    return per_block(
        H, blocks=budget.blocks, k=1, trace_max_matvecs=budget.layer_trace_max_matvecs,
        density_steps=budget.layer_density_steps,
        num_probes=budget.layer_probes, seed=seed, progress=progress,
    ).to_dict()


STEPS: dict[str, Callable[..., dict]] = {
    "eigenvalues": eigenvalues,
    "trace": trace,
    "density": density,
    "landscape_1d": landscape_1d,
    "landscape_2d": landscape_2d,
    "layerwise": layerwise,
}
