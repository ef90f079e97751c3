"""jaxsparse.models.transformer (the small GPT) and jaxsparse.textdata (the stdlib corpus)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsparse import models, oneshot, textdata, train
from jaxsparse.models import transformer as tf


@pytest.fixture(scope="module")
def small():
    model = tf.gpt(key=jax.random.key(0), d_model=16, num_layers=2, num_heads=2, d_ff=32,
                   max_len=12)
    return model, models.functional(model)


def test_layout_and_functional_view(small):
    model, fn = small
    blk = fn.params["block1"]
    for name in ("query", "key", "value", "out"):
        assert blk["attn"][name]["kernel"].shape == (16, 16)
    assert blk["mlp"]["fc1"]["kernel"].shape == (16, 32)
    assert blk["mlp"]["fc2"]["kernel"].shape == (32, 16)  # [in, out]: reduction axis 0
    assert fn.params["head"]["kernel"].shape == (16, 256)
    tokens = jax.random.randint(jax.random.key(1), (3, 12), 0, 256)
    logits, state = fn.apply_fn(fn.params, fn.model_state, tokens, train=False,
                                key=jax.random.key(0))
    np.testing.assert_allclose(logits, model(tokens), rtol=1e-6, atol=1e-6)
    assert state == {} and logits.shape == (3, 12, 256)
    p1, _ = fn.init_fn(jax.random.key(0))  # the model's own init from its config
    np.testing.assert_array_equal(p1["block0"]["attn"]["query"]["kernel"],
                                  fn.params["block0"]["attn"]["query"]["kernel"])


def test_causal_and_blocks_compose(small):
    model, fn = small
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 256)
    changed = tokens.at[:, 7].set((tokens[:, 7] + 1) % 256)
    a, b = model(tokens), model(changed)
    np.testing.assert_array_equal(a[:, :7], b[:, :7])  # the past does not see the future
    assert not np.allclose(a[:, 7:], b[:, 7:])
    blocks = oneshot.gpt_blocks(model)
    h = blocks.embed(fn.params, tokens)
    for path in blocks.paths:
        h = blocks.block(fn.params[path], h)
    np.testing.assert_allclose(model.logits(h), a, rtol=1e-5, atol=1e-5)


def test_loss_and_perplexity_reference(small):
    _, fn = small
    logits = jax.random.normal(jax.random.key(2), (2, 5, 7))
    labels = jax.random.randint(jax.random.key(3), (2, 5), 0, 7)
    lg = np.asarray(logits, np.float64)
    logp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    ref = -np.take_along_axis(logp, np.asarray(labels)[..., None], -1)[..., 0].mean(-1)
    np.testing.assert_allclose(tf.next_token_loss(logits, labels), ref, rtol=1e-5)
    # a zero head gives uniform predictions: perplexity exactly the vocabulary size
    params = jax.tree.map(lambda a: a, fn.params)
    params["head"]["kernel"] = jnp.zeros_like(params["head"]["kernel"])
    w = jax.random.randint(jax.random.key(4), (5, 13), 0, 256)
    assert math.isclose(tf.perplexity(fn.apply_fn, params, w, batch_size=2), 256.0,
                        rel_tol=1e-5)


def test_bad_tokens(small):
    model, _ = small
    with pytest.raises(TypeError, match="integer ids, got dtype float32"):
        model(jnp.zeros((2, 12)))
    with pytest.raises(ValueError, match=r"\[batch, time\], got shape \(12,\)"):
        model(jnp.zeros((12,), jnp.int32))
    with pytest.raises(ValueError, match="length 13 exceeds max_len=12"):
        model(jnp.zeros((1, 13), jnp.int32))
    with pytest.raises(ValueError, match=r"in \[0, 256\), got \[0, 300\]"):
        model(jnp.array([[0, 300]]))


def test_corpus_split_by_file_and_windows():
    files = textdata.stdlib_files()
    assert files == sorted(files) and all(f.endswith(".py") for f in files)
    assert not any("site-packages" in f for f in files)
    c = textdata.stdlib(max_files=23, val_every=10)
    assert c.val_files == (files[0], files[10], files[20])
    assert c.train_files == tuple(f for i, f in enumerate(files[:23]) if i % 10)
    with open(f"{c.root}/{files[0]}", "rb") as f:
        first = f.read()
    assert bytes(c.val[: len(first) + 1]) == first + b"\n"  # each file ends with a separator
    w = textdata.windows(np.arange(10, dtype=np.uint8), 3)
    np.testing.assert_array_equal(w, [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]])
    assert w.dtype == np.int32


def test_trains_with_the_one_trainer():
    """x = tokens[:, :-1], y = tokens[:, 1:] and a [B, T, V] loss_fn go through train.fit."""
    c = textdata.stdlib(max_files=12)
    w = textdata.windows(c.train, 16, max_windows=256)
    model = tf.gpt(key=jax.random.key(0), d_model=16, num_layers=1, num_heads=2, d_ff=32,
                   max_len=16)
    fn = models.functional(model)
    tx = optax.adam(1e-2)
    state = train.init_state(fn.params, tx, key=jax.random.key(1))
    out = train.fit(fn.apply_fn, tx, state, {"train": (w[:, :-1], w[:, 1:])}, num_steps=60,
                    batch_size=16, eval_every=30, loss_fn=tf.next_token_loss)
    assert out.history["train_loss"][-1] < 0.75 * math.log(256)  # from ~5.55 nats
    ppl = tf.perplexity(fn.apply_fn, out.state.params, w[:64])
    assert ppl < 0.75 * 256 ** 0.75
