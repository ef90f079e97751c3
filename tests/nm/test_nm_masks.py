"""N:M masks (jaxsparse.nm.masks, jaxsparse.nm.axes): exactness, ties, hardware orientation,
reduction axes, trees, prune integration."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxsparse
from jaxsparse import nm
from jaxsparse.testing import assert_compiles_once

NM_PAIRS = [(1, 2), (1, 4), (2, 4), (3, 4), (4, 8), (2, 8)]


_nm_mask_jit = jax.jit(lambda w, n, m, axis: nm.nm_mask(w, n, m, axis=axis),
                       static_argnums=(1, 2, 3))
_leaf_mask_jit = jax.jit(lambda w, a, n, m, axis: nm.NM(n, m, axis=axis).leaf_mask(w, a, path="x"),
                         static_argnums=(2, 3, 4))


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
def test_nm_mask_keeps_exactly_n_largest_lower_index_wins(reference_mask, case):
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


def test_nm_masks_and_nm_report_over_a_mixed_tree():
    params = mixed_params()
    masks = nm.nm_masks(params, 2, 4)
    assert masks["Dense_0"]["bias"].shape == () and masks["BatchNorm_0"]["scale"].shape == ()
    report = nm.nm_report(masks, 2, 4, exact=True)
    assert report.ok and len(report.rows) == 4
    assert {r.path: r.axis for r in report.rows} == {
        "Dense_0/kernel": 0, "Conv_0/kernel": 2, "attn/query/kernel": 0, "attn/out/kernel": 1}
    assert jaxsparse.density(masks) == 0.5
    sparse = jaxsparse.apply_masks(params, masks)
    assert nm.is_nm(sparse, 2, 4) and not nm.is_nm(params, 2, 4)
    bad = nm.nm_report(params, 2, 4)
    row = next(r for r in bad.rows if r.path == "Dense_0/kernel")
    assert row.bad_groups == row.groups == 32 and row.max_kept == 4
    assert "NOT LEGAL" in str(bad)


def test_not_divisible_errors_name_path_and_shape_or_pad():
    params = {"odd": {"kernel": jnp.ones((6, 3))}}
    with pytest.raises(ValueError, match=r"'odd/kernel'.*\(6, 3\).*not divisible by m=4"):
        nm.nm_masks(params, 2, 4)
    row = nm.nm_report(params, 2, 4).rows[0]
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


def test_flax_attention_kernels_are_legal_as_gemm_operands():
    nn = pytest.importorskip("flax.linen")
    x = jnp.ones((1, 4, 16))
    params = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=16).init(
        jax.random.key(0), x)["params"]
    masks = nm.nm_masks(params, 2, 4)
    assert nm.is_nm(masks, 2, 4, exact=True)
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
