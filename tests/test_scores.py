"""Scores: Zhou et al. criteria, same-sign variants, random, SNIP, SynFlow."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse import scores as S

INIT = {"w": jnp.array([1.0, -2.0, 0.5, -0.1, 3.0])}
FINAL = {"w": jnp.array([2.0, 1.0, -0.1, -0.3, 2.5])}


def test_criteria_formulas():
    i, f = np.asarray(INIT["w"]), np.asarray(FINAL["w"])
    want = {
        "large_final": np.abs(f),
        "small_final": -np.abs(f),
        "large_init": np.abs(i),
        "small_init": -np.abs(i),
        "large_init_large_final": np.minimum(np.abs(i), np.abs(f)),
        "small_init_small_final": -np.maximum(np.abs(i), np.abs(f)),
        "magnitude_increase": np.abs(f) - np.abs(i),
        "movement": np.abs(f - i),
    }
    for name, w in want.items():
        np.testing.assert_allclose(S.CRITERIA[name](INIT, FINAL)["w"], w, rtol=1e-6, err_msg=name)
    np.testing.assert_array_equal(S.magnitude(FINAL)["w"], np.abs(f))
    assert len(S.CRITERIA) == 17


def test_same_sign_flipped_rank_below_and_keep_order():
    flipped = np.sign(np.asarray(INIT["w"])) != np.sign(np.asarray(FINAL["w"]))  # [F, T, T, F, F]
    for name in ["large_final", "small_final", "magnitude_increase", "movement"]:
        base = np.asarray(S.CRITERIA[name](INIT, FINAL)["w"])
        ss = np.asarray(S.CRITERIA[name + "_same_sign"](INIT, FINAL)["w"])
        np.testing.assert_array_equal(ss[~flipped], base[~flipped])
        assert ss[flipped].max() < ss[~flipped].min(), name
        assert np.all(np.argsort(ss[flipped]) == np.argsort(base[flipped]))
    # across leaves (global scope): a flipped weight in one leaf is below same-sign in another
    i2 = {"a": jnp.array([1.0]), "b": jnp.array([-1.0])}
    f2 = {"a": jnp.array([0.01]), "b": jnp.array([5.0])}
    s2 = S.large_final_same_sign(i2, f2)
    assert float(s2["b"][0]) < float(s2["a"][0])


def test_random_is_keyed_and_deterministic():
    p = {"a": jnp.zeros((3, 4)), "b": jnp.zeros((3, 4))}
    r1, r2 = S.random(p, key=jax.random.key(0)), S.random(p, key=jax.random.key(0))
    np.testing.assert_array_equal(r1["a"], r2["a"])
    assert not np.array_equal(r1["a"], r1["b"])  # leaves are independent
    assert not np.array_equal(r1["a"], S.random(p, key=jax.random.key(1))["a"])
    r = S.CRITERIA["random"](p, p, key=jax.random.key(0))
    np.testing.assert_array_equal(r["a"], r1["a"])


def test_snip_equals_abs_grad_times_weight():
    p = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.1, 0.2])}
    x = jnp.array([[1.0, 2.0], [-1.0, 0.5]])
    loss = lambda p, x: jnp.sum(jnp.tanh(x @ p["w"] + p["b"][None, :]) ** 2)
    g = jax.grad(loss)(p, x)
    s = S.snip(loss, p, x)
    np.testing.assert_allclose(s["w"], np.abs(g["w"] * p["w"]), rtol=1e-6)
    m = {"w": jnp.array([[True, False], [True, True]]), "b": jnp.asarray(True)}
    assert float(S.snip(loss, p, x, masks=m)["w"][0, 1]) == 0.0


def _mlp(p, x):
    for i in range(len(p)):
        x = x @ p[f"l{i}"]
        if i < len(p) - 1:
            x = jax.nn.relu(x)
    return x


def test_synflow_matches_closed_form_and_rescaling():
    p = {"l0": jnp.array([[1.0, -2.0]]), "l1": jnp.array([[3.0], [1.0]])}
    s = S.synflow(_mlp, p, (1, 1))
    # R = |w1| . |w2| = 1*3 + 2*1 = 5; score = |w| dR/dw / R
    np.testing.assert_allclose(s["l0"], [[3 / 5, 2 / 5]], rtol=1e-6)
    np.testing.assert_allclose(s["l1"], [[3 / 5], [2 / 5]], rtol=1e-6)
    # deep net: plain R overflows float32; rescaling keeps the ranking of a bias-free ReLU net
    keys = jax.random.split(jax.random.key(0), 30)
    deep = {f"l{i}": jax.random.normal(k, (64, 64)) * 3 for i, k in enumerate(keys)}
    plain = np.asarray(S.synflow(_mlp, deep, (1, 64), rescale=False)["l0"])
    assert not (np.isfinite(plain).all() and (plain != 0).any())  # R = inf: useless scores
    auto = S.synflow(_mlp, deep, (1, 64))
    assert all(np.all(np.isfinite(np.asarray(v))) for v in auto.values())
    assert all(np.asarray(v).max() > 0 for v in auto.values())
    small = {k: v / 3 for k, v in list(deep.items())[:4]}  # a net that does not overflow
    a, b = S.synflow(_mlp, small, (1, 64), rescale=False), S.synflow(_mlp, small, (1, 64),
                                                                      rescale=True)
    ra, rb = np.concatenate([np.asarray(a[k]).ravel() for k in small]), np.concatenate(
        [np.asarray(b[k]).ravel() for k in small])
    top_a, top_b = np.argsort(-ra)[:500], np.argsort(-rb)[:500]
    assert len(set(top_a) & set(top_b)) >= 495  # same ranking up to float rounding
    np.testing.assert_allclose(ra / ra.sum(), rb / rb.sum(), rtol=1e-3, atol=1e-9)


def test_synflow_masks_exact_count():
    p = {"l0": jax.random.normal(jax.random.key(0), (8, 16)),
         "l1": jax.random.normal(jax.random.key(1), (16, 4))}
    # iterative SynFlow lives with the SynFlow pruner (it needs select; scores sits below it)
    m = js.pruners.synflow_masks(_mlp, p, (1, 8), js.ones_like(p), sparsity=0.8, iterations=5)
    assert int(js.count_kept(m)) == 192 - js.num_pruned(0.8, 192)


def test_criterion_by_name_is_the_one_lookup():
    init = {"w": jnp.array([1.0, -2.0, 0.5])}
    final = {"w": jnp.array([2.0, 1.0, -0.1])}
    for name, f in S.CRITERIA.items():
        if name == "random":
            continue
        np.testing.assert_array_equal(S.criterion(name)(init, final)["w"], f(init, final)["w"])
    np.testing.assert_array_equal(S.criterion("magnitude")(init, final)["w"],
                                  np.float32([2.0, 1.0, 0.1]))
    key = jax.random.key(3)
    np.testing.assert_array_equal(S.criterion("random")(init, final, key=key)["w"],
                                  S.random(final, key=key)["w"])
    custom = S.criterion(lambda i, f: {"w": f["w"] - i["w"]})
    np.testing.assert_allclose(custom(init, final, key=key)["w"], [1.0, 3.0, -0.6])
    with pytest.raises(ValueError, match="needs key"):
        S.criterion("random")(init, final)
    with pytest.raises(ValueError, match="unknown criterion 'large'.*large_final"):
        S.criterion("large")
