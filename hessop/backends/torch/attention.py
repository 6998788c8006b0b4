"""Attention kernels with second derivatives, for curvature products.

``F.scaled_dot_product_attention`` dispatches to fused kernels (flash,
memory-efficient, cuDNN) whose backward pass has no derivative of its own and
no forward-mode rule, so neither reverse-over-reverse nor forward-over-reverse
products can run through them. ``nn.MultiheadAttention`` and
``nn.TransformerEncoderLayer`` in eval mode also take "fast paths"
(``_native_multi_head_attention``, ``_transformer_encoder_layer_fwd``) that
have no forward-mode rule either.

:func:`exact_attention` selects, for the code it wraps only, torch's "math"
attention (plain matrix products and a softmax, which autograd differentiates
any number of times, in both modes) and turns the fast paths off. It is the
same function computed by other kernels: products are exact; the math kernel
holds the ``(B, heads, T, T)`` attention matrix, where flash attention would not.
The previous settings are restored on exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def exact_attention() -> Iterator[None]:
    """Within the block, attention runs through kernels that have every derivative (module docstring)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    mha = getattr(torch.backends, "mha", None)
    fast = mha.get_fastpath_enabled() if mha is not None else None
    if mha is not None:
        mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        if mha is not None:
            mha.set_fastpath_enabled(fast)
