"""The same functions on a Linen params dict and on NNX state from ``nnx.split``."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsparse as js

flax = pytest.importorskip("flax")
from flax import linen as nn  # noqa: E402
from flax import nnx  # noqa: E402

X = jax.random.normal(jax.random.key(0), (6, 5, 5, 1))
TOK = jnp.arange(12).reshape(6, 2) % 10
Y = jnp.arange(6) % 3


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x, tokens, train: bool = False):
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x)))
        x = x.mean(axis=(1, 2)) + nn.Embed(10, 4)(tokens).mean(axis=1)
        return nn.Dense(3)(x)


class NNXCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.embed = nnx.Embed(10, 4, rngs=rngs)
        self.dense = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x, tokens):
        x = nnx.relu(self.bn(self.conv(x)))
        return self.dense(x.mean(axis=(1, 2)) + self.embed(tokens).mean(axis=1))


def _check_masks(params, masks, want_paths):
    assert jax.tree.structure(masks) == jax.tree.structure(params)
    assert js.masks.prunable_paths(masks) == want_paths
    total = js.count_total(masks)
    assert int(js.count_kept(masks)) == total - js.num_pruned(0.6, total)
    js.validate(params, masks)


def test_linen_params_dict():
    model = LinenCNN()
    variables = model.init(jax.random.key(1), X, TOK)
    params, stats = variables["params"], variables["batch_stats"]
    masks = js.prune(js.scores.magnitude(params), js.ones_like(params), sparsity=0.6)
    _check_masks(params, masks, ["Conv_0/kernel", "Dense_0/kernel", "Embed_0/embedding"])
    tx = js.masked(optax.adamw(1e-2, weight_decay=0.1))
    p = js.apply_masks(params, masks)
    st = tx.init(p)

    def loss(p, stats):
        logits, upd = model.apply({"params": p, "batch_stats": stats}, X, TOK, train=True,
                                  mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean(), upd

    @jax.jit
    def step(p, stats, st):
        (lv, upd), g = jax.value_and_grad(loss, has_aux=True)(p, stats)
        u, st = tx.update(g, st, p, masks=masks)
        return optax.apply_updates(p, u), upd["batch_stats"], st, lv

    l0 = None
    for _ in range(20):
        p, stats, st, lv = step(p, stats, st)
        l0 = lv if l0 is None else l0
    assert float(lv) < float(l0)
    for w, m in zip(jax.tree.leaves(p), jax.tree.leaves(masks), strict=True):
        if np.ndim(m):
            assert np.all(np.asarray(w)[~np.asarray(m)] == 0.0)
    out = model.apply({"params": p, "batch_stats": stats}, X, TOK)
    assert out.shape == (6, 3) and np.all(np.isfinite(np.asarray(out)))


def test_nnx_state_from_split():
    model = NNXCNN(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    masks = js.ones_like(params)
    masks = js.prune(js.scores.magnitude(params), masks, sparsity=0.6)
    _check_masks(params, masks, ["conv/kernel", "dense/kernel", "embed/embedding"])
    lin = js.prune(js.scores.magnitude(params), js.ones_like(params), sparsity=0.6,
                   scope="layerwise")
    assert [r.kept for r in js.report(lin).rows] == [
        n - js.num_pruned(0.6, n) for n in (36, 12, 40)]
    # Train the NNX module the idiomatic way (nnx.jit + nnx.value_and_grad), masked optax.
    nnx.update(model, js.apply_masks(params, masks))
    tx = js.masked(optax.adam(1e-2))
    st = tx.init(nnx.state(model, nnx.Param))

    @nnx.jit
    def step(model, st):
        def loss_fn(model):  # BatchNorm in training mode updates its stats
            return optax.softmax_cross_entropy_with_integer_labels(model(X, TOK), Y).mean()

        lv, grads = nnx.value_and_grad(loss_fn)(model)
        params = nnx.state(model, nnx.Param)
        u, st = tx.update(grads, st, params, masks=masks)
        nnx.update(model, optax.apply_updates(params, u))
        return lv, st

    l0, st = step(model, st)
    for _ in range(20):
        lv, st = step(model, st)
    assert float(lv) < float(l0)
    graphdef, p, rest = nnx.split(model, nnx.Param, ...)
    k = np.asarray(nnx.merge(graphdef, p, rest).conv.kernel[...])
    mk = np.asarray(masks["conv"]["kernel"][...])
    assert np.all(k[~mk] == 0.0) and np.any(k[mk] != 0.0)
    st2 = js.reset_moments(st, masks)
    mu = np.asarray(st2[0].mu["dense"]["kernel"][...])
    assert np.all(mu[~np.asarray(masks["dense"]["kernel"][...])] == 0.0)
    out = nnx.merge(graphdef, p, rest)(X, TOK)
    assert out.shape == (6, 3)
