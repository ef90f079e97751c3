"""The compiled-scan trainer: data order, masks inside the step, compile once, hooks, vmap, fit."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsparse
from jaxsparse import data, models, testing, train


@pytest.fixture(scope="module")
def setup():
    ds = data.digits()
    fn = models.functional(models.lenet300(key=jax.random.key(0), input_shape=(8, 8, 1),
                                           hidden=(32, 16)))
    masks = jaxsparse.ones_like(fn.params)
    # prune every other entry of fc0 (a fixed, exactly known pattern)
    w = fn.params["fc0"]["kernel"]
    masks["fc0"]["kernel"] = (jnp.arange(w.size).reshape(w.shape) % 2) == 0
    tx = optax.chain(optax.add_decayed_weights(1e-2), optax.adam(1e-2))
    hooks = (train.snapshot_at(7),)
    state = train.init_state(fn.params, tx, key=jax.random.key(1), masks=masks, hooks=hooks)
    raw_chunk = train.make_train_chunk(fn.apply_fn, tx, batch_size=60, num_steps=10,
                                       hooks=hooks)
    chunk = jax.jit(raw_chunk)
    x, y = jnp.asarray(ds.train.x), jnp.asarray(ds.train.y)
    return dict(ds=ds, fn=fn, masks=masks, tx=tx, hooks=hooks, state=state, chunk=chunk,
                raw_chunk=raw_chunk, x=x, y=y)


def test_batch_indices_are_epoch_permutations_and_chunk_consistent():
    key = jax.random.key(5)
    full = np.asarray(train.batch_indices(key, jnp.int32(0), num_examples=23, batch_size=5,
                                          num_steps=12))
    # 4 batches per epoch (3 examples dropped per epoch); each epoch has no repeats
    for e in range(3):
        ep = full[4 * e: 4 * e + 4].ravel()
        assert len(set(ep.tolist())) == 20 and ep.max() < 23
    assert not np.array_equal(full[:4], full[4:8])  # a new order each epoch
    part = np.asarray(train.batch_indices(key, jnp.int32(5), num_examples=23, batch_size=5,
                                          num_steps=6))
    np.testing.assert_array_equal(part, full[5:11])  # chunks cut anywhere give the same order


def test_chunk_compiles_once_and_keeps_pruned_weights_exactly_zero(setup):
    s = setup
    chunk = jax.jit(s["raw_chunk"])
    # three consecutive chunks (epochs advance, step is traced): exactly one compilation
    st1, m1 = chunk(s["state"], s["x"], s["y"])
    st2, _ = chunk(st1, s["x"], s["y"])
    chunk(st2._replace(step=st2.step + 13), s["x"], s["y"])
    assert testing.cache_size(chunk) == 1
    assert int(st1.step) == 10 and m1["loss"].shape == (10,)
    kernel = np.asarray(st1.params["fc0"]["kernel"])
    mask = np.asarray(s["masks"]["fc0"]["kernel"])
    assert np.all(kernel[~mask] == 0.0)  # exact zeros despite weight decay + Adam
    assert np.count_nonzero(kernel[mask]) == mask.sum()
    assert not np.array_equal(st1.params["fc1"]["kernel"], s["state"].params["fc1"]["kernel"])


def test_chunk_equals_python_loop_of_steps_and_snapshot_hook(setup):
    s = setup
    step = jax.jit(train.make_step(s["fn"].apply_fn, s["tx"], hooks=s["hooks"]))
    idx = train.batch_indices(s["state"].key, s["state"].step, num_examples=len(s["y"]),
                              batch_size=60, num_steps=10)
    st = s["state"]
    after7 = None
    for t in range(10):
        st, _ = step(st, (s["x"][idx[t]], s["y"][idx[t]]))
        if t == 6:
            after7 = st.params
    ref, _ = s["chunk"](s["state"], s["x"], s["y"])
    for a, b in zip(jax.tree.leaves(ref.params), jax.tree.leaves(st.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # snapshot_at(7) holds the params after exactly 7 updates
    for a, b in zip(jax.tree.leaves(ref.hook_state[0]), jax.tree.leaves(after7), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ref.hook_state[0]["head"]["kernel"], ref.params["head"]["kernel"])


def test_vmap_population_with_per_member_learning_rates(setup):
    s = setup
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    fn = s["fn"]
    chunk = train.make_train_chunk(fn.apply_fn, tx, batch_size=60, num_steps=5)

    def init(key, lr):
        params, _ = fn.init_fn(key)
        st = train.init_state(params, tx, key=key)
        st.opt_state.hyperparams["learning_rate"] = lr
        return st

    keys = jax.random.split(jax.random.key(0), 3)
    states = jax.vmap(init)(keys, jnp.array([0.0, 0.1, 0.3]))
    out, metrics = jax.jit(jax.vmap(chunk, in_axes=(0, None, None)))(states, s["x"], s["y"])
    assert metrics["loss"].shape == (3, 5)
    k0, k1 = states.params["head"]["kernel"], out.params["head"]["kernel"]
    np.testing.assert_array_equal(k0[0], k1[0])  # lr 0: unchanged
    assert not np.allclose(k0[1], k1[1])
    member = jax.tree.map(lambda a: a[2], states)
    single, _ = jax.jit(chunk)(member, s["x"], s["y"])
    np.testing.assert_allclose(single.params["head"]["kernel"], k1[2], rtol=1e-5, atol=1e-6)


def test_evaluate_matches_direct_computation_with_padding(setup):
    s = setup
    x, y = s["ds"].test.x[:77], s["ds"].test.y[:77]
    out = train.evaluate(s["fn"].apply_fn, s["fn"].params, x, y, batch_size=20)
    logits, _ = s["fn"].apply_fn(s["fn"].params, {}, jnp.asarray(x), train=False, key=None)
    loss = float(jnp.mean(train.cross_entropy(logits, jnp.asarray(y))))
    acc = float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(y)))
    assert out["loss"] == pytest.approx(loss, rel=1e-5)
    assert out["accuracy"] == pytest.approx(acc, abs=1e-7)


def test_fit_early_stop_resume_and_callback(setup, tmp_path):
    s = setup
    calls = []
    kwargs = dict(num_steps=60, batch_size=60, eval_every=20, hooks=s["hooks"])
    full = train.fit(s["fn"].apply_fn, s["tx"], s["state"], s["ds"],
                     callback=lambda step, rec: calls.append(step), **kwargs)
    assert calls == [0, 20, 40, 60] and full.history["step"] == [0, 20, 40, 60]
    i = int(np.argmin(full.history["val_loss"]))
    assert full.early_stop["step"] == full.history["step"][i]
    assert full.early_stop["test_accuracy"] == full.history["test_accuracy"][i]
    # interrupted after 40 steps, then resumed from the checkpoint: bitwise identical
    ck = str(tmp_path / "ck")
    train.fit(s["fn"].apply_fn, s["tx"], s["state"], s["ds"], checkpoint_dir=ck,
              **{**kwargs, "num_steps": 40})
    resumed = train.fit(s["fn"].apply_fn, s["tx"], s["state"], s["ds"], checkpoint_dir=ck,
                        **kwargs)
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(jax.random.key_data(a) if a.dtype == jax.random.key(0).dtype
                                      else a, jax.random.key_data(b)
                                      if b.dtype == jax.random.key(0).dtype else b)
    np.testing.assert_equal(resumed.history, full.history)  # NaN == NaN at step 0
