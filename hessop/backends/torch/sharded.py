"""Models whose parameters are split across processes: torch FSDP2 (``fully_shard``), and DDP unwrapped.

:func:`.meshes.unwrap` looks at what the user passed to :func:`hessop.hessian`:

* a ``DistributedDataParallel`` module is unwrapped (its ``module``) and treated
  as data parallel over its process group, as hessop's own data parallelism;
* the older ``FullyShardedDataParallel`` wrapper is refused with a sentence
  naming ``fully_shard``;
* a model whose parameters are DTensors from ``torch.distributed.fsdp.fully_shard``
  gets a :class:`ShardedTorchBackend`, and the process group comes from the mesh:
  placements ``(Shard(0),)`` on a 1-D mesh, ``(Replicate(), Shard(0))`` on a 2-D
  (HSDP) mesh, which must span the job (its group is then the default one), or
  ``(Replicate(),)`` on a 1-D mesh (torch's ``replicate``); any other placement is
  refused with a sentence.

*Layout.* A vector of the split operator is, on each rank, the concatenation in
parameter order of the rank's local shards (``p.to_local()``, flattened); the
pieces of the ranks along the mesh's shard dimension follow each other in their
order there (:class:`hessop.split.RowSplit`, whose communicator is that
dimension's group). So the whole vector is ordered rank by rank, not parameter by
parameter; :meth:`ShardedTorchBackend.global_indices` maps this rank's rows to
positions in the usual flat parameter vector. On a 2-D mesh the ranks that share
a shard coordinate (replicas) hold the same rows: every reduction over a vector's
length runs within one shard group, so each row counts once, and replicas, whose
products FSDP2 makes equal bit for bit (its all-reduce over the replicate
dimension) and whose random vectors are drawn by global index, compute the same
numbers in step without talking to each other (``fully_shard`` does not
synchronise weights: replicas built from different ones are refused on every
rank). What must span every rank (the forwards, the total weight, the step
sizes, argument checks) uses the whole mesh's group,
:attr:`ShardedTorchBackend.comm`.

*Products.* FSDP2's backward gives each rank its shard of the gradient, but a
second derivative through its reduce-scatter hooks does not exist (``grad`` of
a gradient fails: the gradients come from the hooks, not the graph). So a
product is a central finite difference of FSDP's own gradients, perturbing only
the local shards in place: ``(g(θ + h v) - g(θ - h v)) / 2h``. The first product
chooses the step and measures the products' relative error as
``hvp="finite-difference"`` does (:mod:`.finite_difference`: a ladder of steps from
``h₀ ‖v‖ = ε^(1/3) (1 + ‖θ‖)``), with every norm summed over the ranks so that all
take the same steps (on a 2-D mesh the sums over every rank, divided by the replicas
of each row); :attr:`ShardedTorchBackend.product_error` is the estimate, and
the solvers report no residual below it. Per rank a product holds the gradient
pass and three local vectors (θ's shards, one gradient, the result).

*Other weights.* :meth:`ShardedTorchBackend.loss_at` (the loss landscapes) sets
this rank's shards to its rows of the point, evaluates, and writes the shards
back in a ``finally``: exactly the model's again, even after an exception or
Ctrl-C, as after every product.

*Weights.* Each rank's loss is ``Σ_b w_b loss_b`` over its batches (the batch
weights of :mod:`hessop.backends.base`); FSDP2 divides the reduce-scattered
gradient by the number of ranks, which is multiplied back, and the operator
divides by the total weight of all ranks, so the product is exact for any
split of the data (tokens, padding); on a 2-D mesh FSDP2 divides by every rank of the
mesh (reduce-scatter over the shard dimension, all-reduce over the replicate one), and the
gradient is the mean over all their data. Every forward of an FSDP2 model is a
collective, so ranks with fewer batches make zero-weight passes until all have
made the same number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..._array import namespace
from ..._warnings import warn
from ...comm.base import RankDisagreementError, checksum, mark
from ...distributed import as_comm
from ...split import RowSplit
from ..base import Backend
from .checks import check_train_mode
from .data import Batches, arguments, target_of
from .finite_difference import SOLVER_TOLERANCE, ladder
from .losses import Counter, adapt_loss, loss_of_model
from .meshes import first_row, layout_ok, replica_table, replicas_differ, shard_dim, whole_group
from .params import reduction_of

SUPPORTED = ("params", "hvp", "reduction", "weight_fn", "check_determinism", "progress")


class ShardedTorchBackend(Backend):
    """Hessian-vector products of an FSDP2 model on this rank's shards (module docstring).

    Parameters
    ----------
    model : torch.nn.Module
        Sharded with ``fully_shard`` (parameters are DTensors ``Shard(0)`` on a 1-D mesh, or
        ``(Replicate(), Shard(0))`` on a 2-D mesh).
    loss, data, reduction, weight_fn
        As :class:`~hessop.backends.torch.TorchBackend`; each rank passes its own data.
    params : sequence of names, optional
        The parameters to differentiate (default: every ``requires_grad`` one).
    hvp : {"auto", "finite-difference"}
        The one strategy that works through FSDP2's gradient hooks.
    """

    curvature = "hessian"

    def __init__(self, model: nn.Module, loss: Callable | None, data: Any, *, curvature: str = "hessian",
                 params: Sequence[str] | None = None, hvp: str = "auto", reduction: str | None = None,
                 weight_fn: Callable | None = None, check_determinism: bool = True, progress: bool = False):
        if curvature != "hessian":
            raise ValueError(f"an FSDP2 model gives the Hessian (finite differences of its gradients), not the "
                             f"{curvature}; pass curvature='hessian'")
        if hvp not in ("auto", "finite-difference"):
            raise ValueError(f"an FSDP2 model's products are finite differences of its gradients (second "
                             f"derivatives do not pass its hooks); pass hvp='auto', not {hvp!r}")
        from torch.distributed.tensor import DTensor

        self._init = dict(loss=loss, data=data, reduction=reduction, weight_fn=weight_fn,
                          check_determinism=check_determinism, progress=progress)
        self.model = model
        named = dict(model.named_parameters())
        names = [n for n, p in named.items() if p.requires_grad] if params is None else list(params)
        unknown = [n for n in names if n not in named]
        if unknown or not names:
            raise ValueError(f"params {unknown or names} name no parameter of the model; parameters are named like "
                             f"{list(named)[:4]}")
        placements = set()
        for n in names:
            p = named[n]
            if not isinstance(p, DTensor):
                raise ValueError(f"parameter {n} is not sharded by fully_shard; shard every module whose parameters "
                                 "hessop differentiates (or pass params= the sharded ones)")
            if not layout_ok(p.placements):
                raise ValueError(f"parameter {n} is placed {tuple(p.placements)} on its device mesh; hessop splits "
                                 "vectors of parameters sharded on dimension 0 over one mesh dimension and replicated "
                                 "over the others: fully_shard over a 1-D mesh, or over a 2-D (replicate, shard) one")
            placements.add(tuple(p.placements))
        if len(placements) > 1:
            raise ValueError(f"the parameters are placed in {len(placements)} ways on the device mesh "
                             f"({sorted(map(str, placements))}); shard every module over the same mesh")
        self.param_names = names
        self.param_shapes = [tuple(int(d) for d in named[n].shape) for n in names]
        self.param_sizes = [int(np.prod(s, dtype=np.int64)) for s in self.param_shapes]
        self.module_names = [n.rpartition(".")[0] or n for n in names]
        mesh = getattr(named[names[0]], "device_mesh")  # noqa: B009 - a DTensor's, unknown to nn.Parameter
        dim = shard_dim(placements.pop())
        # every rank of the mesh: its forwards, the weights' totals, the step norms; FSDP2 averages over all
        self.comm = as_comm(whole_group(mesh))
        self._world = int(mesh.size())
        # the ranks a vector is split over: ranks with another coordinate on the other (replicate)
        # dimension hold the same rows, and compute the same numbers, in step, on their own
        self._shards = 1 if dim is None else int(mesh.size(dim))
        self._coordinate = 0 if dim is None else int(mesh.get_local_rank(dim))
        self._replicas = self._world // self._shards
        rows_comm = self.comm if self._replicas == 1 else as_comm(None if dim is None else mesh.get_group(dim))
        local = self._locals()
        self.device, self.dtype = local[0].device, local[0].dtype
        if self.dtype in (torch.float16, torch.bfloat16):
            raise ValueError(f"finite differences need float32 or float64 parameters, not {self.dtype}; cast the "
                             "model before sharding it")
        self.xp = namespace(torch.empty(0, dtype=self.dtype, device=self.device))
        self._local_sizes = [int(t.numel()) for t in local]
        self._starts = [first_row(named[n], t, self._coordinate, self._shards) for n, t in zip(names, local)]
        self.loss_fn = None if loss is None else adapt_loss(loss)
        self.reduction = reduction_of(loss, reduction)
        self.normalize = self.reduction == "mean"
        counter = Counter(loss, weight_fn)
        self.batches = Batches(data, self.device, self.dtype, counter)
        counter.check_known(self.batches.is_list and len(self.batches) == 1)
        if check_determinism:
            check_train_mode(model)
        self.local_count = self.batches.count(counter.samples_only)
        mine = float(sum(1 for _ in self.batches.weighted()))
        self._filler = self.batches.first() if mine else None
        # the collectives last, so that a rank-local error above cannot leave the others waiting in them;
        # the first over every rank, the rows' (a group of the shard dimension) only once all passed it
        most, least = self.comm.allreduce_max(np.array([mine, -mine]))
        self._passes = int(most)  # forwards every rank makes: every FSDP2 forward is a collective
        if -least == 0:  # known on every rank alike: all raise
            raise ValueError("a rank holds no batch of non-zero weight, but every rank of an FSDP2 model takes part "
                             "in every forward pass: give every rank at least one batch")
        self._check_replicas()
        split = RowSplit.from_rows(sum(self._local_sizes), rows_comm, self.n)  # the same model everywhere
        self.split = replace(split, index=self.global_indices())  # draws by parameter: any number of ranks
        self.product_error: float | None = None  # measured at the first product (again once the weights changed)
        self._factor: float | None = None  # the step over h₀ chosen then
        self._left: list[tuple[int, int]] = []  # the parameters' and shards' versions as hessop last left them

    def _check_replicas(self) -> None:
        """Raise on every rank if ranks that share a shard coordinate hold different weights (one all-reduce).

        ``fully_shard`` does not synchronise the weights: a model built without a fixed seed would give
        each replica its own point, and the products' mean over the ranks would be no Hessian at all.
        """
        if self._replicas == 1:
            return
        mine = replica_table(checksum(self.flat_params()), self._coordinate, self._shards)
        if replicas_differ(np.asarray(self.comm.allreduce_max(mine), dtype=np.float64)):
            raise mark(RankDisagreementError(
                f"the {self._replicas} replicas of the 2-D device mesh (ranks with the same coordinate on its shard "
                "dimension) hold different weights: fully_shard does not synchronise them, so build the model with "
                "the same seed (or load the same checkpoint) on every rank before fully_shard"))

    # -- layout -------------------------------------------------------------------------------------
    def _params(self) -> list:
        from torch.distributed.fsdp import FSDPModule  # imported already: the model is sharded
        from torch.distributed.tensor import DTensor

        named = dict(self.model.named_parameters())
        params = [named[n] for n in self.param_names]
        if any(not isinstance(p, DTensor) for p in params):
            # a group sharded with reshard_after_forward=False keeps its whole parameters registered after
            # a forward without backward (the loss): put its shards back, as its next backward would
            for m in self.model.modules():
                if isinstance(m, FSDPModule):
                    m.reshard()
            named = dict(self.model.named_parameters())
            params = [named[n] for n in self.param_names]
        return params

    def _locals(self) -> list[torch.Tensor]:
        return [p.to_local() for p in self._params()]

    def global_indices(self) -> np.ndarray:
        """For each of this rank's rows, its index in the usual flat vector (parameters in order, row-major)."""
        out, base = [], 0
        for shape, size, start, local in zip(self.param_shapes, self.param_sizes, self._starts, self._local_sizes):
            inner = size // shape[0] if shape and shape[0] else 1
            out.append(base + start * inner + np.arange(local))
            base += size
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def flat_params(self) -> torch.Tensor:
        return torch.cat([t.detach().reshape(-1) for t in self._locals()])

    # -- passes over the data (collective: every rank makes the same number of forwards) ------------
    def _loss(self, x: Any, y: Any) -> torch.Tensor:
        args, kwargs = arguments(x)
        out = self.model(*args, **kwargs)
        return loss_of_model(out) if self.loss_fn is None else self.loss_fn(out, target_of(x, y))

    def _passes_over_data(self):
        """``(x, y, weight)`` for this rank's batches, then zero-weight fillers up to every rank's count."""
        done = 0
        for _, x, y, count in self.batches.weighted():
            done += 1
            yield x, y, (count if self.normalize else 1.0)
        while done < self._passes:
            done += 1
            yield self._filler[0], self._filler[1], 0.0

    def _gradient(self) -> torch.Tensor:
        """This rank's rows of ``Σ_b w_b ∇loss_b`` over every rank's batches (one backward per batch)."""
        self.model.zero_grad(set_to_none=True)
        for x, y, weight in self._passes_over_data():
            (self._loss(x, y) * weight).backward()
        parts = []
        for p, size in zip(self._params(), self._local_sizes):
            g = p.grad
            parts.append(torch.zeros(size, dtype=self.dtype, device=self.device) if g is None
                         else g.to_local().detach().reshape(-1))
        out = torch.cat(parts)
        self.model.zero_grad(set_to_none=True)
        # FSDP2 divides the sum over every rank of the mesh by their number (reduce-scatter over the
        # shard dimension, then all-reduce over the replicate one): multiplied back
        return out.mul_(float(self._world))

    def loss_sum(self) -> float:
        with torch.no_grad():
            return float(sum(float(self._loss(x, y)) * weight for x, y, weight in self._passes_over_data()))

    def grad_sum(self) -> torch.Tensor:
        return self._gradient()

    def loss_at(self, flat: torch.Tensor) -> float:
        """``Σ_b w_b L_b`` with this rank's shards set to ``flat`` (this rank's rows), then restored exactly.

        Collective, like every forward of an FSDP2 model: each rank passes its own rows of the same
        point. A rank passed a vector of the wrong shape makes every rank raise (one 1-float
        all-reduce), before any forward could leave the others waiting.
        """
        rows = sum(self._local_sizes)
        bad = getattr(flat, "ndim", 0) != 1 or int(flat.shape[0]) != rows
        if float(self.comm.allreduce_max(np.array([float(bad)]))[0]):
            raise mark(ValueError(
                f"loss_at takes this rank's {rows} rows of a split vector; "
                + (f"this rank was passed shape {tuple(getattr(flat, 'shape', ()))}" if bad
                   else "another rank was passed a vector of another shape")))
        theta = self.flat_params().clone()
        try:  # restored whatever happens (an exception, Ctrl-C): the copy is exact
            self._shift(flat.to(dtype=self.dtype, device=self.device))
            return self.loss_sum()
        finally:
            self._restore(theta)

    def _shift(self, flat: torch.Tensor, v: torch.Tensor | None = None, h: float = 0.0) -> None:
        """Set this rank's shards to ``flat + h v`` in place, shard by shard (FSDP2 gathers them at the next
        forward; no temporary of this rank's length)."""
        with torch.no_grad():
            pieces = torch.split(v, self._local_sizes) if v is not None else [None] * len(self._local_sizes)
            for t, piece, step in zip(self._locals(), torch.split(flat, self._local_sizes), pieces):
                t.copy_(piece.reshape(t.shape))
                if step is not None:
                    t.add_(step.reshape(t.shape), alpha=h)

    def _restore(self, theta: torch.Tensor) -> None:
        """Put the shards back to ``theta`` and note the versions: a later change is the user's."""
        self._shift(theta)
        self._left = self._versions()

    def _versions(self) -> list[tuple[int, int]]:
        """Each parameter's version counter and its shard's (an in-place step on a DTensor counts in the first,
        a write to its local shard in the second)."""
        return [(p._version, p.to_local()._version) for p in self._params()]

    def hvp_sum(self, V: torch.Tensor) -> torch.Tensor:
        """``Σ_b w_b H_b V`` on this rank's rows: two gradient passes per column (central difference).

        The first product measures the step and the products' error as ``hvp="finite-difference"``
        does (:mod:`.finite_difference`), with norms over all ranks: :attr:`product_error`; so does the
        first product after the weights changed on any rank (an optimizer's step; not ``.data`` writes).
        """
        cols = V[:, None] if V.ndim == 1 else V
        theta = self.flat_params().clone()
        moved = self._factor is not None and self._versions() != self._left
        moved_anywhere, *sums = self._whole_sums([float(moved), float(theta.double().square().sum()),
                                                  *cols.double().square().sum(dim=0).cpu().numpy()])  # ‖θ‖², ‖v_j‖²
        if moved_anywhere > 0:  # known on every rank alike: every rank measures again, in step
            self._factor = self.product_error = None
        eps = float(torch.finfo(self.dtype).eps)
        out = torch.zeros_like(cols)
        try:
            for j in range(cols.shape[1]):
                if sums[1 + j] == 0.0:
                    continue
                h0 = eps ** (1 / 3) * (1 + sums[0] ** 0.5) / sums[1 + j] ** 0.5
                v = cols[:, j]
                if self._factor is None:
                    out[:, j], self._factor, self.product_error = self._measure(theta, v, h0)
                    self._warn_error(eps)
                else:
                    self._difference(theta, v, h0 * self._factor, out[:, j])
        finally:
            self._restore(theta)
        return out[:, 0] if V.ndim == 1 else out

    def _difference(self, theta: torch.Tensor, v: torch.Tensor, h: float,
                    out: torch.Tensor | None = None) -> torch.Tensor:
        """``(g(θ + h v) - g(θ - h v)) / 2h`` into ``out``: with θ's copy and the result, one more local
        vector (the second gradient) is all a product holds beside the gradient pass."""
        self._shift(theta, v, h)
        if out is None:
            out = self._gradient()
        else:
            out.copy_(self._gradient())  # a column of the result block is not contiguous: cat cannot write it
        self._shift(theta, v, -h)
        minus = self._gradient()
        return out.sub_(minus).div_(2 * h)

    def _measure(self, theta: torch.Tensor, v: torch.Tensor, h0: float) -> tuple[torch.Tensor, float, float]:
        """The ladder of :func:`.finite_difference.ladder` with norms summed over the ranks (so every rank
        takes the same steps): the difference at the step of least estimated error, the step over ``h0``,
        and the estimate."""
        def relative_change(current: torch.Tensor, following: torch.Tensor) -> float:
            scale2, change2 = self._whole_sums([float(current.double().square().sum()),
                                                float((current - following).double().square().sum())])
            return float(np.sqrt(change2 / scale2)) if scale2 > 0 else 0.0

        return ladder(lambda h: self._difference(theta, v, h), h0, relative_change)

    def _whole_sums(self, local: Sequence[float]) -> np.ndarray:
        """Sums over the whole vectors of this rank's sums over its rows, alike on every rank of the mesh.

        Over every rank (not the rows' communicator), so that every rank takes the same steps and makes
        the same number of gradient passes; each row is held by the same number of replicas, divided out.
        """
        sums = np.asarray(self.comm.allreduce(np.asarray(local, dtype=np.float64)), dtype=np.float64)
        return sums / self._replicas if self._replicas > 1 else sums

    def _warn_error(self, eps: float) -> None:
        tolerance = max(SOLVER_TOLERANCE, 100 * eps)
        if self.product_error is not None and self.product_error > tolerance:
            warn(
                f"the FSDP2 model's finite-difference products are accurate to about {self.product_error:.1g} "
                f"(relative), measured at the first product: more than the solvers' default tolerance "
                f"{tolerance:.1g}, and solvers report no residual below it (H.product_error); pass a tol of at "
                "least that, or shard a float64 model for tighter results",
                RuntimeWarning,
            )

    def restrict(self, names: Sequence[str]) -> ShardedTorchBackend:
        return ShardedTorchBackend(self.model, params=list(names), **self._init)
