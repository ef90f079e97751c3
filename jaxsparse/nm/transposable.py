"""Transposable N:M masks: ``W`` and ``W^T`` both N:M along their reduction axes.

With a transposable mask the backward (data-gradient) GEMM ``dX = dY @ W^T`` is N:M sparse
too, so sparse tensor cores can run it. Masks are chosen per ``m x m`` block with every row and
every column keeping ``n``: exactly (the best of all such patterns) or greedily.

>>> mask = transposable_mask(jax.random.normal(jax.random.key(0), (8, 8)))
>>> js.is_nm({"k": mask}, 2, 4, exact=True), js.is_nm({"k": mask.T}, 2, 4, exact=True)
(True, True)

References:
  Hubara et al. 2021 (NeurIPS), "Accelerated Sparse Neural Training: A Provable and Efficient
  Method to Find N:M Transposable Masks".
"""

from __future__ import annotations

import functools
import itertools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.nm.axes import reduction_axis
from jaxsparse.nm.masks import check_nm


@functools.cache
def transposable_patterns(n: int = 2, m: int = 4) -> np.ndarray:
    """All ``m x m`` 0/1 blocks with exactly ``n`` ones in every row and every column.

    Returned as a bool array ``(count, m * m)`` in lexicographic order of the rows'
    column choices (the order that breaks ties in :func:`transposable_mask`). 2:4 has 90.

    >>> transposable_patterns(2, 4).shape, transposable_patterns(1, 2).astype(int).tolist()
    ((90, 16), [[1, 0, 0, 1], [0, 1, 1, 0]])
    """
    check_nm(n, m)
    if m > 5:
        raise ValueError(f"exact transposable masks enumerate patterns; m={m} > 5 is too many")
    rows = list(itertools.combinations(range(m), n))
    out = []

    def rec(prefix, cols):
        if len(prefix) == m:
            out.append(prefix)
            return
        left = m - len(prefix)  # rows still to place, including this one
        for r in rows:
            new = cols.copy()
            new[list(r)] += 1
            # every column must still be able to reach exactly n with the remaining rows
            if (new <= n).all() and (n - new <= left - 1).all():
                rec(prefix + [r], new)

    rec([], np.zeros(m, int))
    pats = np.zeros((len(out), m, m), bool)
    for i, choice in enumerate(out):
        for row, cols in enumerate(choice):
            pats[i, row, list(cols)] = True
    pats = pats.reshape(len(out), m * m)
    pats.setflags(write=False)  # cached: callers must not mutate it
    return pats


def _blocks(x: jax.Array, m: int, axes: tuple[int, int]):
    x = jnp.moveaxis(x, axes, (-2, -1))
    lead, (k, c) = x.shape[:-2], x.shape[-2:]
    b = x.reshape(lead + (k // m, m, c // m, m))
    b = jnp.swapaxes(b, -3, -2).reshape(-1, m * m)  # (blocks, m*m), row-major in (k, c)

    def unblock(bm):
        y = bm.reshape(lead + (k // m, c // m, m, m))
        y = jnp.swapaxes(y, -3, -2).reshape(lead + (k, c))
        return jnp.moveaxis(y, (-2, -1), axes)

    return b, unblock


def _transposable_axes(path: str, shape: tuple[int, ...]) -> tuple[int, int]:
    ndim = len(shape)
    if ndim == 2:
        return (0, 1)
    if ndim == 4:
        return (2, 3)  # HWIO: C_in, C_out
    try:
        k = reduction_axis(path, shape)
    except ValueError:
        k = None
    if k != ndim - 2:
        raise ValueError(
            f"transposable mask at {path!r}: cannot tell the two GEMM axes of a {ndim}-D "
            f"{'array' if path == '<array>' else 'leaf'} of shape {tuple(shape)}; pass "
            "axes=(K, N): the forward reduction axis and the axis the transposed GEMM reduces")
    return (ndim - 2, ndim - 1)


def transposable_mask(
    w: jax.Array,
    n: int = 2,
    m: int = 4,
    *,
    method: Literal["exact", "greedy"] = "exact",
    axes: tuple[int, int] | None = None,
    path: str = "<array>",
) -> jax.Array:
    """N:M mask valid for both ``W`` (groups along ``axes[0]``) and ``W^T`` (along ``axes[1]``).

    Args:
      w: a kernel; default ``axes`` are ``(0, 1)`` for a 2-D Dense ``(in, out)`` and
        ``(-2, -1)`` (``C_in``, ``C_out``) for a 4-D HWIO array or any leaf whose
        :func:`jaxsparse.nm.reduction_axis` (from ``path``) is ``-2`` (convs, the attention
        output projection). Any other shape needs ``axes=`` (an error says so, never a guess).
      n, m: keep ``n`` per group of ``m`` in both orientations.
      method: ``"exact"`` picks, per ``m x m`` block, the max-magnitude pattern among all
        :func:`transposable_patterns` (ties -> lowest pattern index; ``m <= 5``);
        ``"greedy"`` visits the block's entries by decreasing ``|w|`` (ties -> lower flat
        index) and keeps one while its row and column have fewer than ``n``. Greedy can stop
        with fewer than ``n`` in a row (still hardware-legal: at most ``n``).
      axes: ``(K, N)``: the forward reduction axis and the axis the transposed GEMM reduces.
      path: used in error messages.

    Returns:
      Bool mask of ``w.shape``; exact keeps exactly ``n`` per row and column of each block.

    >>> w = jnp.array([[9.0, 8.0], [7.0, 1.0]])
    >>> transposable_mask(w, 1, 2).astype(int)  # 9 + 1 loses to 8 + 7
    Array([[0, 1],
           [1, 0]], dtype=int32)

    References:
      Hubara et al. 2021 (NeurIPS), N:M transposable masks.
    """
    check_nm(n, m)
    w = jnp.asarray(w)
    if w.ndim < 2:
        raise ValueError(f"transposable mask at {path!r}: need ndim >= 2, got shape {w.shape}")
    if axes is None:
        axes = _transposable_axes(path, w.shape)
    axes = tuple(a % w.ndim for a in axes)
    for a in axes:
        if w.shape[a] % m:
            raise ValueError(
                f"transposable mask at {path!r}: dimension {a} of shape {w.shape} is not "
                f"divisible by m={m}"
            )
    # NaN counts as 0 and inf as the largest float so that pattern sums stay finite.
    mag = jnp.nan_to_num(jnp.abs(w).astype(jnp.float32), nan=0.0)
    blocks, unblock = _blocks(mag, m, axes)
    if method == "exact":
        pats = jnp.asarray(transposable_patterns(n, m))
        # kept magnitude of every pattern; HIGHEST so TPUs/GPUs do not round through bf16/tf32
        score = jnp.matmul(blocks, pats.T.astype(jnp.float32), precision="highest")
        best = jnp.argmax(score, axis=-1)  # first max = lowest pattern index
        return unblock(pats[best])
    if method == "greedy":
        order = jnp.argsort(-blocks, axis=-1, stable=True)
        rows = jnp.zeros((blocks.shape[0], m), jnp.int32)
        cols = jnp.zeros((blocks.shape[0], m), jnp.int32)
        keep = jnp.zeros(blocks.shape, bool)
        idx = jnp.arange(blocks.shape[0])
        for t in range(m * m):
            e = order[:, t]
            r, c = e // m, e % m
            ok = (rows[idx, r] < n) & (cols[idx, c] < n)
            rows = rows.at[idx, r].add(ok.astype(jnp.int32))
            cols = cols.at[idx, c].add(ok.astype(jnp.int32))
            keep = keep.at[idx, e].set(ok)
        return unblock(keep)
    raise ValueError(f"method must be 'exact' or 'greedy', got {method!r}")
