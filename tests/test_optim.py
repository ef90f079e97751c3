"""masked(tx) keeps pruned entries exactly zero; reset_moments."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsparse as js


def setup():
    k = jax.random.split(jax.random.key(0), 3)
    params = {
        "dense": {"kernel": jax.random.normal(k[0], (8, 16)), "bias": jnp.ones(16)},
        "out": {"kernel": jax.random.normal(k[1], (16, 3)), "bias": jnp.zeros(3)},
    }
    masks = js.prune(js.scores.magnitude(params), js.ones_like(params), sparsity=0.7)
    x = jax.random.normal(k[2], (32, 8))
    y = jnp.arange(32) % 3

    def loss(p):
        h = jax.nn.relu(x @ p["dense"]["kernel"] + p["dense"]["bias"][None, :])
        logits = h @ p["out"]["kernel"] + p["out"]["bias"][None, :]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return params, masks, loss


@pytest.mark.parametrize("name", ["adamw_wd", "sgd_momentum"])
def test_200_steps_keep_pruned_exactly_zero(name):
    params, masks, loss = setup()
    inner = {
        "adamw_wd": optax.adamw(1e-2, weight_decay=0.1),
        "sgd_momentum": optax.sgd(0.05, momentum=0.9, nesterov=True),
    }[name]
    # Dense momentum first (stale buffers at entries that get pruned), then prune.
    dense_state = inner.init(params)
    _, dense_state = inner.update(jax.grad(loss)(params), dense_state, params)
    tx = js.masked(inner)
    p = js.apply_masks(params, masks)
    state = dense_state

    @jax.jit
    def step(p, state):
        u, state = tx.update(jax.grad(loss)(p), state, p, masks=masks)
        return optax.apply_updates(p, u), state

    l0 = float(loss(p))
    for _ in range(200):
        p, state = step(p, state)
    for w, m in zip(jax.tree.leaves(p), jax.tree.leaves(masks), strict=True):
        if np.ndim(m):
            w, m = np.asarray(w), np.asarray(m)
            assert np.all(w[~m] == 0.0) and not np.any(np.signbit(w[~m]))
    assert float(loss(p)) < l0  # it trained
    changed = np.asarray(p["dense"]["kernel"]) != np.asarray(params["dense"]["kernel"])
    assert changed[np.asarray(masks["dense"]["kernel"])].all()


def test_all_kept_masks_equal_plain_optimizer():
    params, _, loss = setup()
    ones = js.ones_like(params)
    tx, plain = js.masked(optax.adam(1e-2)), optax.adam(1e-2)
    s1, s2 = tx.init(params), plain.init(params)
    g = jax.grad(loss)(params)
    u1, _ = tx.update(g, s1, params, masks=ones)
    u2, _ = plain.update(g, s2, params)
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2), strict=True):
        np.testing.assert_array_equal(a, b)


def test_masks_required_and_structure_checked():
    params, masks, loss = setup()
    tx = js.masked(optax.sgd(0.1))
    st = tx.init(params)
    with pytest.raises(TypeError, match="masks"):
        tx.update(params, st, params)
    with pytest.raises(ValueError, match="only in updates"):
        tx.update(params, st, params, masks={"dense": masks["dense"]})


def test_reset_moments_pruned_and_kept():
    params, masks, loss = setup()
    tx = optax.adam(1e-2)
    st = tx.init(params)
    _, st = tx.update(jax.grad(loss)(params), st, params)
    st = jax.tree.map(lambda x: x + 1 if jnp.issubdtype(x.dtype, jnp.floating) else x, st)
    r = js.reset_moments(st, masks)
    for buf in (r[0].mu, r[0].nu):
        k, m = np.asarray(buf["dense"]["kernel"]), np.asarray(masks["dense"]["kernel"])
        assert np.all(k[~m] == 0) and np.all(k[m] != 0)
        assert np.all(np.asarray(buf["dense"]["bias"]) != 0)  # non-prunable untouched
    assert int(r[0].count) == int(st[0].count)
    rk = js.reset_moments(st, masks, where="kept")
    k = np.asarray(rk[0].mu["dense"]["kernel"])
    assert np.all(k[np.asarray(masks["dense"]["kernel"])] == 0)
    assert np.all(k[~np.asarray(masks["dense"]["kernel"])] != 0)
    with pytest.raises(ValueError, match="where"):
        js.reset_moments(st, masks, where="both")
    # jit-able
    jr = jax.jit(js.reset_moments)(st, masks)
    np.testing.assert_array_equal(jr[0].mu["out"]["kernel"], r[0].mu["out"]["kernel"])


def test_masked_update_validates_masks_where_they_enter():
    params, masks, loss = setup()
    tx = js.masked(optax.adam(1e-2))
    st = tx.init(params)
    g = jax.grad(loss)(params)
    path = next(p for p in js.masks.prunable_paths(masks))
    floats = jax.tree.map(lambda m: m.astype(jnp.float32) if m.ndim else m, masks)
    with pytest.raises(TypeError, match=rf"masked\(tx\)\.update: mask at '{path}' has dtype "
                                        "float32"):
        tx.update(g, st, params, masks=floats)
    step = jax.jit(lambda g, st, p, m: tx.update(g, st, p, masks=m))
    with pytest.raises(TypeError, match="float32"):
        step(g, st, params, floats)  # also under jit (a dtype is static)
    u, _ = step(g, st, params, masks)
    for du, m in zip(jax.tree.leaves(u), jax.tree.leaves(masks), strict=True):
        if m.ndim:
            assert np.all(np.asarray(du)[~np.asarray(m)] == 0.0)
