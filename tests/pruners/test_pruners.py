"""Pruners: GMP schedule and counts, SET / RigL against NumPy references of the papers' rules,
exact top-k, ERK, chain, compile-once, populations, the trainer, and errors on bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_select import ref_erk_counts  # tests/ is on the path (pyproject: pythonpath)

import jaxsparse as js
from jaxsparse import pruners, select, train
from jaxsparse.testing import MIXED_PRUNABLE, cache_size, mixed_tree

PARAMS = mixed_tree(jax.random.key(0))
GRADS = mixed_tree(jax.random.key(1))
PRUNABLE = list(MIXED_PRUNABLE)
SHAPES = [(3, 3, 2, 8), (72, 20), (30, 6), (20, 5)]


def prunable(tree):
    return [np.asarray(x) for x, m in zip(jax.tree.leaves(tree), jax.tree.leaves(PARAMS_MASKS),
                                          strict=True) if np.ndim(m)]


PARAMS_MASKS = js.ones_like(PARAMS)


def kept(masks):
    return [int(m.sum()) for m in prunable(masks)]


# ---------------------------------------------------------------------------------------
# NumPy references.


def ref_top(scores, cands, k):
    """Keep the k candidates with the highest float32 scores; ties: lower flat index; NaN last.

    ``scores`` / ``cands`` are lists of leaves forming one group (flat order leaf by leaf).
    """
    s = np.concatenate([np.asarray(x, np.float32).ravel() for x in scores])
    c = np.concatenate([np.asarray(x).ravel() for x in cands])
    idx = np.flatnonzero(c)
    v = s[idx]
    nan = np.isnan(v)
    order = np.lexsort((idx, -np.where(nan, 0, v), nan))  # last key is the primary one
    keep = np.zeros(s.size, bool)
    keep[idx[order[:k]]] = True
    out, start = [], 0
    for x in scores:
        out.append(keep[start:start + np.size(x)].reshape(np.shape(x)))
        start += np.size(x)
    return out


def ref_dst(weights, masks, grow_scores, d):
    """The papers' rule per leaf: drop floor(d * n) smallest |w| among the active, grow as many
    by the highest grow score among the inactive after the drop."""
    out = []
    for w, m, g in zip(weights, masks, grow_scores, strict=True):
        n = int(m.sum())
        k = int(np.floor(np.float32(d) * np.float32(n)))
        keep = ref_top([np.abs(w)], [m], n - k)[0]
        grow = ref_top([g], [~keep], k)[0]
        out.append(keep | grow)
    return out


def gmp64(t, s_i, s_f, t0, t1):
    p = min(max((t - t0) / (t1 - t0), 0.0), 1.0)
    return s_f + (s_i - s_f) * (1.0 - p) ** 3


# ---------------------------------------------------------------------------------------
# Shared compiled functions (one compilation each for the whole module).


def _update_fn(p):
    return jax.jit(lambda m, s, w, g, t, k: p.update(m, s, w, grads=g, step=t, key=k))


RIGL = pruners.rigl(begin_step=0, end_step=40, frequency=4, drop_fraction=0.3)
SET = pruners.set_(begin_step=0, end_step=40, frequency=4, drop_fraction=0.4)
RIGL_UPDATE, SET_UPDATE = _update_fn(RIGL), _update_fn(SET)
START = pruners.random_erk(PARAMS, sparsity=0.8, key=jax.random.key(5))


def with_ties(params, key):
    """Params with exact ties among the active weights: zeros (freshly grown) and repeats."""
    def one(x):
        if x.ndim < 2:
            return x
        u = jax.random.uniform(key, x.shape)
        x = jnp.where(u < 0.15, 0.0, x)
        return jnp.where(u > 0.9, 0.5, x)
    return jax.tree.map(one, params)


# ---------------------------------------------------------------------------------------
# keep_top: the exact selection all pruners use.


KEEP_TOP = jax.jit(lambda s, c, k: select.keep_top(s, c, k, groups=(0, 0, 1, 2)))


def test_keep_top_matches_reference_with_ties_nan_and_groups():
    rng = np.random.default_rng(0)
    for trial in range(12):
        kind = trial % 4
        scores = []
        for shape in SHAPES:
            x = rng.normal(size=shape)
            if kind == 1:
                x = rng.integers(0, 3, size=shape).astype(float)  # many ties
            elif kind == 2:
                x = np.where(rng.random(shape) < 0.05, np.nan, x)
            elif kind == 3:
                x = np.where(rng.random(shape) < 0.5, -0.0, np.where(x > 0, 0.0, x))
            scores.append(x.astype(np.float32))
        cands = [rng.random(shape) < rng.uniform(0.1, 1.0) for shape in SHAPES]
        avail = [int(cands[0].sum() + cands[1].sum()), int(cands[2].sum()), int(cands[3].sum())]
        k = [int(rng.integers(0, a + 2)) for a in avail]  # up to more than available
        if trial == 0:
            k = [0, avail[1], 1]
        got = KEEP_TOP([jnp.asarray(x) for x in scores], [jnp.asarray(c) for c in cands],
                       jnp.asarray(k))
        want = (ref_top(scores[:2], cands[:2], k[0]) + ref_top(scores[2:3], cands[2:3], k[1])
                + ref_top(scores[3:], cands[3:], k[2]))
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(np.asarray(g), w, err_msg=f"trial {trial}")
    assert cache_size(KEEP_TOP) == 1


# ---------------------------------------------------------------------------------------
# GMP.


def test_gmp_schedule_equals_formula():
    for t in range(-3, 60):
        got = float(pruners.gmp_schedule(t, initial_sparsity=0.1, final_sparsity=0.95,
                                         begin_step=5, end_step=45))
        assert abs(got - gmp64(t, 0.1, 0.95, 5, 45)) < 1e-6, t


GMP_KW = dict(begin_step=2, end_step=32, frequency=5)


@pytest.mark.parametrize("variant", ["uniform", "erk", "global", "overrides"])
def test_gmp_counts_at_every_step_equal_the_formula(variant):
    kw = dict(final_sparsity=0.9, initial_sparsity=0.1, **GMP_KW)
    if variant == "erk":
        kw["allocation"] = "erk"
    if variant == "global":
        kw["scope"] = "global"
    if variant == "overrides":
        kw["overrides"] = [("head", 0.5), ("embed", 0.0)]
    p = pruners.gmp(**kw)
    update = _update_fn(p)
    masks = js.ones_like(PARAMS)
    state = p.init(PARAMS, masks)
    sizes = [int(np.prod(s)) for s in SHAPES]
    for t in range(40):
        # the weights move between steps, so every step selects anew
        params = jax.tree.map(lambda a, b, t=t: a + 0.05 * t * b, PARAMS, GRADS)
        new, state = update(masks, state, params, None, jnp.int32(t), jax.random.key(t))
        before, after = prunable(masks), prunable(new)
        for b, a in zip(before, after, strict=True):
            assert not np.any(a & ~b), t  # never revives
        due = 2 <= t <= 32 and (t - 2) % 5 == 0
        assert bool(p.due(t)) == due
        if not due:
            assert kept(new) == kept(masks), t
            masks = new
            continue
        s = gmp64(t, 0.1, 0.9, 2, 32)
        w = prunable(params)
        if variant == "global":
            total = sum(sizes)
            assert sum(kept(new)) == total - select.num_pruned(s, total), t
            want = ref_top([np.abs(x) for x in w], before, total - select.num_pruned(s, total))
        else:
            if variant == "uniform":
                target = [n - select.num_pruned(s, n) for n in sizes]
            elif variant == "erk":
                s32 = float(pruners.gmp_schedule(t, initial_sparsity=0.1, final_sparsity=0.9,
                                                 begin_step=2, end_step=32))
                target = [min(a, b) for a, b in zip(select.erk_kept(SHAPES, s32), kept(masks),
                                                    strict=True)]
            else:
                s_head = gmp64(t, 0.1, 0.5, 2, 32)
                target = [sizes[0] - select.num_pruned(s, sizes[0]),
                          sizes[1] - select.num_pruned(s, sizes[1]), sizes[2],
                          sizes[3] - select.num_pruned(s_head, sizes[3])]
            assert kept(new) == target, (t, kept(new), target)
            want = [ref_top([np.abs(x)], [b], c)[0]
                    for x, b, c in zip(w, before, target, strict=True)]
        for a, b in zip(after, want, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"step {t}")
        masks = new
    assert int(state.count) == 7
    total = sum(sizes)
    if variant == "uniform":  # final sparsity reached exactly
        assert sum(kept(masks)) == sum(n - select.num_pruned(0.9, n) for n in sizes)
    if variant == "global":
        assert sum(kept(masks)) == total - select.num_pruned(0.9, total)
    assert cache_size(update) == 1


# ---------------------------------------------------------------------------------------
# SET and RigL.


@pytest.mark.parametrize("algo", ["rigl", "set"])
def test_dst_update_equals_numpy_reference(algo):
    update = RIGL_UPDATE if algo == "rigl" else SET_UPDATE
    p = RIGL if algo == "rigl" else SET
    params = with_ties(PARAMS, jax.random.key(7))
    params = js.apply_masks(params, START)
    grads = jax.tree.map(lambda g: jnp.round(g * 2) / 2, GRADS)  # many exact ties
    masks, state = START, p.init(params, START)
    for t, key in ((0, 11), (8, 12), (20, 13)):  # d(t): 0.3 (cosine: 0.3, 0.255, 0.15)
        k = jax.random.key(key)
        new, state = update(masks, state, params, grads, jnp.int32(t), k)
        if algo == "rigl":
            d = 0.15 * (1 + np.cos(np.pi * t / 40))
            grow = [np.abs(g) for g in prunable(grads)]
        else:
            d = 0.4
            u = np.asarray(jax.random.uniform(k, (sum(int(np.prod(s)) for s in SHAPES),)))
            grow, start = [], 0
            for s in SHAPES:
                grow.append(u[start:start + int(np.prod(s))].reshape(s))
                start += int(np.prod(s))
        d32 = float(pruners.drop_fraction_schedule(
            t, drop_fraction=p_drop(algo), begin_step=0, end_step=40,
            anneal="cosine" if algo == "rigl" else "constant"))
        assert abs(d32 - d) < 1e-6
        want = ref_dst(prunable(params), prunable(masks), grow, d32)
        for a, b in zip(prunable(new), want, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{algo} step {t}")
        assert kept(new) == kept(START)  # per-layer counts exactly unchanged
        moved = [int(np.floor(np.float32(d32) * np.float32(n))) for n in kept(masks)]
        assert np.asarray(state.moved).tolist() == moved
        if t == 0:
            assert sum(int((a != b).sum()) for a, b in zip(prunable(new), prunable(masks),
                                                             strict=True)) > 0
        # non-prunable leaves keep their scalar True
        assert all(np.ndim(m) == 0 and bool(m) for m, x in zip(
            jax.tree.leaves(new), jax.tree.leaves(PARAMS_MASKS), strict=True) if not np.ndim(x))
        masks = new
    # not due (step 6 is between updates; 44 after end_step): unchanged
    for t in (6, 44):
        same, _ = update(masks, state, params, grads, jnp.int32(t), jax.random.key(1))
        assert js.masks.equal(same, masks)
    assert int(state.count) == 3


def p_drop(algo):
    return 0.3 if algo == "rigl" else 0.4


def test_dst_counts_unchanged_over_many_updates_and_compiles_once():
    masks, state = START, RIGL.init(PARAMS, START)
    for t in range(0, 44, 4):
        params = jax.tree.map(lambda a, b, t=t: a + 0.1 * t * b, PARAMS, GRADS)
        params = js.apply_masks(params, masks)
        grads = jax.tree.map(lambda g, t=t: jnp.roll(g, t, axis=0), GRADS)
        masks, state = RIGL_UPDATE(masks, state, params, grads, jnp.int32(t),
                                   jax.random.key(t))
        assert kept(masks) == kept(START), t
    assert int(state.count) == 11
    assert cache_size(RIGL_UPDATE) == 1  # every step, key, mask and weight: one program


def test_set_population_under_vmap_equals_single_runs():
    members = 3
    keys = jax.random.split(jax.random.key(3), members)
    ps = [jax.tree.map(lambda a, b, i=i: a + i * b, PARAMS, GRADS) for i in range(members)]
    ms = [pruners.random_erk(PARAMS, sparsity=s, key=jax.random.key(i))
          for i, s in enumerate((0.5, 0.8, 0.95))]
    ss = [SET.init(p, m) for p, m in zip(ps, ms, strict=True)]
    stack = js.masks.stack
    pop = jax.jit(jax.vmap(lambda m, s, w, k, t: SET.update(m, s, w, grads=None, step=t, key=k),
                           in_axes=(0, 0, 0, 0, None)))
    out_m, out_s = pop(stack(ms), stack(ss), stack(ps), keys, jnp.int32(4))
    for i in range(members):
        single, st = SET_UPDATE(ms[i], ss[i], ps[i], None, jnp.int32(4), keys[i])
        assert js.masks.equal(jax.tree.map(lambda x, i=i: x[i], out_m), single), i
        assert int(out_s.count[i]) == int(st.count) == 1
        assert kept(single) == kept(ms[i])


# ---------------------------------------------------------------------------------------
# One-shot, at-init, static, ERK.


def test_one_shot_snip_synflow_and_structures():
    masks = js.ones_like(PARAMS)
    key = jax.random.key(0)
    # SNIP at step 0 with the dense gradient == prune(|g * w|)
    p = pruners.snip(0.7)
    got, st = p.update(masks, p.init(PARAMS, masks), PARAMS, grads=GRADS, step=jnp.int32(0),
                       key=key)
    want = js.prune(jax.tree.map(lambda g, w: jnp.abs(g * w), GRADS, PARAMS), masks,
                    sparsity=0.7)
    assert js.masks.equal(got, want) and int(st.count) == 1
    later, st = p.update(masks, st, PARAMS, grads=GRADS, step=jnp.int32(1), key=key)
    assert js.masks.equal(later, masks) and int(st.count) == 1
    # one-shot ERK by magnitude at step 3 == prune(..., allocation="erk")
    p = pruners.one_shot(step=3, sparsity=0.8, allocation="erk")
    got, _ = p.update(masks, p.init(PARAMS, masks), PARAMS, grads=None, step=jnp.int32(3),
                      key=key)
    assert kept(got) == select.erk_kept(SHAPES, 0.8)
    # N:M and per-leaf rates
    p = pruners.one_shot(step=0, structure=js.NM(1, 2), criterion=pruners.random_score)
    got, _ = p.update(masks, p.init(PARAMS, masks), PARAMS, grads=None, step=jnp.int32(0),
                      key=key)
    assert js.masks.equal(got, js.prune(js.scores.random(PARAMS, key=key), masks,
                                        structure=js.NM(1, 2)))
    assert kept(got) == [int(np.prod(s)) // 2 for s in SHAPES]
    p = pruners.one_shot(step=0, rates=[("head", 0.5), (".*", 0.2)])
    got, _ = p.update(masks, p.init(PARAMS, masks), PARAMS, grads=None, step=jnp.int32(0),
                      key=key)
    sizes = [int(np.prod(s)) for s in SHAPES]
    assert kept(got) == [n - select.num_pruned(r, n) for n, r in zip(sizes, (.2, .2, .2, .5),
                                                                    strict=True)]
    # SynFlow == pruners.synflow_masks on a 2-layer net
    mlp = {"a": PARAMS["dense"]["kernel"], "b": PARAMS["head"]["kernel"]}
    apply = lambda p, x: x @ p["a"] @ p["b"]  # noqa: E731
    p = pruners.synflow(apply, (1, 72), 0.9, iterations=3)
    m0 = js.ones_like(mlp)
    got, _ = p.update(m0, p.init(mlp, m0), mlp, grads=None, step=jnp.int32(0), key=key)
    assert js.masks.equal(got, js.pruners.synflow_masks(apply, mlp, (1, 72), m0, sparsity=0.9,
                                                        iterations=3))
    # random ERK + static: exact ERK counts, and static never changes them
    erk = pruners.random_erk(PARAMS, sparsity=0.9, key=key)
    assert kept(erk) == select.erk_kept(SHAPES, 0.9)
    total = sum(sizes)
    assert sum(kept(erk)) == total - select.num_pruned(0.9, total)
    s = pruners.static()
    same, _ = s.update(erk, s.init(PARAMS, erk), PARAMS, grads=None, step=jnp.int32(0), key=key)
    assert js.masks.equal(same, erk) and not bool(s.due(0))


def test_erk_counts_exact_against_integer_reference():
    shapes = SHAPES + [(500, 300), (7, 1)]
    for sp in (0.0, 0.3, 0.5, 0.9, 0.97, 0.999):
        want = ref_erk_counts(shapes, sp)  # the integer reference of test_select
        assert select.erk_kept(shapes, sp) == want, sp
        assert select.erk_kept(shapes, jnp.float32(sp)).tolist() == want, sp
        assert sum(want) == sum(int(np.prod(s)) for s in shapes) - select.num_pruned(
            sp, sum(int(np.prod(s)) for s in shapes))


# ---------------------------------------------------------------------------------------
# chain and the trainer.


def test_chain_runs_each_pruner_on_its_steps():
    first = pruners.one_shot(step=1, sparsity=0.5, scope="layerwise")
    p = pruners.chain(first, RIGL)
    assert [t for t in range(10) if p.due(t)] == [0, 1, 4, 8]
    update = _update_fn(p)
    masks, state = js.ones_like(PARAMS), p.init(PARAMS, js.ones_like(PARAMS))
    ref_m, ref_s = masks, [first.init(PARAMS, masks), RIGL.init(PARAMS, masks)]
    key = jax.random.key(9)
    for t in (1, 4):
        masks, state = update(masks, state, PARAMS, GRADS, jnp.int32(t), key)
        if t == 1:
            ref_m, ref_s[0] = first.update(ref_m, ref_s[0], PARAMS, grads=GRADS,
                                           step=jnp.int32(t), key=jax.random.fold_in(key, 0))
        else:
            ref_m, ref_s[1] = RIGL_UPDATE(ref_m, ref_s[1], PARAMS, GRADS, jnp.int32(t),
                                          jax.random.fold_in(key, 1))
        assert js.masks.equal(masks, ref_m), t
    sizes = [int(np.prod(s)) for s in SHAPES]
    assert kept(masks) == [n - select.num_pruned(0.5, n) for n in sizes]
    assert int(state.count) == 2 and [int(s.count) for s in state.inner] == [1, 1]


def test_rigl_in_the_trainer_keeps_counts_and_zeros():
    def apply_fn(p, ms, x, *, train, key):
        del train, key
        return jax.nn.relu(x @ p["fc"]["kernel"]) @ p["head"]["kernel"], ms

    params = {"fc": {"kernel": PARAMS["dense"]["kernel"]}, "head": {"kernel": GRADS["head"][
        "kernel"]}}
    masks = pruners.random_erk(params, sparsity=0.8, key=jax.random.key(1))
    tx = optax.adam(1e-2)
    p = pruners.rigl(end_step=100, frequency=2)
    state = train.init_state(params, tx, key=jax.random.key(2), masks=masks, pruner=p)
    step = train.make_step(apply_fn, tx, pruner=p)
    xs = jax.random.normal(jax.random.key(3), (6, 16, 72))
    ys = jax.random.randint(jax.random.key(4), (6, 16), 0, 5)
    run = jax.jit(lambda s: jax.lax.scan(lambda s, b: (step(s, b)[0], None), s, (xs, ys))[0])
    out = run(state)
    assert int(out.pruner_state.count) == 3  # steps 0, 2, 4
    assert [int(m.sum()) for m in jax.tree.leaves(out.masks)] == \
        [int(m.sum()) for m in jax.tree.leaves(masks)]
    assert not js.masks.equal(out.masks, masks)
    for w, m in zip(jax.tree.leaves(out.params), jax.tree.leaves(out.masks), strict=True):
        assert not np.any(np.asarray(w)[~np.asarray(m)])  # pruned entries exactly 0


# ---------------------------------------------------------------------------------------
# Bad input.


def test_bad_schedules_and_fractions_are_named():
    with pytest.raises(ValueError, match=r"rigl: end_step \(5\) is before begin_step \(10\)"):
        pruners.rigl(begin_step=10, end_step=5)
    with pytest.raises(ValueError, match="gmp: frequency must be an integer >= 1, got 0"):
        pruners.gmp(final_sparsity=0.9, begin_step=0, end_step=10, frequency=0)
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=rf"set: drop_fraction must be in \(0, 1\), got {bad}"):
            pruners.set_(end_step=10, drop_fraction=bad)
    with pytest.raises(ValueError, match=r"gmp: final_sparsity must be in \[0, 1\), got 1.0"):
        pruners.gmp(final_sparsity=1.0, begin_step=0, end_step=10, frequency=1)
    with pytest.raises(ValueError, match=r"one_shot: sparsity must be in \[0, 1\), got -0.2"):
        pruners.one_shot(step=0, sparsity=-0.2)
    with pytest.raises(ValueError, match=r"override for 'head' must be in \[0, 1\), got 1.2"):
        pruners.gmp(final_sparsity=0.9, begin_step=0, end_step=10, frequency=1,
                    overrides=[("head", 1.2)])
    with pytest.raises(ValueError, match="one_shot: step must be an integer >= 0"):
        pruners.one_shot(step=-1, sparsity=0.5)
    with pytest.raises(ValueError, match="exactly one of"):
        pruners.one_shot(step=0, sparsity=0.5, rates=[(".*", 0.1)])


def test_unreachable_targets_name_the_leaf():
    sparse = pruners.random_erk(PARAMS, sparsity=0.5, key=jax.random.key(0))
    sparse["head"]["kernel"] = jnp.zeros((20, 5), bool).at[0, 0].set(True)  # 1 of 100 kept
    with pytest.raises(ValueError, match=r"gmp: the final target keeps 10 entries of leaf "
                                         r"'head/kernel', but the masks keep only 1"):
        pruners.gmp(final_sparsity=0.9, begin_step=0, end_step=10, frequency=1).init(
            PARAMS, sparse)
    with pytest.raises(ValueError, match=r"ERK distribution of sparsity 0.6 keeps \d+ of 100 "
                                         r"entries of leaf 'head/kernel'"):
        pruners.one_shot(step=0, sparsity=0.6, allocation="erk").init(PARAMS, sparse)
    with pytest.raises(ValueError, match="target sparsity 0.3 keeps"):
        pruners.one_shot(step=0, sparsity=0.3).init(PARAMS, sparse)
    with pytest.raises(ValueError, match=r"override pattern\(s\) \['hed'\] match no prunable"):
        pruners.gmp(final_sparsity=0.9, begin_step=0, end_step=10, frequency=1,
                    overrides=[("hed", 0.5)]).init(PARAMS, js.ones_like(PARAMS))


def test_foreign_masks_and_states_are_refused():
    masks = js.ones_like(PARAMS)
    state = RIGL.init(PARAMS, masks)
    other = dict(PARAMS, extra={"kernel": jnp.ones((4, 4))})
    other_masks = js.ones_like(other)
    kw = dict(grads=GRADS, step=jnp.int32(0), key=jax.random.key(0))
    with pytest.raises(ValueError, match="rigl: masks and params have different tree"):
        RIGL.update(other_masks, state, PARAMS, **kw)
    bad = jax.tree.map(lambda m: m, masks)
    bad["dense"]["kernel"] = jnp.ones((72, 2), bool)
    with pytest.raises(ValueError, match=r"rigl: mask at 'dense/kernel' has shape \(72, 2\)"):
        RIGL.update(bad, state, PARAMS, **kw)
    # a state from a model with another number of prunable leaves
    other_state = RIGL.init(other, other_masks)
    with pytest.raises(ValueError, match="rigl: the state was made for a model with 5 prunable"):
        RIGL.update(masks, other_state, PARAMS, **kw)
    # ... or with leaves of other sizes
    small = dict(PARAMS, dense={"kernel": jnp.ones((10, 20)), "bias": jnp.zeros(20)})
    small_state = pruners.gmp(final_sparsity=0.5, begin_step=0, end_step=4,
                              frequency=1).init(small, js.ones_like(small))
    g = pruners.gmp(final_sparsity=0.5, begin_step=0, end_step=4, frequency=1)
    with pytest.raises(ValueError, match=r"gmp: the state was made for a model whose leaf "
                                         r"'dense/kernel' has 200 entries, but it has 1440"):
        g.update(masks, small_state, PARAMS, grads=None, step=jnp.int32(0),
                 key=jax.random.key(0))
    with pytest.raises(ValueError, match="rigl: expected a RigLState"):
        RIGL.update(masks, SET.init(PARAMS, masks), PARAMS, **kw)
    with pytest.raises(ValueError, match="rigl: grows by the dense gradient; give grads="):
        RIGL.update(masks, state, PARAMS, grads=None, step=jnp.int32(0), key=jax.random.key(0))
