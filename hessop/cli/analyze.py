"""``hessop analyze``: the curvature report of a user's own model and data, given as factories."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .._collective import together
from ..factory import hessian
from .errors import UsageError
from .loading import as_model_and_loss, call_factory, check_data, declares_shard, load_checkpoint, load_object, share
from .run import RunState
from .session import Session, chosen_steps, communicator, prepare, run, torch_device, torch_dtype
from .sharded import check_sharded, is_sharded, keep_shards


def analyze(args: Any) -> int:
    """Run ``hessop analyze`` with parsed options; returns the exit code."""
    steps, budget = chosen_steps(args)  # the options alone, alike on every process: before any collective
    device = torch_device(args.device)
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise UsageError(
            f"--checkpoint: no such file {args.checkpoint!r}; give the path of a file saved with torch.save"
        )
    comm = communicator(args.comm)
    prepare(args, comm)

    def load() -> tuple[Any, Any, Any, Any]:  # on every process; a bad input on any of them fails all together
        model_factory = load_object(args.model, "--model")
        data_factory = load_object(args.data, "--data")
        model, loss_fn = as_model_and_loss(_call(model_factory, "--model", comm), "--model")
        # a model sharded with fully_shard (FSDP2) is used as the factory made it (hessop.cli.sharded)
        layout = check_sharded(model, args, comm) if is_sharded(model) else None
        if args.checkpoint:
            load_checkpoint(model, args.checkpoint, device)
        data = check_data(_call(data_factory, "--data", comm), "--data")
        if not declares_shard(data_factory):  # a factory that takes rank/size returned this process's own shard
            data = share(data, comm)
        return model, loss_fn, data, layout

    model, loss_fn, data, layout = together(comm, load, known=(UsageError,))
    sharded = layout is not None
    if sharded:
        device, dtype_name = layout
        model = model.eval()
    else:
        dtype = torch_dtype(args.dtype)
        model = model.to(device=device, dtype=dtype).eval() if dtype is not None else model.to(device).eval()
        dtype_name = args.dtype or str(next(model.parameters()).dtype).removeprefix("torch.")
    config = {
        "command": "analyze",
        "model": args.model,
        "data": args.data,
        "checkpoint": args.checkpoint,
        "device": device,
        "dtype": dtype_name,
        "seed": args.seed,
        "budget": budget.to_dict(),
        "steps": steps,
        "ranks": comm.size,
        **({"sharded": "fully_shard"} if sharded else {}),  # absent otherwise: older runs still resume
    }
    session = Session(args, config, steps, budget, comm)
    return run(session, lambda runner, state: _setup(session, state, model, loss_fn, data, sharded))


NOT_UNDER_TORCHRUN = ("init_process_group", "torch.distributed using env://")
"""What torch says when a factory shards its model (``get_world_size``, ``init_device_mesh``) in a process that
no ``torchrun`` started: the command line then says how to launch it."""


def _call(factory: Any, flag: str, comm: Any) -> Any:
    try:
        return call_factory(factory, rank=comm.rank, size=comm.size)
    except UsageError:
        raise
    except Exception as exc:
        if comm.size == 1 and any(w in str(exc) for w in NOT_UNDER_TORCHRUN):  # sharding outside a torchrun job
            raise UsageError(
                f"{flag}: the factory needs torch.distributed ({type(exc).__name__}: {str(exc).rstrip('. ')}); "
                "launch it with torchrun --nproc-per-node N -m hessop analyze ..."
            ) from exc
        raise UsageError(
            f"{flag}: the factory raised {type(exc).__name__}: {exc}; fix it (rerun with --debug for the traceback)"
        ) from exc


def cli_advice(message: str) -> str:
    """A library message with its advice to pass ``check_determinism=False`` (a keyword the command line
    does not offer: it always checks) replaced by what to change in the factories."""
    if "check_determinism=False" not in message:
        return message
    message = re.sub(r"[,.]? (?:or )?[Pp]ass check_determinism=False[^;]*", "", message).rstrip(". ")
    return (message + "; the command line always checks that the Hessian is a fixed matrix, so have the --data "
            "factory return the same batches on every pass and the --model factory a model in eval mode")


def _setup(session: Session, state: RunState, model: Any, loss_fn: Any, data: Any, sharded: bool) -> Any:
    if sharded:  # each rank its own shards, in a file of its own (hessop.cli.sharded)
        keep_shards(model, state, session.comm)
    else:
        session.keep_weights(model, state)
    try:
        H = hessian(model, loss_fn, data, comm=session.comm)
        loss = H.loss()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UsageError(f"the model cannot be evaluated on the data: {cli_advice(str(exc))}") from exc
    session.info.update({
        "model": f"{session.config['model']} ({type(model).__name__})",
        "data": session.config["data"],
        "parameters": int(H.shape[0]),
        "loss": float(loss),
        "dtype": session.config["dtype"],
        "device": session.config["device"],
        "processes": session.comm.size,
    })
    return H
