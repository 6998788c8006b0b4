"""Parameter naming for the JAX backend: pytree key paths as dotted names, and the leaves' dtypes.

A leaf's name is its key path joined by ``"."`` (``{"layer1": {"w": ...}}`` gives
``"layer1.w"``; list and tuple positions are numbers, a bare array is ``"params"``),
and its block (module) is the name without its last part, so ``H.restrict("layer1")``
selects a sub-dictionary as it selects a PyTorch module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def path_name(path) -> str:
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return ".".join(parts) if parts else "params"


def module_of(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def as_float_leaf(name: str, leaf):
    if not hasattr(leaf, "dtype"):  # a Python number: JAX's default dtype for it
        leaf = jnp.asarray(leaf)
    dtype = leaf.dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"parameter {name!r} has dtype {dtype}; every params leaf must be a floating array "
            "(move integer state such as step counters out of the params pytree)"
        )
    if np.dtype(dtype) == np.float64 and not jax.config.read("jax_enable_x64"):
        raise TypeError(
            f"parameter {name!r} is float64 but JAX's 64-bit mode is off, so JAX would compute in float32; "
            "enable it with jax.config.update('jax_enable_x64', True) or cast the parameters to float32"
        )
    return leaf if isinstance(leaf, jax.Array) else jnp.asarray(leaf)
