"""Yao, Gholami, Keutzer & Mahoney (2020), "PyHessian: neural networks through the lens of the Hessian".

Their Tables I-III: the Hessian's top eigenvalue and trace of CIFAR-10 ResNets
with and without BatchNorm and residual connections. Their reading: removing
residual connections makes deep networks much sharper (larger top eigenvalue and
trace), and removing BatchNorm makes the landscape flatter for shallow networks
but sharper for deep ones.

Here, at CPU scale: CIFAR-style ResNets (``hessop.models.resnet``, width 8) of
a shallow and a deeper depth, the four BN x residual variants of each, trained
for a few hundred SGD steps on scikit-learn's digits upsampled to 16x16 (an
offline dataset); then ``eigsh(H, k=1)`` and ``trace(H)`` of the loss on a fixed
batch of 256 training images.
"""

from __future__ import annotations

import time

import numpy as np

from . import Verdict
from ._common import figure_path, pyplot, rel

VARIANTS = [(True, True), (False, True), (True, False), (False, False)]  # (batchnorm, residual)


def _label(bn: bool, res: bool) -> str:
    return f"{'BN' if bn else 'no BN'}, {'residual' if res else 'no residual'}"


def _train(model, x, y, steps: int, batch: int, lr: float, seed: int) -> float:
    import torch

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        if not torch.isfinite(loss):
            break
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def measure(depth: int, bn: bool, res: bool, x, y, xe, ye, steps: int, seed: int = 0) -> dict:
    """Train one variant and measure the top eigenvalue and trace of its Hessian on (xe, ye)."""
    import torch

    import hessop
    from hessop.models.resnet import resnet
    from hessop.solvers.eigsh import eigsh
    from hessop.solvers.trace import trace

    torch.manual_seed(seed)
    model = resnet(depth, num_classes=10, width=8, batchnorm=bn, residual=res, in_channels=1)
    t0 = time.perf_counter()
    acc = _train(model, x, y, steps, batch=32, lr=0.05 if bn else 0.02, seed=seed)
    H = hessop.hessian(model, torch.nn.CrossEntropyLoss(), (xe, ye), hvp="double-backward")
    top = eigsh(H, k=1, tol=1e-3, max_matvecs=300)
    tr = trace(H, method="hutchinson", max_matvecs=100, rtol=0.05)
    return {"depth": depth, "bn": bn, "res": res, "acc": acc, "loss": H.loss(), "n": H.shape[0],
            "top": float(top.eigenvalues[0]), "top_ok": bool(top.converged[0]),
            "trace": tr.estimate, "trace_se": tr.stderr, "seconds": time.perf_counter() - t0}


def run(quick: bool = False, log=print) -> Verdict:
    from .. import _problems

    start = time.perf_counter()
    x, y = _problems.digits(channels=1, size=8)
    xe, ye = x[:256], y[:256]
    depths = (8, 20)
    steps = 60 if quick else 200
    rows = []
    for depth in depths:
        for bn, res in VARIANTS:
            r = measure(depth, bn, res, x, y, xe, ye, steps)
            log(f"  ResNet{depth} {_label(bn, res)}: acc {r['acc']:.2f} top {r['top']:.3g} trace {r['trace']:.3g} "
                f"({r['seconds']:.0f} s)")
            rows.append(r)

    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.6))
    width = 0.2
    for j, (bn, res) in enumerate(VARIANTS):
        sel = [r for r in rows if r["bn"] == bn and r["res"] == res]
        xs = np.arange(len(depths)) + (j - 1.5) * width
        ax[0].bar(xs, [r["top"] for r in sel], width, label=_label(bn, res))
        ax[1].bar(xs, [r["trace"] for r in sel], width, yerr=[r["trace_se"] for r in sel], label=_label(bn, res))
    for a, t in zip(ax, ("top eigenvalue", "trace")):
        a.set_xticks(range(len(depths)), [f"ResNet{d}" for d in depths])
        a.set_yscale("log")
        a.set_title(t)
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    path = figure_path("pyhessian")
    fig.savefig(path, dpi=110)
    plt.close(fig)

    get = {(r["depth"], r["bn"], r["res"]): r for r in rows}
    shallow, deep = depths

    def sharper(a, b, key):  # is configuration a sharper than b?
        return get[a][key] > get[b][key]

    bn_shallow = [sharper((shallow, False, True), (shallow, True, True), k) for k in ("top", "trace")]
    bn_deep = [sharper((deep, False, True), (deep, True, True), k) for k in ("top", "trace")]
    res_deep = [sharper((deep, True, False), (deep, True, True), k) for k in ("top", "trace")]
    say = lambda flags: {2: "yes (top eigenvalue and trace)", 1: "mixed (one of the two)", 0: "no"}[sum(flags)]  # noqa
    table = "\n".join(
        f"| ResNet{r['depth']} | {_label(r['bn'], r['res'])} | {r['n']:,} | {r['acc']:.2f} | {r['loss']:.3f} | "
        f"{r['top']:.4g}{'' if r['top_ok'] else ' (unconverged)'} | {r['trace']:.4g} ± {r['trace_se']:.2g} |"
        for r in rows)
    body = f"""ResNets of depth {shallow} and {deep} (width 8, 1 input channel), each trained {steps} SGD steps
(batch 32, momentum 0.9, gradient norm clipped at 5) on the 1797 scikit-learn 8x8 digits; Hessian of the mean
cross-entropy on the first 256 images, float32, eval mode. Top eigenvalue: `eigsh(H, k=1, tol=1e-3)`;
trace: Hutchinson with `rtol=0.05` (at most 100 HVPs), ± its standard error.

| network | variant | parameters | train accuracy | loss | top eigenvalue | trace |
|---|---|---|---|---|---|---|
{table}

Does the paper's direction appear here?

* Removing BatchNorm makes the **shallow** ResNet{shallow} sharper: {say(bn_shallow)} (the paper: flatter).
* Removing BatchNorm makes the **deeper** ResNet{deep} sharper: {say(bn_deep)} (the paper: sharper).
* Removing residual connections makes the deeper ResNet{deep} sharper: {say(res_deep)} (the paper: sharper).

**Verdict.** This is a small-scale check, not a reproduction of their numbers: networks half as wide, depths 8 and 20
instead of 20 to 56, 8x8 digits instead of CIFAR-10, a few hundred steps instead of full training, one seed. Curvature
at a point that is not a converged minimum depends on how far training got, and the variants reach different
losses (table), so differences of less than a few-fold should not be read as an effect. Where the three
answers above agree with the paper, its direction appears at this scale; where they do not, we do not see it here.

![pyhessian]({rel(path)})"""
    return Verdict("BatchNorm and residual connections (PyHessian, Yao et al. 2020)", body, [path],
                   time.perf_counter() - start, "python -m benchmarks reproduce pyhessian")


if __name__ == "__main__":
    print(run().body)
