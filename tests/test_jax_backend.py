"""The JAX backend against dense ``jax.hessian`` ground truth: data forms, weighting, GGN, names, dtypes, errors."""

from collections import OrderedDict
from functools import cache

import numpy as np
import pytest

pytestmark = pytest.mark.xdist_group("jax")  # one worker compiles each eager JAX operation once (tests/conftest.py)
jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)  # float64 ground truth; the library never flips this itself
import jax.numpy as jnp  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from hessop.backends.jax import JaxBackend  # noqa: E402
from hessop.factory import hessian  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.standard_normal((11, 3))
Y = RNG.standard_normal((11, 2))
SPLIT = [(X[:4], Y[:4]), (X[4:], Y[4:])]  # unequal batches


def make_params(dtype=jnp.float64):
    g = np.random.default_rng(1)
    return {
        "l1": {"w": jnp.asarray(g.standard_normal((3, 4)), dtype), "b": jnp.asarray(0.1 * g.standard_normal(4), dtype)},
        "l2": [jnp.asarray(g.standard_normal((4, 2)), dtype)],
    }


def apply(p, x):
    return jnp.tanh(x @ p["l1"]["w"] + p["l1"]["b"]) @ p["l2"][0]


def mse(out, y):
    return jnp.mean((out - y) ** 2)


def loss(p, batch):
    x, y = batch
    return mse(apply(p, x), y)


def dense_hessian(params, x=X, y=Y, fn=loss):
    """Ground truth, jit-compiled as a whole (eager JAX would compile every primitive apart)."""
    flat, unravel = ravel_pytree(params)
    D = jax.jit(jax.hessian(lambda f, x, y: fn(unravel(f), (x, y))))(flat, x, y)
    return np.asarray(D), flat, unravel


@cache
def truth():
    """``dense_hessian(make_params())``, the ground truth of most tests, compiled and computed once (read-only)."""
    D, flat, unravel = dense_hessian(make_params())
    D.flags.writeable = False
    return D, flat, unravel


def dense_ggn(params):
    flat, unravel = ravel_pytree(params)

    @jax.jit
    def ggn(f):
        J = jax.jacfwd(lambda f: apply(unravel(f), X).ravel())(f)
        out = apply(unravel(f), X)
        Ho = jax.hessian(lambda o: mse(o.reshape(out.shape), Y))(out.ravel())
        return J.T @ Ho @ J

    return np.asarray(ggn(flat))


def test_mean_over_unequal_batches_is_the_full_data_hessian():
    params = make_params()
    D, _, _ = truth()
    H = hessian(loss, params, SPLIT)
    assert H.backend.local_count == 11
    np.testing.assert_allclose(H.to_dense(), D, atol=1e-12)


@pytest.mark.parametrize("form", ["one batch", "reiterable", "generator"])
def test_data_forms_agree(form):
    params = make_params()
    D, _, _ = truth()

    class Loader:  # re-iterable, yields CPU torch tensors like a PyTorch DataLoader
        def __iter__(self):
            torch = pytest.importorskip("torch")
            return iter([tuple(torch.as_tensor(a) for a in batch) for batch in SPLIT])

    data = {"one batch": (X, Y), "reiterable": Loader(), "generator": (b for b in SPLIT)}[form]
    H = hessian(loss, params, data)
    np.testing.assert_allclose(H.to_dense(), D, atol=1e-12)
    np.testing.assert_allclose(H.to_dense(), D, atol=1e-12)  # a generator is read once and kept


def test_sum_reduction_adds_batch_losses():
    params = make_params()
    summed = lambda p, b: jnp.sum((apply(p, b[0]) - b[1]) ** 2)  # noqa: E731
    D, _, _ = dense_hessian(params, fn=summed)
    H = hessian(summed, params, SPLIT, reduction="sum")
    assert not H.backend.normalize
    np.testing.assert_allclose(H.to_dense(), D, atol=1e-10)
    assert H.loss() == pytest.approx(float(summed(params, (X, Y))), rel=1e-12)


def test_model_fn_form_ggn_and_residual():
    params = make_params()
    D, _, _ = truth()
    G = dense_ggn(params)
    Hm = hessian(mse, params, [(X, Y)], model_fn=apply)
    np.testing.assert_allclose(Hm.to_dense(), D, atol=1e-12)
    Gop = hessian(mse, params, SPLIT, curvature="ggn", model_fn=apply)
    Gd = Gop.to_dense()
    np.testing.assert_allclose(Gd, G, atol=1e-12)
    assert np.linalg.eigvalsh(Gd).min() > -1e-12  # MSE: the GGN is PSD, the Hessian is not
    assert np.linalg.eigvalsh(D).min() < -1e-6
    R = hessian(mse, params, [(X, Y)], curvature="residual", model_fn=apply)
    np.testing.assert_allclose(R.to_dense(), D - G, atol=1e-12)
    np.testing.assert_allclose(Gop @ Y[:, 0].repeat(3)[:24], G @ Y[:, 0].repeat(3)[:24], atol=1e-12)


def test_names_blocks_and_restrict():
    params = make_params()
    D, _, _ = truth()
    H = hessian(loss, params, (X, Y))
    assert H.parameter_names == ["l1.b", "l1.w", "l2.0"]  # jax orders dict keys; lists by position
    assert H.blocks == {"l1": slice(0, 16), "l2": slice(16, 24)}
    np.testing.assert_allclose(H.restrict("l1").to_dense(), D[:16, :16], atol=1e-12)
    Hb = H.restrict(r".*\.b", "l2")  # regex and module prefix together
    idx = np.r_[0:4, 16:24]
    assert Hb.parameter_names == ["l1.b", "l2.0"]
    np.testing.assert_allclose(Hb.to_dense(), D[np.ix_(idx, idx)], atol=1e-12)
    np.testing.assert_allclose(np.asarray(Hb.parameters()), np.asarray(ravel_pytree(params)[0])[idx])


def test_ordered_dict_keeps_torch_order_and_bare_array_is_named():
    p = OrderedDict([("fc1.weight", jnp.ones((2, 3))), ("fc1.bias", jnp.zeros(2))])
    H = hessian(lambda p, b: jnp.mean((b @ p["fc1.weight"].T + p["fc1.bias"]) ** 2), p, X[:, :3])
    assert H.parameter_names == ["fc1.weight", "fc1.bias"]
    assert list(H.blocks) == ["fc1"]
    H = hessian(lambda w, b: jnp.mean((b @ w) ** 2), jnp.ones(3), X)
    assert H.parameter_names == ["params"]
    np.testing.assert_allclose(H.to_dense(), 2 * X.T @ X / len(X), atol=1e-12)


def test_loss_gradient_and_loss_at():
    params = make_params()
    _, flat, unravel = truth()
    H = hessian(loss, params, (X, Y))
    assert H.loss() == pytest.approx(float(loss(params, (X, Y))), rel=1e-13)
    g = jax.grad(lambda f: loss(unravel(f), (X, Y)))(flat)
    np.testing.assert_allclose(np.asarray(H.gradient()), np.asarray(g), atol=1e-13)
    moved = flat + 0.1
    assert H.loss_at(moved) == pytest.approx(float(loss(unravel(moved), (X, Y))), rel=1e-13)
    assert H.loss() == pytest.approx(float(loss(params, (X, Y))), rel=1e-13)  # loss_at left params alone


def test_linearize_mode_matches_jvp():
    params = make_params()
    D, _, _ = truth()
    H = hessian(loss, params, [(X, Y)], hvp="linearize")
    assert hessian(loss, params, (X, Y)).backend._hvp_mode == "linearize"  # "auto" caches a single batch
    assert hessian(loss, params, SPLIT).backend._hvp_mode == "forward-over-reverse"  # and nothing for several
    V = jnp.asarray(RNG.standard_normal((24, 4)))
    np.testing.assert_allclose(np.asarray(H.apply(V)), D @ np.asarray(V), atol=1e-12)
    np.testing.assert_allclose(np.asarray(H.apply(V[:, 0])), D @ np.asarray(V[:, 0]), atol=1e-12)


def test_the_strategy_has_the_torch_backends_name_and_the_old_one_still_works():
    params = make_params()
    D, _, _ = truth()
    H = hessian(loss, params, SPLIT, hvp="forward-over-reverse")
    with pytest.warns(DeprecationWarning, match="hvp='jvp' is now hvp='forward-over-reverse'"):
        old = hessian(loss, params, SPLIT, hvp="jvp")
    V = jnp.asarray(RNG.standard_normal((24, 3)))
    for op in (H, old):
        np.testing.assert_allclose(np.asarray(op.apply(V)), D @ np.asarray(V), atol=1e-12)


def test_float32_and_bfloat16_parameters():
    D, _, _ = truth()
    H32 = hessian(loss, make_params(jnp.float32), (X, Y))
    assert H32.native_dtype == jnp.float32 and H32.dtype == np.float32
    out = H32.apply(jnp.ones(24, jnp.float32))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(H32.to_dense(), D, atol=2e-5 * np.abs(D).max())
    H16 = hessian(loss, make_params(jnp.bfloat16), (X, Y))
    assert H16.native_dtype == jnp.float32  # half-precision models get float32 vectors
    np.testing.assert_allclose(H16.to_dense(), D, atol=0.1 * np.abs(D).max())


def test_batch_size_fn_and_numpy_params():
    params = jax.tree_util.tree_map(np.asarray, make_params())
    data = [{"x": x, "y": y} for x, y in SPLIT]
    H = hessian(lambda p, b: loss(p, (b["x"], b["y"])), params, data, backend="jax", batch_size_fn=lambda b: 1)
    assert H.backend.local_count == 2  # each batch counts as one sample: plain average of the two batch losses
    D0, _, _ = dense_hessian(make_params(), *SPLIT[0])
    D1, _, _ = dense_hessian(make_params(), *SPLIT[1])
    np.testing.assert_allclose(H.to_dense(), (D0 + D1) / 2, atol=1e-12)


def test_bad_input_messages():
    params = make_params()
    with pytest.raises(ValueError, match="must return a scalar.*shape"):
        hessian(lambda p, b: (apply(p, b[0]) - b[1]) ** 2, params, SPLIT)
    with pytest.raises(FloatingPointError, match="returned nan"):
        hessian(lambda p, b: loss(p, b) * jnp.nan, params, SPLIT)
    with pytest.raises(TypeError, match="'step' has dtype int.*floating"):
        hessian(loss, {**params, "step": jnp.asarray(3)}, SPLIT, backend="jax")
    with pytest.raises(ValueError, match="batches change structure"):
        hessian(loss, params, [SPLIT[0], (X, Y, Y)])
    with pytest.raises(ValueError, match="batches change structure"):
        H = hessian(loss, params, _Reiterable([SPLIT[0], (X, {"y": Y})]))
        H @ np.ones(24)
    with pytest.raises(ValueError, match="no batches"):
        hessian(loss, params, [])
    with pytest.raises(ValueError, match="no batches"):
        hessian(loss, params, iter([]))
    with pytest.raises(ValueError, match="needs the network's outputs.*model_fn"):
        hessian(loss, params, SPLIT, curvature="ggn")
    with pytest.raises(ValueError, match=r"\(inputs, targets\) pair"):
        hessian(mse, params, [{"x": X, "y": Y}], model_fn=apply)
    with pytest.raises(ValueError, match="hvp='linearize'"):
        hessian(mse, params, SPLIT, curvature="ggn", model_fn=apply, hvp="linearize")
    with pytest.raises(ValueError, match="reduction"):
        hessian(loss, params, SPLIT, reduction="avg")
    with pytest.raises(ValueError, match="no parameter named"):
        JaxBackend(loss, params, SPLIT).restrict(["nope"])


def test_float64_refused_without_x64():
    w = np.ones(3)  # float64 numpy leaf: JAX would silently compute in float32
    with jax.enable_x64(False):
        with pytest.raises(TypeError, match="jax_enable_x64"):
            JaxBackend(lambda w, b: jnp.mean((b @ w) ** 2), w, X)


class _Reiterable:
    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def test_benchmark_rows_have_the_documented_fields():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from hvp_jax import measure_jax

    rows = measure_jax(in_features=3, width=4, depth=1, classes=2, batch_size=5, num_batches=1, block=2, repeats=1)
    assert [r["product"] for r in rows][:2] == ["gradient", "hvp (jvp)"] and rows[0]["ratio"] == 1.0
    assert all(r["n"] == 3 * 4 + 4 + 4 * 2 + 2 and r["seconds"] > 0 and r["compile_seconds"] >= 0 for r in rows)
