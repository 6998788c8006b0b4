"""``hessop demo``: train a small model on data that ships with Python, then report its Hessian's spectrum.

``--task digits`` (default): a tanh MLP on scikit-learn's handwritten digits.
``--task lm``: a character-level GPT on the standard library's own source
(:mod:`.lm`), with the layer-wise table over the transformer's blocks
(embeddings, each attention, each MLP, the norms, the head), the block
heterogeneity Zhang et al. (2024), "Why Transformers Need Adam: A Hessian
Perspective", measured.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..factory import hessian
from .loading import share
from .run import RunState
from .session import Runner, Session, chosen_steps, communicator, prepare, run, torch_dtype

DEMO: dict[str, dict[str, Any]] = {
    "full": {"hidden": (64, 64), "num_train": None, "epochs": 20},
    "small": {"hidden": (8,), "num_train": 200, "epochs": 3},
}
"""The demo problem at each budget: hidden widths, training samples (None: all 1437), epochs."""

HESSIAN_BATCH = 512
"""Batch size of the Hessian-vector products over the training split (any size gives the same matrix)."""


LM_DEMO: dict[str, dict[str, Any]] = {
    "full": {"n_layer": 2, "n_embd": 64, "n_head": 4, "block_size": 64, "train_steps": 400,
             "hessian_batches": 4, "hessian_batch_size": 8, "text_chars": 200_000},
    "small": {"n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 16, "train_steps": 20,
              "hessian_batches": 2, "hessian_batch_size": 4, "text_chars": 20_000},
}
"""The language-model demo at each budget: model sizes, training steps, the Hessian's data (windows of text)."""


def demo(args: Any) -> int:
    """Run ``hessop demo`` with parsed options; returns the exit code."""
    if getattr(args, "task", "digits") == "lm":
        problem = LM_DEMO[args.budget]
        model = (f"GPT, {problem['n_layer']} layers, width {problem['n_embd']}, {problem['n_head']} heads, "
                 f"context {problem['block_size']}")
        described = {"task": "lm", "dataset": "Python standard-library source, characters", "model": model, **problem}
        return _run_demo(args, described, "float32", _setup_lm)
    problem = DEMO[args.budget]
    described = {
        "dataset": "sklearn digits",
        "model": f"MLP 64-{'-'.join(map(str, problem['hidden']))}-10 (tanh)",
        **{k: list(v) if isinstance(v, tuple) else v for k, v in problem.items()},
    }
    return _run_demo(args, described, "float64", _setup)


def _run_demo(args: Any, described: dict, default_dtype: str, setup: Any) -> int:
    """The run of either task: its configuration, the folder checks, then training and the steps."""
    steps, budget = chosen_steps(args)
    comm = communicator(args.comm)
    prepare(args, comm)  # the report folder is writable and ours before training starts
    config = {
        "command": "demo",
        **described,
        "dtype": args.dtype or default_dtype,
        "seed": args.seed,
        "budget": budget.to_dict(),
        "steps": ["train", *steps],
        "ranks": comm.size,
    }
    session = Session(args, config, steps, budget, comm, extra_steps=1)
    return run(session, lambda runner, state: setup(session, runner, state))


def _trained(session: Session, runner: Runner, state: RunState, model: Any, train: Any) -> Any:
    """``model`` after the run's ``train`` step (or with the weights of the run being resumed), in eval
    mode and the run's dtype."""

    def fit() -> dict:
        result = train()
        session.keep_weights(model, state)
        return result

    trained_here = not state.done("train")
    runner.step("train", fit)
    if not trained_here:
        session.keep_weights(model, state)  # the weights trained by the run being resumed
    return model.to(torch_dtype(session.config["dtype"])).eval()


def _setup(session: Session, runner: Runner, state: RunState) -> Any:
    import torch

    from .digits import digits_model, load_digits_data, train

    cfg, seed = session.config, session.args.seed
    data = load_digits_data(cfg["num_train"], seed=seed)
    model = digits_model(tuple(cfg["hidden"]), seed=seed)

    model = _trained(session, runner, state, model,
                     lambda: train(model, data, cfg["epochs"], seed=seed, progress=session.progress))
    batches = share(data.batches(HESSIAN_BATCH), session.comm)
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


def _setup_lm(session: Session, runner: Runner, state: RunState) -> Any:
    import torch

    from .lm import CharData, lm_model, stdlib_text, train_lm

    cfg, seed = session.config, session.args.seed
    data = CharData.from_text(stdlib_text(cfg["text_chars"]))
    model = lm_model(data, cfg["block_size"], cfg["n_layer"], cfg["n_embd"], cfg["n_head"], seed=seed)

    model = _trained(session, runner, state, model,
                     lambda: train_lm(model, data, cfg["train_steps"], seed=seed, progress=session.progress))
    session.budget = replace(session.budget, blocks=dict(model.parameter_blocks()))
    batches = data.batches(cfg["hessian_batches"], cfg["hessian_batch_size"], cfg["block_size"], seed=seed + 1)
    H = hessian(model, torch.nn.CrossEntropyLoss(), share(batches, session.comm),
                comm=session.comm)
    session.info.update({
        "model": cfg["model"],
        "parameters": int(H.shape[0]),
        "vocabulary": len(data.vocab),
        "Hessian tokens": cfg["hessian_batches"] * cfg["hessian_batch_size"] * cfg["block_size"],
        "dtype": cfg["dtype"],
        "processes": session.comm.size,
    })
    return H
