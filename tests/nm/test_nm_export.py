"""Compressed N:M form (jaxsparse.nm.export), matmul on it, and the CUTLASS / PyTorch layout."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxsparse import nm

PAIRS = [(1, 2), (2, 4), (1, 4), (4, 8), (2, 8)]


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(PAIRS), st.integers(0, 1), st.integers(0, 2**31 - 1))
def test_compress_round_trip_is_bit_exact(pair, axis, seed):
    n, m = pair
    rng = np.random.default_rng(seed)
    shape = [3, 5]
    shape[axis] = 2 * m
    w = rng.integers(-2, 3, size=shape).astype(np.float32)  # ties and exact zeros
    w[rng.random(shape) < 0.1] = -0.0
    # any legal mask: the N:M mask with some entries dropped (groups with < n kept)
    mask = np.asarray(nm.nm_mask(w, n, m, axis=axis)) & (rng.random(shape) < 0.8)
    c = nm.compress(jnp.asarray(w), n, m, axis=axis, mask=jnp.asarray(mask))
    assert c.values.shape == (shape[1 - axis], 2 * n) and c.indices.dtype == jnp.uint8
    back = np.asarray(nm.decompress(c))
    np.testing.assert_array_equal(back.view(np.uint32), np.where(mask, w, 0).view(np.uint32))
    idx = np.asarray(c.indices)
    assert (np.diff(idx.astype(int), axis=-1) > 0).all()  # ascending, distinct positions


def test_compress_default_mask_and_layout():
    w = jnp.array([[1.0, 0.5], [-4.0, 0.0], [3.0, 2.0], [2.0, -7.0]])  # Dense (in=4, out=2)
    c = nm.compress(w, 2, 4)
    np.testing.assert_array_equal(c.values, [[-4.0, 3.0], [2.0, -7.0]])  # operand rows = out
    np.testing.assert_array_equal(c.indices, [[[1, 2]], [[2, 3]]])
    np.testing.assert_array_equal(nm.decompress(c), jnp.where(nm.nm_mask(w), w, 0))
    leaves, treedef = jax.tree_util.tree_flatten(c)  # a pytree: jit/vmap/checkpoint it
    assert len(leaves) == 2 and jax.tree_util.tree_unflatten(treedef, leaves).shape == (4, 2)
    with pytest.raises(ValueError, match=r"'k'.*\(6, 2\).*not divisible"):
        nm.compress(jnp.ones((6, 2)), 2, 4, path="k")


def test_memory_accounting():
    c = nm.compress(jnp.ones((64, 32), jnp.float16), 2, 4)
    mem = nm.memory(c)
    assert mem["dense_bytes"] == 64 * 32 * 2
    assert mem["values_bytes"] == 32 * 32 * 2  # half of K kept
    assert mem["index_bytes"] == 32 * 32  # one uint8 per kept entry
    assert mem["index_bytes_packed"] == 32 * 32 * 2 // 8  # 2 bits per kept entry
    assert mem["ratio_packed"] == pytest.approx((2048 + 256) / 4096)


def test_matmul_on_compressed_equals_dense_masked_matmul():
    w = jax.random.normal(jax.random.key(0), (32, 24))
    x = jax.random.normal(jax.random.key(1), (7, 32))
    c = nm.compress(w, 2, 4)
    dense = x @ jnp.where(nm.nm_mask(w, 2, 4), w, 0)
    np.testing.assert_array_equal(nm.nm_matmul(x, c), dense)
    np.testing.assert_allclose(nm.nm_matmul(x, c, method="gather"), dense,
                               rtol=1e-5, atol=1e-5)
    # (out, in) kernels, PyTorch's Linear layout: x contracts with axis 1
    wt = w.T
    ct = nm.compress(wt, 2, 4, axis=1)
    np.testing.assert_allclose(nm.nm_matmul(x, ct, method="gather"),
                               x @ jnp.where(nm.nm_mask(wt, 2, 4, axis=1), wt, 0).T,
                               rtol=1e-5, atol=1e-5)
    assert jax.jit(nm.nm_matmul, static_argnames="method")(x, c).shape == (7, 24)
    with pytest.raises(ValueError, match="K=32"):
        nm.nm_matmul(jnp.ones((2, 8)), c)


# ------------------------------------------------------------------------ CUTLASS layout

DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "int8": np.int8,
          "float32": np.float32}
SHAPES = {"float16": [(32, 32), (64, 128), (128, 64)],
          "bfloat16": [(32, 32), (96, 64)],
          "int8": [(16, 64), (32, 128), (64, 64)],
          "float32": [(32, 16), (64, 48)]}


def legal_operand(name, shape, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32) * 20
    n, m = (1, 2) if name == "float32" else (2, 4)
    mask = np.asarray(nm.nm_mask(w, n, m, axis=1)) & (rng.random(shape) < 0.75)
    return np.where(mask, w, 0).astype(DTYPES[name])


@pytest.mark.parametrize("name", list(DTYPES))
def test_cutlass_round_trip(name):
    for i, shape in enumerate(SHAPES[name]):
        x = legal_operand(name, shape, i)
        values, meta = nm.to_cutlass(x)
        assert values.shape == (shape[0], shape[1] // 2)
        assert meta.dtype == (np.int32 if name == "int8" else np.int16)
        back = nm.from_cutlass(values, meta)
        np.testing.assert_array_equal(back.view(np.uint8), x.view(np.uint8))


@pytest.mark.parametrize("name", list(DTYPES))
def test_cutlass_export_bit_identical_to_torch(name):
    torch = pytest.importorskip("torch")
    conv = pytest.importorskip("torch.sparse._semi_structured_conversions")
    tdt = {"float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8,
           "float32": torch.float32}[name]
    for i, shape in enumerate(SHAPES[name]):
        x = legal_operand(name, shape, 100 + i)
        if name == "bfloat16":
            tx = torch.from_numpy(x.view(np.int16)).view(tdt)
        else:
            tx = torch.from_numpy(x)
        t_values, t_meta = conv.sparse_semi_structured_from_dense_cutlass(tx)
        if name == "bfloat16":
            t_values = t_values.view(torch.int16)
        values, meta = nm.to_cutlass(x)
        np.testing.assert_array_equal(values.view(np.uint8), t_values.numpy().view(np.uint8))
        assert meta.dtype == t_meta.numpy().dtype
        np.testing.assert_array_equal(meta, t_meta.numpy())


def test_export_cutlass_from_dense_and_conv_kernels():
    w = jax.random.normal(jax.random.key(0), (64, 32)).astype(jnp.float16)  # Dense (in, out)
    ws = jnp.where(nm.nm_mask(w), w, 0)
    values, meta = nm.export_cutlass(ws)
    np.testing.assert_array_equal(nm.from_cutlass(values, meta), np.asarray(ws).T)
    k = jax.random.normal(jax.random.key(1), (3, 3, 32, 32)).astype(jnp.float16)
    ks = jnp.where(nm.nm_mask(k, path="conv/kernel"), k, 0)
    values, meta = nm.export_cutlass(ks, path="conv/kernel")
    operand = np.moveaxis(np.asarray(ks), -1, 0).reshape(32, 9 * 32)  # (C_out, kh*kw*C_in)
    np.testing.assert_array_equal(nm.from_cutlass(values, meta), operand)


def test_cutlass_bad_inputs_name_the_shape():
    with pytest.raises(ValueError, match=r"\(32, 16\).*K % 32"):
        nm.to_cutlass(np.zeros((32, 16), np.float16))
    with pytest.raises(ValueError, match=r"> 2 nonzeros"):
        nm.to_cutlass(np.ones((32, 32), np.float16))
    with pytest.raises(TypeError, match="float64"):
        nm.to_cutlass(np.zeros((32, 32), np.float64))


def test_compress_refuses_a_mask_that_is_not_nm_but_takes_fewer_than_n():
    w = jnp.arange(1.0, 9.0).reshape(8, 1)
    three = jnp.array([1, 1, 1, 0, 0, 0, 0, 1], bool)[:, None]
    with pytest.raises(ValueError, match=r"group \(0, 0\) keeps 3"):
        nm.compress(w, 2, 4, mask=three)
    one = jnp.array([1, 0, 0, 0, 0, 0, 1, 0], bool)[:, None]  # fewer than n is legal
    np.testing.assert_array_equal(nm.decompress(nm.compress(w, 2, 4, mask=one)),
                                  jnp.where(one, w, 0))
