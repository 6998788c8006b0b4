"""A GPT-2-style decoder-only transformer with readable parameter names.

The architecture of Radford et al. (2019), "Language models are unsupervised
multitask learners": token and position embeddings, ``n_layer`` pre-norm blocks
of causal self-attention and a GELU MLP, a final LayerNorm and a linear head.
:meth:`GPTConfig.gpt2_small` is GPT-2 small (124M parameters with the head tied
to the token embedding, as in GPT-2); :meth:`GPTConfig.char` a character-level
model small enough to train on two CPU cores.

Attention calls :func:`torch.nn.functional.scaled_dot_product_attention`, the
fused kernel most models use; ``hessop.hessian`` picks a kernel with second
derivatives for its products (docs/transformers.md). Parameter names follow the
blocks of the block-wise analysis: ``wte``/``wpe`` (embeddings),
``blocks.{i}.attn``, ``blocks.{i}.mlp``, ``blocks.{i}.ln_1``/``ln_2`` and
``ln_f`` (norms), ``head``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class GPTConfig:
    """Sizes of a :class:`GPT`."""

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    tie_head: bool = False
    """Share the head's weight with the token embedding (GPT-2 does)."""

    @classmethod
    def gpt2_small(cls) -> GPTConfig:
        """GPT-2 small: 12 layers, 12 heads, width 768, 50,257 tokens, context 1024; 124M parameters."""
        return cls(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, tie_head=True)

    @classmethod
    def char(cls, vocab_size: int, block_size: int = 64, n_layer: int = 2, n_head: int = 4,
             n_embd: int = 64) -> GPTConfig:
        """A small character-level model (about 0.1M parameters at the defaults)."""
        return cls(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: ``qkv`` projection, SDPA with ``is_causal``, output ``proj``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd ({config.n_embd}) must be a multiple of n_head ({config.n_head})")
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))`` (pre-norm, as GPT-2)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = nn.Sequential(OrderedDict(
            fc=nn.Linear(config.n_embd, 4 * config.n_embd),
            act=nn.GELU(approximate="tanh"),
            proj=nn.Linear(4 * config.n_embd, config.n_embd),
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token ids ``(B, T)`` to next-token logits ``(B, T, vocab_size)``.

    Weights are initialised as GPT-2's (normal with std 0.02, residual
    projections scaled by ``1/sqrt(2 n_layer)``) from a seeded generator.
    """

    def __init__(self, config: GPTConfig, seed: int = 0):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_head:
            self.head.weight = self.wte.weight
        self._init_weights(seed)

    def _init_weights(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        residual_std = 0.02 / (2 * self.config.n_layer) ** 0.5
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("bias") or ".ln_" in name or name.startswith("ln_f"):
                    p.copy_(torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p))
                else:
                    std = residual_std if name.endswith("proj.weight") else 0.02
                    p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds the context of {self.config.block_size} tokens")
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def parameter_blocks(self) -> OrderedDict[str, list[str]]:
        """Parameter blocks of the block-wise analysis: embeddings, each attention, each MLP, norms, head.

        Values are module prefixes, as :meth:`hessop.HessianOperator.restrict` and the
        ``blocks=`` of :func:`hessop.analysis.layerwise.layerwise` take them.
        """
        blocks: OrderedDict[str, list[str]] = OrderedDict(embeddings=["wte", "wpe"])
        for i in range(self.config.n_layer):
            blocks[f"attention {i}"] = [f"blocks.{i}.attn"]
            blocks[f"mlp {i}"] = [f"blocks.{i}.mlp"]
        blocks["norms"] = [f"blocks.{i}.ln_{j}" for i in range(self.config.n_layer) for j in (1, 2)] + ["ln_f"]
        if not self.config.tie_head:
            blocks["head"] = ["head"]
        return blocks
