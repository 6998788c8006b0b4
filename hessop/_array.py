"""Array-API plumbing shared by every layer: namespaces, host <-> device moves, seeded probes.

This module imports no framework. Native arrays (torch, JAX, CuPy, numpy,
``array_api_strict``) are handled through :mod:`array_api_compat`; the few
framework-specific moves to the host are dispatched on the array's type.

Random vectors are drawn on the host from a :class:`numpy.random.Generator` and
moved to the operator's device once per draw (never inside a solver's inner
loop). That keeps results bit-for-bit reproducible across frameworks: the same
seed gives the same probes in PyTorch, JAX and numpy, which is what makes a
PyTorch model and its JAX twin produce the same numbers.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

Array = Any
"""A native array of any array-API namespace (numpy, torch, JAX, CuPy, array_api_strict)."""


def namespace(*arrays: Array):
    """The array-API namespace of ``arrays`` (``numpy`` arrays give the compat numpy namespace)."""
    return array_api_compat.array_namespace(*arrays)


def device_of(x: Array):
    """The device of a native array, in its namespace's own terms."""
    return array_api_compat.device(x)


def import_cupy():
    """The ``cupy`` module, or an ImportError that says how to install it."""
    try:
        import cupy
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise ImportError(
            "this needs CuPy with a CUDA device: pip install cupy-cuda12x (or the wheel matching your CUDA)"
        ) from err
    return cupy


def same_device(a: Any, b: Any) -> bool:
    """Whether two devices, possibly named by different frameworks, are the same one.

    Two JAX shardings are the same place when they span the same devices (a
    vector sharded one way and a replicated result of the same mesh).
    """
    sets = getattr(a, "device_set", None), getattr(b, "device_set", None)
    if sets[0] is not None and sets[1] is not None:
        return sets[0] == sets[1]
    try:
        return device_key(a) == device_key(b)
    except ValueError:
        return str(a) == str(b)


def device_key(device: Any) -> tuple[str, int]:
    """A device as ``(kind, index)`` with kind ``"cpu"`` or ``"cuda"``, whatever framework named it.

    Understands ``torch.device``, JAX devices, ``cupy.cuda.Device``, strings such
    as ``"cuda:1"``, ``"gpu:0"`` or ``"cpu"``, and integers (a CUDA ordinal).
    """
    if isinstance(device, (int, np.integer)):
        return ("cuda", int(device))
    if hasattr(device, "platform"):  # JAX
        kind = "cuda" if device.platform in ("gpu", "cuda", "rocm") else str(device.platform)
        index = getattr(device, "local_hardware_id", None)
        return (kind, int(device.id if index is None else index))
    if hasattr(device, "type") and hasattr(device, "index"):  # torch
        return (_kind(device.type), int(device.index or 0))
    if type(device).__module__.startswith("cupy"):  # cupy.cuda.Device
        return ("cuda", int(device.id))
    text = str(device).lower()
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda", "gpu") or (index and not index.isdigit()):
        raise ValueError(f"cannot interpret device {device!r}; use e.g. 'cpu', 'cuda:0' or a framework device")
    return (_kind(kind), int(index or 0))


def _kind(name: str) -> str:
    return "cpu" if name == "cpu" else "cuda"


def to_numpy(x: Array) -> np.ndarray:
    """Copy a native array to a host :class:`numpy.ndarray` (no copy when it already is one)."""
    if isinstance(x, np.ndarray):
        return x
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_jax_array(x):
        return np.asarray(x)
    try:
        return np.from_dlpack(x)
    except (TypeError, RuntimeError, BufferError, AttributeError):
        return np.asarray(x)


def to_host(value: Any) -> np.ndarray:
    """Any value (a scalar, a list, a native array of any framework and dtype) as a host numpy array.

    Torch's bfloat16, which has no numpy twin, comes back as float32.
    """
    if not hasattr(value, "shape"):
        return np.asarray(value)
    try:
        return to_numpy(value)
    except TypeError:  # torch bfloat16 has no numpy twin
        return to_numpy(value.float())


def host_floats(value: Any) -> list[float]:
    """``value`` as a list of Python floats (float64): the JSON form of an array."""
    return np.asarray(to_host(value), dtype=np.float64).tolist()


def from_numpy(a: np.ndarray, xp, device=None, dtype=None) -> Array:
    """Move a host array into namespace ``xp`` on ``device``, optionally casting to ``dtype``.

    ``device`` may be a JAX sharding of several devices (the placement of a
    sharded vector): a host array placed with it is split the same way.
    """
    out = xp.asarray(np.ascontiguousarray(a), device=device) if device is not None else xp.asarray(a)
    if dtype is not None and out.dtype != dtype:
        out = xp.astype(out, dtype)
    return out


def replicated(a: np.ndarray, xp, device=None, dtype=None) -> Array:
    """A small host array (coefficients, a Gram matrix) moved next to vectors placed on ``device``.

    As :func:`from_numpy`, except where ``device`` spans several devices (a JAX
    sharding): a small array is not split like a vector (its shape need not
    divide over the mesh), it is left uncommitted, and JAX copies it to every
    device of an operation that needs it.
    """
    if len(getattr(device, "device_set", ())) > 1:
        device = None
    return from_numpy(a, xp, device, dtype)


def numpy_dtype(xp, dtype) -> np.dtype:
    """The numpy dtype matching a native dtype (used to give scipy an explicit dtype)."""
    for name in ("float64", "float32", "float16", "complex128", "complex64"):
        if hasattr(xp, name) and dtype == getattr(xp, name):
            return np.dtype(name)
    if hasattr(xp, "bfloat16") and dtype == xp.bfloat16:
        return np.dtype("float32")
    return np.dtype(str(dtype).rsplit(".", 1)[-1])


def rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """A numpy Generator from a seed, an existing generator (returned as is) or None (fresh entropy)."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


SPLIT_CHUNK = 1 << 16
"""Rows per independently seeded chunk of a split draw (:func:`random_rows`)."""
_SPLIT_STREAM = 0x73706C6974  # "split": keeps the chunk streams apart from every other seed sequence


def random_rows(key, n: int, start: int, stop: int, cols: int | None, kind: str = "gaussian") -> np.ndarray:
    """Rows ``start:stop`` of a random ``(n,)`` (``cols=None``) or ``(n, cols)`` draw named by ``key``.

    The whole draw is cut into chunks of :data:`SPLIT_CHUNK` rows (the last one shorter); chunk ``b``
    comes from ``default_rng([*key, SPLIT_STREAM, b])``. A rank draws only the
    chunks that overlap its rows, and the whole vector is the same for any
    number of ranks and any split of its rows.
    """
    key = [int(k) for k in np.atleast_1d(key)]
    shape = () if cols is None else (int(cols),)
    out = np.empty((stop - start, *shape))
    for b in range(start // SPLIT_CHUNK, -(-stop // SPLIT_CHUNK) if stop > start else 0):
        lo, hi = b * SPLIT_CHUNK, min((b + 1) * SPLIT_CHUNK, n)
        chunk = random_matrix(np.random.default_rng([*key, _SPLIT_STREAM, b]), (hi - lo, *shape), kind)
        a, z = max(lo, start), min(hi, stop)
        out[a - start:z - start] = chunk[a - lo:z - lo]
    return out


def random_at(key, n: int, index: np.ndarray, cols: int | None, kind: str = "gaussian") -> np.ndarray:
    """The rows ``index`` (global positions, any order) of the draw :func:`random_rows` names by ``key``.

    For a layout whose rows are not one contiguous block of the whole vector
    (FSDP2: a piece of every parameter); draws only the chunks that hold them.
    """
    index = np.asarray(index, dtype=np.int64)
    key = [int(k) for k in np.atleast_1d(key)]
    shape = () if cols is None else (int(cols),)
    out = np.empty((index.size, *shape))
    chunks = index // SPLIT_CHUNK
    for b in np.unique(chunks):
        lo, hi = int(b) * SPLIT_CHUNK, min((int(b) + 1) * SPLIT_CHUNK, n)
        chunk = random_matrix(np.random.default_rng([*key, _SPLIT_STREAM, int(b)]), (hi - lo, *shape), kind)
        where = np.flatnonzero(chunks == b)
        out[where] = chunk[index[where] - lo]
    return out


def random_matrix(gen: np.random.Generator, shape, kind: str = "gaussian") -> np.ndarray:
    """Host float64 random probes: ``"gaussian"`` N(0, 1) or ``"rademacher"`` +-1 entries."""
    if kind == "gaussian":
        return gen.standard_normal(shape)
    if kind == "rademacher":
        return gen.integers(0, 2, size=shape).astype(np.float64) * 2.0 - 1.0
    raise ValueError(f"unknown probe kind {kind!r}; use 'gaussian' or 'rademacher'")
