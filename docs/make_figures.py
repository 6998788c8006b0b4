"""Regenerate the figures of docs/analyses.md and docs/cli.md.

    python docs/make_figures.py                      # every figure, into docs/img
    python docs/make_figures.py density track        # some of them
    python docs/make_figures.py --list               # their names
    python docs/make_figures.py --quick --out /tmp/f # tiny sizes: a smoke test, not the docs' pictures

Each figure is one function below, drawn with hessop's public analyses on the
problem the docs describe: the digits MLP (64-32-32-10) trained like the plain
run of ``examples/htr_training.py``, a ResNet14 of width 8 trained on the
digits with BatchNorm and skip connections switched on and off, the HTR runs
of that example, and the ``hessop demo`` report. Everything is seeded, so a
re-run draws the same pictures; the numbers the text quotes are printed.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_NUM_THREADS", "2")

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import hessop  # noqa: E402
from hessop.analysis.gauss_newton import gauss_newton_decomposition  # noqa: E402
from hessop.analysis.landscape import filter_normalized_direction, landscape_1d, landscape_2d  # noqa: E402
from hessop.analysis.layerwise import layerwise  # noqa: E402
from hessop.analysis.plots import plot_density, savefig, style  # noqa: E402
from hessop.analysis.tracking import plot_track  # noqa: E402
from hessop.models.resnet import resnet  # noqa: E402
from hessop.solvers.density import density  # noqa: E402
from hessop.solvers.eigsh import eigsh  # noqa: E402
from hessop.solvers.trace import trace  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEED = 0
FULL = SimpleNamespace(mlp_epochs=20, probes=4, steps=90, points=41, plane=25, depth=14, resnet_epochs=15,
                       probe_images=512, switch_matvecs=60, switch_steps=60, layer_matvecs=60, layer_steps=60,
                       gn_matvecs=40, gn_steps=50, htr_epochs=20, htr_track_every=3, htr_final_matvecs=100,
                       demo_budget="full", influence_train=300, influence_top=40)
QUICK = SimpleNamespace(mlp_epochs=2, probes=1, steps=20, points=9, plane=5, depth=8, resnet_epochs=1,
                        probe_images=64, switch_matvecs=8, switch_steps=15, layer_matvecs=8, layer_steps=15,
                        gn_matvecs=4, gn_steps=10, htr_epochs=1, htr_track_every=1, htr_final_matvecs=8,
                        demo_budget="small", influence_train=100, influence_top=8)
S = FULL  # the sizes in use; --quick swaps in QUICK
OUT = ROOT / "docs" / "img"
LOSS = nn.CrossEntropyLoss()


def _example():
    """examples/htr_training.py as a module: its data, model, training run and figure are the docs' own."""
    spec = importlib.util.spec_from_file_location("htr_training", ROOT / "examples" / "htr_training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HTR = _example()


def _log(text: str) -> None:
    print(f"    {text}", flush=True)


@functools.cache
def data():
    """Standardised digits (80 % train: 1437 images, 20 % test), shuffled with the seed."""
    return HTR.digits(SEED)


def sgd(model: nn.Module, x, y, epochs: int, lr: float = 0.05) -> nn.Module:
    """A plain SGD loop (momentum 0.9, batches of 64, seeded order), as in examples/htr_training.py."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            opt.zero_grad()
            LOSS(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@functools.cache
def mlp():
    """The trained digits MLP of the density and landscape sections, its Hessian and top eigenpairs."""
    x_tr, y_tr, x_te, y_te = data()
    model = sgd(HTR.make_model("mlp", SEED), x_tr, y_tr, S.mlp_epochs)
    H = hessop.hessian(model, LOSS, (x_tr, y_tr))
    top = eigsh(H, k=5, seed=SEED)
    _log(f"MLP: {H.shape[0]:,} parameters, train loss {H.loss():.4f}, test accuracy {accuracy(model, x_te, y_te):.3f}, "
         f"top eigenvalues {[round(float(v), 3) for v in top.eigenvalues]}")
    return model, H, top


def fig_density(out: Path) -> None:
    model, H, top = mlp()
    rho = density(H, num_probes=S.probes, num_steps=S.steps, seed=SEED)
    _log(f"kernel width sigma {rho.sigma:.2g}")
    label = f"SLQ, {S.probes} probes x {S.steps} steps"
    savefig(plot_density(rho, eigenvalues=top.eigenvalues, label=label), out / "density.png")


def fig_landscape_1d(out: Path) -> None:
    model, H, top = mlp()
    r = filter_normalized_direction(model, seed=SEED)
    ax = landscape_1d(H, top.eigenvectors[:, 0], radius=1.0, num_points=S.points, label="top eigenvector $v_1$").plot()
    flat = landscape_1d(H, r / r.norm(), radius=1.0, num_points=S.points, label="random filter-normalised")
    flat.plot(ax)
    ax.set_xlabel("step $\\alpha$ (unit-norm directions)")
    _log(f"loss at the ends: random {flat.losses[0]:.4f} / {flat.losses[-1]:.4f}, centre {flat.center_loss:.4f}")
    savefig(ax, out / "landscape_1d.png")


@functools.cache
def plane():
    model, H, top = mlp()
    v1, v2 = top.eigenvectors[:, 0], top.eigenvectors[:, 1]
    return landscape_2d(H, v1, v2, radius=1.0, num_points=S.plane, labels=("$v_1$", "$v_2$"))


def fig_landscape_surface(out: Path) -> None:
    savefig(plane().plot(kind="surface", title="loss on the plane of $v_1, v_2$"), out / "landscape_surface.png")


def fig_landscape_contour(out: Path) -> None:
    savefig(plane().plot(kind="contour"), out / "landscape_contour.png")


SWITCHES = [(True, True), (False, True), (True, False), (False, False)]


def _onoff(flag: bool) -> str:
    return "on" if flag else "off"


@functools.cache
def trained_resnet(bn: bool, res: bool):
    """One ResNet14 variant of Yao et al.'s ablation, trained from the seed, in eval mode, and its probe batch."""
    x_tr, y_tr, x_te, y_te = data()
    x_tr, x_te = x_tr.reshape(-1, 1, 8, 8), x_te.reshape(-1, 1, 8, 8)
    torch.manual_seed(SEED)
    model = sgd(resnet(S.depth, width=8, in_channels=1, batchnorm=bn, residual=res), x_tr, y_tr, S.resnet_epochs)
    return model, [(x_tr[: S.probe_images], y_tr[: S.probe_images])], accuracy(model, x_te, y_te)


def fig_resnet_switches_density(out: Path) -> None:
    with style():
        fig, ax = plt.subplots(figsize=(5.6, 3.8), layout="tight")
    _log("| BatchNorm | residual | test accuracy | loss (probe) | top eigenvalue | trace ± stderr |")
    for bn, res in SWITCHES:
        model, probe, acc = trained_resnet(bn, res)
        H = hessop.hessian(model, LOSS, probe)
        top = eigsh(H, k=1, seed=SEED)
        tr = trace(H, max_matvecs=S.switch_matvecs, seed=SEED)
        rho = density(H, num_probes=2, num_steps=S.switch_steps, seed=SEED)
        plot_density(rho, ax, label=f"BN {_onoff(bn)}, residual {_onoff(res)}", title=None)
        _log(f"| {_onoff(bn)} | {_onoff(res)} | {acc:.3f} | {H.loss():.4f} | {top.eigenvalues[0]:.3g} | "
             f"{tr.estimate:.4g} ± {tr.stderr:.2g} | converged {bool(top.converged.all())}")
    ax.set_title(f"ResNet{S.depth} on digits: BatchNorm and residual switches")
    savefig(fig, out / "resnet_switches_density.png")


def fig_layerwise_stages(out: Path) -> None:
    model, probe, _ = trained_resnet(True, True)
    H = hessop.hessian(model, LOSS, probe)
    G = hessop.hessian(model, LOSS, probe, curvature="ggn")
    res = layerwise(H, blocks="stages", k=1, trace_max_matvecs=S.layer_matvecs, density_steps=S.layer_steps,
                    num_probes=2,
                    ggn=G, seed=SEED)
    print(res.to_markdown(), flush=True)
    _log(f"sum of stage traces {sum(r.trace for r in res.rows):.4g}")
    savefig(res.plot(), out / "layerwise_stages.png")


def fig_gauss_newton(out: Path) -> None:
    model, probe, _ = trained_resnet(True, True)
    H = hessop.hessian(model, LOSS, probe)
    G = hessop.hessian(model, LOSS, probe, curvature="ggn")
    gn = gauss_newton_decomposition(H, G, blocks=["stage1", "stage2", "stage3"], k=1,
                                    trace_max_matvecs=S.gn_matvecs, density_steps=S.gn_steps, num_probes=1, seed=SEED)
    print(gn.to_markdown(), flush=True)
    savefig(gn.plot(), out / "gauss_newton.png")


@functools.cache
def htr_runs():
    """The two runs of examples/htr_training.py (plain, then HTR on all layers), their tracking files kept."""
    folder = tempfile.mkdtemp(prefix="hessop-htr-")
    args = SimpleNamespace(model="mlp", layers="all", every=1, seed=SEED, lr=0.05, batch_size=64, out=folder,
                           epochs=S.htr_epochs, track_every=S.htr_track_every, trace_max_matvecs=S.htr_final_matvecs)
    runs = [HTR.run(args, 0.0, data(), "plain"), HTR.run(args, 1e-3, data(), "htr")]
    for r in runs:
        _log(f"| {r['run']} | {r['gamma']:g} | {r['test_accuracy']:.3f} | {r['train_loss']:.4f} | "
             f"{r['trace']:.3g} ± {r['trace_stderr']:.2g} | {r['top_eigenvalue']:.3f} | {r['seconds']:.0f} |")
    return runs


def fig_track(out: Path) -> None:
    savefig(plot_track(htr_runs()[1]["track"], title="digits MLP trained with HTR"), out / "track.png")


def fig_htr_training(out: Path) -> None:
    HTR.figure(htr_runs(), str(out / "htr_training.png"))


def fig_influence(out: Path) -> None:
    """Influence against leave-one-out retraining (benchmarks/influence_loo.py), both models side by side."""
    spec = importlib.util.spec_from_file_location("influence_loo", ROOT / "benchmarks" / "influence_loo.py")
    loo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loo)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    titles = {"logistic": "logistic regression (650 parameters)", "mlp": "MLP 64-16-10 (1,210 parameters)"}
    for ax, kind in zip(axes, ("logistic", "mlp")):
        e = loo.experiment(kind, num_train=S.influence_train, top=S.influence_top)
        _log(f"{kind}: Pearson {e['pearson']:.3f}, Spearman {e['spearman']:.3f}, {e['products']} products "
             f"({e['method']}), true residual {e['residual']:.1e}")
        lim = 1.1 * max(abs(e["predicted"]).max(), abs(e["actual"]).max())
        ax.plot([-lim, lim], [-lim, lim], color="0.6", lw=1, zorder=0)
        ax.scatter(e["actual"], e["predicted"], s=14)
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xlabel="actual change of the test loss (retrained)",
               ylabel="predicted: -influence / N", title=f"{titles[kind]}\nPearson r = {e['pearson']:.2f}")
    savefig(fig, out / "influence_loo.png")


def _demo(out: Path) -> None:
    """Run ``hessop demo`` (the command itself, seed 0) once and copy two of its figures."""
    with tempfile.TemporaryDirectory(prefix="hessop-demo-") as report:
        cmd = [sys.executable, "-m", "hessop", "demo", "--out", report, "--budget", S.demo_budget,
               "--seed", str(SEED), "--quiet"]
        subprocess.run(cmd, check=True)
        for name in ("landscape_1d", "layerwise"):
            shutil.copyfile(Path(report) / f"{name}.png", out / f"demo_{name}.png")


FIGURES = {
    "density": fig_density,
    "landscape_1d": fig_landscape_1d,
    "landscape_surface": fig_landscape_surface,
    "landscape_contour": fig_landscape_contour,
    "resnet_switches_density": fig_resnet_switches_density,
    "layerwise_stages": fig_layerwise_stages,
    "gauss_newton": fig_gauss_newton,
    "track": fig_track,
    "htr_training": fig_htr_training,
    "influence_loo": fig_influence,
    "demo": _demo,  # writes demo_landscape_1d.png and demo_layerwise.png (docs/cli.md)
}


def main(argv: list[str] | None = None) -> int:
    global S
    p = argparse.ArgumentParser(description="Regenerate the figures of docs/analyses.md and docs/cli.md.")
    p.add_argument("names", nargs="*", metavar="NAME", help="figures to draw (default: all; see --list)")
    p.add_argument("--list", action="store_true", help="print the figure names and exit")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test (not the docs' pictures)")
    p.add_argument("--out", type=Path, default=OUT, help=f"folder of the PNGs (default: {OUT.relative_to(ROOT)})")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(FIGURES))
        return 0
    unknown = [n for n in args.names if n not in FIGURES]
    if unknown:
        p.error(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    S = QUICK if args.quick else FULL
    for cached in (data, mlp, plane, trained_resnet, htr_runs):
        cached.cache_clear()
    torch.manual_seed(SEED)
    args.out.mkdir(parents=True, exist_ok=True)
    total = time.perf_counter()
    for name in args.names or FIGURES:
        start = time.perf_counter()
        print(f"{name} ...", flush=True)
        FIGURES[name](args.out)
        print(f"{name}: {time.perf_counter() - start:.1f} s (including any shared training it was first to need)",
              flush=True)
    print(f"all done in {time.perf_counter() - total:.1f} s; figures in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
