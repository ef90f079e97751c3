"""Orbax wrapper: round trip, keep-N, stale temporaries, zeros on disk, corruption and fall-back."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

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


def _truncate_largest_file(step_dir):
    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
    with open(max(files, key=os.path.getsize), "r+b") as f:
        f.truncate(64)


def test_corrupt_latest_falls_back_to_the_previous_kept_step_with_a_warning(tmp_path):
    st = _state()
    ck = checkpoint.Checkpointer(str(tmp_path), keep=2)
    for step in (1, 2):
        ck.save(step, st._replace(step=jnp.int32(step)), metadata={"at": step})
    ck.wait()
    _truncate_largest_file(tmp_path / "2")
    with pytest.warns(UserWarning, match=r"/2 is corrupt or truncated.*moved it to .*/2\.corrupt;"
                                         r" falling back to step 1"):
        restored, meta = ck.restore(target=st)
    _assert_same(restored, st._replace(step=jnp.int32(1)))
    assert meta == {"at": 1}
    # the bad step is set aside (kept for inspection), so step 2 can be written again
    assert ck.all_steps() == [1] and (tmp_path / "2.corrupt").is_dir()
    ck.save(2, st._replace(step=jnp.int32(2)), metadata={"at": 2})
    ck.wait()
    assert ck.restore(target=st)[1] == {"at": 2}
    ck.close()


def test_silent_bit_flips_are_caught_by_the_crc(tmp_path):
    st = {"w": jnp.arange(1000.0), "b": jnp.ones(3)}
    checkpoint.save(str(tmp_path), 1, st)
    checkpoint.save(str(tmp_path), 2, st)
    data_dir = tmp_path / "1" / "tree" / "ocdbt.process_0" / "d"  # the array chunks
    files = [os.path.join(data_dir, f) for f in os.listdir(data_dir)]
    path = max(files, key=os.path.getsize)
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    raw[len(raw) // 2] ^= 0x01  # orbax alone restores this without complaint
    with open(path, "wb") as f:
        f.write(raw)
    with pytest.raises(checkpoint.CheckpointError, match=r"/1 is corrupt: leaf \d+ .* CRC-32"):
        checkpoint.restore(str(tmp_path), target=st, step=1)


def test_fit_resumes_from_the_previous_checkpoint_when_the_latest_is_corrupt(tmp_path):
    """A run killed right after a bad write: resume falls back one checkpoint and still ends
    bitwise where an uninterrupted run ends."""
    ds = data.digits()
    fn = models.functional(models.lenet300(key=jax.random.key(0), input_shape=(8, 8, 1),
                                           hidden=(16, 8)))
    tx = optax.sgd(0.1, momentum=0.9)
    state = train.init_state(fn.params, tx, key=jax.random.key(2))
    kw = dict(num_steps=30, batch_size=30, eval_every=10)
    full = train.fit(fn.apply_fn, tx, state, ds, **kw)
    ck = str(tmp_path / "ck")
    train.fit(fn.apply_fn, tx, state, ds, checkpoint_dir=ck, keep=2, **{**kw, "num_steps": 20})
    _truncate_largest_file(os.path.join(ck, "20"))
    with pytest.warns(UserWarning, match=r"ck/20 is corrupt.*falling back to step 10"):
        resumed = train.fit(fn.apply_fn, tx, state, ds, checkpoint_dir=ck, keep=2, **kw)
    _assert_same(resumed.state, full.state)
    np.testing.assert_equal(resumed.history, full.history)
