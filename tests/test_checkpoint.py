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


# ---------------------------------------------------------------------------------------
# The one key-aware flatten, and the stores built on it (npz trees, nested orbax trees).


def test_flatten_unflatten_round_trip_with_prng_keys():
    st = _state()
    arrays, impls = checkpoint.flatten(st)
    assert list(arrays) == checkpoint.leaf_names(st)
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    assert impls == {"key": "threefry2x32"} and arrays["key"].dtype == np.uint32
    _assert_same(checkpoint.unflatten(arrays, st, impls=impls), st)
    _assert_same(checkpoint.unflatten(list(arrays.values()), st), st)  # by position
    # an abstract template: the key comes back with the recorded impl
    like = jax.eval_shape(lambda: st)
    _assert_same(checkpoint.unflatten(arrays, like, impls=impls), st)
    with pytest.raises(ValueError, match="no leaf 'params/dense/kernel'"):
        checkpoint.unflatten({k: v for k, v in arrays.items() if k != "params/dense/kernel"},
                             st)
    bad = dict(arrays, **{"params/dense/bias": np.ones(4)})
    with pytest.raises(ValueError, match=r"'params/dense/bias' saved with shape \(4,\)"):
        checkpoint.unflatten(bad, st)


def test_leaf_names_fall_back_to_keystr_where_paths_collide():
    tree = {"a/b": np.zeros(1), "a": {"b": np.ones(1)}, "w": np.ones(2)}  # both "a/b"
    assert checkpoint.leaf_names(tree) == ["['a']['b']", "['a/b']", "w"]


def test_save_tree_is_path_keyed_and_reads_the_older_index_format(tmp_path):
    st = _state()
    checkpoint.save_tree(tmp_path / "a.npz", st)
    with np.load(tmp_path / "a.npz") as f:  # readable without jaxsparse
        np.testing.assert_array_equal(f["params/dense/kernel"], st.params["dense"]["kernel"])
        assert "masks/dense/kernel" in f.files
    _assert_same(checkpoint.load_tree(tmp_path / "a.npz", jax.eval_shape(lambda: st)), st)
    # the format written before leaves were named: leaf_00000, ... in flattening order
    old = {f"leaf_{i:05d}": np.asarray(jax.random.key_data(x) if checkpoint.is_key(x) else x)
           for i, x in enumerate(jax.tree.leaves(st))}
    np.savez(tmp_path / "old.npz", **old)
    _assert_same(checkpoint.load_tree(tmp_path / "old.npz", st), st)
    with pytest.raises(ValueError, match="leaves saved"):
        checkpoint.load_tree(tmp_path / "old.npz", {"w": np.zeros(2)})
    # a template of another container type with the same leaves: matched by position
    checkpoint.save_tree(tmp_path / "tuple.npz", tuple(st))
    _assert_same(checkpoint.load_tree(tmp_path / "tuple.npz", st), st)


def test_checkpoint_with_older_metadata_still_restores(tmp_path):
    # Steps written before the one flatten recorded keystr paths and no key implementations.
    import json

    st = _state()
    checkpoint.save(str(tmp_path), 5, st, metadata={"a": 1})
    meta_file = tmp_path / "5" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta.pop("prng_keys")
    meta["paths"] = [jax.tree_util.keystr(kp)
                     for kp, _ in jax.tree_util.tree_flatten_with_path(st)[0]]
    meta_file.write_text(json.dumps(meta))
    restored, m = checkpoint.restore(str(tmp_path), target=st)
    _assert_same(restored, st)
    assert m == {"a": 1}


def test_save_pytree_round_trip_and_unreadable_directory(tmp_path):
    tree = {"w": jnp.arange(3.0), "rngs": {"default": jax.random.key(4)}, "n": jnp.int32(2)}
    impls = checkpoint.save_pytree(tmp_path / "t", tree)
    assert impls == {"rngs/default": "threefry2x32"}
    back = checkpoint.load_pytree(tmp_path / "t", impls=impls)
    _assert_same(jax.tree.map(jnp.asarray, back), tree)
    raw = checkpoint.load_pytree(tmp_path / "t")  # without impls: the key data
    assert raw["rngs"]["default"].dtype == np.uint32
    (tmp_path / "junk").mkdir()
    with pytest.raises(checkpoint.CheckpointError, match="junk"):
        checkpoint.load_pytree(tmp_path / "junk")


def test_a_ticket_in_the_format_written_before_checkpoint_owned_the_io_still_loads(tmp_path):
    # What lottery.export_ticket wrote before: an orbax PyTree of numpy trees (PRNG keys as
    # key data) and density.json whose contents.prng_keys are paths inside the model state.
    import json

    import orbax.checkpoint as ocp

    from jaxsparse import lottery

    params = {"fc": {"kernel": np.arange(6.0, dtype=np.float32).reshape(2, 3),
                     "bias": np.zeros(3, np.float32)}}
    masks = {"fc": {"kernel": np.array([[True, False, True], [False, True, True]]),
                    "bias": np.array(True)}}
    key = jax.random.key(9)
    state = {"rngs": {"key": np.asarray(jax.random.key_data(key))},
             "bn": {"mean": np.ones(3, np.float32)}}
    d = tmp_path / "old"
    d.mkdir()
    with ocp.PyTreeCheckpointer() as ck:
        ck.save(str(d / "ticket"), {"params": params, "masks": masks, "model_state": state})
    (d / "density.json").write_text(json.dumps({
        "metadata": {"level": 3},
        "contents": {"params": ["fc/bias", "fc/kernel"], "model_state": ["bn/mean", "rngs/key"],
                     "prng_keys": {"rngs/key": "threefry2x32"}}}))
    t = lottery.read_ticket(d)
    np.testing.assert_array_equal(t.params["fc"]["kernel"], params["fc"]["kernel"])
    np.testing.assert_array_equal(t.masks["fc"]["kernel"], masks["fc"]["kernel"])
    assert t.metadata == {"level": 3}
    assert checkpoint.is_key(t.model_state["rngs"]["key"])
    np.testing.assert_array_equal(jax.random.key_data(t.model_state["rngs"]["key"]),
                                  jax.random.key_data(key))
    # and the current writer produces the same layout: one reader for both
    lottery.export_ticket(tmp_path / "new", params, masks, model_state={
        "rngs": {"key": key}, "bn": {"mean": jnp.ones(3)}}, metadata={"level": 3})
    new = json.loads((tmp_path / "new" / "density.json").read_text())
    assert new["contents"]["prng_keys"] == {"rngs/key": "threefry2x32"}
    t2 = lottery.read_ticket(tmp_path / "new")
    _assert_same(t2.model_state, t.model_state)
