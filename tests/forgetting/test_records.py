"""jaxsparse.forgetting.records: the Parquet per-example record round-trips bitwise, survives a
killed writer, reads with plain pyarrow / pandas, and names what is wrong in bad records."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from jaxsparse import forgetting as fg  # noqa: E402
from jaxsparse.forgetting import records  # noqa: E402


def _population(name="sparsity=0.9", k=3, n=7, c=4, seed=0, split="test", checkpoint=500):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(k, n, c)).astype(np.float32)
    # awkward floats: negative zero, a subnormal, a large value, the float32 extremes
    awkward = [-0.0, np.float32(1e-40), np.float32(3.4e38), np.float32(-1.17549435e-38)]
    logits[0, 0, :] = awkward[:c]
    return fg.population(name, labels=rng.integers(0, c, n), logits=logits,
                         example_ids=rng.permutation(100)[:n] + 1000,
                         seeds=np.arange(k) + 10 * seed, split=split, checkpoint=checkpoint)


def _bits(x):
    return np.asarray(x, np.float32).view(np.uint32)


def _assert_same(a: fg.Population, b: fg.Population, kind: str | None = None):
    assert (a.name, a.split, a.checkpoint, a.num_classes) == (b.name, b.split, b.checkpoint,
                                                              b.num_classes)
    np.testing.assert_array_equal(a.seeds, b.seeds)
    np.testing.assert_array_equal(a.example_ids, b.example_ids)
    np.testing.assert_array_equal(np.asarray(a.labels), np.asarray(b.labels))
    np.testing.assert_array_equal(np.asarray(a.predicted), np.asarray(b.predicted))
    assert b.kind == (kind or a.kind)
    if b.kind == "logits":
        np.testing.assert_array_equal(_bits(a.values), _bits(b.values))  # bitwise


@pytest.mark.parametrize("layout", ["list", "columns"])
def test_round_trip_is_bitwise(tmp_path, layout):
    pop = _population()
    records.write_part(str(tmp_path), "level_03", records.to_table(pop, layout=layout,
                                                                    sparsity=0.9))
    back = records.load(str(tmp_path), "sparsity=0.9", split="test")
    _assert_same(pop, back)
    assert back.labels.dtype == jnp.int32 and back.values.dtype == jnp.float32
    # probabilities: stored as the float32 softmax, read back bitwise
    records.write_part(str(tmp_path / "p"), "a", records.to_table(pop, values="probs",
                                                                   layout=layout))
    back_p = records.load(str(tmp_path / "p"), "sparsity=0.9", split="test")
    assert back_p.kind == "probs"
    np.testing.assert_array_equal(_bits(back_p.values), _bits(pop.probs))
    records.write_part(str(tmp_path / "n"), "a", records.to_table(pop, values="none"))
    _assert_same(pop, records.load(str(tmp_path / "n"), "sparsity=0.9", split="test"), "none")


def test_schema_and_plain_readers(tmp_path):
    pop = _population(k=2, n=5, c=3)
    records.write_part(str(tmp_path), "level_00", records.to_table(pop, sparsity=0.0))
    t = pq.read_table(str(tmp_path / "level_00.parquet"))
    assert t.schema.names == ["variant", "sparsity", "member", "seed", "checkpoint", "split",
                              "example_id", "label", "predicted", "correct", "logits"]
    assert t.schema.field("logits").type == pa.list_(pa.float32(), 3)
    assert t.schema.field("example_id").type == pa.int64()
    assert t.num_rows == 10
    rows = t.to_pylist()
    assert rows[6]["member"] == 1 and rows[6]["example_id"] == int(pop.example_ids[1])
    assert rows[6]["correct"] == (rows[6]["label"] == rows[6]["predicted"])
    assert records.index(str(tmp_path)) == [dict(variant="sparsity=0.9", split="test",
                                                 checkpoint=500, members=2, examples=5,
                                                 sparsity=0.0)]
    # any Parquet reader opens the directory (pyarrow's dataset here; pandas / polars alike)
    import pyarrow.dataset as ds

    back = ds.dataset(str(tmp_path), format="parquet").to_table()
    assert back.num_rows == 10 and set(back["variant"].to_pylist()) == {"sparsity=0.9"}


def test_parts_append_and_members_are_realigned(tmp_path):
    root = str(tmp_path)
    dense = _population("dense", seed=1)
    pruned = _population("sparsity=0.9", seed=1)  # same examples, different name
    records.write_part(root, "level_00", records.to_table(dense))
    records.write_part(root, "level_05", [records.to_table(pruned),
                                          records.to_table(pruned._replace(split="train"))])
    assert records.parts(root) == ["level_00", "level_05"]
    pops = records.load_many(root, ["dense", "sparsity=0.9"], split="test")
    _assert_same(dense, pops["dense"])
    _assert_same(pruned, pops["sparsity=0.9"])
    # a member whose rows were written in another example order is put back in member 0's
    t = records.to_table(dense)
    order = np.concatenate([np.arange(7), 7 + np.array([3, 0, 6, 1, 5, 2, 4]), np.arange(14, 21)])
    records.write_part(str(tmp_path / "shuffled"), "a", t.take(pa.array(order)))
    _assert_same(dense, records.load(str(tmp_path / "shuffled"), "dense", split="test"))


def test_checkpoints_default_to_the_last(tmp_path):
    root = str(tmp_path)
    early, late = _population(checkpoint=100, seed=2), _population(checkpoint=900, seed=2)
    records.write_part(root, "a", [records.to_table(early), records.to_table(late)])
    assert records.load(root, "sparsity=0.9", split="test").checkpoint == 900
    _assert_same(early, records.load(root, "sparsity=0.9", split="test", checkpoint=100))
    with pytest.raises(ValueError, match="no checkpoint 5 .* \\(has \\[100, 900\\]\\)"):
        records.load(root, "sparsity=0.9", split="test", checkpoint=5)


def test_a_killed_writer_leaves_no_visible_part(tmp_path, monkeypatch):
    root = str(tmp_path)
    pop = _population()
    records.write_part(root, "level_00", records.to_table(pop._replace(name="dense")))

    def dies(table, where, **kwargs):
        with open(where, "wb") as f:  # half a file, then the process "dies"
            f.write(b"PAR1 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", dies)
    with pytest.raises(KeyboardInterrupt):
        records.write_part(root, "level_01", records.to_table(pop))
    monkeypatch.undo()
    assert records.parts(root) == ["level_00"] and not records.has_part(root, "level_01")
    # a stray temporary file of a process killed with SIGKILL is ignored as well
    with open(os.path.join(root, "level_02.parquet.tmp-999"), "wb") as f:
        f.write(b"garbage")
    assert records.parts(root) == ["level_00"]
    assert records.read(root).num_rows == 21
    records.write_part(root, "level_01", records.to_table(pop))  # the relaunch
    assert records.has_part(root, "level_01")
    _assert_same(pop, records.load(root, "sparsity=0.9", split="test"))


def test_bad_records_name_the_member_part_or_level(tmp_path):
    root = str(tmp_path)
    pop = _population()
    t = records.to_table(pop)
    records.write_part(root, "a", t)
    with pytest.raises(ValueError, match="no level / variant \\['sparsity=0.95'\\]"):
        records.load_many(root, ["sparsity=0.9", "sparsity=0.95"], split="test")
    with pytest.raises(ValueError, match="no rows for variant 'dense' on split 'test'"):
        records.load(root, "dense", split="test")
    # member 2 lost a row
    records.write_part(str(tmp_path / "b"), "a", t.slice(0, 20))
    with pytest.raises(ValueError, match="member 2 \\(seed 2\\) covers a different example set"):
        records.load(str(tmp_path / "b"), "sparsity=0.9", split="test")
    # the same level written twice under two part names
    records.write_part(str(tmp_path / "c"), "a", t)
    records.write_part(str(tmp_path / "c"), "a_copy", t)
    with pytest.raises(ValueError, match="duplicate parts"):
        records.load(str(tmp_path / "c"), "sparsity=0.9", split="test")
    # parts with different layouts
    records.write_part(str(tmp_path / "d"), "a", t)
    records.write_part(str(tmp_path / "d"), "b", records.to_table(pop, layout="columns"))
    with pytest.raises(ValueError, match="part 'b' .* different schema"):
        records.read(str(tmp_path / "d"))
    # levels over different example sets
    other = _population("dense", seed=5)
    records.write_part(str(tmp_path / "e"), "a", [t, records.to_table(other)])
    with pytest.raises(ValueError, match="over different example sets"):
        records.load_many(str(tmp_path / "e"), ["sparsity=0.9", "dense"], split="test")
    with pytest.raises(ValueError, match="part name 'level 1'"):
        records.write_part(root, "level 1", t)
    with pytest.raises(FileNotFoundError, match="no complete parts"):
        records.read(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="holds probs, not logits"):
        records.to_table(fg.population("p", labels=pop.labels, probs=pop.probs))
