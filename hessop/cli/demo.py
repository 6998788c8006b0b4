"""``hessop demo``: train a small MLP on the handwritten digits, then report its Hessian's spectrum."""

from __future__ import annotations

from typing import Any

from .loading import shard
from .run_state import RunState
from .runner import Runner
from .session import Session, chosen_steps, communicator, prepare, run, torch_dtype

DEMO = {
    "full": {"hidden": (64, 64), "num_train": None, "epochs": 20},
    "small": {"hidden": (8,), "num_train": 200, "epochs": 3},
}
"""The demo problem at each budget: hidden widths, training samples (None: all 1437), epochs."""

HESSIAN_BATCH = 512
"""Batch size of the Hessian-vector products over the training split (any size gives the same matrix)."""


def demo(args: Any) -> int:
    """Run ``hessop demo`` with parsed options; returns the exit code."""
    steps, budget = chosen_steps(args)
    problem = DEMO[args.budget]
    comm = communicator(args.comm)
    prepare(args, comm)  # the report folder is writable and ours before training starts
    config = {
        "command": "demo",
        "dataset": "sklearn digits",
        "model": f"MLP 64-{'-'.join(map(str, problem['hidden']))}-10 (tanh)",
        **{k: list(v) if isinstance(v, tuple) else v for k, v in problem.items()},
        "dtype": args.dtype or "float64",
        "seed": args.seed,
        "budget": budget.to_dict(),
        "steps": ["train", *steps],
        "ranks": comm.size,
    }
    session = Session(args, config, steps, budget, comm, extra_steps=1)
    return run(session, lambda runner, state: _setup(session, runner, state))


def _setup(session: Session, runner: Runner, state: RunState) -> Any:
    import torch

    from ..factory import hessian
    from .digits import digits_model, load_digits_data, train

    cfg, seed = session.config, session.args.seed
    data = load_digits_data(cfg["num_train"], seed=seed)
    model = digits_model(tuple(cfg["hidden"]), seed=seed)

    def fit() -> dict:
        result = train(model, data, cfg["epochs"], seed=seed, progress=session.progress)
        session.keep_weights(model, state)
        return result

    trained_here = not state.done("train")
    runner.step("train", fit)
    if not trained_here:
        session.keep_weights(model, state)  # the weights trained by the run being resumed
    model = model.to(torch_dtype(cfg["dtype"])).eval()
    batches = shard(data.batches(HESSIAN_BATCH), session.comm.rank, session.comm.size)
    H = hessian(model, torch.nn.CrossEntropyLoss(), batches, comm=session.comm)
    session.info.update({
        "model": cfg["model"],
        "parameters": int(H.shape[0]),
        "training samples": int(len(data.y_train)),
        "test samples": int(len(data.y_test)),
        "dtype": cfg["dtype"],
        "processes": session.comm.size,
    })
    return H
