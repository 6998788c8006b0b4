"""Loss landscapes: the loss along one or two directions through the trained parameters.

``L(θ + α d₁)`` on a line and ``L(θ + α d₁ + β d₂)`` on a grid, evaluated over all
of the operator's data with :meth:`HessianOperator.loss_at`, so any backend works.
Directions are native vectors: the top Hessian eigenvectors, as in Yao et al.
(2020), "PyHessian: neural networks through the lens of the Hessian", or random
filter-normalised directions, as in Li et al. (2018), "Visualizing the loss
landscape of neural nets" (:func:`filter_normalized_direction`).

Directions are used exactly as given (no rescaling): a unit eigenvector with
eigenvalue λ gives, near the minimum of a quadratic, ``L(θ) + ½ λ α²``.

A split operator (``H.split``, an FSDP2 model) takes each rank's rows of the
directions, as its eigenvectors come; its backend shifts only the local shards
for each loss and restores them exactly, and the directions' norms are those of
the whole vectors.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .._array import Array, from_numpy, rng, to_numpy
from .._collective import together

__all__ = ["Landscape", "landscape_1d", "landscape_2d", "filter_normalized_direction"]


@dataclass(frozen=True)
class Landscape:
    """Losses on a line (1-D) or a grid (2-D) through the trained parameters.

    Attributes
    ----------
    alphas : ndarray
        Steps along the first direction.
    losses : ndarray
        ``(len(alphas),)`` for a line, ``(len(alphas), len(betas))`` for a grid;
        NaN where an interrupted run did not reach.
    center_loss : float
        The loss at the trained parameters (``H.loss()``).
    betas : ndarray or None
        Steps along the second direction (2-D only).
    direction_norms : tuple of float
        Euclidean norms of the directions, to read the steps in parameter units.
    labels : tuple of str
        Names of the directions, used as axis labels.
    num_evaluations : int
        Full-data loss evaluations spent.
    partial : bool
        True when interrupted (KeyboardInterrupt) before the grid was complete.
    """

    alphas: np.ndarray
    losses: np.ndarray
    center_loss: float
    betas: np.ndarray | None = None
    direction_norms: tuple[float, ...] = ()
    labels: tuple[str, ...] = ("direction 1", "direction 2")
    num_evaluations: int = 0
    partial: bool = False

    @property
    def ndim(self) -> int:
        """1 for a line, 2 for a surface."""
        return int(np.ndim(self.losses))

    def plot(self, ax=None, kind: str | None = None, title: str | None = None):
        """Draw as ``"line"`` (1-D), ``"surface"`` or ``"contour"`` (2-D); returns the axes."""
        from .plots import plot_landscape

        return plot_landscape(self, ax, kind=kind, title=title)

    def to_dict(self) -> dict:
        """A JSON-ready dictionary (NaN for unreached points becomes None)."""
        out = asdict(self)
        for key in ("alphas", "betas", "losses"):
            if out[key] is not None:
                arr = np.asarray(out[key], dtype=np.float64)
                values = arr.astype(object)
                values[~np.isfinite(arr)] = None
                out[key] = values.tolist()
        out["direction_norms"] = list(self.direction_norms)
        out["labels"] = list(self.labels)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Landscape:
        """The landscape back from :meth:`to_dict` (None, an unreached point, becomes NaN); other keys are ignored."""
        arr = lambda v: None if v is None else np.array(v, dtype=np.float64)  # noqa: E731 - None entries: NaN
        return cls(np.array(d["alphas"], dtype=np.float64), np.array(d["losses"], dtype=np.float64),
                   float(d["center_loss"]), arr(d.get("betas")),
                   tuple(d.get("direction_norms", ())), tuple(d.get("labels", ("direction 1", "direction 2"))),
                   int(d.get("num_evaluations", 0)), bool(d.get("partial", False)))


def _steps(radius: float, num_points: int, name: str) -> np.ndarray:
    if not np.isfinite(radius) or radius <= 0:
        raise ValueError(f"radius must be a positive number; got {radius!r}")
    if not isinstance(num_points, (int, np.integer)) or num_points < 2:
        raise ValueError(f"{name} must be an integer >= 2; got {num_points!r}")
    steps = np.linspace(-radius, radius, int(num_points))
    if num_points % 2:
        steps[num_points // 2] = 0.0  # the trained parameters exactly, whatever the rounding
    return steps


def _direction(H: Any, d: Any, name: str) -> Array:
    """A native vector of the operator's size, dtype and device from a vector or an (n, 1) column.

    For a split operator (``H.split``): this rank's rows, or a whole host vector, which is cut to them.
    The check is collective there, so a rank given another shape cannot leave the others waiting.
    """
    split = getattr(H, "split", None)
    n = H.shape[0] if split is None else split.rows
    if isinstance(d, np.ndarray) or not hasattr(d, "shape"):
        d = np.asarray(d, dtype=np.float64)
        if split is not None and d.ndim == 1 and d.shape[0] == split.n:
            d = split.scatter(d)
        d = from_numpy(d, H.xp, H.device, H.native_dtype)
    if d.ndim == 2 and d.shape[1] == 1:
        d = d[:, 0]

    def check() -> None:
        if d.ndim != 1 or d.shape[0] != n:
            whose = "" if split is None else f" (this rank's rows of a vector split over {split.comm.size} ranks)"
            raise ValueError(f"{name} must be a vector of length {n} (one entry per parameter{whose}); "
                             f"got shape {tuple(d.shape)}")

    if split is None:
        check()
    else:  # over every rank: those of a 2-D (HSDP) mesh's other shard groups would wait in the next forward
        together(getattr(H, "comm", split.comm), check)
    if d.dtype != H.native_dtype:
        d = H.xp.astype(d, H.native_dtype)
    return d


def _norm(H: Any, d: Array) -> float:
    """The Euclidean norm of a direction; of the whole vector for a split operator (one all-reduce)."""
    squares = float(np.sum(np.square(to_numpy(d).astype(np.float64))))
    split = getattr(H, "split", None)
    return float(np.sqrt(squares if split is None else split.comm.allreduce_scalar(squares)))


def _progress(total: int, progress: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not progress, desc=desc, leave=False)


def landscape_1d(
    H: Any,
    direction: Any,
    *,
    radius: float = 1.0,
    num_points: int = 41,
    label: str = "direction",
    progress: bool = False,
) -> Landscape:
    """The loss along a line ``θ + α d`` for ``α`` in ``[-radius, radius]``.

    Parameters
    ----------
    H : HessianOperator
        Supplies the parameters ``θ`` (``H.parameters()``) and the full-data loss (``H.loss_at``).
    direction : native vector, host array or (n, 1) column
        The direction ``d`` (e.g. ``eigsh(H, k=1).eigenvectors[:, 0]``), used unscaled. For a split
        operator (an FSDP2 model): this rank's rows, as eigsh returns them, or a whole host vector.
    radius, num_points : float, int
        The grid of steps; an odd ``num_points`` contains ``α = 0`` exactly.
    label : str
        Axis label of the direction in plots.
    progress : bool
        Show a progress bar.

    Returns
    -------
    Landscape
        Marked ``partial`` if interrupted with Ctrl-C.
    """
    d = _direction(H, direction, "direction")
    alphas = _steps(radius, num_points, "num_points")
    theta = H.parameters()
    center = float(H.loss())
    losses = np.full(alphas.shape, np.nan)
    done, partial = 0, False
    with _progress(alphas.size, progress, "landscape 1-D") as bar:
        try:
            for i, a in enumerate(alphas):
                losses[i] = center if a == 0.0 else H.loss_at(theta + float(a) * d)
                done += 1
                bar.update()
        except KeyboardInterrupt:
            partial = True
    return Landscape(alphas, losses, center, None, (_norm(H, d),), (label,), done, partial)


def landscape_2d(
    H: Any,
    d1: Any,
    d2: Any,
    *,
    radius: float = 1.0,
    num_points: int = 21,
    labels: Sequence[str] = ("direction 1", "direction 2"),
    progress: bool = False,
) -> Landscape:
    """The loss on the plane ``θ + α d₁ + β d₂`` over a ``num_points x num_points`` grid.

    Costs ``num_points²`` full-data loss evaluations (one fewer: the centre is ``H.loss()``).
    See :func:`landscape_1d` for the parameters; ``labels`` name the two directions.
    """
    u = _direction(H, d1, "d1")
    v = _direction(H, d2, "d2")
    alphas = _steps(radius, num_points, "num_points")
    theta = H.parameters()
    center = float(H.loss())
    losses = np.full((alphas.size, alphas.size), np.nan)
    done, partial = 0, False
    with _progress(losses.size, progress, "landscape 2-D") as bar:
        try:
            for (i, a), (j, b) in itertools.product(enumerate(alphas), enumerate(alphas)):
                at_center = a == 0.0 and b == 0.0
                losses[i, j] = center if at_center else H.loss_at(theta + float(a) * u + float(b) * v)
                done += 1
                bar.update()
        except KeyboardInterrupt:
            partial = True
    norms = (_norm(H, u), _norm(H, v))
    return Landscape(alphas, losses, center, alphas.copy(), norms, tuple(labels)[:2], done, partial)


def filter_normalized_direction(model_or_H: Any, *, seed: int = 0, ignore_1d: bool = True) -> Array:
    """A random Gaussian direction rescaled filter by filter to the weights' norms (Li et al. 2018).

    Each filter (the slice of a weight along its first axis: a convolution's
    output channel, a linear layer's row) of the direction gets the norm of the
    corresponding filter of the weights, which makes landscapes of networks with
    different weight scales comparable.

    Parameters
    ----------
    model_or_H : torch.nn.Module or HessianOperator
        A PyTorch module (the direction covers its trainable parameters in
        ``named_parameters`` order) or an operator of any backend (covering
        ``H.parameters()``, filters read from :attr:`HessianOperator.parameter_shapes`).
    seed : int
        Seed of the host random generator (the same direction in every framework).
    ignore_1d : bool
        Zero the direction on 1-D parameters (biases, BatchNorm), as Li et al. do.

    Returns
    -------
    native vector
        A torch vector for a module, the operator's native vector for an operator.
    """
    if hasattr(model_or_H, "named_parameters") and not hasattr(model_or_H, "loss_at"):
        import torch

        params = [p for _, p in model_or_H.named_parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters to draw a direction for")
        shapes = [tuple(p.shape) for p in params]
        values = np.concatenate([p.detach().cpu().double().numpy().ravel() for p in params])
        d = _filter_normalize(values, shapes, rng(seed), ignore_1d)
        return torch.as_tensor(d, dtype=params[0].dtype, device=params[0].device)
    H = model_or_H
    if not hasattr(H, "parameter_shapes"):
        raise TypeError(f"expected a torch.nn.Module or a HessianOperator; got a {type(H).__name__}")
    if getattr(H, "split", None) is not None:
        raise TypeError("filter_normalized_direction draws a whole vector, which no rank of a split operator holds: "
                        "draw it on the unsharded model and pass this rank's rows, H.split.scatter(direction)")
    values = to_numpy(H.parameters()).astype(np.float64)
    d = _filter_normalize(values, H.parameter_shapes, rng(seed), ignore_1d)
    return from_numpy(d, H.xp, H.device, H.native_dtype)


def _filter_normalize(values: np.ndarray, shapes: list[tuple[int, ...]], gen: np.random.Generator, ignore_1d: bool):
    sizes = [int(np.prod(s)) for s in shapes]
    if sum(sizes) != values.size:
        raise ValueError(f"parameter shapes cover {sum(sizes)} entries but the parameter vector has {values.size}")
    out = gen.standard_normal(values.size)
    start = 0
    for shape, size in zip(shapes, sizes):
        seg = slice(start, start + size)
        start += size
        if len(shape) <= 1:
            scale = np.linalg.norm(values[seg]) / max(np.linalg.norm(out[seg]), 1e-300)
            out[seg] = 0.0 if ignore_1d else out[seg] * scale
            continue
        w = values[seg].reshape(shape[0], -1)
        r = out[seg].reshape(shape[0], -1)
        scale = np.linalg.norm(w, axis=1, keepdims=True) / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-300)
        out[seg] = (r * scale).ravel()
    return out
