"""Supermasks: straight-through estimators, learned supermask, edge-popup, supermask at init."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsparse
from jaxsparse import masks as masks_lib
from jaxsparse import supermask as sm_lib
from jaxsparse.select import num_kept, num_pruned
from jaxsparse.testing import assert_compiles_once

# ---------------------------------------------------------------------------------------
# Estimators against hand-written references.


def test_bernoulli_forward_and_vjp_match_reference():
    s = jnp.array([[-3.0, -0.5, 0.0], [0.2, 1.0, 4.0]])
    c = jnp.array([[1.0, -2.0, 3.0], [0.5, -1.0, 2.0]])
    key = jax.random.key(3)
    m = sm_lib.bernoulli_ste(s, key=key)
    u = np.asarray(jax.random.uniform(key, s.shape))
    p = 1.0 / (1.0 + np.exp(-np.asarray(s, np.float64)))
    np.testing.assert_array_equal(np.asarray(m), (u < p).astype(np.float32))
    g = jax.grad(lambda s: jnp.sum(sm_lib.bernoulli_ste(s, key=key) * c))(s)
    np.testing.assert_allclose(np.asarray(g), np.asarray(c) * p * (1 - p), rtol=1e-5)


def test_bernoulli_reproducible_and_unbiased():
    s = jnp.full((200, 100), 0.8473)  # sigmoid = 0.7
    a = sm_lib.bernoulli_ste(s, key=jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(sm_lib.bernoulli_ste(
        s, key=jax.random.key(0))))
    b = sm_lib.bernoulli_ste(s, key=jax.random.key(1))
    assert not np.array_equal(np.asarray(a), np.asarray(b))
    assert set(np.unique(np.asarray(a)).tolist()) == {0.0, 1.0}
    assert abs(float(a.mean()) - 0.7) < 0.01  # 20k draws: std 0.0032


def _topk_reference(s: np.ndarray, sparsity: float) -> np.ndarray:
    flat = np.abs(s).reshape(-1)
    k = flat.size - num_pruned(sparsity, flat.size)
    order = sorted(range(flat.size), key=lambda i: (-flat[i], i))  # ties: lower index first
    out = np.zeros(flat.size, np.float32)
    out[order[:k]] = 1.0
    return out.reshape(s.shape)


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.7, 1.0])
def test_topk_forward_and_vjp_match_reference(sparsity):
    s = jnp.array([[0.3, -2.0, 0.0, 1.0], [-0.3, 0.3, -1.0, 0.5], [2.0, -0.0, 0.1, -0.1]])
    c = jnp.arange(12.0).reshape(3, 4) - 5.0
    m = sm_lib.topk_ste(s, sparsity)
    np.testing.assert_array_equal(np.asarray(m), _topk_reference(np.asarray(s), sparsity))
    assert int(m.sum()) == {0.0: 12, 0.25: 9, 0.5: 6, 0.7: 4, 1.0: 0}[sparsity]
    g = jax.grad(lambda s: jnp.sum(sm_lib.topk_ste(s, sparsity) * c))(s)
    # Straight-through to |s|, then d|s|/ds = sign(s): negative scores get the flipped gradient
    # (+1 at s == 0, JAX's convention for |x|, so a zero score is not stuck).
    sign = np.where(np.asarray(s) >= 0, 1.0, -1.0)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(c) * sign)


def test_topk_masks_exact_per_layer_count_traced_sparsity_compiles_once():
    tree = {"a": {"kernel": jax.random.normal(jax.random.key(0), (13, 7)),
                  "bias": jnp.zeros(())},
            "b": {"kernel": jax.random.normal(jax.random.key(1), (3, 3, 4, 5))}}
    f = jax.jit(sm_lib.topk_masks)
    for sp, kept in ((0.9, (9, 18)), (0.67, (30, 59)), (0.1, (82, 162))):  # of 91 and 180
        m = f(tree, sp)
        assert float(m["a"]["bias"]) == 1.0
        for path, k in zip(("a", "b"), kept, strict=True):
            n = tree[path]["kernel"].size
            assert int(m[path]["kernel"].sum()) == num_kept(sp, n) == k
    g = jax.jit(lambda t, d: sm_lib.topk_masks(t, d))
    assert_compiles_once(g, ((tree, 0.2), {}), ((tree, 0.6), {}))
    # One sparsity per population member under vmap.
    ds = jnp.array([0.1, 0.5, 0.8])
    mv = jax.vmap(sm_lib.topk_masks, in_axes=(None, 0))(tree, ds)
    for i, d in enumerate((0.1, 0.5, 0.8)):
        np.testing.assert_array_equal(np.asarray(mv["b"]["kernel"][i]),
                                      np.asarray(f(tree, d)["b"]["kernel"]))


def test_bad_inputs_raise_clearly():
    apply_fn = lambda p, s, x, *, train, key=None: (x @ p["w"], s)  # noqa: E731
    with pytest.raises(ValueError, match="sparsity"):
        sm_lib.supermask(apply_fn, estimator="topk")
    with pytest.raises(ValueError, match="sparsity"):
        sm_lib.edge_popup(apply_fn, 1.5)
    with pytest.raises(ValueError, match="estimator"):
        sm_lib.supermask(apply_fn, estimator="gumbel")
    with pytest.raises(TypeError, match="floating"):
        sm_lib.topk_ste(jnp.arange(4), 0.5)
    sm = sm_lib.learned_supermask(apply_fn)
    p, st = sm.init({"w": jnp.ones((3, 2))}, {}, key=jax.random.key(0))
    with pytest.raises(ValueError, match="key"):
        sm.apply(p, st, jnp.ones((1, 3)), train=True)
    with pytest.raises(ValueError, match="kaiming_normal"):
        sm_lib.frozen_weights({"w": jnp.ones((3, 2))}, init="kaiming_normal")


def test_frozen_weight_inits():
    w = {"d": {"kernel": jax.random.normal(jax.random.key(0), (50, 20)), "bias": jnp.ones(20)}}
    sc = sm_lib.frozen_weights(w, init="signed_constant")
    np.testing.assert_allclose(np.abs(np.asarray(sc["d"]["kernel"])),
                               float(jnp.std(w["d"]["kernel"])), rtol=1e-6)
    np.testing.assert_array_equal(np.sign(sc["d"]["kernel"]), np.sign(w["d"]["kernel"]))
    np.testing.assert_array_equal(np.asarray(sc["d"]["bias"]), 1.0)  # not prunable: untouched
    kc = sm_lib.frozen_weights(w, init="signed_kaiming_constant")
    np.testing.assert_allclose(np.abs(np.asarray(kc["d"]["kernel"])), np.sqrt(2 / 50), rtol=1e-6)
    kn = sm_lib.frozen_weights(w, init="kaiming_normal", key=jax.random.key(1))
    assert abs(float(jnp.std(kn["d"]["kernel"])) / np.sqrt(2 / 50) - 1) < 0.1
    s = sm_lib.init_scores(w, key=jax.random.key(2))
    assert s["d"]["bias"].shape == () and float(jnp.abs(s["d"]["kernel"]).max()) <= 1 / np.sqrt(50)


# ---------------------------------------------------------------------------------------
# End to end on digits, offline: a frozen random LeNet (NNX) and a supermask over it.

TRAIN = 1400
BATCH = 100


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int32)
    perm = np.random.RandomState(0).permutation(len(x))
    x, y = jnp.asarray(x[perm]), jnp.asarray(y[perm])
    return x[:TRAIN], y[:TRAIN], x[TRAIN:], y[TRAIN:]


@pytest.fixture(scope="module")
def lenet():
    from jaxsparse.models import functional, lenet300

    return functional(lenet300(key=jax.random.key(0), input_shape=(8, 8, 1)))


def _fit(apply_fn, tx, params, state, data, *, epochs, key):
    """Trains ``params`` for ``epochs`` (one compiled scan); returns (params, state)."""
    xtr, ytr = data[0], data[1]

    def loss(p, st, x, y, k):
        logits, st = apply_fn(p, st, x, train=True, key=k)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), st

    def step(carry, idx):
        p, o, st, k = carry
        k, sub = jax.random.split(k)
        (_, st), g = jax.value_and_grad(loss, has_aux=True)(p, st, xtr[idx], ytr[idx], sub)
        u, o = tx.update(g, o, p)
        return (optax.apply_updates(p, u), o, st, k), None

    def epoch(carry, k):
        idx = jax.random.permutation(k, TRAIN).reshape(-1, BATCH)
        return jax.lax.scan(step, carry, idx)[0], None

    keys = jax.random.split(key, epochs)
    carry = (params, tx.init(params), state, key)
    p, _, st, _ = jax.jit(lambda c: jax.lax.scan(epoch, c, keys)[0])(carry)
    return p, st


def _accuracy(apply_fn, params, state, data, *, key=None, **kw):
    logits, _ = apply_fn(params, state, data[2], train=False, key=key, **kw)
    return float((logits.argmax(-1) == data[3]).mean())


def _bitwise_equal(a, b):
    return jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and all(
        np.asarray(x).tobytes() == np.asarray(y).tobytes()
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_learned_supermask_digits(digits, lenet):
    sm = sm_lib.learned_supermask(lenet.apply_fn, weights="signed_constant", rescale=True)
    p0, st0 = sm.init(lenet.params, lenet.model_state, key=jax.random.key(1))
    w0 = jax.tree.map(np.array, st0["weights"])
    p, st = _fit(sm.apply, optax.sgd(100.0, momentum=0.9), p0, st0, digits, epochs=20,
                 key=jax.random.key(2))
    assert _bitwise_equal(st["weights"], w0)  # no weight ever trained
    sampled = _accuracy(sm.apply, p, st, digits, key=jax.random.key(3))
    expected = _accuracy(sm.apply, p, st, digits, deterministic=True)
    print(f"learned supermask on digits: sampled {sampled:.4f}, expected mask {expected:.4f}")
    assert sampled > 0.85 and expected > 0.85  # measured 0.98 / 0.97; chance 0.10
    # Export: an ordinary dense-with-zeros params tree + bool masks gives the same logits.
    params, masks = sm.export(p, st)
    jaxsparse.validate(params, masks)
    assert masks["fc0"]["kernel"].dtype == bool and masks["fc0"]["bias"].shape == ()
    assert np.all(np.asarray(params["fc0"]["kernel"])[~np.asarray(masks["fc0"]["kernel"])] == 0)
    a, _ = lenet.apply_fn(params, st["model"], digits[2], train=False)
    b, _ = sm.apply(p, st, digits[2], train=False, deterministic=True)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    rep = masks_lib.compact_report(masks)
    assert rep["hidden_units"] == 400 and 0 <= rep["removable"] <= 400


def test_edge_popup_digits(digits, lenet):
    sparsity = 0.5  # the paper's k = 0.5 kept
    sm = sm_lib.edge_popup(lenet.apply_fn, sparsity)
    p0, st0 = sm.init(lenet.params, lenet.model_state, key=jax.random.key(1))
    w0 = jax.tree.map(np.array, st0["weights"])
    sched = optax.cosine_decay_schedule(0.1, 15 * TRAIN // BATCH)
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(sched, momentum=0.9))
    p, st = _fit(sm.apply, tx, p0, st0, digits, epochs=15, key=jax.random.key(2))
    assert _bitwise_equal(st["weights"], w0)
    # Biases stay frozen at their zero init (the paper's "no biases").
    assert float(jnp.abs(st["weights"]["fc0"]["bias"]).max()) == 0.0
    acc = _accuracy(sm.apply, p, st, digits)
    print(f"edge-popup on digits (sparsity {sparsity}): {acc:.4f}")
    assert acc > 0.8  # measured 0.93; chance 0.10
    masks = sm.masks(p)
    for name in ("fc0", "fc1", "head"):
        m = masks[name]["kernel"]
        assert int(m.sum()) == num_kept(sparsity, m.size)


def test_supermask_at_init_sweep_digits(digits, lenet):
    tx = optax.adam(1.2e-3)
    final, _ = _fit(lenet.apply_fn, tx, lenet.params, lenet.model_state, digits, epochs=15,
                    key=jax.random.key(0))
    init = lenet.params
    dense = _accuracy(lenet.apply_fn, final, lenet.model_state, digits)
    results = {}
    runs = [(s, c, sgn) for s in (0.9, 0.7) for c in ("large_final_same_sign", "random")
            for sgn in (False, True)] + [(0.7, "large_final", False)]
    for sparsity, crit, signed in runs:
        params, masks = sm_lib.at_init(init, final, sparsity=sparsity, criterion=crit,
                                       signed_constant=signed, key=jax.random.key(5))
        assert abs(float(jaxsparse.sparsity(masks)) - sparsity) < 0.002
        results[sparsity, crit, signed] = _accuracy(lenet.apply_fn, params, lenet.model_state,
                                                    digits)
    print(f"dense trained {dense:.4f}")
    for k, v in results.items():
        print("at init", k, f"{v:.4f}")
    # Measured (sparsity 0.7): large_final_same_sign 0.85 (signed constant 0.91), random 0.09;
    # (sparsity 0.9): 0.36 / 0.43 vs random 0.06 / 0.03. Chance 0.10.
    for signed in (False, True):
        assert results[0.7, "large_final_same_sign", signed] > 0.7
        for sparsity in (0.9, 0.7):
            lfss = results[sparsity, "large_final_same_sign", signed]
            assert lfss > results[sparsity, "random", signed] + 0.2


def test_supermask_vmap_over_seeds_matches_single_runs(digits, lenet):
    # Edge-popup: its mask is a deterministic function of the (bitwise equal) scores. A
    # Bernoulli sample can flip when an ulp-level difference of the vectorised sigmoid moves
    # p across its uniform draw, and the runs then legitimately differ. Kaiming-normal weights:
    # with signed constants on digits' 1/16-quantised pixels, pre-activations can be exactly 0
    # in exact arithmetic, so their float sign (and the ReLU gradient) depends on sum order.
    sm = sm_lib.edge_popup(lenet.apply_fn, 0.6, weights="kaiming_normal")
    tx = optax.sgd(0.1, momentum=0.9)
    x, y = digits[0][:BATCH], digits[1][:BATCH]

    def run(key):
        k_init, k_sm, k_step = jax.random.split(key, 3)
        params, model_state = lenet.init_fn(k_init)
        p0, st = sm.init(params, model_state, key=k_sm)

        def loss(p):
            logits, _ = sm.apply(p, st, x, train=True, key=k_step)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        u, _ = tx.update(jax.grad(loss)(p0), tx.init(p0), p0)
        return p0, u, st

    keys = jax.random.split(jax.random.key(7), 2)
    pv, uv, stv = jax.jit(jax.vmap(run))(keys)
    for i in range(2):
        p1, u1, st1 = jax.jit(run)(keys[i])
        # Same init, bitwise; the update up to float reassociation of the batched matmuls.
        for a, b in zip(jax.tree.leaves((pv, stv)), jax.tree.leaves((p1, st1)), strict=True):
            np.testing.assert_array_equal(np.asarray(a[i]), np.asarray(b))
        a = np.asarray(uv["scores"]["fc1"]["kernel"][i])
        b = np.asarray(u1["scores"]["fc1"]["kernel"])
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
        assert np.abs(b).max() > 0
    assert not np.array_equal(np.asarray(stv["weights"]["fc0"]["kernel"][0]),
                              np.asarray(stv["weights"]["fc0"]["kernel"][1]))


def test_train_other_trains_biases_only_when_asked(lenet):
    sm = sm_lib.edge_popup(lenet.apply_fn, 0.7, train_other=True)
    p, st = sm.init(lenet.params, lenet.model_state, key=jax.random.key(0))
    assert p["other"]["fc0"]["bias"].shape == (300,) and p["other"]["fc0"]["kernel"].shape == ()
    x = jnp.ones((4, 8, 8, 1))

    @functools.partial(jax.grad)
    def g(p):
        return jnp.sum(sm.apply(p, st, x, train=True)[0] ** 2)

    grads = g(p)
    assert float(jnp.abs(grads["other"]["head"]["bias"]).sum()) > 0
    assert float(jnp.abs(grads["scores"]["fc0"]["kernel"]).sum()) > 0
