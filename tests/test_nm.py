"""N:M masks: exactness, hardware orientation, validation, prune integration, SR-STE,
transposable masks, channel permutations."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxsparse
from jaxsparse import nm, nm_export, nm_permute, nm_train
from jaxsparse.testing import assert_compiles_once

NM_PAIRS = [(1, 2), (1, 4), (2, 4), (3, 4), (4, 8), (2, 8)]


_nm_mask_jit = jax.jit(lambda w, n, m, axis: nm.nm_mask(w, n, m, axis=axis),
                       static_argnums=(1, 2, 3))
_leaf_mask_jit = jax.jit(lambda w, a, n, m, axis: nm.NM(n, m, axis=axis).leaf_mask(w, a, path="x"),
                         static_argnums=(2, 3, 4))


def reference_mask(w, n, m, axis):
    """numpy reference: stable sort by (-|w|, index) inside each group."""
    a = np.moveaxis(np.abs(np.asarray(w, np.float64)), axis, -1)
    g = a.reshape(a.shape[:-1] + (-1, m))
    order = np.argsort(-g, axis=-1, kind="stable")  # equal values: lower index first
    keep = np.zeros(g.shape, bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return np.moveaxis(keep.reshape(a.shape), -1, axis)


@st.composite
def nm_case(draw):
    # a few fixed shapes per (n, m, axis) so the jitted masks compile once per combination
    n, m = draw(st.sampled_from(NM_PAIRS))
    axis = draw(st.integers(0, 2))
    shape = [2, 3, 2]
    shape[axis] = 2 * m
    # few distinct small integers (with signs) -> many ties in magnitude
    vals = draw(st.lists(st.integers(-3, 3), min_size=int(np.prod(shape)),
                         max_size=int(np.prod(shape))))
    return n, m, axis, np.array(vals, np.float32).reshape(shape)


@settings(max_examples=80, deadline=None)
@given(nm_case())
def test_nm_mask_keeps_exactly_n_largest_lower_index_wins(case):
    n, m, axis, w = case
    mask = np.asarray(_nm_mask_jit(jnp.asarray(w), n, m, axis))
    counts = np.moveaxis(mask, axis, -1).reshape(-1, m).sum(-1)
    assert (counts == n).all()
    np.testing.assert_array_equal(mask, reference_mask(w, n, m, axis))


@settings(max_examples=50, deadline=None)
@given(nm_case(), st.integers(0, 2**31 - 1))
def test_leaf_mask_picks_among_still_kept(case, seed):
    n, m, axis, w = case
    alive = np.random.default_rng(seed).random(w.shape) < 0.6
    got = np.asarray(_leaf_mask_jit(jnp.asarray(w), jnp.asarray(alive), n, m, axis))
    assert not (got & ~alive).any()  # never revives
    # reference: scores of pruned entries below every kept one, then stable top-n
    a = np.moveaxis(w.astype(np.float64), axis, -1).reshape(-1, m)
    v = np.moveaxis(alive, axis, -1).reshape(-1, m)
    order = np.lexsort((np.arange(m)[None].repeat(len(a), 0), -a, ~v), axis=-1)
    ref = np.zeros(a.shape, bool)
    np.put_along_axis(ref, order[:, :n], True, axis=-1)
    ref &= v
    np.testing.assert_array_equal(np.moveaxis(got, axis, -1).reshape(-1, m), ref)
    assert (ref.sum(-1) == np.minimum(v.sum(-1), n)).all()


def test_nan_ranks_lowest_and_counts_stay_exact():
    w = jnp.array([jnp.nan, 1.0, jnp.nan, -2.0, jnp.nan, jnp.nan, jnp.nan, 0.0])
    mask = nm.nm_mask(w, 2, 4, axis=0)  # group 2: 0.0 beats every NaN, then lower index
    np.testing.assert_array_equal(mask, [False, True, False, True, True, False, False, True])


def test_dense_kernel_is_legal_in_the_gemm_operand_the_hardware_sees():
    # y = x @ W with W (in, out): the sparse tensor-core operand is W^T (out, K=in), whose
    # rows must be 2:4 in runs of 4 consecutive K entries.
    w = jax.random.normal(jax.random.key(0), (32, 12))
    mask = nm.nm_mask(w, 2, 4)  # default axis for a 2-D kernel
    operand = np.asarray(jnp.where(mask, w, 0)).T  # (out, K)
    x = np.asarray(jax.random.normal(jax.random.key(1), (5, 32)))
    np.testing.assert_allclose(x @ operand.T, x @ np.asarray(jnp.where(mask, w, 0)), rtol=1e-6)
    groups = (operand != 0).reshape(12, 8, 4).sum(-1)
    assert (groups == 2).all()
    # the output-axis grouping other libraries use is NOT legal here
    wrong = np.asarray(jnp.where(nm.nm_mask(w, 2, 4, axis=1), w, 0)).T
    assert ((wrong != 0).reshape(12, 8, 4).sum(-1) > 2).any()


def test_conv_kernel_is_legal_in_the_im2col_operand():
    # Assumption (XLA/cuDNN NHWC implicit GEMM): K = (kh, kw, C_in) with C_in fastest, so
    # groups of 4 consecutive K entries are 4 consecutive C_in at one spatial tap.
    kh, kw, cin, cout = 3, 3, 8, 4
    w = jax.random.normal(jax.random.key(0), (kh, kw, cin, cout))
    mask = nm.nm_mask(w, 2, 4, path="Conv_0/kernel")
    ws = jnp.where(mask, w, 0)
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, cin))
    y = jax.lax.conv_general_dilated(x, ws, (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    patches = jnp.stack([x[:, i:i + 4, j:j + 4, :] for i in range(kh) for j in range(kw)],
                        axis=3).reshape(2 * 16, kh * kw * cin)  # K ordered (kh, kw, cin)
    w_gemm = ws.reshape(kh * kw * cin, cout)
    np.testing.assert_allclose(patches @ w_gemm, y.reshape(-1, cout), rtol=1e-4, atol=1e-4)
    operand = np.asarray(w_gemm).T  # (C_out, K)
    assert ((operand != 0).reshape(cout, -1, 4).sum(-1) == 2).all()


def test_reduction_axis_per_layer_type_and_overrides():
    assert nm.reduction_axis("Dense_0/kernel", (8, 4)) == 0
    assert nm.reduction_axis("Conv_0/kernel", (3, 3, 8, 4)) == 2
    assert nm.reduction_axis("conv1d/kernel", (3, 8, 4)) == 1
    assert nm.reduction_axis("attn/query/kernel", (16, 2, 8)) == 0
    assert nm.reduction_axis("attn/value/kernel", (16, 2, 8)) == 0
    assert nm.reduction_axis("attn/out/kernel", (2, 8, 16)) == 1
    assert nm.reduction_axis("proj/kernel", (4, 8, 16), [("proj", 0)]) == 0
    s = nm.NM(2, 4, axis=1, axis_rules=[("special", 0)])
    assert s.axis_for("a/kernel", (8, 8)) == 1 and s.axis_for("special/kernel", (8, 8)) == 0
    with pytest.raises(ValueError, match="'b/x'.*shape \\(3,\\)"):
        nm.reduction_axis("b/x", (3,))
    with pytest.raises(ValueError, match="0 < n < m"):
        nm.NM(4, 4)


def mixed_params():
    k = jax.random.split(jax.random.key(0), 4)
    return {
        "Dense_0": {"kernel": jax.random.normal(k[0], (16, 8)), "bias": jnp.ones(8)},
        "Conv_0": {"kernel": jax.random.normal(k[1], (3, 3, 8, 4)), "bias": jnp.ones(4)},
        "attn": {"query": {"kernel": jax.random.normal(k[2], (16, 2, 4))},
                 "out": {"kernel": jax.random.normal(k[3], (2, 8, 16))}},
        "BatchNorm_0": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
    }


def test_nm_masks_and_is_nm_over_a_mixed_tree():
    params = mixed_params()
    masks = nm.nm_masks(params, 2, 4)
    assert masks["Dense_0"]["bias"].shape == () and masks["BatchNorm_0"]["scale"].shape == ()
    report = nm.is_nm(masks, 2, 4, exact=True)
    assert report.ok and len(report.rows) == 4
    assert {r.path: r.axis for r in report.rows} == {
        "Dense_0/kernel": 0, "Conv_0/kernel": 2, "attn/query/kernel": 0, "attn/out/kernel": 1}
    assert jaxsparse.density(masks) == 0.5
    sparse = jaxsparse.apply_masks(params, masks)
    assert nm.is_nm(sparse, 2, 4).ok and not nm.is_nm(params, 2, 4).ok
    bad = nm.is_nm(params, 2, 4)
    row = next(r for r in bad.rows if r.path == "Dense_0/kernel")
    assert row.bad_groups == row.groups == 32 and row.max_kept == 4
    assert "NOT LEGAL" in str(bad)


def test_not_divisible_errors_name_path_and_shape_or_pad():
    params = {"odd": {"kernel": jnp.ones((6, 3))}}
    with pytest.raises(ValueError, match=r"'odd/kernel'.*\(6, 3\).*not divisible by m=4"):
        nm.nm_masks(params, 2, 4)
    row = nm.is_nm(params, 2, 4).rows[0]
    assert not row.ok and "(6, 3)" in row.error
    w = jnp.array([[5.0], [1.0], [2.0], [3.0], [0.5], [4.0]])
    got = nm.nm_mask(w, 2, 4, pad=True)[:, 0]  # tail group of 2 keeps min(n, 2) = 2
    np.testing.assert_array_equal(got, [True, False, False, True, True, True])
    got = nm.nm_mask(w, 1, 4, pad=True)[:, 0]
    np.testing.assert_array_equal(got, [True, False, False, False, False, True])


def test_prune_with_nm_structure_ands_with_current_masks():
    params = mixed_params()
    masks = jaxsparse.ones_like(params)
    scores = jax.tree.map(jnp.abs, params)
    new = jaxsparse.prune(scores, masks, structure=nm.NM(2, 4))
    assert jaxsparse.masks.equal(new, nm.nm_masks(params, 2, 4))
    # a mask that already pruned some entries: never revived, groups refilled from survivors
    old = jax.tree.map(lambda m: m & (jnp.arange(m.size).reshape(m.shape) % 3 != 0)
                       if m.ndim else m, masks)
    again = jaxsparse.prune(scores, old, structure=nm.NM(2, 4))
    k_old, k_new = old["Dense_0"]["kernel"], again["Dense_0"]["kernel"]
    assert not (k_new & ~k_old).any()
    alive = k_old.reshape(4, 4, 8).sum(1)
    np.testing.assert_array_equal(k_new.reshape(4, 4, 8).sum(1), np.minimum(alive, 2))


def test_jit_vmap_compile_once():
    f = jax.jit(lambda w: nm.nm_mask(w, 2, 4))
    w = jax.random.normal(jax.random.key(0), (3, 16, 8))
    assert_compiles_once(f, ((w[0],), {}), ((w[1],), {}))
    batched = jax.vmap(lambda x: nm.nm_mask(x, 2, 4))(w)
    for i in range(3):
        np.testing.assert_array_equal(batched[i], nm.nm_mask(w[i], 2, 4))


# --------------------------------------------------------------------------------- SR-STE


def test_sr_ste_gradient_equals_hand_computed_reference():
    params = {"d": {"kernel": jax.random.normal(jax.random.key(0), (8, 4)), "bias": jnp.ones(4)}}
    x = jax.random.normal(jax.random.key(1), (5, 8))

    def loss_of(p):
        return jnp.sum(jnp.tanh(x @ p["d"]["kernel"] + p["d"]["bias"][None]) ** 2)

    lam = 2e-4
    g = jax.grad(lambda p: loss_of(nm_train.sr_ste(p, 2, 4, lambda_w=lam)))(params)
    w = params["d"]["kernel"]
    mask = reference_mask(w, 2, 4, 0)
    ws = jnp.where(mask, w, 0)
    g_sparse = jax.grad(loss_of)({"d": {"kernel": ws, "bias": params["d"]["bias"]}})
    expect = g_sparse["d"]["kernel"] + lam * np.where(mask, 0, np.asarray(w))
    np.testing.assert_allclose(g["d"]["kernel"], expect, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(g["d"]["bias"], g_sparse["d"]["bias"], rtol=1e-6)
    # plain STE: no decay term; pruned entries still receive the dense gradient
    g0 = jax.grad(lambda p: loss_of(nm_train.ste(p)))(params)
    np.testing.assert_allclose(g0["d"]["kernel"], g_sparse["d"]["kernel"], rtol=1e-6)
    assert (np.asarray(g0["d"]["kernel"])[~mask] != 0).all()
    # the optax form (STE forward + sr_ste_decay) gives the same updates
    tx = nm_train.sr_ste_decay(2, 4, lambda_w=lam)
    upd, _ = tx.update(g0, tx.init(params), params)
    np.testing.assert_allclose(upd["d"]["kernel"], expect, rtol=1e-6, atol=1e-9)
    # the forward pass is the N:M-sparse weight
    np.testing.assert_array_equal(nm_train.sr_ste(params)["d"]["kernel"], ws)


def test_sr_ste_training_step_keeps_a_legal_forward():
    params = {"kernel": jax.random.normal(jax.random.key(0), (8, 4))}
    tx = optax.sgd(0.1)
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        g = jax.grad(lambda q: jnp.sum(nm_train.sr_ste(q)["kernel"] ** 2))(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    for _ in range(3):
        params, state = step(params, state)
    assert nm.is_nm(nm_train.sr_ste(params), 2, 4, exact=True).ok


# ---------------------------------------------------------------------- transposable masks


def test_transposable_patterns_count():
    assert nm_train.transposable_patterns(2, 4).shape == (90, 16)
    assert nm_train.transposable_patterns(1, 4).shape == (24, 16)
    p = nm_train.transposable_patterns(2, 4).reshape(-1, 4, 4)
    assert (p.sum(1) == 2).all() and (p.sum(2) == 2).all()
    assert len({x.tobytes() for x in p}) == 90


def test_transposable_masks_valid_both_ways_and_exact_beats_greedy():
    w = jax.random.normal(jax.random.key(3), (16, 12))
    mag = np.abs(np.asarray(w))
    exact = np.asarray(nm_train.transposable_mask(w, method="exact"))
    greedy = np.asarray(nm_train.transposable_mask(w, method="greedy"))
    assert nm.is_nm({"k": exact}, 2, 4, exact=True).ok
    assert nm.is_nm({"k": exact.T}, 2, 4, exact=True).ok
    assert nm.is_nm({"k": greedy}, 2, 4).ok and nm.is_nm({"k": greedy.T}, 2, 4).ok
    assert mag[exact].sum() >= mag[greedy].sum() - 1e-5
    # exact is the brute-force optimum of every 4x4 block
    pats = nm_train.transposable_patterns(2, 4).reshape(-1, 4, 4)
    for i in range(0, 16, 4):
        for j in range(0, 12, 4):
            blk = mag[i:i + 4, j:j + 4]
            best = max((blk * p).sum() for p in pats)
            np.testing.assert_allclose((blk * exact[i:i + 4, j:j + 4]).sum(), best, rtol=1e-6)
    conv = nm_train.transposable_mask(jax.random.normal(jax.random.key(4), (3, 3, 8, 8)))
    assert nm.is_nm({"c/kernel": conv}, 2, 4, exact=True).ok
    assert nm.is_nm({"c/kernel": jnp.swapaxes(conv, -1, -2)}, 2, 4, exact=True).ok


def test_greedy_transposable_can_fall_short_but_stays_legal():
    # greedy fills rows 0-2 first and leaves row 3 with one legal column
    blk = np.array([[9, 8, 0, 0], [7, 0, 6, 0], [0, 5, 4, 0], [1, 1, 1, 1]], np.float32) + 0.1
    g = np.asarray(nm_train.transposable_mask(blk, method="greedy"))
    e = np.asarray(nm_train.transposable_mask(blk, method="exact"))
    assert g.sum() == 7 and e.sum() == 8
    assert (g.sum(0) <= 2).all() and (g.sum(1) <= 2).all()


# ---------------------------------------------------------------------- channel permutations


def test_permutation_improves_and_mlp_outputs_unchanged():
    k = jax.random.split(jax.random.key(0), 3)
    # a consumer whose strong input channels sit together, so 2:4 wastes magnitude
    scale = jnp.repeat(jnp.array([4.0, 0.1]), 8)[:, None]
    params = {
        "Dense_0": {"kernel": jax.random.normal(k[0], (5, 16)),
                    "bias": jax.random.normal(k[1], (16,))},
        "Dense_1": {"kernel": scale * jax.random.normal(k[2], (16, 3))},
    }

    def mlp(p, x):
        h = jax.nn.relu(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"][None])
        return h @ p["Dense_1"]["kernel"]

    perm, info = nm_permute.search_permutation(params["Dense_1"]["kernel"], 2, 4)
    assert sorted(perm.tolist()) == list(range(16))
    assert info["after"] > info["before"] * 1.2 and info["swaps"] > 0
    new = nm_permute.permute(params, perm, [("Dense_1/kernel", 0), ("Dense_0/kernel", 1),
                                             ("Dense_0/bias", 0)])
    np.testing.assert_allclose(
        float(nm_permute.retained_magnitude(new["Dense_1"]["kernel"])), info["after"], rtol=1e-5)
    x = jax.random.normal(jax.random.key(9), (7, 5))
    np.testing.assert_allclose(mlp(new, x), mlp(params, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="match no leaf"):
        nm_permute.permute(params, perm, [("Dense_9/kernel", 0)])


def test_permutation_conv_pair_outputs_unchanged():
    k = jax.random.split(jax.random.key(1), 3)
    p = {"c0": {"kernel": jax.random.normal(k[0], (3, 3, 3, 8)), "bias": jnp.arange(8.0)},
         "c1": {"kernel": jax.random.normal(k[1], (3, 3, 8, 4))}}

    def net(q, x):
        dn = ("NHWC", "HWIO", "NHWC")
        h = jax.lax.conv_general_dilated(x, q["c0"]["kernel"], (1, 1), "SAME",
                                         dimension_numbers=dn) + q["c0"]["bias"][None, None, None]
        return jax.lax.conv_general_dilated(jax.nn.relu(h), q["c1"]["kernel"], (1, 1), "SAME",
                                            dimension_numbers=dn)

    perm, info = nm_permute.search_permutation(p["c1"]["kernel"], 2, 4, path="c1/kernel")
    assert info["after"] >= info["before"]
    q = nm_permute.permute(p, perm, [("c1/kernel", -2), ("c0/kernel", -1), ("c0/bias", 0)])
    x = jax.random.normal(k[2], (2, 5, 5, 3))
    np.testing.assert_allclose(net(q, x), net(p, x), rtol=1e-4, atol=1e-4)


def test_flax_attention_kernels_are_legal_as_gemm_operands():
    nn = pytest.importorskip("flax.linen")
    x = jnp.ones((1, 4, 16))
    params = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=16).init(
        jax.random.key(0), x)["params"]
    masks = nm.nm_masks(params, 2, 4)
    assert nm.is_nm(masks, 2, 4, exact=True).ok
    # q/k/v: y = x @ W.reshape(in, heads * head_dim): K = in (axis 0)
    q = np.asarray(masks["query"]["kernel"]).reshape(16, 16).T  # (heads*head_dim, K=in)
    assert (q.reshape(16, 4, 4).sum(-1) == 2).all()
    # out: y = o.reshape(heads * head_dim) @ W.reshape(heads * head_dim, out): K = heads*hd
    o = np.asarray(masks["out"]["kernel"]).reshape(16, 16).T  # (out, K)
    assert (o.reshape(16, 4, 4).sum(-1) == 2).all()


# ------------------------------------------------------------- the reduction axis is never guessed


def test_reduction_axis_known_layers_and_unknown_ones_are_errors():
    # unambiguous: kept
    assert nm.reduction_axis("s0b0/conv2/kernel", (3, 3, 16, 16)) == 2
    assert nm.reduction_axis("s0b0/proj/kernel", (1, 1, 16, 32)) == 2  # 4-D kernel = HWIO
    assert nm.reduction_axis("Conv_0/kernel", (3, 3, 3, 4, 8)) == 3  # 3-D conv
    assert nm.reduction_axis("embed/embedding", (10, 4)) == 0
    # ambiguous: an error naming the leaf, its shape and the rule to add
    for path, shape in (("attn/wq", (16, 2, 8)), ("proj/kernel", (4, 8, 16)),
                        ("mlp/kernel", (2, 3, 4, 5, 6)), ("<array>", (3, 3, 8, 4))):
        with pytest.raises(ValueError, match=re.escape(f"{path!r}") + r".*" +
                           re.escape(str(shape))):
            nm.reduction_axis(path, shape)
    with pytest.raises(ValueError, match=r"axis_rules=\[\('attn/wq\$', AXIS\)\]"):
        nm.reduction_axis("attn/wq", (16, 2, 8))
    # the rule the message suggests works
    assert nm.reduction_axis("attn/wq", (16, 2, 8), [("attn/wq$", 0)]) == 0


def test_is_nm_checks_an_einsum_kernel_along_its_true_reduction_axis():
    """The issue's case: `wq` (in, heads, head_dim) contracts `in`. A mask grouped along
    `heads` (what a guess of axis -2 gave) is illegal as the GEMM operand; is_nm says so."""
    w = jax.random.normal(jax.random.key(0), (16, 4, 8))
    rules = [("wq", 0)]
    right = nm.nm_masks({"attn": {"wq": w}}, 2, 4, rules=[("wq", True)], axis_rules=rules)
    wrong = {"attn": {"wq": nm.nm_mask(w, 2, 4, axis=1)}}  # groups along heads
    operand = np.asarray(right["attn"]["wq"]).reshape(16, 32).T  # (heads*head_dim, K=in)
    assert (operand.reshape(32, 4, 4).sum(-1) == 2).all()
    assert nm.is_nm(right, 2, 4, exact=True, rules=[("wq", True)], axis_rules=rules).ok
    report = nm.is_nm(wrong, 2, 4, rules=[("wq", True)], axis_rules=rules)
    assert not report.ok and report.rows[0].axis == 0 and report.rows[0].bad_groups > 0
    bad_operand = np.asarray(wrong["attn"]["wq"]).reshape(16, 32).T
    assert (bad_operand.reshape(32, 4, 4).sum(-1) > 2).any()  # truly illegal along K
    with pytest.raises(ValueError, match=r"'attn/wq'.*\(16, 4, 8\)"):
        nm.is_nm(wrong, 2, 4, rules=[("wq", True)])  # no axis rule: an error, not a guess
    with pytest.raises(ValueError, match=r"'attn/wq'.*\(16, 4, 8\)"):
        nm_train.sr_ste({"attn": {"wq": w}}, rules=[("wq", True)])


def test_compress_refuses_a_mask_that_is_not_nm_but_takes_fewer_than_n():
    w = jnp.arange(1.0, 9.0).reshape(8, 1)
    three = jnp.array([1, 1, 1, 0, 0, 0, 0, 1], bool)[:, None]
    with pytest.raises(ValueError, match=r"group \(0, 0\) keeps 3"):
        nm_export.compress(w, 2, 4, mask=three)
    one = jnp.array([1, 0, 0, 0, 0, 0, 1, 0], bool)[:, None]  # fewer than n is legal
    np.testing.assert_array_equal(nm_export.decompress(nm_export.compress(w, 2, 4, mask=one)),
                                  jnp.where(one, w, 0))
