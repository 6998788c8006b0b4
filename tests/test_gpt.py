"""The GPT model and the language-model demo's data: exact Hessian products with default settings."""

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import hessop
from hessop.cli.lm import CharData, stdlib_text
from hessop.models.gpt import GPT, GPTConfig


def dense_hessian(model, loss, batches):
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone() for p in model.parameters())
    tokens = sum(y.numel() for _, y in batches)

    def f(*ps):
        out = [loss(torch.func.functional_call(model, dict(zip(names, ps)), (x,)), y) * y.numel() for x, y in batches]
        return sum(out) / tokens

    with sdpa_kernel(SDPBackend.MATH):  # the fused CPU kernel has no second derivative
        H = torch.autograd.functional.hessian(f, params)
    return torch.cat([torch.cat([H[i][j].reshape(params[i].numel(), params[j].numel()) for j in range(len(params))], 1)
                      for i in range(len(params))]).numpy()


def test_a_tiny_gpt_has_exact_products_with_the_default_loss_and_batches():
    model = GPT(GPTConfig.char(vocab_size=7, block_size=6, n_layer=1, n_head=2, n_embd=4), seed=1).double().eval()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 7, (3, 5), generator=g), torch.randint(0, 7, (3, 5), generator=g)),
               (torch.randint(0, 7, (1, 4), generator=g), torch.randint(0, 7, (1, 4), generator=g))]  # unequal
    loss = torch.nn.CrossEntropyLoss()
    H = hessop.hessian(model, loss, batches)
    truth = dense_hessian(model, lambda o, y: loss(o.reshape(-1, o.shape[-1]), y.reshape(-1)), batches)
    np.testing.assert_allclose(np.asarray(H.to_dense()), truth, atol=1e-10 * np.abs(truth).max())
    groups = model.parameter_blocks()
    assert list(groups) == ["embeddings", "attention 0", "mlp 0", "norms", "head"]
    sizes = [H.restrict(*prefixes).shape[0] for prefixes in groups.values()]
    assert sum(sizes) == H.shape[0]  # the groups partition the parameters


def test_gpt2_small_configuration_has_124m_parameters():
    cfg = GPTConfig.gpt2_small()
    with torch.device("meta"):
        model = GPT(cfg)
    assert sum(p.numel() for p in model.parameters()) == 124_439_808


def test_stdlib_text_is_deterministic_and_split():
    text = stdlib_text(20_000)
    assert len(text) == 20_000 and text == stdlib_text(20_000)
    data = CharData.from_text(text)
    x, y = data.windows(4, 16, seed=3)
    assert x.shape == y.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])
    assert "".join(data.vocab[i] for i in x[0]) in text


def test_a_tied_head_is_one_parameter_whose_hessian_sums_both_uses():
    """GPT-2 ties the head to the token embedding: the operator is Aᵀ H A of the untied model's dense Hessian H."""
    config = GPTConfig(vocab_size=7, block_size=6, n_layer=1, n_head=2, n_embd=4, tie_head=True)
    tied = GPT(config, seed=3).double().eval()
    untied = GPT(GPTConfig(**{**config.__dict__, "tie_head": False}), seed=3).double().eval()
    with torch.no_grad():
        untied.load_state_dict(tied.state_dict())  # head.weight is a separate copy of wte.weight now
    assert untied.head.weight.data_ptr() != untied.wte.weight.data_ptr()
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randint(0, 7, (2, 6), generator=g), torch.randint(0, 7, (2, 6), generator=g))]
    loss = torch.nn.CrossEntropyLoss()
    H = hessop.hessian(tied, loss, batches)
    names = [n for n, _ in untied.named_parameters()]
    assert names[-1] == "head.weight" and [n for n, _ in tied.named_parameters()] == names[:-1]
    big = dense_hessian(untied, lambda o, y: loss(o.reshape(-1, o.shape[-1]), y.reshape(-1)), batches)
    n = H.shape[0]
    A = np.zeros((n + 7 * 4, n))  # untied parameters = A @ tied parameters: the head copies wte
    A[:n, :n] = np.eye(n)
    A[n:, :7 * 4] = np.eye(7 * 4)  # wte comes first in both
    truth = A.T @ big @ A
    np.testing.assert_allclose(np.asarray(H.to_dense()), truth, atol=1e-10 * np.abs(truth).max())
    # The head's share is far above the tolerance: an operator that dropped it (or counted one use) would fail.
    assert np.abs(truth - big[:n, :n]).max() > 1e-4 * np.abs(truth).max()
