"""Hessian trace regularisation (HTR): penalise the curvature a network is trained into.

Sankar et al. (2021), "A deeper look at the Hessian eigenspectrum of deep neural
networks and its applications to regularization" (AAAI), add ``γ Σ_l Tr(H_l)``
to the loss, ``H_l`` being the diagonal Hessian block of layer ``l``, every
``f_r`` steps, on all layers or only the middle ones (whose spectra resemble the
whole network's).

The trace is a differentiable Hutchinson estimate (Hutchinson 1990): with a
Rademacher probe ``v`` supported on the chosen layers,

    Σ_l v_lᵀ (H v)_l = vᵀ H v,    E[vᵀ H v] = Σ_l Tr(H_l)

(the cross-layer terms have zero mean), one Hessian-vector product per probe
for all layers together. The product is built with ``create_graph=True`` so the
penalty has a gradient (a third-order derivative of the loss).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from .._names import restrict_names

__all__ = ["HessianTraceRegularizer", "parameter_layers"]


def parameter_layers(model: nn.Module) -> list[tuple[str, list[tuple[str, nn.Parameter]]]]:
    """The modules that own trainable parameters directly, in order, with their named parameters."""
    layers = []
    for mod_name, module in model.named_modules():
        own = [(f"{mod_name}.{n}" if mod_name else n, p)
               for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if own:
            layers.append((mod_name, own))
    return layers


class HessianTraceRegularizer:
    """``γ Σ_l Tr(H_l)`` as a differentiable stochastic penalty (Sankar et al. 2021).

    Parameters
    ----------
    model : torch.nn.Module
        The network being trained.
    gamma : float
        Weight of the penalty.
    every : int
        Apply the penalty every ``every`` steps (``f_r`` in the paper); other steps add zero.
    layers : None, "middle" or sequence of str
        All layers with parameters (None); the middle ones, dropping the first
        and last quarter in model order, and at least the first and last layer
        when there are three or more ("middle"); or the layers whose
        module name equals, is a sub-module of, or fully matches (regex) a pattern.
    num_probes : int
        Rademacher probes per penalised step (one Hessian-vector product each).
    seed : int
        Seed of the probes' generator (on the parameters' device).

    Attributes
    ----------
    last_trace : float
        The last estimate of ``Σ_l Tr(H_l)`` (NaN before the first penalised step).
    last_stderr : float
        Its standard error (NaN with one probe: a single sample has none).
    layer_names : list of str
        The penalised layers.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    >>> reg = HessianTraceRegularizer(model, gamma=1e-3, every=10, layers="middle")
    >>> reg.layer_names
    ['2']
    >>> for step in range(2):
    ...     loss = nn.functional.cross_entropy(model(x), y)
    ...     (loss + reg(loss, step)).backward()      # penalised at step 0, plain at step 1
    >>> bool(reg.last_trace > 0)                  # near a random start, middle layers curve upwards
    True
    """

    def __init__(
        self,
        model: nn.Module,
        gamma: float = 1e-3,
        every: int = 10,
        layers: None | str | Sequence[str] = None,
        num_probes: int = 1,
        seed: int = 0,
    ):
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"gamma must be a finite number >= 0; got {gamma!r}")
        if not isinstance(every, int) or every < 1:
            raise ValueError(
                f"every must be a positive integer (apply the penalty every that many steps); got {every!r}"
            )
        if not isinstance(num_probes, int) or num_probes < 1:
            raise ValueError(f"num_probes must be a positive integer; got {num_probes!r}")
        self.model, self.gamma, self.every, self.num_probes = model, float(gamma), every, num_probes
        chosen = self._select(parameter_layers(model), layers)
        self.layer_names = [name for name, _ in chosen]
        self.params = [p for _, own in chosen for _, p in own]
        device = self.params[0].device
        self._gen = torch.Generator(device=device)
        self._gen.manual_seed(seed)
        self.last_trace = math.nan
        self.last_stderr = math.nan

    @staticmethod
    def _select(all_layers, layers):
        if not all_layers:
            raise ValueError("the model has no trainable parameters to regularise")
        if layers is None:
            return all_layers
        if layers == "middle":
            q = max(1, len(all_layers) // 4) if len(all_layers) >= 3 else 0
            return all_layers[q : len(all_layers) - q]
        if isinstance(layers, str):
            layers = [layers]
        keep = set(restrict_names([n for n, _ in all_layers], *layers))
        chosen = [(n, own) for n, own in all_layers if n in keep]
        if not chosen:
            names = [n for n, _ in all_layers]
            raise ValueError(f"layers={list(layers)} match no layer; layers are named like {names[:4]}"
                             + (" ..." if len(names) > 4 else "") + "; or pass None or 'middle'")
        return chosen

    def active(self, step: int) -> bool:
        """Whether the penalty is applied at ``step``."""
        return step % self.every == 0 and self.gamma > 0

    def trace(self, loss: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
        """A Hutchinson estimate of ``Σ_l Tr(H_l)`` over the chosen layers, differentiable if ``create_graph``."""
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError("pass the scalar training loss (a 0-d tensor with its autograd graph) to the regulariser")
        if not loss.requires_grad:
            raise ValueError(
                "the loss has no autograd graph; compute it with gradients enabled (not under torch.no_grad)"
            )
        grads = torch.autograd.grad(loss, self.params, create_graph=True)
        samples = []
        for _ in range(self.num_probes):
            probes = [
                torch.randint(0, 2, p.shape, generator=self._gen, device=p.device).to(p.dtype) * 2 - 1
                for p in self.params
            ]
            gv = cast(torch.Tensor, sum((g * v).sum() for g, v in zip(grads, probes)))
            hv = torch.autograd.grad(gv, self.params, create_graph=create_graph, retain_graph=True)
            samples.append(cast(torch.Tensor, sum((h * v).sum() for h, v in zip(hv, probes))))
        est = torch.stack(samples)
        value = est.mean()
        self.last_trace = float(value.detach())
        spread = est.detach().std(unbiased=True) if len(samples) > 1 else math.nan
        self.last_stderr = float(spread / math.sqrt(len(samples)))
        return value

    def __call__(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """``γ · Tr`` estimate at penalised steps, a zero tensor otherwise; add it to the loss."""
        if not self.active(step):
            return loss.new_zeros(())
        return self.gamma * self.trace(loss)
