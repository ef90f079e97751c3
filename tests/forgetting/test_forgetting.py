"""jaxsparse.forgetting: every analysis against a NumPy / SciPy reference on small synthetic
prediction tables, VoG and GraNd on models whose gradients are known in closed form, the
forgetting-events hook against the pure counter on a scripted sequence and on a real run, and
the bad-input errors."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from jaxsparse import forgetting as fg
from jaxsparse import train

C = 4


def _np_mode(pred: np.ndarray, probs: np.ndarray | None, tie: str) -> np.ndarray:
    """Reference: count votes example by example and apply the tie rule by hand."""
    out = []
    for n in range(pred.shape[1]):
        counts = np.bincount(pred[:, n], minlength=C)
        tied = [c for c in range(C) if counts[c] == counts.max()]
        if tie == "smallest":
            out.append(min(tied))
        elif tie == "largest":
            out.append(max(tied))
        else:
            means = {c: probs[:, n, c].mean() for c in tied}
            best = max(means.values())
            out.append(min(c for c in tied if means[c] == best))
    return np.array(out)


def _pop(name, pred, labels, logits=None, ids=None):
    if logits is None:
        return fg.population(name, labels=labels, predicted=pred, num_classes=C, example_ids=ids)
    return fg.population(name, labels=labels, logits=logits, example_ids=ids)


@pytest.fixture(scope="module")
def table():
    """Two populations of 6 members on 300 examples, 4 classes, many ties (votes of 6)."""
    rng = np.random.default_rng(0)
    n = 300
    labels = rng.integers(0, C, n)
    # logits whose argmax is mostly the label for dense, noisier for pruned
    d_logits = rng.normal(size=(6, n, C)).astype(np.float32)
    d_logits[:, np.arange(n), labels] += 1.5
    p_logits = rng.normal(size=(6, n, C)).astype(np.float32)
    p_logits[:, np.arange(n), labels] += 0.7
    dense = _pop("dense", None, labels, d_logits)
    pruned = _pop("sparsity=0.9", None, labels, p_logits)
    return labels, d_logits, p_logits, dense, pruned


@pytest.mark.parametrize("tie", ["smallest", "largest", "prob"])
def test_modal_labels_each_tie_rule_matches_numpy(table, tie):
    _, d_logits, _, dense, _ = table
    pred = np.asarray(dense.predicted)
    probs = np.asarray(jax.nn.softmax(d_logits, axis=-1))
    ties = sum(np.sort(np.bincount(pred[:, n], minlength=C))[-2:].tolist() in ([3, 3], [2, 2])
               for n in range(pred.shape[1]))
    assert ties > 10  # the table exercises the tie rule
    got = fg.modal_labels(pred, num_classes=C, tie=tie, probs=probs if tie == "prob" else None)
    np.testing.assert_array_equal(np.asarray(got), _np_mode(pred, probs, tie))
    np.testing.assert_array_equal(np.asarray(fg.population_modes(dense, tie=tie)),
                                  _np_mode(pred, probs, tie))


def test_tie_rules_differ_and_prob_needs_probabilities(table):
    _, _, _, dense, _ = table
    pred = dense.predicted
    small = fg.modal_labels(pred, num_classes=C, tie="smallest")
    large = fg.modal_labels(pred, num_classes=C, tie="largest")
    assert int(jnp.sum(small != large)) > 10
    with pytest.raises(ValueError, match="tie='prob'.*pass probs"):
        fg.modal_labels(pred, num_classes=C)
    labels_only = fg.population("d", labels=dense.labels, predicted=pred, num_classes=C)
    with pytest.raises(ValueError, match="stores no logits"):
        fg.population_modes(labels_only)


def test_pie_both_directions_and_subset_accuracy_match_numpy(table):
    labels, d_logits, p_logits, dense, pruned = table
    probs_d = np.asarray(jax.nn.softmax(d_logits, -1))
    probs_p = np.asarray(jax.nn.softmax(p_logits, -1))
    md = _np_mode(np.asarray(dense.predicted), probs_d, "prob")
    mp = _np_mode(np.asarray(pruned.predicted), probs_p, "prob")
    r = fg.pie(dense, pruned)
    mask = md != mp
    np.testing.assert_array_equal(np.asarray(r.mask), mask)
    np.testing.assert_array_equal(np.asarray(r.dense_right), mask & (md == labels))
    np.testing.assert_array_equal(np.asarray(r.pruned_right), mask & (mp == labels))
    assert r.share == pytest.approx(mask.mean(), abs=1e-7)
    assert 0 < mask.sum() < len(mask) and r.pruned_right.any() and r.dense_right.any()
    acc = np.asarray(fg.subset_accuracy(pruned, r.mask))
    ref = (np.asarray(pruned.predicted)[:, mask] == labels[mask]).mean(axis=1)
    np.testing.assert_allclose(acc, ref, rtol=1e-6)
    assert np.isnan(np.asarray(fg.subset_accuracy(pruned, np.zeros(len(labels), bool)))).all()


@pytest.mark.parametrize("paired", [False, True])
def test_pie_null_draws_match_a_numpy_reference(table, paired):
    labels, d_logits, p_logits, dense, pruned = table
    key = jax.random.key(7)
    draws = 6
    r = fg.pie_null(dense, pruned, key=key, size=3, num_draws=draws, tie="largest",
                    batch_size=4, paired=paired)
    pd, pp = np.asarray(dense.predicted), np.asarray(pruned.predicted)
    for b in range(draws):
        k1, k2 = jax.random.split(jax.random.fold_in(key, b))
        perm = np.asarray(jax.random.permutation(k1, 6))
        sel = perm[3:6] if paired else np.asarray(jax.random.permutation(k2, 6))[:3]
        a = _np_mode(pd[perm[:3]], None, "largest")
        other = _np_mode(pd[perm[3:6]], None, "largest")
        p = _np_mode(pp[sel], None, "largest")
        assert float(r.null[b]) == pytest.approx((a != other).mean(), abs=1e-7)
        assert float(r.pie[b]) == pytest.approx((a != p).mean(), abs=1e-7)
    np.testing.assert_allclose(np.asarray(r.excess), np.asarray(r.pie - r.null))
    s = r.summary(0.9)
    lo, hi = np.quantile(np.asarray(r.excess, np.float64), [0.05, 0.95])
    assert (s["excess_lo"], s["excess_hi"]) == pytest.approx((lo, hi))
    assert s["size"] == 3 and s["draws"] == draws
    assert s["excess_le0"] == pytest.approx(np.mean(np.asarray(r.excess) <= 0))


def test_pie_null_of_identical_members_is_zero(table):
    labels, d_logits, _, _, _ = table
    same = fg.population("dense", labels=labels, logits=np.repeat(d_logits[:1], 4, axis=0))
    r = fg.pie_null(same, key=jax.random.key(0), num_draws=5)
    assert r.size == 2 and np.all(np.asarray(r.null) == 0) and np.all(np.isnan(r.pie))


def test_taxicab_distance_and_top_decile_match_numpy(table):
    _, _, _, dense, pruned = table
    pd, pp = np.asarray(dense.predicted), np.asarray(pruned.predicted)
    hd = np.stack([np.bincount(pd[:, n], minlength=C) for n in range(pd.shape[1])]) / 6
    hp = np.stack([np.bincount(pp[:, n], minlength=C) for n in range(pp.shape[1])]) / 6
    ref = np.abs(hd - hp).sum(1)
    d, cie = fg.taxicab(dense, pruned)
    np.testing.assert_allclose(np.asarray(d), ref, atol=1e-6)
    k = int(np.ceil(0.1 * len(ref)))
    order = sorted(range(len(ref)), key=lambda i: (-round(float(d[i]), 6), i))[:k]
    expect = np.zeros(len(ref), bool)
    expect[order] = True
    np.testing.assert_array_equal(np.asarray(cie), expect & (ref > 0))
    assert int(cie.sum()) == k
    # exact count and tie rule on a hand-made vector; zeros never count
    got = fg.taxicab_cie(jnp.array([0.5, 1.0, 0.5, 0.5, 0.0, 0.0]), fraction=0.5)
    assert got.tolist() == [True, True, True, False, False, False]
    assert fg.taxicab_cie(jnp.zeros(5), fraction=0.4).tolist() == [False] * 5


def test_modal_cie_is_pie_for_a_quantised_population(table):
    _, _, _, dense, pruned = table
    a, b = fg.modal_cie(dense, pruned), fg.pie(dense, pruned)
    np.testing.assert_array_equal(np.asarray(a.mask), np.asarray(b.mask))


def test_subgroup_metrics_match_numpy(table):
    labels, _, _, dense, pruned = table
    rng = np.random.default_rng(1)
    male = rng.random(len(labels)) < 0.3
    age = rng.integers(0, 3, len(labels))
    m = fg.subgroup_metrics(dense, pruned, {"male": male, "age": age}, positive=2)
    assert set(m) == {"all", "male", "age=0", "age=1", "age=2"}
    for name, g in (("male", male), ("age=1", age == 1), ("all", np.ones_like(male))):
        for who, pop in (("dense", dense), ("compressed", pruned)):
            pred = np.asarray(pop.predicted)[:, g]
            y = labels[g]
            err = np.mean([(p != y).mean() for p in pred])
            fpr = np.mean([((p == 2) & (y != 2)).sum() / (y != 2).sum() for p in pred])
            fnr = np.mean([((p != 2) & (y == 2)).sum() / (y == 2).sum() for p in pred])
            assert m[name][f"{who}_error"] == pytest.approx(err)
            assert m[name][f"{who}_fpr"] == pytest.approx(fpr)
            assert m[name][f"{who}_fnr"] == pytest.approx(fnr)
        rel = (m[name]["compressed_fnr"] - m[name]["dense_fnr"]) / m[name]["dense_fnr"]
        assert m[name]["relative_fnr"] == pytest.approx(rel)
        assert m[name]["n"] == int(g.sum())
    with pytest.raises(ValueError, match="attribute 'male' has shape \\(299,\\).*300 examples"):
        fg.subgroup_metrics(dense, pruned, {"male": male[:-1]})


def test_quantize_int8_matches_numpy_and_keeps_zeros():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(16, 8)).astype(np.float32)
    w[w < -1] = 0.0  # pruned entries
    params = {"dense": {"kernel": jnp.asarray(w), "bias": jnp.asarray(rng.normal(size=8),
                                                                      jnp.float32)},
              "empty": {"kernel": jnp.zeros((3, 3))}}
    q = jax.jit(fg.quantize_int8)(params)
    scale = np.float32(np.abs(w).max()) / np.float32(127.0)
    ref = np.clip(np.round(w / scale), -127, 127).astype(np.float32) * scale
    np.testing.assert_array_equal(np.asarray(q["dense"]["kernel"]), ref)
    assert np.all(np.asarray(q["dense"]["kernel"])[w == 0] == 0)
    assert len(np.unique(np.asarray(q["dense"]["kernel"]))) <= 255
    np.testing.assert_array_equal(np.asarray(q["dense"]["bias"]),
                                  np.asarray(params["dense"]["bias"]))
    np.testing.assert_array_equal(np.asarray(q["empty"]["kernel"]), np.zeros((3, 3)))
    # a population: vmap gives each member its own scale
    stacked = jax.vmap(fg.quantize_int8)({"w": jnp.stack([jnp.asarray(w), 2 * jnp.asarray(w)])})
    np.testing.assert_allclose(np.asarray(stacked["w"][1]), 2 * ref, rtol=1e-6)


def test_welch_ttest_matches_scipy_including_zero_variance():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(30, 5))
    b = rng.normal(0.3, 2.0, size=(25, 5))
    a[:, 3], b[:, 3] = 1.0, 0.5  # both constant, different: t = inf, p = 0
    a[:, 4], b[:, 4] = 0.25, 0.25  # both constant, equal: nan
    t, df, p = fg.welch_ttest(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's precision-loss warning on constant columns
        ref = stats.ttest_ind(a, b, axis=0, equal_var=False)
    np.testing.assert_allclose(t[:4], ref.statistic[:4], rtol=1e-12)
    np.testing.assert_allclose(p[:4], ref.pvalue[:4], rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(df[:3], ref.df[:3], rtol=1e-12)
    assert np.isinf(t[3]) and p[3] == 0 and np.isnan(t[4]) and np.isnan(p[4])
    assert np.isnan(ref.statistic[4]) and np.isnan(ref.pvalue[4])
    with pytest.raises(ValueError, match="at least 2 samples"):
        fg.welch_ttest(a[:1], b)


def _bh_reference(p):
    m = len(p)
    out = np.empty(m)
    for i in range(m):  # p_adj_i = min over p_j >= p_i of m p_j / rank_j
        ranks = np.array([np.sum(p <= p[j]) for j in range(m)])
        out[i] = min(1.0, min(m * p[j] / ranks[j] for j in range(m) if p[j] >= p[i]))
    return out


def test_benjamini_hochberg_matches_numpy_reference_and_scipy():
    rng = np.random.default_rng(4)
    p = rng.random(12) ** 3
    p[[2, 5]] = p[7]  # ties
    np.testing.assert_allclose(fg.bh_adjust(p), _bh_reference(p), rtol=1e-12)
    np.testing.assert_allclose(fg.bh_adjust(p), stats.false_discovery_control(p), rtol=1e-12)
    with_nan = np.concatenate([p, [np.nan]])
    got = fg.benjamini_hochberg(with_nan)
    np.testing.assert_allclose(got[:-1], _bh_reference(p), rtol=1e-12)
    assert np.isnan(got[-1])
    with pytest.raises(ValueError, match="lie in \\[0, 1\\]"):
        fg.benjamini_hochberg(np.array([0.5, 1.5]))


def test_class_disparity_matches_numpy_and_scipy(table):
    labels, _, _, dense, pruned = table
    r = fg.class_disparity(dense, pruned)

    def centred(pop):
        pred = np.asarray(pop.predicted)
        rec = np.stack([[(pred[k][labels == c] == c).mean() for c in range(C)]
                        for k in range(pred.shape[0])])
        return rec, rec - (pred == labels).mean()

    rd, cd = centred(dense)
    rp, cp = centred(pruned)
    np.testing.assert_allclose(r.dense_recall, rd, rtol=1e-6)
    np.testing.assert_allclose(r.pruned_centred, cp, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(r.difference, cp.mean(0) - cd.mean(0), atol=1e-6)
    ref = stats.ttest_ind(cp, cd, axis=0, equal_var=False)
    np.testing.assert_allclose(r.t, ref.statistic, rtol=1e-5)
    np.testing.assert_allclose(r.p, ref.pvalue, rtol=1e-4)
    np.testing.assert_allclose(r.p_adjusted, _bh_reference(r.p), rtol=1e-12)
    np.testing.assert_array_equal(r.significant, r.p_adjusted <= 0.05)
    # a class every member of both populations gets entirely right is not tested
    pred_d, pred_p = np.asarray(dense.predicted).copy(), np.asarray(pruned.predicted).copy()
    pred_d[:, labels == 1] = 1
    pred_p[:, labels == 1] = 1
    r = fg.class_disparity(_pop("dense", pred_d, labels), _pop("pruned", pred_p, labels))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's precision-loss warning on constant columns
        ref = stats.ttest_ind(r.pruned_centred, r.dense_centred, equal_var=False)
    assert ref.pvalue[1] < 1e-6  # what scipy would call it (t = inf, or nearly)
    assert np.isnan(r.p[1]) and np.isnan(r.p_adjusted[1]) and not r.significant[1]
    np.testing.assert_allclose(r.p_adjusted[[0, 2, 3]], _bh_reference(r.p[[0, 2, 3]]))


# ---------------------------------------------------------------------------------------
# VoG on linear models: d logit_y / dx = W[:, y]; d p_y / dx = p_y (W[:, y] - sum_j p_j W[:, j])


def _linear(params, model_state, x, *, train, key):
    del train, key
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"][None], model_state


def test_input_gradients_are_the_closed_form_on_a_linear_model():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(6, 3)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    x = rng.normal(size=(7, 2, 3)).astype(np.float32)  # 7 examples of shape 2x3
    y = rng.integers(0, 3, 7)
    params = {"w": jnp.asarray(w), "b": jnp.asarray(b)}
    g = fg.input_gradients(_linear, params, x, y, batch_size=3)  # padded last batch
    np.testing.assert_allclose(np.asarray(g), w[:, y].T.reshape(7, 2, 3), rtol=1e-6)
    gp = fg.input_gradients(_linear, params, x, y, target="prob", batch_size=4)
    logits = x.reshape(7, 6) @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ref = p[np.arange(7), y][:, None] * (w[:, y].T - p @ w.T)
    np.testing.assert_allclose(np.asarray(gp), ref.reshape(7, 2, 3), rtol=1e-4, atol=1e-6)


def test_vog_windows_and_class_normalisation_match_numpy():
    rng = np.random.default_rng(6)
    ws = rng.normal(size=(7, 6, 3)).astype(np.float32)  # 7 checkpoints of a linear model
    x = rng.normal(size=(10, 6)).astype(np.float32)
    y = rng.integers(0, 3, 10)
    grads = jax.vmap(lambda w: fg.input_gradients(_linear, {"w": w, "b": jnp.zeros(3)}, x, y))(
        jnp.asarray(ws))
    s = ws[:, :, y].transpose(0, 2, 1)  # [K, N, pixels], the closed form
    ref = np.sqrt(((s - s.mean(0)) ** 2).mean(0)).mean(-1)
    np.testing.assert_allclose(np.asarray(fg.vog(grads)), ref, rtol=1e-5)
    win = fg.vog_windows(grads)
    for name, sl in (("early", slice(0, 3)), ("middle", slice(3, 5)), ("late", slice(5, 7))):
        part = s[sl]
        expect = np.sqrt(((part - part.mean(0)) ** 2).mean(0)).mean(-1)
        np.testing.assert_allclose(np.asarray(win[name]), expect, rtol=1e-5)
    # (a linear model's logit gradient depends on the class only: constant within a class)
    np.testing.assert_array_equal(np.asarray(fg.class_normalise(fg.vog(grads), y,
                                                                num_classes=3)), 0.0)
    v = rng.normal(size=10).astype(np.float32)
    y = np.array([0, 0, 0, 1, 1, 1, 1, 2, 3, 3])
    v[8:] = 5.0  # class 3: constant; class 2: a single example
    norm = np.asarray(fg.class_normalise(v, y, num_classes=5))  # class 4 absent
    for c in range(2):
        sel = y == c
        np.testing.assert_allclose(norm[sel], (v[sel] - v[sel].mean()) / v[sel].std(),
                                   rtol=1e-5, atol=1e-6)
    assert norm[7:].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="need >= 6 checkpoints"):
        fg.vog_windows(grads[:5])


# ---------------------------------------------------------------------------------------
# Forgetting events


def _np_forgetting(correct, presented):
    t, n = correct.shape
    events = np.zeros(n, int)
    learned = np.zeros(n, bool)
    for e in range(n):
        last = None
        for r in range(t):
            if not presented[r, e]:
                continue
            if last is True and not correct[r, e]:
                events[e] += 1
            last = bool(correct[r, e])
            learned[e] |= last
    seen = presented.any(0)
    return events, presented.sum(0), seen & ~learned, learned & (events == 0)


def test_count_forgetting_matches_a_python_loop():
    rng = np.random.default_rng(8)
    correct = rng.random((12, 40)) < 0.6
    correct[:, 0] = False  # never learned
    correct[:, 1] = [False] * 3 + [True] * 9  # learned, never forgotten
    presented = rng.random((12, 40)) < 0.8
    presented[:, :2] = True
    presented[:, 2] = False  # never presented: neither never-learned nor unforgettable
    f = fg.count_forgetting(correct, presented)
    ev, pres, never, unforg = _np_forgetting(correct, presented)
    np.testing.assert_array_equal(np.asarray(f.events), ev)
    np.testing.assert_array_equal(np.asarray(f.presentations), pres)
    np.testing.assert_array_equal(np.asarray(f.never_learned), never)
    np.testing.assert_array_equal(np.asarray(f.unforgettable), unforg)
    assert bool(f.never_learned[0]) and bool(f.unforgettable[1]) and ev.max() >= 3
    assert not bool(f.never_learned[2]) and not bool(f.unforgettable[2])


def test_forgetting_hook_reproduces_the_counter_on_a_scripted_sequence():
    """Scripted batches (indices, logits, labels) through the hook's update, out of order."""
    rng = np.random.default_rng(9)
    n, rounds, bs = 10, 6, 4
    hook = fg.forgetting_events(n)
    state = train.init_state({"w": jnp.zeros((2, 2))}, optax.sgd(0.1), key=jax.random.key(0),
                             hooks=[hook])
    hs = state.hook_state[0]
    correct = np.zeros((rounds, n), bool)
    presented = np.zeros((rounds, n), bool)
    labels = rng.integers(0, 3, n)
    update = jax.jit(hook.update)
    for r in range(rounds):
        order = rng.permutation(n)
        for start in range(0, n - bs + 1, bs):  # the last n % bs examples are dropped
            idx = order[start:start + bs]
            ok = rng.random(bs) < 0.5
            pred = np.where(ok, labels[idx], (labels[idx] + 1) % 3)
            logits = jax.nn.one_hot(pred, 3)
            info = train.StepInfo(prev=state, grads=None, batch=(None, jnp.asarray(labels[idx])),
                                  indices=jnp.asarray(idx, jnp.int32), logits=logits,
                                  loss=jnp.float32(0), step=jnp.int32(r))
            hs = update(hs, state, info)
            correct[r, idx], presented[r, idx] = ok, True
    # an index of -1 (a step called without indices) changes nothing
    info = info._replace(indices=jnp.full(bs, -1, jnp.int32))
    hs2 = update(hs, state, info)
    np.testing.assert_array_equal(np.asarray(hs2.presentations), np.asarray(hs.presentations))
    got = fg.forgetting_summary(hs)
    ref = fg.count_forgetting(correct, presented)
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(hs.count) == rounds * (n // bs) and int(got.events.sum()) > 0


def test_el2n_and_grand_match_the_closed_form():
    rng = np.random.default_rng(10)
    w = rng.normal(size=(5, 3)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    x = rng.normal(size=(9, 5)).astype(np.float32)
    y = rng.integers(0, 3, 9)
    logits = x @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    err = p - np.eye(3)[y]
    np.testing.assert_allclose(np.asarray(fg.el2n(logits, y)), np.linalg.norm(err, axis=1),
                               rtol=1e-5)
    members = np.stack([logits, 2 * logits])  # a population's logits [K, N, C]
    np.testing.assert_allclose(np.asarray(fg.el2n(members, y))[0], np.linalg.norm(err, axis=1),
                               rtol=1e-5)
    params = {"w": jnp.asarray(w), "b": jnp.asarray(b)}
    g = fg.grand(_linear, params, x, y, batch_size=4)
    # d loss / dW = x (p - y)^T, d loss / db = p - y
    ref = np.linalg.norm(err, axis=1) * np.sqrt((x ** 2).sum(1) + 1)
    np.testing.assert_allclose(np.asarray(g), ref, rtol=1e-5)
    masks = {"w": jnp.asarray(np.arange(15).reshape(5, 3) % 2 == 0), "b": jnp.ones((), bool)}
    gm = fg.grand(_linear, params, x, y, masks=masks)
    m = np.asarray(masks["w"], np.float32)
    refm = np.sqrt(((x[:, :, None] * err[:, None, :]) ** 2 * m[None]).sum((1, 2))
                   + (err ** 2).sum(1))
    np.testing.assert_allclose(np.asarray(gm), refm, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Bad input


def test_bad_inputs_name_the_member_or_population(table):
    labels, d_logits, _, dense, pruned = table
    bad = d_logits.copy()
    bad[3, 17, 2] = np.nan
    with pytest.raises(ValueError, match="logits of member 3 \\(seed 13\\) are NaN for example "
                                         "1017"):
        fg.population("dense", labels=labels, logits=bad, seeds=np.arange(10, 16),
                      example_ids=np.arange(1000, 1300))
    other = fg.population("pruned", labels=labels[:-1], logits=d_logits[:, :-1])
    with pytest.raises(ValueError, match="'dense' \\(300 examples\\) and 'pruned' \\(299\\) are "
                                         "over different example sets"):
        fg.pie(dense, other)
    shifted = fg.population("pruned", labels=labels, logits=d_logits,
                            example_ids=np.arange(1, 301))
    with pytest.raises(ValueError, match="1 ids only in 'dense' \\(first \\[0\\]\\)"):
        fg.class_disparity(dense, shifted)
    one = fg.population("sparsity=0.5", labels=labels, logits=d_logits[:1])
    with pytest.raises(ValueError, match="'sparsity=0.5' has 1 member; Welch's t-test needs"):
        fg.class_disparity(dense, one)
    with pytest.raises(ValueError, match="'sparsity=0.5' has 1 member; the dense-vs-dense null"):
        fg.pie_null(one, key=jax.random.key(0))
    with pytest.raises(ValueError, match="member 0 predicts class 7"):
        fg.population("x", labels=labels, predicted=np.full((2, 300), 7), num_classes=C)
    with pytest.raises(ValueError, match="paired=True needs a compressed population"):
        fg.pie_null(dense, fg.population("int8", labels=labels, logits=d_logits,
                                         seeds=np.arange(6) + 1), key=jax.random.key(0),
                    paired=True)
    with pytest.raises(ValueError, match="size must be in \\[1, 3\\]"):
        fg.pie_null(dense, pruned, key=jax.random.key(0), size=4)


def test_hooks_in_a_population_fit_match_a_replay_of_the_run():
    """forgetting_events + param_snapshots inside train.fit of a 2-member population: replaying
    every step's batch at the snapshotted params gives exactly the hook's counts."""
    from jaxsparse import data

    ds = data.digits()
    n, bs, steps = 200, 20, 40
    x, y = jnp.asarray(ds.train.x[:n]), jnp.asarray(ds.train.y[:n])
    keys = jax.random.split(jax.random.key(3), 2)
    params = jax.vmap(lambda k: {"w": 0.01 * jax.random.normal(k, (64, 10)),
                                 "b": jnp.zeros(10)})(keys)
    hooks = [fg.forgetting_events(n), fg.param_snapshots(list(range(steps + 1)))]
    tx = optax.sgd(0.3)
    state = jax.vmap(lambda p, k: train.init_state(p, tx, key=k, hooks=hooks))(params, keys)
    out = train.fit(_linear, tx, state, {"train": (x, y)}, num_steps=steps, batch_size=bs,
                    eval_every=20, hooks=hooks)
    events, snaps = out.state.hook_state
    assert snaps["w"].shape == (2, steps + 1, 64, 10)
    for m in range(2):
        np.testing.assert_array_equal(np.asarray(snaps["w"][m, steps]),
                                      np.asarray(out.state.params["w"][m]))
        np.testing.assert_array_equal(np.asarray(snaps["w"][m, 0]), np.asarray(params["w"][m]))
        idx = train.batch_indices(keys[m], jnp.int32(0), num_examples=n, batch_size=bs,
                                  num_steps=steps)  # [steps, bs]: the batches of the run
        member = jax.tree.map(lambda s, m=m: s[m, :steps], snaps)  # params before step t
        logits = jax.jit(jax.vmap(lambda p, i: _linear(p, {}, x[i], train=True, key=None)[0]))(
            member, idx)
        rows = np.arange(steps)[:, None]
        correct = np.zeros((steps, n), bool)
        presented = np.zeros((steps, n), bool)
        correct[rows, np.asarray(idx)] = np.asarray(jnp.argmax(logits, -1) == y[idx])
        presented[rows, np.asarray(idx)] = True
        ref = fg.count_forgetting(correct, presented)
        got = fg.forgetting_summary(jax.tree.map(lambda s, m=m: s[m], events))
        for a, b in zip(got, ref, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert int(got.presentations.sum()) == steps * bs and int(got.events.sum()) > 0


# ---------------------------------------------------------------------------------------
# The driver, end to end: a killed run resumes; the table agrees with the record


def test_driver_resumes_after_a_crash_and_its_table_matches_the_record(tmp_path, monkeypatch):
    import json
    import os
    from pathlib import Path

    from experiments import common
    from experiments import forgetting as driver
    from jaxsparse.forgetting import records

    source = Path(driver.__file__).read_text()
    assert "lax.scan" not in source and "fori_loop" not in source  # no training loop of its own
    config = common.apply_overrides(
        common.load_config(str(Path(driver.__file__).parent / "configs" / "forgetting" /
                               "hooker2019_pie_digits.py")),
        ["members=3", "sparsities=(0.0, 0.9)", "num_steps=60", "eval_every=30",
         "checkpoint_every=30", "model_kwargs.hidden=(32,)", "snapshot_every=10", "score_step=10",
         "null_draws=20", "prune_begin=10", "prune_end=40", "prune_frequency=10",
         "label_noise=0.1"])
    real_write = records.write_part

    def crash_at_level_09(root, part, tables):
        if part == "level_s0900":
            raise KeyboardInterrupt("killed")
        return real_write(root, part, tables)

    monkeypatch.setattr(records, "write_part", crash_at_level_09)
    with pytest.raises(KeyboardInterrupt):
        driver.run(config, str(tmp_path), show_progress=False)
    monkeypatch.undo()
    (run_dir,) = [str(p) for p in tmp_path.iterdir()]
    record = os.path.join(run_dir, "record")
    assert records.parts(record) == ["int8", "level_s0000"]
    done = os.path.join(run_dir, "level_s0000", "done.json")
    stamp = os.stat(done).st_mtime_ns
    path, rows = driver.run(config, str(tmp_path), show_progress=False)  # the relaunch
    assert path == run_dir and os.stat(done).st_mtime_ns == stamp  # finished level skipped
    assert records.parts(record) == ["int8", "level_s0000", "level_s0900"]
    assert [r["variant"] for r in rows] == ["dense", "sparsity=0.9", "int8"]
    for f in ("table.txt", "table.csv", "results.json", "pie_share.png", "pie_gallery.png",
              "class_disparity.png", "vog_deciles.png"):
        assert os.path.exists(os.path.join(run_dir, f)), f
    # the table's numbers are the library's on the record
    dense = records.load(record, "dense", split="test")
    pruned = records.load(record, "sparsity=0.9", split="test")
    assert dense.size == 3 and dense.num_examples == 600 and dense.checkpoint == 60
    assert [r["checkpoint"] for r in records.index(record) if r["variant"] == "dense"
            and r["split"] == "test"] == [10, 20, 30, 40, 50, 60]
    p = fg.pie(dense, pruned)
    row = rows[1]
    assert row["pie_pct"] == pytest.approx(100 * p.share) and row["n_pie"] == int(p.mask.sum())
    assert row["top1_mean"] == pytest.approx(100 * float(pruned.accuracy.mean()))
    noise = np.load(os.path.join(run_dir, "noise.npz"))
    assert noise["noisy"].sum() == round(0.1 * 1197)
    train_pie = fg.pie(records.load(record, "dense", split="train"),
                       records.load(record, "sparsity=0.9", split="train"))
    if train_pie.mask.any():
        assert row["noisy_share_of_train_pies"] == pytest.approx(
            100 * noise["noisy"][np.asarray(train_pie.mask)].mean())
    with open(os.path.join(run_dir, "level_s0900", "done.json")) as f:
        assert np.allclose(json.load(f)["density_mean"], 0.1, atol=1e-3)
    stats = np.load(os.path.join(run_dir, "level_s0000", "stats.npz"))
    assert stats["vog_all"].shape == (3, 600) and stats["events"].shape == (3, 1197)
    assert stats["grand"].shape == (3, 1197) and np.all(stats["grand"] > 0)
