"""Compressed N:M storage, matmul on the compressed form, and the CUTLASS / PyTorch layout.

``compress`` stores an N:M kernel in *operand layout*: the reduction axis moved last (a Dense
kernel ``(in, out)`` becomes rows ``out`` x ``K = in``, PyTorch's ``Linear.weight`` layout),
``values`` holding the ``n`` kept entries of every group of ``m`` (``n/m`` of ``K``) and
``indices`` their positions in the group (ascending, ``uint8``). The round trip
``decompress(compress(w, mask=mask)) == where(mask, w, 0)`` is bit-exact for any mask with at
most ``n`` kept per group.

``to_cutlass`` writes a 2-D operand in the layout of PyTorch's semi-structured sparse tensors
(CUTLASS backend): the same bits as ``torch.sparse._semi_structured_conversions.
sparse_semi_structured_from_dense_cutlass`` for float16, bfloat16, int8 (and float32), with no
torch dependency. Layout, as implemented here:

* values ``(rows, K/2)``: for each group of 4 along ``K``, the two selected entries in
  increasing position (float32 uses 1:2 pairs: one entry per pair).
* each group's 4-bit code is ``idx0 | idx1 << 2`` (positions of the two selected entries).
  Groups with other than two nonzeros use fixed fill-in codes (table ``_CODE``), e.g. an
  all-zero group is coded ``(2, 3)``.
* codes are packed little-endian, 4 (int16 meta: 16-bit types and float32) or 8 (int32 meta:
  int8) per meta element, giving ``meta (rows, K / (4 * codes_per_elem))`` for 16-bit types,
* then the meta matrix is reordered for CUTLASS's ``ColumnMajorInterleaved<2>`` tensor-core
  layout: rows are regrouped in blocks of 32 (int16) / 16 (int32) and interleaved by 4 / 2,
  the two off-diagonal entries of every 2x2 block are swapped, and the result is stored column
  pairs major.

Shape limits (those of PyTorch's converter): rows % 32 == 0 (16-bit, float32) or % 16 (int8);
``K % 32`` (16-bit), ``K % 64`` (int8), ``K % 16`` (float32) — the meta matrix needs an even
number of columns for its 2x2 swizzle.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse import masks as masks_lib
from jaxsparse.nm.axes import group_axis, reduction_axis
from jaxsparse.nm.masks import check_nm, group_keep, nm_mask


@jax.tree_util.register_pytree_node_class
class NMCompressed:
    """An N:M-compressed array: ``values`` + per-group ``indices`` (+ static metadata).

    Attributes:
      values: ``(*rows, K * n // m)`` kept entries, reduction axis last.
      indices: ``(*rows, K // m, n)`` ``uint8`` positions inside each group (ascending).
      shape: the dense array's shape; axis: its reduction axis; n, m: the structure.
    """

    def __init__(self, values, indices, shape, axis, n, m):
        self.values, self.indices = values, indices
        self.shape, self.axis, self.n, self.m = tuple(shape), int(axis), int(n), int(m)

    def tree_flatten(self):
        return (self.values, self.indices), (self.shape, self.axis, self.n, self.m)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    def __repr__(self) -> str:
        return (f"NMCompressed({self.n}:{self.m}, shape={self.shape}, axis={self.axis}, "
                f"values={getattr(self.values, 'shape', None)})")


def compress(
    w: jax.Array,
    n: int = 2,
    m: int = 4,
    *,
    axis: int | None = None,
    mask: jax.Array | None = None,
    path: str = "<array>",
) -> NMCompressed:
    """Compresses ``w`` (kept entries = ``mask``, default: the magnitude N:M mask).

    Args:
      w: the dense kernel.
      n, m: structure; axis: reduction axis (default :func:`jaxsparse.nm.reduction_axis`).
      mask: kept entries (bool, ``w``'s shape), at most ``n`` per group: a mask with more in a
        group is refused (``ValueError`` naming the group), never silently cut (checked when
        the mask is concrete; under ``jit`` such a group keeps its ``n`` lowest indices).
        Groups with fewer fill their slots with zeros at the lowest free positions.
      path: for error messages.

    Returns:
      :class:`NMCompressed`; ``decompress`` gives back ``where(mask, w, 0)`` bit-exactly.

    >>> c = compress(jnp.array([[1.0], [-4.0], [3.0], [2.0]]), 2, 4)
    >>> c.values, c.indices
    (Array([[-4.,  3.]], dtype=float32), Array([[[1, 2]]], dtype=uint8))
    """
    check_nm(n, m)
    w = jnp.asarray(w)
    axis = group_axis("compress", path, w.shape, m, axis)
    if mask is None:
        mask = nm_mask(w, n, m, axis=axis, path=path)
    else:
        masks_lib.validate_leaf(path, w, mask, where="compress")
        if np.shape(mask) != w.shape:
            raise ValueError(f"compress at {path!r}: mask shape {np.shape(mask)} != {w.shape}")
        _check_at_most_n(mask, n, m, axis, path)
    values, indices = _compress_jit(w, jnp.asarray(mask, bool), n, m, axis)
    return NMCompressed(values, indices, w.shape, axis, n, m)


def _check_at_most_n(mask: Any, n: int, m: int, axis: int, path: str) -> None:
    if isinstance(mask, jax.core.Tracer):
        return  # traced: the values cannot be checked
    g = np.moveaxis(np.asarray(mask), axis, -1)
    counts = g.reshape(g.shape[:-1] + (-1, m)).sum(-1)
    bad = np.argwhere(counts > n)
    if len(bad):
        first = tuple(int(i) for i in bad[0])
        raise ValueError(
            f"compress at {path!r}: the mask is not {n}:{m} along axis {axis}: {len(bad)} of "
            f"{counts.size} groups keep more than {n} (first: group {first} keeps "
            f"{int(counts[first])}); compressing it would drop kept weights. Build the mask "
            f"with nm_mask / nm_masks or check it with nm_report")


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _compress_jit(w, mask, n, m, axis):
    wm = jnp.moveaxis(jnp.where(mask, w, jnp.zeros((), w.dtype)), axis, -1)
    mk = jnp.moveaxis(jnp.asarray(mask, bool), axis, -1)
    # n slots per group: kept entries first, then the lowest free positions (sort-free)
    sel = group_keep(mk.astype(jnp.int8), n, m, wm.ndim - 1)
    g = wm.shape[-1] // m
    wg = wm.reshape(wm.shape[:-1] + (g, m))
    sg = sel.reshape(wg.shape)
    slot = jnp.cumsum(sg, axis=-1, dtype=jnp.int32) - 1
    vals, idx = [], []
    for s in range(n):
        hit = sg & (slot == s)
        idx.append(jnp.argmax(hit, axis=-1).astype(jnp.uint8))
        v = jnp.zeros(wg.shape[:-1], w.dtype)
        for i in range(m):
            v = jnp.where(hit[..., i], wg[..., i], v)
        vals.append(v)
    values = jnp.stack(vals, -1).reshape(wm.shape[:-1] + (g * n,))
    return values, jnp.stack(idx, -1)


def decompress(c: NMCompressed) -> jax.Array:
    """The dense array of an :class:`NMCompressed` (zeros at pruned entries).

    >>> decompress(compress(jnp.array([[1.0], [-4.0], [3.0], [2.0]]), 2, 4))[:, 0]
    Array([ 0., -4.,  3.,  0.], dtype=float32)
    """
    return _decompress_jit(c.values, c.indices, c.n, c.m, c.axis)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _decompress_jit(values, indices, n, m, axis):
    g = indices.shape[-2]
    vals = values.reshape(values.shape[:-1] + (g, n))
    out = []
    for i in range(m):
        col = jnp.zeros(vals.shape[:-1], vals.dtype)
        for s in range(n):
            col = jnp.where(indices[..., s] == i, vals[..., s], col)
        out.append(col)
    dense = jnp.stack(out, -1).reshape(vals.shape[:-2] + (g * m,))
    return jnp.moveaxis(dense, -1, axis)


def nm_matmul(
    x: jax.Array, c: NMCompressed, *, method: Literal["decompress", "gather"] = "decompress"
) -> jax.Array:
    """``x @ W`` for a compressed 2-D kernel ``W`` (``x``'s last axis contracts with ``W``'s
    reduction axis: ``x @ W`` for a Dense ``(in, out)`` kernel, ``x @ W.T`` if ``axis=1``).

    ``method="decompress"`` rebuilds ``W`` and runs a dense matmul (bit-identical to the
    dense masked matmul); ``"gather"`` gathers, for each output, the ``n/m`` columns of ``x``
    its kept weights touch and reduces (touches only kept weights; the summation order
    differs, so results match to rounding).

    >>> c = compress(jnp.array([[1.0], [-4.0], [3.0], [2.0]]), 2, 4)
    >>> nm_matmul(jnp.ones((1, 4)), c), nm_matmul(jnp.ones((1, 4)), c, method="gather")
    (Array([[-1.]], dtype=float32), Array([[-1.]], dtype=float32))
    """
    if len(c.shape) != 2:
        raise ValueError(f"nm_matmul needs a 2-D kernel, got shape {c.shape}")
    k = c.shape[c.axis]
    if x.shape[-1] != k:
        raise ValueError(f"nm_matmul: x has {x.shape[-1]} features, kernel K={k} ({c.shape})")
    if method == "decompress":
        w = decompress(c)
        return x @ (w if c.axis == 0 else w.T)
    if method == "gather":
        g = c.indices.shape[-2]
        base = jnp.arange(g, dtype=jnp.int32).reshape((1,) * (c.indices.ndim - 2) + (g, 1))
        cols = base * c.m + c.indices.astype(jnp.int32)
        cols = cols.reshape(c.values.shape)  # (out, K*n/m)
        xg = jnp.take(x, cols, axis=-1)  # (..., out, K*n/m)
        return jnp.einsum("...ok,ok->...o", xg, c.values.astype(xg.dtype))
    raise ValueError(f"method must be 'decompress' or 'gather', got {method!r}")


def memory(c: NMCompressed) -> dict[str, Any]:
    """Bytes of the dense array vs the compressed form (values + metadata).

    ``index_bytes`` counts the ``uint8`` indices as stored here; ``index_bytes_packed`` the
    ``ceil(log2(m))`` bits per kept entry a hardware format needs (2:4: 2 bits each).

    >>> mem = memory(compress(jnp.ones((8, 4)), 2, 4))
    >>> mem["dense_bytes"], mem["compressed_bytes"], mem["ratio"]
    (128, 80, 0.625)
    """
    itemsize = np.dtype(c.values.dtype).itemsize
    dense = int(np.prod(c.shape)) * itemsize
    values = int(np.prod(c.values.shape)) * itemsize
    idx = int(np.prod(c.indices.shape))
    bits = max(1, int(np.ceil(np.log2(c.m))))
    packed = int(np.ceil(idx * bits / 8))
    return dict(
        dense_bytes=dense, values_bytes=values, index_bytes=idx, index_bytes_packed=packed,
        compressed_bytes=values + idx, compressed_bytes_packed=values + packed,
        ratio=(values + idx) / dense, ratio_packed=(values + packed) / dense,
    )


# ---------------------------------------------------------------------------------------
# CUTLASS / PyTorch semi-structured layout (2:4).

# Per 4-bit nonzero pattern (bit i = entry i nonzero): the two positions (idx0, idx1) the
# format stores. Exactly-two patterns are canonical; the others use the fill-in choices of
# PyTorch's converter (documented there; verified bit-for-bit in tests/nm/test_nm_export.py).
_CODE = {
    0b0000: (2, 3), 0b1000: (2, 3), 0b0100: (2, 3), 0b0010: (1, 2), 0b1110: (1, 3),
    0b0001: (0, 2), 0b1101: (0, 3), 0b1011: (0, 1), 0b0111: (0, 1), 0b1111: (0, 1),
}
for _a in range(4):
    for _b in range(_a + 1, 4):
        _CODE[(1 << _a) | (1 << _b)] = (_a, _b)
_IDX = np.array([_CODE[p] for p in range(16)], np.int64)  # (16, 2)


def _meta_layout(dtype) -> tuple[Any, int, int]:
    dt = np.dtype(dtype)
    if dt == np.int8:
        return np.int32, 8, 16  # meta dtype, codes per meta element, row multiple
    if dt.itemsize == 2 or dt == np.float32:
        return np.int16, 4, 32
    raise TypeError(f"CUTLASS 2:4 layout supports float16, bfloat16, int8, float32; got {dt}")


def _meta_offsets(rows: int, ncols: int, meta_dtype) -> np.ndarray:
    """Flat destination of meta[r, c] in CUTLASS's interleaved column-major meta layout."""
    group, weave = (32, 4) if np.dtype(meta_dtype).itemsize == 2 else (16, 2)
    r = np.arange(rows)[:, None]
    c = np.arange(ncols)[None, :]
    dr = (r // group) * group + (r % 8) * weave + (r % group) // 8
    dr, c = np.broadcast_arrays(dr, c)
    swap = np.where((dr % 2 == 0) & (c % 2 == 1), 1, 0) - np.where((dr % 2 == 1) & (c % 2 == 0),
                                                                   1, 0)
    dr, dc = dr + swap, c - swap
    return ((dc // 2) * rows * 2 + dr * 2 + dc % 2).reshape(-1)


def to_cutlass(dense: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(values, meta)`` of a 2-D 2:4 operand ``(rows, K)`` in PyTorch's CUTLASS layout.

    Args:
      dense: ``(rows, K)`` float16 / bfloat16 / int8 / float32 array, at most 2 nonzeros per
        group of 4 along ``K`` (float32: at most 1 per pair). Zeros are "not kept".

    Returns:
      numpy ``values (rows, K/2)`` of the input dtype and ``meta`` (int16; int32 for int8),
      bit-identical to ``sparse_semi_structured_from_dense_cutlass``.
    """
    x = np.asarray(dense)
    if x.ndim != 2:
        raise ValueError(f"to_cutlass needs a 2-D (rows, K) operand, got shape {x.shape}")
    meta_dtype, per_elem, row_mult = _meta_layout(x.dtype)
    rows, k = x.shape
    # values per meta element: 4 codes x 4 entries (float32: 4 codes x 2 entries); the 2x2
    # swizzle of the meta layout needs an even number of meta columns.
    k_mult = 2 * per_elem * (2 if x.dtype == np.float32 else 4)
    if rows % row_mult or k % k_mult:
        raise ValueError(
            f"to_cutlass: shape {x.shape} ({x.dtype}) needs rows % {row_mult} == 0 and "
            f"K % {k_mult} == 0"
        )
    nz = x != 0
    if x.dtype == np.float32:  # 1:2 pairs, coded as 2:4 over the pair's two 16-bit halves
        p = x.reshape(rows, k // 2, 2)
        quad = np.repeat(nz.reshape(rows, k // 2, 2), 2, axis=-1)
        if (nz.reshape(rows, k // 2, 2).sum(-1) > 1).any():
            raise ValueError(f"to_cutlass: float32 operand {x.shape} has a pair with 2 nonzeros")
    else:
        quad = nz.reshape(rows, k // 4, 4)
        if (quad.sum(-1) > 2).any():
            raise ValueError(f"to_cutlass: operand {x.shape} has a group of 4 with > 2 nonzeros")
    pattern = (quad * (1 << np.arange(4))).sum(-1)
    idx = _IDX[pattern]  # (rows, groups, 2)
    if x.dtype == np.float32:
        values = np.take_along_axis(p, idx[..., :1] // 2, axis=-1).reshape(rows, k // 2)
    else:
        values = np.take_along_axis(x.reshape(rows, k // 4, 4), idx, axis=-1)
        values = values.reshape(rows, k // 2)
    code = (idx[..., 0] | (idx[..., 1] << 2)).astype(np.uint32)
    ncols = code.shape[1] // per_elem
    code = code.reshape(rows, ncols, per_elem) << (4 * np.arange(per_elem, dtype=np.uint32))
    word = np.bitwise_or.reduce(code, axis=-1)
    word = word.astype(np.uint16 if meta_dtype == np.int16 else np.uint32).view(meta_dtype)
    meta = np.empty(rows * ncols, meta_dtype)
    meta[_meta_offsets(rows, ncols, meta_dtype)] = word.reshape(-1)
    return values, meta.reshape(rows, ncols)


def from_cutlass(values: Any, meta: Any) -> np.ndarray:
    """Dense ``(rows, K)`` operand from :func:`to_cutlass` output (inverse, bit-exact)."""
    values, meta = np.asarray(values), np.asarray(meta)
    rows, half = values.shape
    meta_dtype = meta.dtype.type
    per_elem = 4 if meta.dtype.itemsize == 2 else 8
    ncols = meta.shape[1]
    word = meta.reshape(-1)[_meta_offsets(rows, ncols, meta_dtype)].reshape(rows, ncols)
    word = word.view(np.uint16 if meta.dtype.itemsize == 2 else np.uint32).astype(np.uint32)
    codes = (word[..., None] >> (4 * np.arange(per_elem, dtype=np.uint32))) & 0xF
    codes = codes.reshape(rows, -1)  # one 4-bit code per group of 4 (16-bit halves)
    idx = np.stack([codes & 3, codes >> 2], -1).astype(np.int64)
    if values.dtype == np.float32:
        out = np.zeros((rows, half, 2), values.dtype)
        np.put_along_axis(out, idx[..., :1] // 2, values[..., None], axis=-1)
        return out.reshape(rows, 2 * half)
    out = np.zeros((rows, half // 2, 4), values.dtype)
    np.put_along_axis(out, idx, values.reshape(rows, half // 2, 2), axis=-1)
    return out.reshape(rows, 2 * half)


def export_cutlass(
    w: Any, *, axis: int | None = None, path: str = "<array>"
) -> tuple[np.ndarray, np.ndarray]:
    """A 2:4-sparse kernel in PyTorch/CUTLASS layout: the operand ``(rows, K)`` with the
    reduction axis last (a Dense ``(in, out)`` kernel gives ``(out, in)``, like
    ``torch.nn.Linear.weight``), then :func:`to_cutlass`.

    Conv kernels ``(*spatial, C_in, C_out)`` become ``(C_out, prod(spatial) * C_in)`` (the
    im2col operand, channels fastest). Returns ``(values, meta)``.

    >>> values, meta = export_cutlass(np.zeros((64, 32), np.float16))  # Dense (in, out)
    >>> values.shape, meta.shape, meta.dtype
    ((32, 32), (32, 4), dtype('int16'))
    """
    w = np.asarray(w)
    if axis is None:
        axis = reduction_axis(path, w.shape)
    axis %= w.ndim
    if w.ndim == 2:
        operand = np.moveaxis(w, axis, -1)
    elif axis == w.ndim - 2:
        operand = np.moveaxis(w, -1, 0).reshape(w.shape[-1], -1)
    else:
        raise ValueError(f"export_cutlass at {path!r}: unsupported axis {axis} for {w.shape}")
    return to_cutlass(np.ascontiguousarray(operand))
