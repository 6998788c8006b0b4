"""User input for ``hessop analyze``: ``module:factory`` paths, their results, checkpoints.

Every check here raises :class:`~hessop.cli.errors.UsageError` with one sentence
that says what was wrong and what to do, at the point where the input enters.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..distributed import shard
from .errors import UsageError


def load_object(spec: str, flag: str) -> Callable:
    """The callable named by ``"package.module:name"`` or ``"path/to/file.py:name"``.

    Parameters
    ----------
    spec : str
        Where the factory lives; a module is imported, a ``.py`` file is loaded.
    flag : str
        The option the spec came from (``"--model"``), for error messages.
    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{flag} {spec!r} is not of the form 'package.module:factory' or 'file.py:factory'")
    if module_name.endswith(".py"):
        module = _load_file(Path(module_name), flag)
    else:
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))  # as `python -m` would: modules beside the user are importable
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise UsageError(
                f"{flag}: cannot import module {module_name!r} ({exc}); check the spelling and that it is on PYTHONPATH"
            ) from exc
        except Exception as exc:
            raise UsageError(f"{flag}: cannot import module {module_name!r}: {_what(exc)}; fix the module") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{flag}: module {module_name!r} has no attribute {attr!r}; check the name after ':'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(
            f"{flag}: {spec!r} is a {type(obj).__name__}, not a callable factory; name a function or class"
        )
    return obj


def _load_file(path: Path, flag: str):
    if not path.is_file():
        raise UsageError(f"{flag}: no such file {str(path)!r}; give an existing .py file or a module name")
    name = f"_hessop_user_{path.stem}_{abs(hash(str(path.resolve())))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{flag}: cannot import {str(path)!r} as a Python module; give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise UsageError(f"{flag}: cannot load {str(path)!r}: {_what(exc)}; fix the file") from exc
    return module


def _what(exc: BaseException) -> str:
    """A one-line account of an error raised while loading a user's file (a SyntaxError names the line)."""
    if isinstance(exc, SyntaxError):
        return f"{exc.msg} at line {exc.lineno}"
    return f"it raised {type(exc).__name__}: {exc}"


def call_factory(factory: Callable, **context: Any) -> Any:
    """Call ``factory``, passing those of ``context`` (e.g. ``rank``, ``size``) it declares."""
    try:
        params: Mapping[str, Any] = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs = {k: v for k, v in context.items() if k in params}
    return factory(**kwargs)


def as_model_and_loss(obj: Any, flag: str = "--model") -> tuple[Any, Any]:
    """``(model, loss_fn)`` from a model factory's result: a module, or a ``(module, loss_fn)`` pair.

    Without a loss the cross-entropy loss is used (classification).
    """
    import torch

    if isinstance(obj, tuple) and len(obj) == 2:
        model, loss_fn = obj
    else:
        model, loss_fn = obj, None
    if not isinstance(model, torch.nn.Module):
        raise UsageError(
            f"{flag}: the factory returned a {type(model).__name__}; "
            "return a torch.nn.Module or a (module, loss_fn) pair"
        )
    if loss_fn is None:
        loss_fn = torch.nn.CrossEntropyLoss()
    if not callable(loss_fn):
        raise UsageError(f"{flag}: the loss returned with the model is a {type(loss_fn).__name__}, "
                         "not a callable loss_fn(output, target)")
    if not any(p.requires_grad for p in model.parameters()):
        raise UsageError(
            f"{flag}: the model has no trainable parameters; return a module with parameters that require grad"
        )
    return model, loss_fn


def check_data(data: Any, flag: str = "--data") -> Any:
    """Check a data factory's result: a DataLoader (any re-iterable of batches), a list of batches, or one batch."""
    import torch

    if _is_batch(data):
        return data
    if isinstance(data, list):
        if not data:
            raise UsageError(f"{flag}: the factory returned an empty list; return at least one (inputs, targets) batch")
        bad = next((i for i, b in enumerate(data) if not _is_batch(b)), None)
        if bad is not None:
            raise UsageError(f"{flag}: item {bad} of the returned list is a {type(data[bad]).__name__}, "
                             "not an (inputs, targets) pair")
        return data
    if isinstance(data, torch.utils.data.DataLoader) or (hasattr(data, "__iter__") and iter(data) is not data):
        return data
    raise UsageError(
        f"{flag}: the factory returned a {type(data).__name__}; return a DataLoader, "
        "a list of (inputs, targets) batches or one (inputs, targets) batch (a generator can be read only once)"
    )


def _is_batch(b: Any) -> bool:
    import torch

    return isinstance(b, (tuple, list)) and len(b) == 2 and isinstance(b[1], torch.Tensor)


def declares_shard(factory: Callable) -> bool:
    """Whether a data factory takes ``rank`` or ``size``: then it returns this process's own shard."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return "rank" in params or "size" in params


def share(data: Any, comm: Any) -> Any:
    """This process's share of data a factory returned whole: the command line's rule on the library's ``shard``.

    A list of at least one batch per process is split round robin
    (:func:`hessop.distributed.shard`); any other data (a ``DataLoader``, one
    batch, fewer batches than processes) is used whole by every process, which
    is correct, without a speed-up, and never leaves a process without data.
    A factory that declares ``rank``/``size`` returned its own shard: do not call this on it.
    """
    if comm.size > 1 and isinstance(data, list) and len(data) >= comm.size:
        return shard(data, comm)
    return data


def load_checkpoint(model: Any, path: str, device: str) -> None:
    """Load a checkpoint into ``model``: a state dict, or a dict holding one under a usual key."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--checkpoint: no such file {path!r}; give the path of a file saved with torch.save")
    try:
        obj = torch.load(p, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad file
        raise UsageError(
            f"--checkpoint: cannot read {path!r} as a torch checkpoint ({type(exc).__name__}); "
            "save it with torch.save(model.state_dict(), path)"
        ) from exc
    state = obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                state = obj[key]
                break
    if not isinstance(state, dict):
        raise UsageError(
            f"--checkpoint: {path!r} holds a {type(state).__name__}, not a state dict; save model.state_dict()"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise UsageError(f"--checkpoint: {path!r} does not fit the model ({detail}); "
                         "check that --model builds the same architecture") from exc
