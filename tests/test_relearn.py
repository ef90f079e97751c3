"""Forget-and-relearn: each operator re-initialises exactly the leaves / entries it should
(bitwise the init_fn draw) and leaves the rest bitwise alone; label noise; IMP as an operator;
the generations loop over train.fit against plain training; the per-example record; errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsparse import data, lottery, relearn, select, train
from jaxsparse import masks as masks_lib


def init_fn(key):
    k = jax.random.split(key, 3)
    return {"fc0": {"kernel": jax.random.normal(k[0], (64, 16)) * 0.2, "bias": jnp.zeros(16)},
            "fc1": {"kernel": jax.random.normal(k[1], (16, 12)) * 0.3, "bias": jnp.zeros(12)},
            "head": {"kernel": jax.random.normal(k[2], (12, 10)) * 0.3,
                     "bias": jnp.zeros(10)}}


def apply_fn(params, model_state, x, *, train, key):
    del train, key
    h = x.reshape(x.shape[0], -1)
    for name in ("fc0", "fc1"):
        h = jax.nn.relu(h @ params[name]["kernel"] + params[name]["bias"][None, :])
    return h @ params["head"]["kernel"] + params["head"]["bias"][None, :], model_state


def trained_like(key):
    """A params tree with every leaf non-zero and different from any init draw."""
    return jax.tree.map(lambda a: a + 1.0 + jax.random.uniform(key, a.shape), init_fn(key))


def same(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool(jnp.all(a == b))


PATHS = ["fc0/bias", "fc0/kernel", "fc1/bias", "fc1/kernel", "head/bias", "head/kernel"]


def leaves(tree):
    return dict(zip(PATHS, jax.tree.leaves(tree), strict=True))


# ---------------------------------------------------------------------------------------
# Operators


def test_later_layers_reinitialises_from_the_named_layer_on():
    params, key = trained_like(jax.random.key(0)), jax.random.key(7)
    new = leaves(relearn.later_layers("fc1")(params, key=key, init_fn=init_fn))
    old, fresh = leaves(params), leaves(init_fn(key))
    for p in PATHS:
        want = old[p] if p.startswith("fc0") else fresh[p]
        assert same(new[p], want), p
    with pytest.raises(ValueError, match=r"'layer4' matches no parameter.*fc0/bias"):
        relearn.later_layers("layer4")(params, key=key, init_fn=init_fn)
    with pytest.raises(ValueError, match="init_fn"):
        relearn.later_layers("fc1")(params, key=key)


def test_reinit_by_rules_and_unused_rule_error():
    params, key = trained_like(jax.random.key(1)), jax.random.key(8)
    op = relearn.reinit([("fc0/bias", False), ("bias|head", True)])
    new, old, fresh = leaves(op(params, key=key, init_fn=init_fn)), leaves(params), leaves(
        init_fn(key))
    for p in PATHS:
        hit = p in ("fc1/bias", "head/bias", "head/kernel")  # first match wins for fc0/bias
        assert same(new[p], fresh[p] if hit else old[p]), p
    with pytest.raises(ValueError, match=r"\['conv'\] match no leaf"):
        relearn.reinit([("head", True), ("conv", True)])(params, key=key, init_fn=init_fn)


def test_knowledge_evolution_channels():
    params, key = trained_like(jax.random.key(2)), jax.random.key(9)
    op = relearn.knowledge_evolution(0.5, rules=[("fc1", True)])
    new, old, fresh = leaves(op(params, key=key, init_fn=init_fn)), leaves(params), leaves(
        init_fn(key))
    for p in ("fc0/bias", "fc0/kernel", "head/bias", "head/kernel"):
        assert same(new[p], old[p]), p
    k = new["fc1/kernel"]  # [16, 12]: the first 6 output columns are the fit hypothesis
    assert same(k[:, :6], old["fc1/kernel"][:, :6])
    assert same(k[:, 6:], fresh["fc1/kernel"][:, 6:])
    assert same(new["fc1/bias"][:6], old["fc1/bias"][:6])
    assert same(new["fc1/bias"][6:], fresh["fc1/bias"][6:])
    # both axes: a slim dense block [:8, :6] is kept
    m = relearn.fit_hypothesis(params, 0.5, axes=(-2, -1), rules=[("fc1/kernel", True)])
    assert np.asarray(m["fc1"]["kernel"]).sum() == 8 * 6
    assert bool(m["fc1"]["kernel"][:8, :6].all()) and bool(m["fc0"]["kernel"].all())
    # per-leaf axes by rules: a slim dense MLP (every input of fc0, every class of head)
    m = relearn.fit_hypothesis(params, 0.8, axes=[("fc0", (-1,)), ("head/kernel", (-2,)),
                                                  ("head/bias", ()), (".*", (-2, -1))])
    counts = {p: int(np.asarray(v).sum()) for p, v in leaves(m).items()}
    assert counts == {"fc0/bias": 13, "fc0/kernel": 64 * 13, "fc1/bias": 10,
                      "fc1/kernel": 13 * 10, "head/bias": 10, "head/kernel": 10 * 10}
    assert bool(leaves(m)["fc1/kernel"][:13, :10].all())
    # 0.8 of 12 channels: round(9.6) = 10 (the library's rounding rule)
    m = relearn.fit_hypothesis(params, 0.8, rules=[("fc1/kernel", True)])
    assert np.asarray(m["fc1"]["kernel"][0]).tolist() == [True] * 10 + [False] * 2


def test_knowledge_evolution_random_mask_is_fixed_across_generations():
    params = trained_like(jax.random.key(3))
    op = relearn.knowledge_evolution(0.3, mode="random", mask_key=jax.random.key(42))
    masks = []
    for g in (1, 2):
        key = jax.random.key(100 + g)
        new, old, fresh = leaves(op(params, key=key, init_fn=init_fn)), leaves(params), leaves(
            init_fn(key))
        kept = new["fc0/kernel"] == old["fc0/kernel"]
        assert int(kept.sum()) == select.num_pruned(0.3, 64 * 16)
        assert same(jnp.where(kept, 0.0, new["fc0/kernel"]),
                    jnp.where(kept, 0.0, fresh["fc0/kernel"]))
        masks.append(np.asarray(kept))
    assert (masks[0] == masks[1]).all()
    with pytest.raises(ValueError, match="mask_key"):
        relearn.knowledge_evolution(0.3, mode="random")(params, key=jax.random.key(0),
                                                        init_fn=init_fn)


def test_shrink_perturb():
    params, key = trained_like(jax.random.key(4)), jax.random.key(10)
    exact = relearn.shrink_perturb(0.4, 0.0)(params, key=key)
    for a, b in zip(jax.tree.leaves(exact), jax.tree.leaves(params), strict=True):
        assert same(a, jnp.float32(0.4) * b + jnp.float32(0.0) * (a - a))
    op = relearn.shrink_perturb(0.4, 0.1, kind="init", rules=[("kernel", True)])
    new, old, fresh = leaves(op(params, key=key, init_fn=init_fn)), leaves(params), leaves(
        init_fn(key))
    for p in PATHS:
        want = (jnp.float32(0.4) * old[p] + jnp.float32(0.1) * fresh[p]
                if p.endswith("kernel") else old[p])
        assert same(new[p], want), p
    # normal noise: (new - λθ) / σ is a standard normal draw
    new = relearn.shrink_perturb(0.5, 0.01)(params, key=key)
    eps = np.asarray((new["fc0"]["kernel"] - 0.5 * params["fc0"]["kernel"]) / 0.01)
    assert abs(eps.mean()) < 0.1 and abs(eps.std() - 1.0) < 0.1


def test_random_reinit_exact_count():
    params, key = trained_like(jax.random.key(5)), jax.random.key(11)
    op = relearn.random_reinit(0.25, rules=[("kernel", True)])
    new, old, fresh = leaves(op(params, key=key, init_fn=init_fn)), leaves(params), leaves(
        init_fn(key))
    for p in PATHS:
        if p.endswith("bias"):
            assert same(new[p], old[p])
            continue
        hit = np.asarray(new[p] != old[p])
        assert hit.sum() == select.num_pruned(0.25, hit.size), p
        assert same(jnp.where(hit, new[p], 0.0), jnp.where(hit, fresh[p], 0.0))


def test_imp_operator_is_prune_and_rewind():
    final, start = trained_like(jax.random.key(6)), init_fn(jax.random.key(12))
    m0 = masks_lib.ones_like(final)
    plan = lottery.Plan(rates=[("head", 0.1), (".*", 0.2)])
    params, m1 = relearn.imp(plan).update(final, m0, key=jax.random.key(0), rewind=start)
    want_m, want_p = lottery.prune_and_rewind(final, m0, start, plan=plan, key=jax.random.key(0))
    assert masks_lib.equal(m1, want_m)
    assert all(same(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want_p),
                                          strict=True))
    assert int(m1["fc0"]["kernel"].sum()) == 64 * 16 - select.num_pruned(0.2, 64 * 16)
    with pytest.raises(TypeError, match="Plan"):
        relearn.imp({"rate": 0.2})


def test_inject_label_noise():
    y = jnp.asarray(np.arange(200) % 10, jnp.int32)
    noisy_y, noisy = relearn.inject_label_noise(y, 0.15, num_classes=10, key=jax.random.key(0))
    assert int(noisy.sum()) == 30
    assert bool(jnp.all((noisy_y != y) == noisy))
    assert int(noisy_y.min()) >= 0 and int(noisy_y.max()) <= 9


# ---------------------------------------------------------------------------------------
# Generations over the trainer


@pytest.fixture(scope="module")
def noisy_digits():
    ds = data.digits()
    y_noisy, noisy = relearn.inject_label_noise(ds.train.y, 0.2, num_classes=10,
                                                key=jax.random.key(5))
    d = {"train": (ds.train.x, np.asarray(y_noisy)), "test": (ds.test.x, ds.test.y)}
    return d, np.asarray(noisy), ds.train.y


STEPS = 40


def run(d, noisy, true, forget, gens=2, **kw):
    return relearn.generations(
        apply_fn, optax.adam(3e-3), init_fn(jax.random.key(0)), d, forget=forget,
        num_generations=gens, num_steps=STEPS, batch_size=64, eval_every=STEPS,
        key=jax.random.key(1), init_fn=init_fn, noisy=noisy, true_labels=true, **kw)


SEEN = []


def llf_spy(params, *, key, init_fn):
    SEEN.append((params, key))
    return relearn.later_layers("head")(params, key=key, init_fn=init_fn)


@pytest.fixture(scope="module")
def llf_and_plain(noisy_digits):
    d, noisy, true = noisy_digits
    return run(d, noisy, true, llf_spy), run(d, noisy, true, None)


def test_generations_llf_vs_plain(noisy_digits, llf_and_plain):
    d, noisy, true = noisy_digits
    llf, plain = llf_and_plain
    assert [r["generation"] for r in llf.table] == [0, 1] and llf.steps == [STEPS, 2 * STEPS]
    # generation 0 is the same training in both
    assert (llf.logits[0] == plain.logits[0]).all()
    assert llf.table[0]["test_accuracy"] == plain.table[0]["test_accuracy"]
    # plain = ONE continued run of 2 x STEPS
    one = train.fit(apply_fn, optax.adam(3e-3), train.init_state(
        init_fn(jax.random.key(0)), optax.adam(3e-3), key=jax.random.fold_in(jax.random.key(1),
                                                                              0)),
        d, num_steps=2 * STEPS, batch_size=64, eval_every=STEPS)
    for a, b in zip(jax.tree.leaves(one.state.params), jax.tree.leaves(plain.state.params),
                    strict=True):
        assert same(a, b)
    # the per-example columns agree with the logits
    labels = np.asarray(d["train"][1])
    for res in (llf, plain):
        for g, row in enumerate(res.table):
            correct = res.logits[g].argmax(-1) == labels
            assert row["train_accuracy"] == pytest.approx(correct.mean())
            assert row["clean_accuracy"] == pytest.approx(correct[~noisy].mean())
            assert row["noisy_accuracy"] == pytest.approx(correct[noisy].mean())
            assert row["noisy_true_accuracy"] == pytest.approx(
                (res.logits[g].argmax(-1) == true)[noisy].mean())
    after = llf.logits_after_forget[1].argmax(-1) == labels
    fitted = llf.logits[0].argmax(-1) == labels
    assert llf.table[1]["forgotten_noisy"] == pytest.approx(
        (fitted & noisy & ~after).sum() / (fitted & noisy).sum())
    assert np.isnan(llf.table[0]["forgotten_clean"]) and np.isnan(plain.table[1]["forgotten_all"])
    assert np.isnan(llf.logits_after_forget[0]).all()


def test_generations_forgets_bitwise(noisy_digits, llf_and_plain):
    d, _, _ = noisy_digits
    res, _ = llf_and_plain
    (before, key), = SEEN
    assert jax.random.key_data(key).tolist() == jax.random.key_data(
        jax.random.fold_in(jax.random.key(1), 1001)).tolist()
    x = jnp.asarray(d["train"][0])
    # the operator saw the end of generation 0 ...
    np.testing.assert_allclose(res.logits[0], apply_fn(before, {}, x, train=False, key=None)[0],
                               rtol=1e-6, atol=1e-6)
    # ... and generation 1 started from its output: the head is the init_fn draw
    forgotten = relearn.later_layers("head")(before, key=key, init_fn=init_fn)
    assert same(forgotten["head"]["kernel"], init_fn(key)["head"]["kernel"])
    np.testing.assert_allclose(res.logits_after_forget[1],
                               apply_fn(forgotten, {}, x, train=False, key=None)[0],
                               rtol=1e-6, atol=1e-6)


def test_generations_with_imp_changes_masks(noisy_digits):
    d, noisy, true = noisy_digits
    res = run(d, noisy, true, relearn.imp(lottery.Plan(rate=0.5)))
    kept = int(res.state.masks["fc0"]["kernel"].sum())
    assert kept == 64 * 16 - select.num_pruned(0.5, 64 * 16)
    assert float(jnp.abs(jnp.where(res.state.masks["fc0"]["kernel"], 0.0,
                                   res.state.params["fc0"]["kernel"])).max()) == 0.0


def test_write_records(tmp_path, llf_and_plain):
    pytest.importorskip("pyarrow")
    from jaxsparse.forgetting import records

    llf, _ = llf_and_plain
    paths = relearn.write_records(str(tmp_path), llf, name="llf")
    assert len(paths) == 2 and records.parts(str(tmp_path)) == ["llf_gen_00", "llf_gen_01"]
    pop = records.load(str(tmp_path), "llf/gen=1/after_forget", split="train")
    assert pop.predicted.tolist() == [llf.logits_after_forget[1].argmax(-1).tolist()]
    pop = records.load(str(tmp_path), "llf/gen=0", split="train")
    np.testing.assert_array_equal(np.asarray(pop.values[0]), llf.logits[0])


def test_bad_inputs(noisy_digits):
    d, noisy, true = noisy_digits
    with pytest.raises(ValueError, match="num_generations must be >= 1, got 0"):
        run(d, noisy, true, relearn.later_layers("head"), gens=0)
    with pytest.raises(ValueError, match="noisy must be a bool"):
        run(d, noisy[:-1], true, None)
    with pytest.raises(TypeError, match="forget must be"):
        run(d, noisy, true, "llf")
    with pytest.raises(ValueError, match="fraction"):
        relearn.random_reinit(1.5)


def test_driver_smoke(tmp_path):
    """experiments/relearn.py end to end (tiny): both tables, the record, the picture."""
    from experiments import common
    from experiments import relearn as driver

    config = common.load_config("experiments/configs/relearn/zhou2022_ke_digits.py")
    common.apply_overrides(config, ["generations=2", "steps_per_generation=20",
                                    "eval_every=20", "model_kwargs.hidden=(16, 8)"])
    out = driver.run(config, str(tmp_path))
    assert set(out["tables"]) == {"ke", "plain"} and out["noisy_examples"] == 239
    assert [r["step"] for r in out["tables"]["ke"]] == [20, 40]
    for key in ("test_accuracy", "clean_accuracy", "noisy_accuracy", "noisy_true_accuracy"):
        assert out["tables"]["ke"][0][key] == out["tables"]["plain"][0][key]
    (run_dir,) = tmp_path.iterdir()
    assert (run_dir / "generations.png").exists() and (run_dir / "table.txt").exists()
    if out["records"].startswith("Parquet"):
        from jaxsparse.forgetting import records

        assert records.parts(str(run_dir / "records")) == [
            "ke_gen_00", "ke_gen_01", "plain_gen_00", "plain_gen_01"]
