"""Batches of any structure: dict batches, models that return their loss, nested inputs, one-shot iterators."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from hessop.factory import hessian as make_operator

V, D = 7, 3


def _dense(model, mean_loss, batches, weights):
    """The float64 Hessian of ``Σ_b w_b L_b / Σ w_b`` with ``L_b = mean_loss(params, batch)``, by plain autograd."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def full(flat):
        parts = torch.split(flat, [s.numel() for s in shapes])
        params = dict(zip(names, (q.reshape(s) for q, s in zip(parts, shapes))))
        return sum(w * mean_loss(params, b) for w, b in zip(weights, batches)) / sum(weights)

    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return torch.autograd.functional.hessian(full, flat0).numpy()


@dataclass
class _Output:
    """What a Hugging Face causal LM returns: logits and, when labels were given, their loss."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


class _HFStyleLM(nn.Module):
    """``model(input_ids=..., attention_mask=..., labels=...)`` with the shifted-label token loss of a causal LM."""

    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Embedding(V, D), nn.Linear(D, V)

    def forward(self, input_ids, attention_mask=None, labels=None):
        h = torch.tanh(self.emb(input_ids))
        if attention_mask is not None:
            h = h * attention_mask[..., None].to(h.dtype)
        logits = self.head(h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
        return _Output(logits, loss)


def _hf_batches():
    g = torch.Generator().manual_seed(1)
    out = []
    for b, t, pad in [(2, 5, [0, 2]), (3, 3, [1, 0, 0])]:
        ids = torch.randint(0, V, (b, t), generator=g)
        mask = torch.ones(b, t, dtype=torch.long)
        labels = ids.clone()
        for row, p in enumerate(pad):
            if p:
                mask[row, -p:] = 0
                labels[row, -p:] = -100
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def _shifted_tokens(batch):
    return (batch["labels"][:, 1:] != -100).sum()


def _hf_model():
    torch.manual_seed(0)
    return _HFStyleLM().double().eval()


def test_dict_batches_with_the_models_own_loss_are_the_token_mean():
    """Dict batches were refused ("batch 0 is a dict"); model(**batch) with output.loss is the documented form."""
    model, data = _hf_model(), _hf_batches()
    H = make_operator(model, None, data, weight_fn=_shifted_tokens)
    weights = [int(_shifted_tokens(b)) for b in data]
    assert H.backend.local_count == sum(weights) == 11

    def mean_loss(params, batch):
        return functional_call(model, params, (), batch).loss

    np.testing.assert_allclose(H.to_dense(), _dense(model, mean_loss, data, weights), atol=1e-12)
    with pytest.raises(ValueError, match=r"loss=None.*weight_fn=lambda b: \(b\['labels'\]\[:, 1:\] != -100\)"):
        make_operator(model, None, data)
    with pytest.raises(ValueError, match="the ggn needs the loss of the model's output"):
        make_operator(model, None, data, curvature="ggn", weight_fn=_shifted_tokens)
    one = make_operator(model, None, data[0])  # one batch: its weight cancels, nothing more is needed
    np.testing.assert_allclose(one.to_dense(), _dense(model, mean_loss, data[:1], [1]), atol=1e-12)


def test_dict_inputs_with_targets_and_structured_outputs():
    """``(dict, labels)`` pairs were passed positionally; now model(**x), and the loss reads output.logits."""
    model, data = _hf_model(), _hf_batches()
    pairs = [({"input_ids": b["input_ids"]}, b["input_ids"]) for b in data]
    loss = nn.CrossEntropyLoss()
    H = make_operator(model, loss, pairs)
    assert H.backend.local_count == 19  # every token of (B, T, V) logits

    def mean_loss(params, batch):
        return loss(functional_call(model, params, (), batch[0]).logits.reshape(-1, V), batch[1].reshape(-1))

    np.testing.assert_allclose(H.to_dense(), _dense(model, mean_loss, pairs, [10, 9]), atol=1e-12)
    G = make_operator(model, loss, pairs, curvature="ggn").to_dense()  # the GGN sees the logits too
    assert np.linalg.eigvalsh(G).min() > -1e-12


class _Nested(nn.Module):
    """A float64 model whose inputs arrive as float32 in a dict holding a tuple: all must be cast alike."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)

    def forward(self, x, extra):
        z, scale = extra
        assert x.dtype == z.dtype == scale.dtype == torch.float64, "inputs not cast to the model's dtype"
        return torch.tanh(self.a(x)) * scale + self.b(z)


def test_inputs_of_any_nesting_are_moved_and_cast_alike():
    torch.manual_seed(0)
    model = _Nested().double().eval()
    g = torch.Generator().manual_seed(2)
    data = []
    for n in (4, 2):
        extra = (torch.randn(n, 2, generator=g), torch.rand(n, 1, generator=g))
        data.append(({"x": torch.randn(n, 4, generator=g), "extra": extra}, torch.randint(0, 3, (n,), generator=g)))
    loss = nn.CrossEntropyLoss()
    H = make_operator(model, loss, data)

    def mean_loss(params, batch):
        x, y = batch
        inputs = {"x": x["x"].double(), "extra": tuple(t.double() for t in x["extra"])}
        return loss(functional_call(model, params, (), inputs), y)

    np.testing.assert_allclose(H.to_dense(), _dense(model, mean_loss, data, [4, 2]), atol=1e-12)


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)

    def forward(self, x, z):
        return torch.tanh(self.a(x)) + self.b(z)


def test_a_single_multi_input_batch_and_one_shot_iterators():
    """``((x1, x2), y)`` was read as two batches; a generator was refused by torch but kept by JAX: both keep it."""
    torch.manual_seed(0)
    model = _TwoInputs().double().eval()
    g = torch.Generator().manual_seed(3)
    batches = [((torch.randn(n, 4, generator=g), torch.randn(n, 2, generator=g)),
                torch.randint(0, 3, (n,), generator=g)) for n in (5, 3)]
    loss = nn.CrossEntropyLoss()
    reference = make_operator(model, loss, batches).to_dense()
    single = make_operator(model, loss, batches[0])
    assert single.backend.local_count == 5
    np.testing.assert_allclose(single.to_dense(), make_operator(model, loss, [batches[0]]).to_dense(), atol=0)
    kept = make_operator(model, loss, (b for b in batches))  # read once, kept: every product sees all of it
    np.testing.assert_allclose(kept.to_dense(), reference, atol=1e-14)
    np.testing.assert_allclose(kept.to_dense(), reference, atol=1e-14)
    assert kept.backend.batches.is_list  # and the first-order graphs of its batches can be kept


def test_tiny_gpt2_with_attention_and_token_loss():
    """A Hugging Face GPT2LMHeadModel (SDPA attention by default) as a user would pass it: dict batches, loss=None."""
    transformers = pytest.importorskip("transformers", reason="transformers is an optional test dependency")
    config = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=11, n_positions=8,
                                     bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).double().eval()
    g = torch.Generator().manual_seed(4)
    data = []
    for b, t in [(2, 6), (1, 4)]:
        ids = torch.randint(0, 11, (b, t), generator=g)
        labels = ids.clone()
        labels[0, -2:] = -100
        data.append({"input_ids": ids, "labels": labels})
    params = ["transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.bias", "transformer.ln_f.weight"]
    weights = [int(_shifted_tokens(b)) for b in data]
    H = make_operator(model, None, data, params=params, weight_fn=_shifted_tokens)
    names = dict(model.named_parameters())

    def mean_loss(p, batch):
        return functional_call(model, {**names, **p}, (), batch).loss

    sub = {n: names[n] for n in params}

    def full(flat):
        parts = torch.split(flat, [t.numel() for t in sub.values()])
        p = {n: q.reshape(t.shape) for (n, t), q in zip(sub.items(), parts)}
        return sum(w * mean_loss(p, b) for w, b in zip(weights, data)) / sum(weights)

    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        expected = torch.autograd.functional.hessian(full, torch.cat([t.detach().reshape(-1) for t in sub.values()]))
    expected = expected.numpy()
    scale = np.abs(expected).max()
    # Hugging Face computes its causal-LM loss on logits cast to float32: agreement to float32 rounding only
    np.testing.assert_allclose(H.to_dense(), expected, atol=1e-5 * scale)
    assert "finite-difference" not in H.backend.chosen.values()

    # the same mean, from the float64 logits, with a loss that reads the batch as its target: exact
    def shifted_ce(out, batch):
        return F.cross_entropy(out[:, :-1].reshape(-1, 11), batch["labels"][:, 1:].reshape(-1), ignore_index=-100)

    def full64(flat):
        parts = torch.split(flat, [t.numel() for t in sub.values()])
        p = {n: q.reshape(t.shape) for (n, t), q in zip(sub.items(), parts)}
        return sum(w * shifted_ce(functional_call(model, {**names, **p}, (), b).logits, b)
                   for w, b in zip(weights, data)) / sum(weights)

    with sdpa_kernel(SDPBackend.MATH):
        exact = torch.autograd.functional.hessian(full64, torch.cat([t.detach().reshape(-1) for t in sub.values()]))
    E = make_operator(model, shifted_ce, data, params=params, weight_fn=_shifted_tokens)
    np.testing.assert_allclose(E.to_dense(), exact.numpy(), atol=1e-12 * scale)


def test_dict_batches_from_a_data_loader():
    """A DataLoader of dict samples yields dict batches; the loader check compares them key by key."""
    model, data = _hf_model(), _hf_batches()
    rows = [{k: v[i] for k, v in data[1].items()} for i in range(3)]
    loader = torch.utils.data.DataLoader(rows, batch_size=2)  # batches of 2 and 1, each a dict of stacked rows
    H = make_operator(model, None, loader, weight_fn=_shifted_tokens)
    as_list = [{k: torch.stack([r[k] for r in rows[i:j]]) for k in rows[0]} for i, j in ((0, 2), (2, 3))]
    np.testing.assert_allclose(H.to_dense(), make_operator(model, None, as_list, weight_fn=_shifted_tokens).to_dense(),
                               atol=1e-14)
