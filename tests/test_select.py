"""Exact selection: counts, tie rule, never reviving, scopes, rates, ERK, blocks, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxsparse as js
from jaxsparse import select
from jaxsparse.testing import assert_compiles_once

# ---------------------------------------------------------------------------------------
# Numpy references: a stable sort on (-score, flat index) over the eligible entries.


def ref_top(scores: list[np.ndarray], masks: list[np.ndarray], k: int) -> list[np.ndarray]:
    flat_s = np.concatenate([s.astype(np.float32).ravel() for s in scores])
    flat_m = np.concatenate([m.ravel() for m in masks])
    order = np.argsort(-flat_s, kind="stable")  # ties: lower flat index first
    order = order[flat_m[order]]
    keep = np.zeros(flat_s.size, bool)
    keep[order[:k]] = True
    out, off = [], 0
    for m in masks:
        out.append(keep[off : off + m.size].reshape(m.shape))
        off += m.size
    return out


def prunable(tree, masks=None):
    """The leaves of ``tree`` whose mask (default: ``tree`` itself) is a full-shape array."""
    ms = jax.tree.leaves(tree if masks is None else masks)
    return [np.asarray(x) for x, m in zip(jax.tree.leaves(tree), ms, strict=True) if np.ndim(m) > 0]


def tree3(a, b, c):
    """Mixed tree: conv kernel, dense kernel + bias, norm scale (not prunable)."""
    return {
        "conv": {"kernel": a},
        "dense": {"kernel": b, "bias": jnp.zeros(b.shape[-1])},
        "norm": {"scale": jnp.ones(3)},
        "head": {"kernel": c},
    }


def random_case(seed, ties):
    rng = np.random.default_rng(seed)
    shapes = [(2, 2, 3, 4), (6, 5), (5, 3)]
    if ties:
        vals = [rng.integers(-2, 3, size=s).astype(np.float32) for s in shapes]
    else:
        vals = [rng.normal(size=s).astype(np.float32) for s in shapes]
    scores = tree3(*map(jnp.asarray, vals))
    keep = [rng.random(s) < rng.uniform(0.4, 1.0) for s in shapes]
    masks = js.ones_like(scores)
    masks = tree3(*map(jnp.asarray, keep))
    masks["dense"]["bias"] = jnp.asarray(True)
    masks["norm"]["scale"] = jnp.asarray(True)
    return scores, masks


# ---------------------------------------------------------------------------------------
# Rounding rule.


def test_num_pruned_examples():
    got = [select.num_pruned(f, n) for f, n in [(0.9, 10), (0.5, 3), (0.2, 7), (0.0, 5)]]
    assert got == [9, 2, 1, 0]
    assert select.num_pruned(0.9, 25_000_000) == 22_500_000  # float32(0.9) < 0.9, still exact
    assert select.num_pruned(0.1234567, 2**31 - 1) == (1234567 * (2**31 - 1) + 5 * 10**6) // 10**7
    assert select.num_pruned(1.0, 7) == 7
    with pytest.raises(ValueError, match="fraction"):
        select.num_pruned(1.5, 3)


_jit_num_pruned = jax.jit(jax.vmap(select.num_pruned))  # the public function, traced


def test_num_pruned_on_arrays_equals_python_and_checks_concrete_values():
    fs, ns = [0.9, 0.5, 0.2, 0.0, 1.0], [10, 3, 7, 5, 7]
    want = [select.num_pruned(f, n) for f, n in zip(fs, ns, strict=True)]
    eager = select.num_pruned(jnp.asarray(fs, jnp.float32), jnp.asarray(ns, jnp.int32))
    assert eager.dtype == jnp.int32 and eager.tolist() == want
    assert _jit_num_pruned(jnp.asarray(fs), jnp.asarray(ns)).tolist() == want
    with pytest.raises(ValueError, match="fraction"):
        select.num_pruned(jnp.asarray([0.5, 1.5]), 3)
    with pytest.raises(ValueError, match="n must"):
        select.num_pruned(0.5, jnp.asarray(-1))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(0, 10**7), min_size=8, max_size=8),
    st.lists(st.integers(0, 2**31 - 1), min_size=8, max_size=8),
)
def test_num_pruned_traced_is_exact_for_7_decimals(ds, ns):
    f = np.array(ds, np.float64) / 10**7  # a sparsity written with 7 decimals...
    got = _jit_num_pruned(jnp.asarray(f, jnp.float32), jnp.asarray(ns, jnp.int32))  # ...in f32
    want = [(d * n + 5 * 10**6) // 10**7 for d, n in zip(ds, ns, strict=True)]
    np.testing.assert_array_equal(np.asarray(got), want)


# ---------------------------------------------------------------------------------------
# Global / layerwise / rates against the reference (hypothesis: exact counts and ties).

_prune_global = jax.jit(lambda s, m, sp: js.prune(s, m, sparsity=sp))
_prune_layer = jax.jit(lambda s, m, sp: js.prune(s, m, sparsity=sp, scope="layerwise"))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10**6), st.booleans(), st.floats(0.0, 0.99))
def test_global_matches_reference(seed, ties, extra):
    scores, masks = random_case(seed, ties)
    total = js.count_total(masks)
    cur = 1 - int(js.count_kept(masks)) / total
    sp = cur + (0.999 - cur) * extra
    k = total - select.num_pruned(sp, total)
    if k > int(js.count_kept(masks)):  # rounding can land just below the current sparsity
        return
    out = _prune_global(scores, masks, sp)
    want = ref_top(prunable(scores, masks), prunable(masks), k)
    for got, w in zip(prunable(out), want, strict=True):
        np.testing.assert_array_equal(got, w)
    assert int(js.count_kept(out)) == k
    # eager path (concrete checks) gives the same masks
    assert js.masks.equal(js.prune(scores, masks, sparsity=sp), out)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10**6), st.booleans())
def test_layerwise_and_rates_match_reference(seed, ties):
    scores, masks = random_case(seed, ties)
    sc, ms = prunable(scores, masks), prunable(masks)
    sp = max(1 - m.mean() for m in ms) + 0.01
    out = prunable(_prune_layer(scores, masks, sp))
    for s, m, got in zip(sc, ms, out, strict=True):
        k = m.size - select.num_pruned(sp, m.size)
        np.testing.assert_array_equal(got, ref_top([s], [m], k)[0])
    rates = [("conv", 0.3), ("dense", 0.2), ("head", 0.1)]
    out = prunable(js.prune(scores, masks, rates=rates))
    for (_, r), s, m, got in zip(rates, sc, ms, out, strict=True):
        k = int(m.sum()) - select.num_pruned(r, int(m.sum()))
        np.testing.assert_array_equal(got, ref_top([s], [m], k)[0])


def test_tie_rule_lower_flat_index_across_leaves():
    z = tree3(jnp.zeros((1, 1, 2, 2)), jnp.zeros((2, 2)), jnp.zeros((2, 3)))
    m = js.prune(z, js.ones_like(z), sparsity=0.5)  # keep 7 of 14: first 4 + 3 of dense
    assert m["conv"]["kernel"].all()
    np.testing.assert_array_equal(m["dense"]["kernel"], [[True, True], [True, False]])
    assert not m["head"]["kernel"].any()
    # -0.0 and 0.0 tie
    s = {"w": jnp.array([[0.0, -0.0, 0.0, -0.0]])}
    got = js.prune(s, js.ones_like(s), sparsity=0.5)["w"]
    np.testing.assert_array_equal(got, [[True, True, False, False]])


def test_pruned_never_revived_even_against_minus_inf():
    s = {"w": jnp.array([[-jnp.inf, 5.0, -jnp.inf, 9.0]])}
    m = {"w": jnp.array([[True, False, True, False]])}
    got = jax.jit(lambda s, m: js.prune(s, m, sparsity=0.5))(s, m)["w"]
    np.testing.assert_array_equal(got, [[True, False, True, False]])
    got = jax.jit(lambda s, m: js.prune(s, m, sparsity=0.75))(s, m)["w"]
    np.testing.assert_array_equal(got, [[True, False, False, False]])


def test_traced_nan_is_never_preferred():
    s = {"w": jnp.array([[jnp.nan, 1.0, -3.0, jnp.nan]])}
    m = {"w": jnp.ones((1, 4), bool)}
    got = _prune_global(s, m, 0.5)["w"]
    np.testing.assert_array_equal(got, [[False, True, True, False]])
    got = _prune_global(s, m, 0.25)["w"]  # needs one NaN: the lower index
    np.testing.assert_array_equal(got, [[True, True, True, False]])


def test_keep_zero_and_keep_all():
    s = {"w": jnp.arange(6.0).reshape(2, 3)}
    m = js.ones_like(s)
    assert int(js.count_kept(js.prune(s, m, sparsity=0.0))) == 6
    assert int(js.count_kept(js.prune(s, m, sparsity=0.95))) == 0
    assert int(js.count_kept(js.prune(s, m, rates=[("w", 1.0)]))) == 0


def test_large_leaf_exact_count_and_large_magnitudes():
    x = jax.random.normal(jax.random.key(0), (1000, 1000)) * 1e30
    m = js.prune({"w": x}, {"w": jnp.ones(x.shape, bool)}, sparsity=0.123457)
    assert int(m["w"].sum()) == 10**6 - select.num_pruned(0.123457, 10**6)
    thr = np.sort(np.asarray(x).ravel())[select.num_pruned(0.123457, 10**6)]
    np.testing.assert_array_equal(np.asarray(m["w"]), np.asarray(x) >= thr)


# ---------------------------------------------------------------------------------------
# ERK and Block.


def ref_erk(shapes, sparsity):
    n = np.array([np.prod(s) for s in shapes], float)
    raw = np.array([sum(s) / np.prod(s) for s in shapes])
    dense = np.zeros(len(shapes), bool)
    while True:
        eps = ((1 - sparsity) * n.sum() - n[dense].sum()) / (raw * n)[~dense].sum()
        new = dense | (eps * raw > 1)
        if (new == dense).all():
            return np.where(dense, 1.0, eps * raw)
        dense = new


def ref_erk_counts(shapes, sparsity):
    """Exact ERK counts: the RigL rule in integers, shares rounded down, the leftover entries
    one each to the largest remainders (ties: lower leaf index)."""
    n = [int(np.prod(s)) for s in shapes]
    w = [sum(s) for s in shapes]
    budget = sum(n) - select.num_pruned(sparsity, sum(n))
    dense = set()
    while True:
        d = sum(n[i] for i in dense)
        a = sum(w[i] for i in range(len(n)) if i not in dense)
        new = {i for i in range(len(n)) if i not in dense and (budget - d) * w[i] > n[i] * a}
        if not new:
            break
        dense |= new
    out, rem = [], []
    for i in range(len(n)):
        q, r = (n[i], -1) if i in dense else divmod((budget - d) * w[i], a)
        out.append(q)
        rem.append(r)
    for i in sorted((i for i in range(len(n)) if i not in dense), key=lambda i: (-rem[i], i))[
            : budget - sum(out)]:
        out[i] += 1
    return out


def test_erk_matches_reference_with_redistribution():
    shapes = [(3, 3, 4, 8), (400, 300), (300, 2)]
    p = {"conv": jnp.ones(shapes[0]), "fc": jnp.ones(shapes[1]), "out": jnp.ones(shapes[2])}
    sc = js.scores.random(p, key=jax.random.key(1))
    total = sum(int(np.prod(s)) for s in shapes)
    for sp in (0.5, 0.9, 0.123457, 0.99):
        dens = ref_erk(shapes, sp)
        assert dens[2] == 1.0 or sp >= 0.9  # the thin output layer gets dense at 50%
        want = ref_erk_counts(shapes, sp)
        assert sum(want) == total - select.num_pruned(sp, total)  # the exact uniform budget
        for c, d, s in zip(want, dens, shapes, strict=True):  # within 1 of the real share
            assert abs(c - d * np.prod(s)) < 1 + 1e-6
        # prune computes the counts from a traced sparsity (inside its jitted core), erk_kept
        # from the Python float on the host: both equal the reference
        m = js.prune(sc, js.ones_like(p), sparsity=sp, allocation="erk")
        assert [int(x.sum()) for x in prunable(m)] == want, sp
        assert select.erk_kept(shapes, sp) == want
    # uniform allocation == layerwise
    a = js.prune(sc, js.ones_like(p), sparsity=0.7, allocation="uniform")
    b = js.prune(sc, js.ones_like(p), sparsity=0.7, scope="layerwise")
    assert js.masks.equal(a, b)


def test_block_structure_against_reference():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 8, 6)).astype(np.float32)
    m0 = rng.random((3, 8, 6)) < 0.9
    p, m = {"w": jnp.asarray(w)}, {"w": jnp.asarray(m0)}
    blk = js.Block(2, 3)
    got = np.asarray(js.prune(js.scores.magnitude(p), m, sparsity=0.5, structure=blk)["w"])
    bs = np.where(m0, np.abs(w), 0).reshape(3, 4, 2, 2, 3).sum(axis=(2, 4))
    bm = m0.reshape(3, 4, 2, 2, 3).any(axis=(2, 4))
    k = bs.size - select.num_pruned(0.5, bs.size)
    keep = ref_top([bs], [bm], k)[0]
    want = np.repeat(np.repeat(keep, 2, axis=1), 3, axis=2) & m0
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match=r"'w'.*\(3, 8, 6\)"):
        js.prune(p, m, sparsity=0.5, structure=js.Block(3, 3))


class _EveryOther:
    """A per-leaf structure (the N:M interface): keep even flat indices."""

    def leaf_mask(self, score, mask, *, path):
        return (jnp.arange(score.size) % 2 == 0).reshape(score.shape)


def test_leaf_structure_dispatch_and_anding():
    p = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    m = {"w": jnp.array([[False, True], [True, True]]), "b": jnp.asarray(True)}
    got = js.prune(p, m, structure=_EveryOther())
    np.testing.assert_array_equal(got["w"], [[False, False], [True, False]])
    assert got["b"].shape == ()
    with pytest.raises(ValueError, match="sparsity or rates"):
        js.prune(p, m, sparsity=0.5, structure=_EveryOther())


# ---------------------------------------------------------------------------------------
# jit, vmap, compile once.


def test_compiles_once_and_vmap_population():
    scores, masks = random_case(3, ties=True)
    masks = js.ones_like(scores)
    fresh = jax.jit(lambda s, m, sp: js.prune(s, m, sparsity=sp))
    assert_compiles_once(
        fresh, ((scores, masks, 0.3), {}), ((scores, masks, 0.6), {}), ((scores, masks, 0.9), {})
    )
    pop = 3
    ps = jax.tree.map(lambda x: jnp.stack([x + i * jnp.sin(x) for i in range(pop)]), scores)
    pm = js.masks.stack([masks] * pop)
    sps = jnp.array([0.2, 0.5, 0.8])
    out = jax.vmap(_prune_global)(ps, pm, sps)
    for i in range(pop):
        member = jax.tree.map(lambda x, i=i: x[i], out)
        single = _prune_global(jax.tree.map(lambda x, i=i: x[i], ps), masks, sps[i])
        assert js.masks.equal(member, single)
        total = js.count_total(masks)
        assert int(js.count_kept(member)) == total - select.num_pruned(float(sps[i]), total)


# ---------------------------------------------------------------------------------------
# Bad input.


def test_errors_name_the_leaf():
    p = {"a": {"kernel": jnp.ones((2, 3))}, "b": jnp.ones(3)}
    m = js.ones_like(p)
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\), got 1.0"):
        js.prune(p, m, sparsity=1.0)
    with pytest.raises(ValueError, match=r"got -0.2"):
        js.prune(p, m, sparsity=-0.2)
    with pytest.raises(ValueError, match=r"'nope'.*a/kernel"):
        js.prune(p, m, rates=[("nope", 0.2)])
    with pytest.raises(ValueError, match=r"'b'.*no prunable leaf"):
        js.prune(p, m, rates=[("a", 0.2), ("b", 0.1)])
    with pytest.raises(ValueError, match=r"'a/kernel'.*1.5.*more than are left"):
        js.prune(p, m, rates=[("a", 1.5)])
    bad = {"a": {"kernel": jnp.array([[1.0, jnp.nan, 2.0], [0.0, 1.0, 2.0]])}, "b": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"'a/kernel' \(shape \(2, 3\)\).*non-finite.*1 x nan"):
        js.prune(bad, m, sparsity=0.5)
    inf = {"a": {"kernel": jnp.full((2, 3), jnp.inf)}, "b": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"'a/kernel'.*non-finite.*6 x inf"):
        js.prune(inf, m, sparsity=0.5)
    half = js.prune(p, m, sparsity=0.5)
    with pytest.raises(ValueError, match="below the current sparsity"):
        js.prune(p, half, sparsity=0.2)
    with pytest.raises(ValueError, match=r"'a/kernel'.*below the current"):
        js.prune(p, half, sparsity=0.2, scope="layerwise")
    with pytest.raises(TypeError, match=r"'a/kernel'.*bool"):
        js.prune(p, {"a": {"kernel": jnp.ones((2, 3))}, "b": jnp.asarray(True)}, sparsity=0.5)
    with pytest.raises(ValueError, match=r"'a/kernel' has shape \(3, 2\)"):
        js.prune({"a": {"kernel": jnp.ones((3, 2))}, "b": jnp.ones(3)}, m, sparsity=0.5)
    with pytest.raises(ValueError, match=r"only in scores: \['c'\]"):
        js.prune({**p, "c": jnp.ones(2)}, m, sparsity=0.5)
    with pytest.raises(ValueError, match="exactly one"):
        js.prune(p, m)
    with pytest.raises(ValueError, match="scope"):
        js.prune(p, m, sparsity=0.5, scope="local")


def test_traced_targets_below_current_prune_nothing_more():
    p = {"w": jnp.arange(1.0, 9.0).reshape(2, 4)}
    half = js.prune(p, js.ones_like(p), sparsity=0.5)
    again = _prune_global(p, half, 0.25)
    assert js.masks.equal(again, half)


def test_ties_across_many_rows_match_reference():
    # Leaves larger than one packed row (1008 entries), heavy ties, random current masks.
    rng = np.random.default_rng(7)
    a = rng.integers(0, 4, size=(50, 70)).astype(np.float32)
    b = rng.integers(0, 4, size=(3, 3, 16, 30)).astype(np.float32)
    ma, mb = rng.random(a.shape) < 0.8, rng.random(b.shape) < 0.9
    s = {"a": jnp.asarray(a), "b": jnp.asarray(b)}
    m = {"a": jnp.asarray(ma), "b": jnp.asarray(mb)}
    for sp in (0.3, 0.55, 0.9):
        got = _prune_global(s, m, sp)
        k = a.size + b.size - select.num_pruned(sp, a.size + b.size)
        for g, w in zip(prunable(got), ref_top([a, b], [ma, mb], k), strict=True):
            np.testing.assert_array_equal(g, w)
        got = _prune_layer(s, m, 0.6)
        for g, x, mx in zip(prunable(got), [a, b], [ma, mb], strict=True):
            want = ref_top([x], [mx], x.size - select.num_pruned(0.6, x.size))[0]
            np.testing.assert_array_equal(g, want)


def test_fraction_of_remaining_global_and_layerwise():
    scores, masks = random_case(11, ties=True)
    sc, ms = prunable(scores, masks), prunable(masks)
    kept = sum(int(m.sum()) for m in ms)
    got = jax.jit(lambda s, m, f: js.prune(s, m, fraction_of_remaining=f))(scores, masks, 0.2)
    want = ref_top(sc, ms, kept - select.num_pruned(0.2, kept))
    for g, w in zip(prunable(got), want, strict=True):
        np.testing.assert_array_equal(g, w)
    a = js.prune(scores, masks, fraction_of_remaining=0.3, scope="layerwise")
    b = js.prune(scores, masks, rates=[(".*", 0.3)])
    assert js.masks.equal(a, b)
    # exact beyond 10**7 entries (all tied: the lowest flat indices are kept)
    big = {"w": jnp.zeros((4001, 2600))}
    m = js.prune(big, {"w": jnp.ones((4001, 2600), bool)}, fraction_of_remaining=0.2)
    n = 4001 * 2600
    keep = n - select.num_pruned(0.2, n)
    assert int(m["w"].sum()) == keep and bool(m["w"].reshape(-1)[keep - 1])
    assert not bool(m["w"].reshape(-1)[keep])
    with pytest.raises(ValueError, match="exactly one"):
        js.prune(scores, masks, sparsity=0.5, fraction_of_remaining=0.2)


# ---------------------------------------------------------------------------------------
# Helpers on one array: num_kept, topk_mask, random_masks_like (moved here from supermask /
# lottery).


def test_num_kept_rounding_rule_traced_equals_python():
    sps = (0.0, 0.05, 0.3, 0.5, 0.7, 0.999, 1.0)
    for n in (1, 3, 7, 10, 101, 4096):
        traced = jax.jit(jax.vmap(lambda s, n=n: select.num_kept(s, n)))(jnp.array(sps))
        for s, t in zip(sps, np.asarray(traced), strict=True):
            k = select.num_kept(s, n)
            assert isinstance(k, int) and k == n - select.num_pruned(s, n) == int(t)
    # nearest integer to (1 - s) * n, exact halves keep fewer
    assert (select.num_kept(0.5, 3), select.num_kept(0.7, 10), select.num_kept(0.3, 5)) == (1, 3,
                                                                                             3)
    with pytest.raises(ValueError, match="sparsity"):
        select.num_kept(1.5, 10)


def test_topk_mask_matches_sorted_reference_traced_and_python():
    v = jnp.array([[0.3, -2.0, 0.0, 1.0], [-0.3, 0.3, -1.0, 0.5], [2.0, -0.0, 0.1, -0.1]])
    flat = np.asarray(v).reshape(-1)
    order = sorted(range(12), key=lambda i: (-flat[i], i))  # by value, ties: lower index
    f = jax.jit(select.topk_mask)
    for s in (0.0, 0.25, 0.5, 0.7, 1.0):
        k = 12 - select.num_pruned(s, 12)
        want = np.zeros(12, bool)
        want[order[:k]] = True
        np.testing.assert_array_equal(np.asarray(select.topk_mask(v, s)), want.reshape(3, 4))
        np.testing.assert_array_equal(np.asarray(f(v, s)), want.reshape(3, 4))  # traced s
    assert int(select.topk_mask(v, 1.0).sum()) == 0


def test_random_masks_like_keeps_per_leaf_counts_and_differs_by_key():
    m = {"w": jnp.arange(20).reshape(4, 5) % 3 == 0, "b": jnp.array(True)}
    a = select.random_masks_like(m, key=jax.random.key(0))
    b = select.random_masks_like(m, key=jax.random.key(1))
    assert int(a["w"].sum()) == int(b["w"].sum()) == int(m["w"].sum()) == 7
    assert bool(a["b"]) and not np.array_equal(np.asarray(a["w"]), np.asarray(b["w"]))
