"""What a model's device mesh says: FSDP2 detected, DDP unwrapped, the old FSDP refused; groups and layouts.

:func:`unwrap` looks at what the user passed to :func:`hessop.hessian` (see
:mod:`.sharded` for what a sharded model's operator does). The mesh decides two
communicators: :func:`whole_group`, every rank of the mesh (forwards, weights,
agreement checks), and the group of its shard dimension (:func:`shard_dim`), which
a vector is split over. :func:`layout_ok` says which placements hessop splits
vectors by: ``Shard(0)`` on at most one mesh dimension and ``Replicate()`` on the
others. :func:`first_row` is where a rank's shard of a parameter starts, and
:func:`replica_table` / :func:`replicas_differ` the one all-reduce that tells
whether the replicas of a 2-D mesh hold the same weights.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from ...distributed import as_comm


def unwrap(model: Any, comm: Any) -> tuple[Any, Any, bool]:
    """``(model, comm, sharded)``: DDP unwrapped, FSDP2 detected (its process group), old FSDP refused."""
    import torch.distributed as dist

    if not isinstance(model, nn.Module) or not dist.is_available():
        return model, comm, False
    from torch.nn.parallel import DistributedDataParallel

    # A wrapper or a DTensor exists only once its module was imported: looking it up in sys.modules
    # spares every process that builds a Hessian the import of torch.distributed.tensor (a second or so).
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is not None and isinstance(model, fsdp.FullyShardedDataParallel):
        raise TypeError(
            "hessop does not support the FullyShardedDataParallel wrapper (FSDP1): shard the model with "
            "torch.distributed.fsdp.fully_shard (FSDP2), whose parameters hessop splits the vectors along"
        )
    if isinstance(model, DistributedDataParallel):
        return model.module, (model.process_group if comm is None else comm), False
    meshes = _meshes(model)
    if not meshes:
        return model, comm, False
    if len(meshes) > 1:
        raise ValueError(
            "hessop splits vectors over one device mesh (fully_shard every module over the same "
            f"init_device_mesh(...)); this model's parameters live on {len(meshes)} meshes"
        )
    group = whole_group(meshes[0])
    if comm is not None and as_comm(comm).size != as_comm(group).size:
        raise ValueError("comm= names other processes than the model's device mesh; leave comm=None for an FSDP2 model")
    return model, group, True


def whole_group(mesh: Any) -> Any:
    """The process group of every rank of ``mesh``: its own for a 1-D mesh, the job's for a 2-D one.

    A 2-D (HSDP) mesh has a group per dimension but none of all its ranks; hessop uses the default
    group, so such a mesh must span the job (what ``init_device_mesh(device, (replicas, shards))``
    over every process makes).
    """
    import torch.distributed as dist

    if mesh.ndim == 1:
        return mesh.get_group()
    ranks = sorted(int(r) for r in mesh.mesh.flatten().tolist())
    if ranks != list(range(dist.get_world_size())):
        raise ValueError(
            f"hessop needs a {mesh.ndim}-D device mesh to span every process of the job (ranks "
            f"0..{dist.get_world_size() - 1}), but this model's mesh holds ranks {ranks}; build it with "
            "init_device_mesh(device, (replicas, shards)) over the whole job"
        )
    return dist.group.WORLD


def shard_dim(placements: Sequence[Any]) -> int | None:
    """The mesh dimension a parameter is sharded over on its dimension 0 (``None``: replicated on every rank).

    ``None`` too for placements hessop cannot split vectors by (another tensor dimension, several
    sharded mesh dimensions); :func:`layout_ok` tells them apart.
    """
    from torch.distributed.tensor import Shard

    dims = [i for i, p in enumerate(placements) if isinstance(p, Shard)]
    return dims[0] if len(dims) == 1 else None


def layout_ok(placements: Sequence[Any]) -> bool:
    """Whether hessop splits vectors of a parameter so placed: ``Shard(0)`` on at most one mesh dimension and
    ``Replicate()`` on every other (``fully_shard`` on a 1-D mesh, HSDP on a 2-D one)."""
    from torch.distributed.tensor import Replicate, Shard

    sharded = [p for p in placements if isinstance(p, Shard)]
    return (all(isinstance(p, (Shard, Replicate)) for p in placements) and len(sharded) <= 1
            and all(p.dim == 0 for p in sharded))


def _meshes(model: nn.Module) -> list:
    tensor = sys.modules.get("torch.distributed.tensor")
    if tensor is None:  # no DTensor can exist yet
        return []
    meshes: list = []
    for p in model.parameters():
        if isinstance(p, tensor.DTensor) and all(p.device_mesh != m for m in meshes):  # equal meshes may be two objects
            meshes.append(p.device_mesh)
    return meshes


def first_row(p: Any, local: Any, coordinate: int, shards: int) -> int:
    """Index along dimension 0 of the first row of ``p`` held at ``coordinate`` of ``shards`` on the mesh's
    shard dimension (``torch.chunk``'s split, as FSDP2's), checked against the ``local`` shard held."""
    rows = int(p.shape[0])
    chunk = -(-rows // shards)
    start = min(coordinate * chunk, rows)
    if int(local.shape[0]) != max(0, min(rows - start, chunk)):
        raise ValueError(f"cannot read the layout of {p.shape} sharded over {shards} ranks "
                         f"(this rank holds {tuple(local.shape)})")
    return start


def replica_table(fingerprint: np.ndarray, coordinate: int, shards: int) -> np.ndarray:
    """This rank's part of the replicas' check: its fingerprint and its negative in its shard coordinate's
    slot, ``-inf`` elsewhere, so that the entry-wise maximum over every rank gives each slot's spread."""
    table = np.full((2, shards, fingerprint.size), -np.inf)
    table[0, coordinate], table[1, coordinate] = fingerprint, -fingerprint
    return table.ravel()


def replicas_differ(reduced: np.ndarray) -> bool:
    """Whether the maximum over every rank of :func:`replica_table` shows two replicas of a slot that differ."""
    high, negated_low = reduced.reshape(2, -1)
    return bool(np.any(high != -negated_low))
