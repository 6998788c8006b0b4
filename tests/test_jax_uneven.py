"""A JAX loss over (inputs, targets) batches whose targets differ in length is the mean over every token.

The loss is a function hessop cannot read; the batches' shapes are what it sees. Each pair is weighted
by its targets' elements (as a mean loss divides by them) and the difference in shapes warns, since a
loss that averages per sequence first would need ``weight_fn``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from hessop import hessian  # noqa: E402

pytestmark = pytest.mark.xdist_group("jax")  # with the other tests that run JAX in the worker (CONTRIBUTING.md)

D, V = 3, 4


def token_loss(p, batch):
    x, y = batch  # x (B, T, D) features, y (B, T) token ids
    logits = jnp.tanh(x @ p["w1"]) @ p["w2"]
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, y[..., None], axis=-1))


def batches():
    g = np.random.default_rng(0)
    make = lambda b, t: (g.standard_normal((b, t, D)), g.integers(0, V, (b, t)))  # noqa: E731
    return [make(4, 6), make(2, 3)]


def params():
    g = np.random.default_rng(1)
    return {"w1": jnp.asarray(g.standard_normal((D, D))), "w2": jnp.asarray(g.standard_normal((D, V)))}


def dense(p, data):
    """The Hessian of the mean over every token of every batch."""
    x = jnp.concatenate([jnp.reshape(b[0], (-1, 1, D)) for b in data])
    y = jnp.concatenate([jnp.reshape(b[1], (-1, 1)) for b in data])
    flat, unravel = ravel_pytree(p)
    return np.asarray(jax.hessian(lambda f: token_loss(unravel(f), (x, y)))(flat))


def test_unequal_lengths_give_the_token_mean_and_warn():
    p, data = params(), batches()
    with pytest.warns(UserWarning, match="weight_fn"):
        H = hessian(token_loss, p, data)
    truth = dense(p, data)
    np.testing.assert_allclose(H.to_dense(), truth, atol=1e-12)
    by_sequences = (4 * dense(p, data[:1]) + 2 * dense(p, data[1:])) / 6
    assert np.linalg.norm(by_sequences - truth) > 1e-2 * np.linalg.norm(truth)  # the old weighting was wrong


def test_equal_shapes_keep_the_sample_count_silently():
    p, data = params(), batches()[:1] * 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        H = hessian(token_loss, p, data)
    assert H.backend.local_count == 8
