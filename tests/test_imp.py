"""jaxsparse.lottery.imp: the library's IMP loop over the one trainer."""

import json

import jax
import numpy as np
import optax
import pytest

import jaxsparse as js
from jaxsparse import data, lottery, models, select, train

DATA = data.digits()
FN = models.functional(models.lenet300(key=jax.random.key(0), input_shape=(8, 8, 1),
                                       hidden=(16, 8)))
PLAN = lottery.Plan(rates=[("head", 0.1), (".*", 0.2)])
TX = js.masked(optax.adam(3e-3))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("imp")
    seen = []
    res = lottery.imp(
        FN.apply_fn, FN.init_fn, DATA, plan=PLAN, levels=2, tx=TX, num_steps=30,
        batch_size=60, eval_every=10, key=jax.random.key(7), replicates=2,
        rewind_to="iteration", rewind_step=10,
        branches=[lottery.reinit_control(), lottery.action_branch("rewind", "frozen")],
        branch_levels=[2], directory=out,
        on_level=lambda level, p, m, ms: seen.append((level, float(js.density(
            jax.tree.map(lambda a: a[0], m))))))
    return res, seen, out


def test_levels_branches_and_exact_counts(run):
    res, seen, _ = run
    assert [(r["level"], r["branch"]) for r in res] == [
        (0, "ticket"), (1, "ticket"), (2, "ticket"), (2, "reinit"), (2, "rewind_frozen")]
    fc0, fc1, head = 64 * 16, 16 * 8, 8 * 10
    for level in (1, 2):
        k0, k1, kh = fc0, fc1, head
        for _ in range(level):
            k0 -= select.num_pruned(0.2, k0)
            k1 -= select.num_pruned(0.2, k1)
            kh -= select.num_pruned(0.1, kh)
        row = res[level]
        assert row["layers"]["fc0/kernel"] == k0 / fc0
        assert row["layers"]["fc1/kernel"] == k1 / fc1
        assert row["layers"]["head/kernel"] == kh / head
        assert row["density"] == [(k0 + k1 + kh) / (fc0 + fc1 + head)] * 2
    assert res[3]["density"] == res[2]["density"]  # the control keeps the ticket's mask
    assert [level for level, _ in seen] == [0, 1, 2]
    for r in res:
        # rewound levels train iterations 10..30 (evaluated at 10, 20, 30)
        assert r["history"]["step"] == ([0, 10, 20, 30] if r["level"] == 0 else [10, 20, 30])
        assert all(s in r["history"]["step"] for s in r["early_stop_step"])


def test_level_zero_is_the_documented_population(run):
    # replicate r: init key split(fold_in(key, 0), R)[r], data key split(fold_in(key, 1), R)[r]
    res, _, _ = run
    key = jax.random.key(7)
    r = 1
    params, ms = FN.init_fn(jax.random.split(jax.random.fold_in(key, 0), 2)[r])
    tr = train.Trainer(FN.apply_fn, TX, batch_size=60, hooks=[train.snapshot_at(10)])
    state = tr.init_state(params, key=jax.random.split(jax.random.fold_in(key, 1), 2)[r],
                          model_state=ms)
    out = tr.fit(state, DATA, num_steps=30, eval_every=10)
    np.testing.assert_allclose(np.asarray(res[0]["history"]["val_loss"])[:, r],
                               out.history["val_loss"], rtol=1e-5)


def test_relaunch_returns_the_finished_results(run, monkeypatch):
    res, _, out = run

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(train.Trainer, "chunk", no_training)
    again = lottery.imp(
        FN.apply_fn, FN.init_fn, DATA, plan=PLAN, levels=2, tx=TX, num_steps=30,
        batch_size=60, eval_every=10, key=jax.random.key(7), replicates=2,
        rewind_to="iteration", rewind_step=10,
        branches=[lottery.reinit_control(), lottery.action_branch("rewind", "frozen")],
        branch_levels=[2], directory=out)
    assert json.dumps(again) == json.dumps(res)  # (NaN train metrics at the first evaluation)


def test_bad_arguments_name_the_value():
    kw = dict(plan=PLAN, tx=TX, num_steps=30, batch_size=60, eval_every=10,
              key=jax.random.key(0))
    with pytest.raises(ValueError, match="rewind_to must be one of"):
        lottery.imp(FN.apply_fn, FN.init_fn, DATA, levels=1, rewind_to="k", **kw)
    with pytest.raises(ValueError, match="needs Plan\\(weights='trained'\\)"):
        lottery.imp(FN.apply_fn, FN.init_fn, DATA, levels=1, rewind_to="lr", rewind_step=5, **kw)
    with pytest.raises(ValueError, match=r"rewind_step must be in \[0, num_steps=30\), got 30"):
        lottery.imp(FN.apply_fn, FN.init_fn, DATA, levels=1, rewind_to="iteration",
                    rewind_step=30, **kw)
    with pytest.raises(ValueError, match="replicates=0"):
        lottery.imp(FN.apply_fn, FN.init_fn, DATA, levels=1, replicates=0, **kw)

