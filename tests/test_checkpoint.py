"""Orbax wrapper: round trip of a full TrainState, keep-N, stale temporaries, zeros on disk."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxsparse
from jaxsparse import checkpoint, data, models, train


def _state():
    params = {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)}}
    masks = jaxsparse.ones_like(params)
    masks["dense"]["kernel"] = jnp.array([[True, False, True], [False, True, True]])
    return train.init_state(params, optax.adam(1e-3), key=jax.random.key(7), masks=masks,
                            hooks=[train.snapshot_at(3)])


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.dtypes.issubdtype(y.dtype, jax.dtypes.prng_key)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def test_round_trip_keep_n_and_latest(tmp_path):
    st = _state()
    ck = checkpoint.Checkpointer(str(tmp_path), keep=2)
    for step in (1, 2, 3):
        ck.save(step, st._replace(step=jnp.int32(step)), metadata={"history": {"step": [step]}})
    ck.wait()
    assert ck.all_steps() == [2, 3] and ck.latest_step() == 3
    restored, meta = ck.restore(target=st)
    ck.close()
    _assert_same(restored, st._replace(step=jnp.int32(3)))
    assert meta == {"history": {"step": [3]}}
    assert restored.masks["dense"]["kernel"].dtype == jnp.bool_
    assert checkpoint.latest_step(str(tmp_path)) == 3
    assert checkpoint.latest_step(str(tmp_path / "nothing")) is None


def test_stale_temporary_directory_does_not_stop_resume(tmp_path):
    st = _state()
    checkpoint.save(str(tmp_path), 5, st)
    # what a writer killed mid-save leaves behind: a half-written temporary step directory
    stale = tmp_path / "10.orbax-checkpoint-tmp-1700000000123456"
    (stale / "tree").mkdir(parents=True)
    (stale / "tree" / "garbage").write_bytes(b"\x00" * 10)
    ck = checkpoint.Checkpointer(str(tmp_path))
    assert ck.latest_step() == 5
    assert ck.removed_tmp == [stale.name] and not stale.exists()
    restored, _ = ck.restore(target=st)
    _assert_same(restored, st)
    ck.save(10, st._replace(step=jnp.int32(10)))  # the same step can be written again
    ck.close()
    assert checkpoint.latest_step(str(tmp_path)) == 10


def test_pruned_weights_are_exactly_zero_in_every_saved_checkpoint(tmp_path):
    ds = data.digits()
    fn = models.functional(models.lenet300(key=jax.random.key(0), input_shape=(8, 8, 1),
                                           hidden=(16, 8)))
    masks = jaxsparse.prune(jaxsparse.scores.random(fn.params, key=jax.random.key(1)),
                            jaxsparse.ones_like(fn.params), sparsity=0.8, scope="layerwise")
    tx = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.1, momentum=0.9))
    state = train.init_state(fn.params, tx, key=jax.random.key(2), masks=masks)
    train.fit(fn.apply_fn, tx, state, ds, num_steps=40, batch_size=30, eval_every=10,
              checkpoint_dir=str(tmp_path), checkpoint_every=10, keep=None)
    steps = checkpoint.latest_step(str(tmp_path)), sorted(os.listdir(tmp_path))
    assert steps[0] == 40 and steps[1] == ["10", "20", "30", "40"]
    for step in (10, 20, 30, 40):
        saved, _ = checkpoint.restore(str(tmp_path), target=state, step=step)
        assert int(saved.step) == step
        for path in ("fc0", "fc1", "head"):
            kernel = np.asarray(saved.params[path]["kernel"])
            mask = np.asarray(saved.masks[path]["kernel"])
            assert mask.sum() < mask.size  # something is pruned here
            assert np.all(kernel[~mask] == 0.0)
            assert np.all(kernel[mask] != 0.0)
