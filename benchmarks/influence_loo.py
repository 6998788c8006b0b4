"""Influence functions against leave-one-out retraining, as Koh & Liang (2017, Fig. 2) validated theirs.

    python benchmarks/influence_loo.py            # both models, prints the correlations
    python benchmarks/influence_loo.py --quick    # small sizes, a smoke test

On the digits (8x8, 10 classes; standardised, seeded split) it trains, to a tight gradient
tolerance with full-batch L-BFGS in float64,

* ``logistic``: multinomial logistic regression with weight decay ``λ`` (convex: the
  leave-one-out optimum is unique), and
* ``mlp``: a 64-16-10 tanh network with the same weight decay (non-convex: each
  retraining starts from the full-data optimum, as Koh & Liang retrained their CNN),

takes the test example of highest loss, computes every training example's influence with
``hessop.analysis.influence(..., damping=λ)`` (weight decay is exactly that damping), and
for the ``--top`` examples of largest ``|influence|`` retrains without the example. The
objective left out is ``(1/N) Σ_{j≠i} ℓ_j + λ/2 ||θ||²``, the ``ε = -1/N`` up-weighting
the influence linearises, so predicted and actual changes of the test loss compare
directly. :func:`experiment` is what ``docs/make_figures.py influence`` plots.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from hessop.analysis import influence  # noqa: E402

LOSS = nn.CrossEntropyLoss()


def digits(num_train: int, seed: int = 0):
    """Standardised digits, a seeded split: ``num_train`` training and 300 test examples (float64)."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    X, y = torch.tensor(X[order], dtype=torch.float64), torch.tensor(y[order])
    return (X[:num_train], y[:num_train]), (X[-300:], y[-300:])


def model_of(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "logistic":
        return nn.Linear(64, 10).double()
    return nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)).double()


def train(model: nn.Module, X, y, decay: float, weights=None, iters: int = 2000) -> nn.Module:
    """Minimise ``(1/N) Σ w_j ℓ_j + decay/2 ||θ||²`` by full-batch L-BFGS to a gradient of 1e-11."""
    w = torch.ones(len(y), dtype=torch.float64) if weights is None else weights
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=iters, tolerance_grad=1e-11, tolerance_change=0,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        per = nn.functional.cross_entropy(model(X), y, reduction="none")
        obj = (w * per).sum() / len(y) + 0.5 * decay * sum((p**2).sum() for p in model.parameters())
        obj.backward()
        return obj

    opt.step(closure)
    return model


def test_loss(model: nn.Module, test) -> float:
    with torch.no_grad():
        return float(LOSS(model(test[0]), test[1]))


def experiment(kind: str = "logistic", num_train: int = 300, top: int = 40, decay: float = 1e-2) -> dict:
    """Predicted (``influence(...).loo_change``) and actual leave-one-out changes of the worst test loss."""
    (X, y), (Xt, yt) = digits(num_train)
    model = train(model_of(kind), X, y, decay)
    with torch.no_grad():
        losses = nn.functional.cross_entropy(model(Xt), yt, reduction="none")
    worst = int(torch.argmax(losses))
    test = (Xt[worst:worst + 1], yt[worst:worst + 1])
    start = time.perf_counter()
    r = influence(model, LOSS, [(X, y)], test, damping=decay, rtol=1e-10)
    seconds = time.perf_counter() - start
    base = test_loss(model, test)
    chosen = np.argsort(-np.abs(r.influence))[:top]
    actual = []
    for i in chosen:
        m = model_of(kind)
        m.load_state_dict(model.state_dict())
        w = torch.ones(len(y), dtype=torch.float64)
        w[int(i)] = 0.0
        actual.append(test_loss(train(m, X, y, decay, w), test) - base)
    predicted, actual = r.loo_change[chosen], np.array(actual)
    from scipy.stats import pearsonr, spearmanr

    return {"kind": kind, "predicted": predicted, "actual": actual,
            "pearson": float(pearsonr(predicted, actual)[0]), "spearman": float(spearmanr(predicted, actual)[0]),
            "num_params": sum(p.numel() for p in model.parameters()), "num_train": num_train, "top": top,
            "products": r.num_matvecs, "residual": r.solve.residual, "method": r.solve.method, "seconds": seconds,
            "test_loss": base}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--top", type=int, default=40)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print("| model | parameters | N | retrained | solve products | solve method | true residual | influence s | "
          "Pearson | Spearman |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in ("logistic", "mlp"):
        e = experiment(kind, num_train=100 if args.quick else 300, top=8 if args.quick else args.top)
        print(f"| {kind} | {e['num_params']} | {e['num_train']} | {e['top']} | {e['products']} | {e['method']} | "
              f"{e['residual']:.1e} | {e['seconds']:.2f} | {e['pearson']:.3f} | {e['spearman']:.3f} |")


if __name__ == "__main__":
    main()
