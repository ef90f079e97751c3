"""experiments/dst.py end to end: dense, static ERK, SET, RigL, GMP on a tiny digits net."""

import os
import shutil

import jax
import numpy as np

from experiments import common, dst
from jaxsparse import checkpoint, population, select, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "experiments", "configs", "dst", "digits_dst.py")
SET = ["model_kwargs.hidden=(16, 8)", "num_steps=40", "eval_every=10", "checkpoint_every=20",
       "replicates=2", "sparsities=(0.9,)", "update_every=10", "gmp_frequency=10"]
SHAPES = [(64, 16), (16, 8), (8, 10)]  # the prunable kernels, in tree order


def tiny_config():
    return common.apply_overrides(common.load_config(CONFIG), SET)


DRIVER = dst



def final_masks(path, name):
    """The final masks of a run, restored from its last checkpoint."""
    config = tiny_config()
    ds = common.load_dataset(config)
    fn = common.build_model(config, ds)
    method, s = ("dense", 0.0) if name == "dense" else (name.split("_s")[0], 0.9)
    trainer = train.Trainer(fn.apply_fn, common.build_tx(config), batch_size=60,
                            pruner=dst.make_pruner(method, config, s))
    like = jax.vmap(lambda k: trainer.init_state(fn.init_fn(k[0])[0], key=k[2]))(
        common.replicate_keys(0, 2))
    state, _ = checkpoint.restore(os.path.join(path, name, "ckpt"), target=like)
    return state


def kept(masks, r):
    leaves = [m for m in jax.tree.leaves(population.take_member(masks, r)) if np.ndim(m)]
    return [int(np.sum(m)) for m in leaves]


def test_table_files_and_exact_densities(finished_run):
    _, path, rows = finished_run
    assert [(r["method"], r["target_sparsity"]) for r in rows] == [
        ("dense", 0.0), ("static", 0.9), ("set", 0.9), ("rigl", 0.9), ("gmp", 0.9)]
    erk = select.erk_kept(SHAPES, 0.9)
    total = sum(a * b for a, b in SHAPES)
    by = {r["method"]: r for r in rows}
    assert by["dense"]["density_mean"] == 1.0
    for m in ("static", "set", "rigl"):  # ERK counts, kept exactly through every drop/grow
        assert by[m]["density_mean"] == sum(erk) / total
    # GMP: uniform per layer, n - num_pruned(0.9, n) in every kernel at the end
    assert by["gmp"]["density_mean"] == sum(a * b - select.num_pruned(0.9, a * b)
                                            for a, b in SHAPES) / total
    for r in rows:
        assert r["replicates"] == 2 and 0.0 < r["final_test_accuracy_mean"] <= 1.0
        assert r["final_test_accuracy_sample_std"] >= 0.0
    for name in ("table.csv", "replicates.csv", "results.json", "curves.png"):
        assert os.path.getsize(os.path.join(path, name)) > 0
    with open(os.path.join(path, "table.csv")) as f:
        assert "final_test_accuracy_sample_std" in f.readline()
    res = common.read_json(os.path.join(path, "results.json"))
    assert res["spread"] == common.SPREAD
    # GMP's early stop is taken at its final density: after its last pruning step, 24
    # (begin 0.1 * 40 = 4, end 0.6 * 40 = 24, every 10 -> prunes at 4, 14, 24)
    gmp = common.read_json(os.path.join(path, "gmp_s0.9", "result.json"))
    assert gmp["early_stop_from_step"] == 25
    assert all(s >= 25 for s in gmp["early_stop_step"])


def test_masks_moved_only_where_the_pruner_moves_them(finished_run):
    _, path, _ = finished_run
    erk = select.erk_kept(SHAPES, 0.9)
    static, set_, rigl = (final_masks(path, n) for n in ("static_s0.9", "set_s0.9",
                                                            "rigl_s0.9"))
    for state in (static, set_, rigl):
        for r in (0, 1):
            assert kept(state.masks, r) == erk  # per-layer counts never change
            # pruned entries are exactly zero in the trained params
            p = population.take_member(state.params, r)
            m = population.take_member(state.masks, r)
            for pl, ml in zip(jax.tree.leaves(p), jax.tree.leaves(m), strict=True):
                if np.ndim(ml):
                    assert np.all(np.asarray(pl)[~np.asarray(ml)] == 0.0)
    # all three start from the same random ERK masks (same keys); static keeps them, SET and
    # RigL move them (and differently: random vs gradient growth)
    k0 = jax.tree.leaves(static.masks)[1]
    assert not np.array_equal(k0, jax.tree.leaves(set_.masks)[1])
    assert not np.array_equal(k0, jax.tree.leaves(rigl.masks)[1])
    assert not np.array_equal(jax.tree.leaves(set_.masks)[1], jax.tree.leaves(rigl.masks)[1])
    assert int(set_.pruner_state.count[0]) == 4  # updates at 0, 10, 20, 30 (end = 0.75 * 40)


def test_relaunch_skips_finished_runs_and_a_killed_run_resumes_bitwise(finished_run, monkeypatch):
    out, path, rows = finished_run
    before = common.read_json(os.path.join(path, "rigl_s0.9", "result.json"))
    real_chunk = train.Trainer.chunk
    calls = []

    def spy(self, *a, **k):
        calls.append(a)
        return real_chunk(self, *a, **k)

    monkeypatch.setattr(train.Trainer, "chunk", spy)
    again = dst.run(tiny_config(), out, show_progress=False)
    assert calls == [] and again == rows  # nothing retrained
    # "kill" rigl after its step-20 checkpoint: no result, newest checkpoint gone
    os.remove(os.path.join(path, "rigl_s0.9", "result.json"))
    shutil.rmtree(os.path.join(path, "rigl_s0.9", "ckpt", "40"))
    dst.run(tiny_config(), out, show_progress=False)
    assert calls  # rigl trained again, from step 20 ...
    after = common.read_json(os.path.join(path, "rigl_s0.9", "result.json"))
    for key in ("density", "history", "final_test_accuracy", "early_stop_step"):
        assert after[key] == before[key]  # ... to bitwise the same result
