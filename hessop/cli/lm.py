"""The language-model demo's problem: a character-level GPT on the standard library's own source.

Every Python installation ships its standard library as ``.py`` files, so the
text needs no download: a fixed list of pure-Python modules is read, in order,
up to a number of characters. Characters are the tokens. Windows of the text
give ``(x, y)`` pairs with ``y`` the next character, a token-level
cross-entropy on ``(B, T, V)`` logits.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..models.gpt import GPT, GPTConfig

SOURCES = ("textwrap", "string", "fnmatch", "glob", "bisect", "heapq", "shlex", "difflib", "argparse",
           "contextlib", "functools", "calendar", "pprint", "queue", "sched", "dataclasses")
"""Pure-Python standard-library modules read for the text, in this order."""


def stdlib_text(max_chars: int = 200_000) -> str:
    """The source of :data:`SOURCES`, concatenated, cut at ``max_chars`` characters."""
    parts, total = [], 0
    for name in SOURCES:
        try:
            path = inspect.getsourcefile(importlib.import_module(name))
        except (ImportError, TypeError):  # a trimmed installation: use what is there
            continue
        if path is None:
            continue
        with open(path, encoding="utf-8") as f:
            parts.append(f.read())
        total += len(parts[-1])
        if total >= max_chars:
            break
    text = "".join(parts)[:max_chars]
    if not text:
        raise RuntimeError("no standard-library source files were found to train the language model on")
    return text


@dataclass(frozen=True)
class CharData:
    """A text as token ids, its vocabulary, and a 90% / 10% training / validation split."""

    vocab: str
    train_ids: torch.Tensor
    val_ids: torch.Tensor

    @classmethod
    def from_text(cls, text: str) -> CharData:
        vocab = "".join(sorted(set(text)))
        lookup = {c: i for i, c in enumerate(vocab)}
        ids = torch.tensor([lookup[c] for c in text], dtype=torch.long)
        split = int(0.9 * len(ids))
        return cls(vocab, ids[:split], ids[split:])

    def windows(self, num: int, length: int, seed: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """``num`` seeded random windows: inputs ``(num, length)`` and next-character targets."""
        ids = self.train_ids if split == "train" else self.val_ids
        starts = np.random.default_rng(seed).integers(0, len(ids) - length - 1, size=num)
        x = torch.stack([ids[s:s + length] for s in starts])
        y = torch.stack([ids[s + 1:s + length + 1] for s in starts])
        return x, y

    def batches(self, num_batches: int, batch_size: int, length: int,
                seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed list of ``(x, y)`` training batches (the data of the Hessian)."""
        x, y = self.windows(num_batches * batch_size, length, seed)
        return list(zip(x.split(batch_size), y.split(batch_size)))


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over all tokens of ``(B, T, V)`` logits and ``(B, T)`` targets."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def lm_model(data: CharData, block_size: int, n_layer: int, n_embd: int, n_head: int, seed: int = 0) -> GPT:
    """A seeded character-level :class:`~hessop.models.gpt.GPT` for ``data``'s vocabulary."""
    return GPT(GPTConfig.char(len(data.vocab), block_size=block_size, n_layer=n_layer, n_head=n_head,
                              n_embd=n_embd), seed=seed)


def train_lm(model: GPT, data: CharData, steps: int, batch_size: int = 32, lr: float = 3e-3, seed: int = 0,
             progress: bool = False) -> dict:
    """AdamW on seeded random windows; returns the training settings and the losses at the end."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    T = model.config.block_size
    model.train()
    for step in tqdm(range(steps), desc="train", unit="step", disable=not progress, leave=False):
        x, y = data.windows(batch_size, T, seed=seed * 1_000_003 + step)
        opt.zero_grad()
        token_loss(model(x), y).backward()
        opt.step()
    model.eval()
    return {"steps": steps, "batch_size": batch_size, "lr": lr, **evaluate_lm(model, data, seed)}


@torch.no_grad()
def evaluate_lm(model: GPT, data: CharData, seed: int = 0, num: int = 64) -> dict:
    """Token cross-entropy (nats) on ``num`` seeded windows of each split."""
    T = model.config.block_size
    out = {}
    for split in ("train", "val"):
        x, y = data.windows(num, T, seed=seed + 7, split=split)
        out[f"{split}_loss"] = float(token_loss(model(x), y))
    return out
