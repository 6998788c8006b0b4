"""The models, data and ground truths every tool is measured on.

Each :class:`Problem` is one float32 model in eval mode (BatchNorm uses running
statistics, as PyHessian forces), one batch of data and a mean cross-entropy
loss. Ground truth is the dense float64 Hessian of the same loss, built with
``torch.func.jacrev(torch.func.grad(...))`` (independent of hessop's own
products) and cached on disk, with its eigenvalues and trace.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

HVP = "double-backward"
"""hessop's product strategy in every benchmark: reverse-over-reverse, the algorithm PyHessian and
hessian-eigenthings use. The default ``hvp="auto"`` takes it too for vectors over a kept graph and times
the block strategies once per operator, a one-off cost kept out of the comparison."""

CACHE = os.environ.get("HESSOP_BENCH_CACHE", "/tmp/hessop-bench-cache")


@dataclass
class Problem:
    """A model, its data and loss, and (when dense is affordable) exact eigenvalues and trace."""

    name: str
    description: str
    model: object
    loss: Callable
    x: object
    y: object
    eigenvalues: np.ndarray | None = None  # exact, descending
    trace: float | None = None
    truth_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    math_attention: bool = False
    """The model calls ``F.scaled_dot_product_attention``: the other tools' double backward needs
    ``sdpa_kernel(SDPBackend.MATH)`` around them (the fused CPU kernel has no second derivative)."""

    @property
    def num_params(self) -> int:
        return int(sum(p.numel() for p in self.model.parameters()))

    @property
    def data(self):
        return (self.x, self.y)


def digits(n: int | None = None, size: int = 8, channels: int = 0):
    """scikit-learn's 8x8 digits (shipped with the package): inputs in [0, 1] and labels.

    ``size=32`` upsamples each image by 4 (nearest); ``channels`` > 0 returns
    ``(N, channels, size, size)`` images, else flat vectors.
    """
    import torch
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = X[:n], y[:n]
    x = torch.tensor(X / 16.0, dtype=torch.float32)
    if channels:
        x = x.reshape(-1, 1, 8, 8)
        if size != 8:
            x = torch.nn.functional.interpolate(x, scale_factor=size // 8, mode="nearest")
        x = x.expand(-1, channels, -1, -1).contiguous()
    return x, torch.tensor(y)


def train(model, x, y, steps: int, lr: float = 1e-2, batch: int | None = None, seed: int = 0):
    """A few Adam steps on (x, y) in train mode, then eval mode. Returns the final training loss."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        idx = torch.randperm(x.shape[0], generator=gen)[:batch] if batch else slice(None)
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


def dense_hessian(model, loss, x, y, chunk: int = 64) -> np.ndarray:
    """The float64 Hessian of ``loss(model(x), y)`` in the parameters, by ``jacrev`` of ``grad``."""
    import copy

    import torch
    from torch.func import functional_call, grad, jacrev

    m64 = copy.deepcopy(model).double().eval()
    names = [k for k, _ in m64.named_parameters()]
    shapes = [p.shape for _, p in m64.named_parameters()]
    sizes = [p.numel() for _, p in m64.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for _, p in m64.named_parameters()])
    buffers = {k: b for k, b in m64.named_buffers()}
    x64 = x.double() if x.is_floating_point() else x

    def f(flat):
        parts = torch.split(flat, sizes)
        params = {k: v.reshape(s) for k, v, s in zip(names, parts, shapes)}
        return loss(functional_call(m64, (params, buffers), (x64,)), y)

    return jacrev(grad(f), chunk_size=chunk)(theta).numpy()


def _key(problem: Problem) -> str:
    h = hashlib.sha1(problem.name.encode())
    for p in problem.model.parameters():
        h.update(p.detach().numpy().tobytes())
    h.update(problem.x.numpy().tobytes())
    return h.hexdigest()[:16]


def with_truth(problem: Problem, log: Callable[[str], None] = lambda s: None) -> Problem:
    """Attach exact eigenvalues and trace (dense float64), from the cache when there."""
    import scipy.linalg

    os.makedirs(CACHE, exist_ok=True)
    path = os.path.join(CACHE, f"{problem.name}-{_key(problem)}.npz")
    if os.path.exists(path):
        data = np.load(path)
        problem.eigenvalues, problem.trace = data["eigenvalues"], float(data["trace"])
        problem.truth_seconds = float(data["seconds"])
        problem.notes.append(f"ground truth from cache {path}")
        return problem
    log(f"  dense float64 Hessian of {problem.name} (n = {problem.num_params}) ...")
    start = time.perf_counter()
    D = dense_hessian(problem.model, problem.loss, problem.x, problem.y)
    built = time.perf_counter() - start
    D = 0.5 * (D + D.T)
    tr = float(np.trace(D))
    w = scipy.linalg.eigvalsh(D, overwrite_a=True, check_finite=False, driver="evd")[::-1].copy()
    problem.eigenvalues, problem.trace = w, tr
    problem.truth_seconds = time.perf_counter() - start
    log(f"  built in {built:.1f} s, eigvalsh in {problem.truth_seconds - built:.1f} s")
    np.savez(path, eigenvalues=w, trace=tr, seconds=problem.truth_seconds)
    return problem


# -- the benchmark models -----------------------------------------------------------------

def mlp_digits() -> Problem:
    """A tanh MLP 64-32-32-10 on all 1797 digits (3,466 parameters), trained 300 Adam steps."""
    import torch

    from hessop.models.small import MLP

    torch.manual_seed(0)
    x, y = digits()
    model = MLP(64, 10, (32, 32))
    final = train(model, x, y, steps=300)
    return Problem("mlp-digits", f"MLP 64-32-32-10 (tanh), 1797 digits, trained (loss {final:.3f})",
                   model, torch.nn.CrossEntropyLoss(), x, y)


def two_layer(hidden: int = 200, n: int = 1000) -> Problem:
    """A two-layer tanh network 64-hidden-10 on digits, as in Ghorbani et al.'s accuracy figure.

    15,010 parameters (the paper's scale) at the default ``hidden=200``; 3,760 at ``hidden=50``.
    """
    import torch

    from hessop.models.small import MLP

    torch.manual_seed(1)
    x, y = digits(n)
    model = MLP(64, 10, (hidden,))
    final = train(model, x, y, steps=200)
    n_params = 64 * hidden + hidden + hidden * 10 + 10
    return Problem(f"two-layer-{n_params}", f"two-layer MLP 64-{hidden}-10 (tanh), {n} digits, trained "
                   f"(loss {final:.3f})", model, torch.nn.CrossEntropyLoss(), x, y)


def cnn_bn(n: int = 256) -> Problem:
    """Two 3x3 convolutions with BatchNorm (16 channels) on ``n`` 8x8 digits (2,714 parameters), eval mode.

    The dense float64 ground truth is the expensive part: PyTorch's CPU convolutions have no fast
    float64 path, and each Hessian column costs about 0.2 s per 512 images on 2 cores.
    """
    import torch

    from hessop.models.small import SmallCNN

    torch.manual_seed(2)
    x, y = digits(n, channels=1)
    model = SmallCNN(1, 10, channels=16)
    final = train(model, x, y, steps=150, batch=128)
    return Problem("cnn-bn", f"CNN conv-BN-conv-BN-pool-linear (16 ch), {n} digits, trained (loss {final:.3f}), "
                   "BatchNorm in eval mode", model, torch.nn.CrossEntropyLoss(), x, y)


def resnet20(batch: int = 16) -> Problem:
    """ResNet20 (0.27 M parameters) at initialisation on ``batch`` synthetic 32x32 RGB images."""
    import torch

    from hessop.models.resnet import resnet20 as make
    from hessop.models.small import random_batches

    torch.manual_seed(3)
    model = make(num_classes=10)
    (x, y), = random_batches((3, 32, 32), [batch], num_classes=10, seed=3)
    train(model, x, y, steps=1, lr=1e-3)  # one step so BatchNorm running statistics describe the data
    return Problem("resnet20", f"ResNet20 at initialisation, {batch} synthetic 32x32 images, BatchNorm in eval mode",
                   model, torch.nn.CrossEntropyLoss(), x, y)


class TokenCrossEntropy(__import__("torch").nn.CrossEntropyLoss):
    """The mean cross-entropy over all tokens: ``(B, T, V)`` logits and ``(B, T)`` targets, flattened.

    torch's own ``nn.CrossEntropyLoss`` reads class scores from dimension 1; the other tools call
    ``loss(model(x), y)`` as is, so the language-model layout is flattened here for all of them alike.
    """

    def forward(self, logits, targets):
        return super().forward(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def gpt_char(layers: int = 2, width: int = 64, batch: int = 16, length: int = 64) -> Problem:
    """A character-level GPT (``layers`` x ``width``, SDPA attention, about 0.1M parameters) trained
    briefly on the standard library's source text, on ``batch`` windows of ``length`` characters."""
    import torch

    from hessop.cli.lm import CharData, lm_model, stdlib_text, train_lm

    torch.manual_seed(4)
    data = CharData.from_text(stdlib_text(100_000))
    model = lm_model(data, block_size=length, n_layer=layers, n_embd=width, n_head=4, seed=4)
    trained = train_lm(model, data, steps=150, batch_size=32, seed=4)
    x, y = data.windows(batch, length, seed=5)
    return Problem("gpt-char", f"character-level GPT ({layers} layers, width {width}, 4 heads, vocabulary "
                   f"{len(data.vocab)}), trained 150 AdamW steps (training loss {trained['train_loss']:.3f}), "
                   f"{batch} windows of {length} characters of the standard library's source",
                   model, TokenCrossEntropy(), x, y, math_attention=True)
