"""``hessop analyze`` on a model sharded with torch FSDP2 (``fully_shard``), launched by ``torchrun``.

Such a model has no whole weights and its Hessian no whole vectors on any rank
(:mod:`hessop.backends.torch.sharded`), so the command line keeps what each rank
owns, and nothing is gathered:

* **Checks** (:func:`check_sharded`, on every rank together): the model is used
  as the factory returned it. Casting or moving a sharded model is not safe, so
  ``--dtype`` and ``--device`` must match it (or be left out), and a
  ``--checkpoint`` is refused (the factory loads it before ``fully_shard``).
  The command line's processes must be the model's: its device mesh (1-D, or
  2-D for HSDP) spans the ``torchrun`` job (``--comm auto`` or ``torch``).
* **Weights kept for** ``--resume`` (:func:`keep_shards`): each rank saves its
  own shards (``p.to_local()``) and buffers to ``arrays/model.rank{r}of{s}.pt``
  and loads them back on resume, checked against the model's layout (names and
  local shapes). A resume on another number of ranks is refused by the run's
  configuration, which records the ranks.
* **Eigenvectors** are kept the same way, each rank its own rows (on a 2-D mesh,
  ranks that share a shard coordinate keep the same rows, each in its own file)
  (:meth:`hessop.cli.run.RunState.save_array` with ``part``); the landscapes
  read them back on their rank.

Every rank needs the run's folder: one machine, or a file system every node shares.
"""

from __future__ import annotations

import sys
from typing import Any

from .._collective import together
from .errors import UsageError
from .run import RunState, damaged, part_name


def is_sharded(model: Any) -> bool:
    """Whether ``model``'s parameters are DTensors (sharded with ``fully_shard``)."""
    tensor = sys.modules.get("torch.distributed.tensor")  # no DTensor exists before its module is imported
    if tensor is None or not hasattr(model, "parameters"):
        return False
    return any(isinstance(p, tensor.DTensor) for p in model.parameters())


def _first_local(model: Any) -> Any:
    """This rank's shard of the model's first sharded parameter."""
    return next(p.to_local() for p in model.parameters() if _is_dtensor(p))


def _is_dtensor(p: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(p, DTensor)


def mesh_size(model: Any) -> int:
    """How many processes the model's parameters are sharded over (its device mesh's size)."""
    return int(next(p.device_mesh.size() for p in model.parameters() if _is_dtensor(p)))


def check_sharded(model: Any, args: Any, comm: Any) -> tuple[str, str]:
    """Refuse what a sharded model cannot honour; return its ``(device type, dtype)`` for the run's configuration.

    Raises :class:`UsageError` with the sentence that says what to change (alike on every rank:
    the ranks build the same model from the same options).
    """
    from ..comm.torch_dist import TorchDistComm

    local = _first_local(model)
    device, dtype = local.device, str(local.dtype).removeprefix("torch.")
    ranks = mesh_size(model)
    if comm.size != ranks or (ranks > 1 and not isinstance(comm, TorchDistComm)):
        raise UsageError(
            f"--model: the factory returned a model sharded with fully_shard over {ranks} process(es), but hessop "
            f"runs on {comm.size} ({type(comm).__name__}); launch it with torchrun --nproc-per-node {ranks} "
            "-m hessop analyze ... and --comm auto"
        )
    plain = [name for name, p in model.named_parameters() if p.requires_grad and not _is_dtensor(p)]
    if plain:
        raise UsageError(f"--model: the factory sharded only part of the model with fully_shard ({plain[0]} is not "
                         "sharded); call fully_shard on the root module too, last")
    if args.checkpoint:
        raise UsageError("--checkpoint cannot be loaded into a model already sharded with fully_shard; load it in "
                         "the --model factory before calling fully_shard, and leave out --checkpoint")
    if args.dtype is not None and args.dtype != dtype:
        raise UsageError(f"--dtype {args.dtype}: the model is sharded with fully_shard in {dtype}, and casting a "
                         "sharded model is not safe; cast the model in the factory before fully_shard, or leave "
                         "out --dtype")
    if args.device is not None:
        import torch

        wanted = torch.device(args.device)
        if wanted.type != device.type or (wanted.index is not None and wanted.index != device.index):
            raise UsageError(f"--device {args.device}: the model is sharded with fully_shard on {device}, and "
                             "moving a sharded model is not safe; move the model in the factory before fully_shard "
                             "(or leave out --device)")
    return device.type, dtype


def _owned(model: Any) -> dict[str, Any]:
    """What this rank owns of the model, by name: its parameters' local shards and its buffers."""
    out = {name: (p.to_local() if _is_dtensor(p) else p) for name, p in model.named_parameters()}
    out.update({f"buffer:{name}": b for name, b in model.named_buffers()})
    return out


def keep_shards(model: Any, state: RunState, comm: Any) -> None:
    """Save this rank's shards of the weights the analyses see, or load them back when resuming.

    On every rank together: a file missing or damaged on one rank fails them all.
    """
    import torch

    path = state.array_path(part_name("model", (comm.rank, comm.size)) + ".pt")
    owned = _owned(model)

    def keep() -> None:
        if not state.steps:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({k: t.detach().cpu().clone() for k, t in owned.items()}, path)
            return
        if not path.is_file():
            raise UsageError(f"--resume: {path} is missing; delete {str(state.out)!r} and run again")
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds for a damaged file
            raise damaged(path, f"not the shards this run saved: {type(exc).__name__}") from exc
        if not isinstance(saved, dict) or set(saved) != set(owned) or any(
                not isinstance(saved[k], torch.Tensor) or saved[k].shape != t.shape for k, t in owned.items()):
            raise damaged(path, "not this rank's shards of the model: other names or local shapes")
        with torch.no_grad():
            for k, t in owned.items():
                t.copy_(saved[k])

    together(comm, keep, known=(UsageError,))
