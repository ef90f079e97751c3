"""Exact top-k by *count*, sort-free: :func:`keep_top` over leaves, :func:`top_along` on one array.

:func:`jaxsparse.prune` selects by *fraction* (a rounding rule turns it into a count per
group); :func:`keep_top` takes the counts themselves, per group of leaves, among candidate
entries (the drop and grow of SET / RigL, every step of GMP). Same tie rules as ``prune``:
lower flat index wins (leaves in the order given, row-major inside a leaf), ``-0.0 == 0.0``,
NaN below every number.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# How:
#
# Layout: every leaf's keys (order-preserving uint32: candidates >= 1, others 0) are flattened,
# padded to whole blocks of _ROWS x _LANES entries and stacked: keys[b, r, l] is flat entry
# (b - first block of the leaf) * _ROWS * _LANES + r * _LANES + l. A counting pass compares
# every key with three thresholds of its group, packs the three 0/1 results in 10-bit fields
# of one int32 and sums over the rows of each block (adds of whole rows of lanes, which
# vectorise), then over lanes and over each group's blocks. The k-th largest key T of each
# group is found by an interpolation search on these counts, keeping a bracket [lo, hi) with
# c(lo) >= k > c(hi): the first thresholds are quantiles of a fixed sample of the keys, later
# ones come from the sample's keys inside the bracket (an inverse CDF) or from linear
# interpolation in key space, and one of the three is always the bracket's midpoint (or,
# twice at most, the key of 0.0 or just above it), so the bracket halves at least: at most 35
# passes, about 4 to 7 on real weights and gradients. It ends when exactly k keys are >= lo,
# or when [lo, hi) is one key T = lo of which only some are kept: those with the lowest flat
# indices (located from per-row tie counts, only when some group needs it).

_ROWS, _LANES = 16, 128  # a block; per lane a field counts at most _ROWS < 1024
_BLOCK = _ROWS * _LANES
_SAMPLE = 1024  # sample keys per group for the first thresholds
_NONE = np.uint32(0xFFFFFFFF)  # above every key


@dataclasses.dataclass(frozen=True)
class _Layout:
    sizes: tuple[int, ...]
    groups: tuple[int, ...]

    @functools.cached_property
    def n_groups(self) -> int:
        return max(self.groups) + 1

    @functools.cached_property
    def blocks(self) -> np.ndarray:
        return np.asarray([max(1, -(-n // _BLOCK)) for n in self.sizes], np.int64)

    @functools.cached_property
    def block_start(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.blocks)])

    @functools.cached_property
    def block_group(self) -> np.ndarray:
        return np.asarray(self.groups, np.int32)[np.repeat(np.arange(len(self.sizes)),
                                                           self.blocks)]

    @functools.cached_property
    def group_blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """First and one-past-last block of each group."""
        ends = np.searchsorted(self.block_group, np.arange(self.n_groups), side="right")
        return np.concatenate([[0], ends[:-1]]), ends

    @functools.cached_property
    def sample(self) -> np.ndarray:
        """Static flat positions of ``_SAMPLE`` keys spread over each group (groups, _SAMPLE)."""
        out = []
        for b0, b1 in zip(*self.group_blocks, strict=True):
            total = _BLOCK * (b1 - b0)
            pos = ((np.arange(_SAMPLE) + 0.5) * total / _SAMPLE).astype(np.int64)
            out.append(b0 * _BLOCK + pos)
        return np.stack(out)


def ordered_keys(score: jax.Array, candidates: jax.Array | bool) -> jax.Array:
    """Order-preserving uint32 keys of float32 scores, the selections' common currency:
    non-candidates 0, NaN 1, numbers ``[0x007FFFFF (-inf), 0xFF800000 (+inf)]``, -0.0 == 0.0.

    >>> ordered_keys(jnp.array([-1.0, 0.0, -0.0, jnp.nan]), True).tolist()
    [1082130431, 2147483648, 2147483648, 1]
    """
    s = jnp.asarray(score).astype(jnp.float32)
    s = jnp.where(s == 0, jnp.zeros((), jnp.float32), s)
    b = lax.bitcast_convert_type(s, jnp.uint32)
    k = jnp.where(b >> 31 == 1, ~b, b | jnp.uint32(0x80000000))
    k = jnp.where(jnp.isnan(s), jnp.uint32(1), k)
    return jnp.where(candidates, k, jnp.uint32(0))


def _to_groups(lay: _Layout, per_block: jax.Array) -> jax.Array:
    """Sums of ``per_block`` ``(blocks, ...)`` over each group's blocks (one scatter-add)."""
    out = jnp.zeros((lay.n_groups,) + per_block.shape[1:], per_block.dtype)
    return out.at[lay.block_group].add(per_block)


def _per_block(lay: _Layout, v: jax.Array) -> jax.Array:
    """A per-group value broadcast to ``(blocks, 1, 1)``."""
    return v[lay.block_group][:, None, None]


def _count3(lay: _Layout, keys: jax.Array, t: jax.Array) -> jax.Array:
    """``#(key >= t[g, j])`` per group ``g`` for three thresholds ``j``, in one pass.

    Few kernels on purpose (a pass costs little next to the launch of a kernel on CPU): the
    packed compare fuses into the sum over the rows of each block, the unpacked fields are
    summed over lanes, then scattered to the groups.
    """
    tb = t[lay.block_group]  # (blocks, 3)
    packed = sum((keys >= tb[:, j, None, None]).astype(jnp.int32) << (10 * j)
                 for j in range(3))
    lanes = jnp.sum(packed, axis=1)  # (blocks, lanes); each field <= _ROWS
    fields = jnp.stack([(lanes >> (10 * j)) & 1023 for j in range(3)], axis=-1)
    return _to_groups(lay, jnp.sum(fields, axis=1))


_ZERO = np.uint32(0x80000000)  # key of 0.0: exact zeros are common (grown weights, dead units)


def _min_positive(lay: _Layout, keys: jax.Array) -> jax.Array:
    """Per group, the smallest key above that of 0.0 (one pass)."""
    pos = jnp.where(keys > _ZERO, keys, _NONE)
    block_min = jnp.min(jnp.min(pos, axis=1), axis=1)
    return jnp.full((lay.n_groups,), _NONE).at[lay.block_group].min(block_min)


def _interp(lo, hi, clo, chi, k, samp, min_pos):
    """Three thresholds inside ``(lo, hi)`` for the next counting pass.

    Two around the target from the sorted sample ``samp`` (its entries inside the bracket,
    as an inverse CDF) or, with fewer than two of them there, by linear interpolation in key
    space; equal ones become ``v, v + 1`` (which isolates a block of ties). The third is the
    bracket's midpoint (so the bracket at least halves), or, while the sample has exact zeros
    and the bracket holds the key of 0.0 inside, the key just above (or at) it: a block of
    zeros is cut off in one pass instead of by bisection across the empty tiny floats, and
    the key interpolation starts at the smallest positive key ``min_pos`` when it is inside.
    """
    m = (clo - chi).astype(jnp.float32)
    j = (k - chi).astype(jnp.float32)
    span = hi - lo
    base_lo = jnp.where((lo < min_pos) & (min_pos < hi), min_pos - 1, lo)
    key_span = hi - base_lo
    spread = jnp.maximum(0.5, 0.35 * jnp.sqrt(m))
    n_samp = samp.shape[1]
    above = jnp.sum(samp >= hi[:, None], axis=1)  # sample top-ranks (above, below] are inside
    below = jnp.sum(samp >= lo[:, None], axis=1)
    use_samp = below - above >= 2

    def at(rank):  # a threshold whose count is estimated at chi + rank (from the top)
        frac = jnp.clip(rank / m, 0.0, 1.0)
        off = jnp.floor(key_span.astype(jnp.float32) * frac)
        off = jnp.clip(off, 1.0, 4.0e9).astype(jnp.uint32)
        by_key = hi - jnp.maximum(jnp.minimum(off, key_span - 1), 1)
        top = above.astype(jnp.float32) + frac * (below - above).astype(jnp.float32)
        i = jnp.clip(jnp.floor(top).astype(jnp.int32), above, below - 1)
        v = jnp.take_along_axis(samp, jnp.clip(n_samp - 1 - i, 0, n_samp - 1)[:, None],
                                axis=1)[:, 0]
        by_samp = jnp.clip(v, lo + 1, hi - 1)
        return jnp.where(use_samp, by_samp, by_key)

    t1, t3 = at(j - 0.5 - spread), at(j - 0.5 + spread)
    t1 = jnp.where((t1 == t3) & (t1 + 1 < hi), t1 + 1, t1)
    has_zero = jnp.any(samp == _ZERO, axis=1)
    mid = jnp.where(has_zero & (lo <= _ZERO) & (_ZERO + 1 < hi), _ZERO + 1,
                    jnp.where(has_zero & (lo < _ZERO) & (_ZERO < hi), _ZERO, lo + span // 2))
    return jnp.stack([t1, mid, t3], axis=1)


def _done(lo, hi, clo, chi, k):
    return (clo == k) | (hi - lo <= 1)


def _search(lay: _Layout, keys: jax.Array, k: jax.Array, n_cand: jax.Array):
    """Per group ``(T, r)``: keep keys > T and the first ``r`` (by flat index) keys == T."""
    n_groups = lay.n_groups
    # First thresholds: quantiles of a fixed sample around the target rank.
    samp = jnp.sort(keys.reshape(-1)[lay.sample], axis=1)  # ascending, (groups, _SAMPLE)
    n_samp = jnp.sum(samp > 0, axis=1).astype(jnp.float32)
    q = k.astype(jnp.float32) / jnp.maximum(n_cand, 1).astype(jnp.float32) * n_samp
    sd = jnp.sqrt(jnp.maximum(q * (1.0 - q / jnp.maximum(n_samp, 1.0)), 1.0))

    def pick(rank):  # sample key at `rank` from the top among the sampled candidates
        i = jnp.clip(jnp.floor(_SAMPLE - rank), _SAMPLE - n_samp, _SAMPLE - 1)
        i = jnp.clip(i, 0, _SAMPLE - 1).astype(jnp.int32)
        return jnp.take_along_axis(samp, i[:, None], axis=1)[:, 0]

    t_mid = pick(q)
    # a tie block at the target is isolated by a threshold just above it
    first = jnp.stack([pick(q + 1.5 * sd), t_mid, jnp.maximum(pick(q - 1.5 * sd), t_mid + 1)],
                      axis=1)

    # with exact zeros among the candidates the positive keys may start far above 0.0
    has_zero = jnp.any(samp == _ZERO)
    min_pos = lax.cond(has_zero, lambda: _min_positive(lay, keys),
                       lambda: jnp.zeros((n_groups,), jnp.uint32))

    def cond(state):
        lo, hi, clo, chi, it = state
        return jnp.any(~_done(lo, hi, clo, chi, k)) & (it < 40)  # (<= 35 by the halving)

    def body(state):  # one counting pass; the first uses the sample's thresholds
        lo, hi, clo, chi, it = state
        done = _done(lo, hi, clo, chi, k)
        t = jnp.where(it == 0, first, _interp(lo, hi, clo, chi, k, samp, min_pos))
        c = _count3(lay, keys, t)
        for j in range(3):  # lo: the largest threshold that still has >= k keys above
            tj, cj = t[:, j], c[:, j]
            up = ~done & (cj >= k) & (tj > lo) & (tj < hi)
            lo, clo = jnp.where(up, tj, lo), jnp.where(up, cj, clo)
        for j in range(3):  # hi: the smallest with < k
            tj, cj = t[:, j], c[:, j]
            down = ~done & (cj < k) & (tj > lo) & (tj < hi)
            hi, chi = jnp.where(down, tj, hi), jnp.where(down, cj, chi)
        return lo, hi, clo, chi, it + 1

    empty = k <= 0
    lo = jnp.where(empty, _NONE, jnp.ones((n_groups,), jnp.uint32))
    hi = jnp.full((n_groups,), _NONE)
    clo = jnp.where(empty, 0, n_cand).astype(jnp.int32)
    chi = jnp.zeros((n_groups,), jnp.int32)
    state = (lo, hi, clo, chi, jnp.int32(0))
    lo, hi, clo, chi, _ = lax.while_loop(cond, body, state)
    # Either exactly k keys are >= lo, or [lo, hi) holds the single key T = lo of which the
    # first k - c(hi) are kept.
    exact = clo == k
    t = jnp.where(exact, lo - 1, lo)
    r = jnp.where(exact, 0, k - chi)
    return t, r.astype(jnp.int32)


def _tie_cut(lay: _Layout, keys: jax.Array, t: jax.Array, r: jax.Array) -> jax.Array:
    """Bool like ``keys``: the keys == T of each group among its first ``r`` such keys."""
    n_groups = lay.n_groups
    eq = keys == _per_block(lay, t)
    rows = jnp.sum(eq, axis=2, dtype=jnp.int32).reshape(-1)  # ties per row, in flat order
    row_group = np.repeat(lay.block_group, _ROWS)
    starts = lay.group_blocks[0] * _ROWS
    cs = jnp.cumsum(rows)
    before = jnp.concatenate([jnp.zeros((1,), jnp.int32), cs])[starts]
    cs_in = cs - before[row_group]  # inclusive count inside the group
    # the row of the r-th tie of each group, and how many ties are still needed in it
    cut_row = jnp.asarray(starts, jnp.int32) + jnp.zeros((n_groups,), jnp.int32).at[
        row_group].add((cs_in < r[row_group]).astype(jnp.int32))
    cut_row = jnp.minimum(cut_row, rows.size - 1)
    need = r - (cs_in - rows)[cut_row]
    row_ties = eq.reshape(-1, _LANES)[cut_row]  # (groups, lanes)
    row_cs = jnp.cumsum(row_ties.astype(jnp.int32), axis=1)
    cut_lane = jnp.sum((row_cs < need[:, None]).astype(jnp.int32), axis=1)
    cut_row = jnp.where(r > 0, cut_row, -1)
    row_id = (jnp.arange(keys.shape[0], dtype=jnp.int32)[:, None, None] * _ROWS
              + jnp.arange(_ROWS, dtype=jnp.int32)[None, :, None])
    lane_id = jnp.arange(_LANES, dtype=jnp.int32)[None, None, :]
    cr, cl = _per_block(lay, cut_row), _per_block(lay, cut_lane)
    return eq & ((row_id < cr) | ((row_id == cr) & (lane_id <= cl)))


def keep_top(
    scores: Sequence[jax.Array],
    candidates: Sequence[jax.Array],
    counts: jax.Array | Sequence[int],
    *,
    groups: Sequence[int] | None = None,
    num_candidates: jax.Array | None = None,
) -> list[jax.Array]:
    """Exactly ``counts[g]`` candidate entries of each group with the highest scores.

    Sort-free and exact (see the comment above ``_ROWS`` for how): a few counting passes
    over the keys, no sort of the entries. Ties keep the entry with the lower flat index
    (leaves in the order given, row-major inside a leaf), ``-0.0 == 0.0``, NaN ranks below
    every number; a group with fewer candidates than its count keeps them all.
    jit/vmap-able; ``counts`` may be traced.

    Args:
      scores: one array per leaf (higher = keep).
      candidates: bool arrays of the same shapes: the entries that may be kept.
      counts: int per group, how many to keep.
      groups: static group id of each leaf (non-decreasing, from 0); default one per leaf.
      num_candidates: optional int32 per group, the number of candidates (saves a pass when
        the caller knows it).

    Returns:
      One bool array per leaf: the kept entries (a subset of the candidates).

    >>> s = [jnp.array([3.0, 1.0, 2.0, 2.0]), jnp.array([[5.0, 0.0]])]
    >>> c = [jnp.array([True, True, True, True]), jnp.array([[True, True]])]
    >>> [x.tolist() for x in keep_top(s, c, jnp.array([2, 1]))]  # tie at 2.0: lower index
    [[True, False, True, False], [[True, False]]]
    """
    scores, candidates = list(scores), list(candidates)
    if len(scores) != len(candidates):
        raise ValueError(f"keep_top: {len(scores)} score leaves but {len(candidates)} candidates")
    if not scores:
        return []
    for i, (s, c) in enumerate(zip(scores, candidates, strict=True)):
        if np.shape(s) != np.shape(c):
            raise ValueError(f"keep_top: leaf {i}: scores shape {np.shape(s)} but candidates "
                             f"shape {np.shape(c)}")
    groups = tuple(range(len(scores))) if groups is None else tuple(int(g) for g in groups)
    if len(groups) != len(scores) or groups[0] != 0 or any(
            b - a not in (0, 1) for a, b in zip(groups, groups[1:], strict=False)):
        raise ValueError(f"keep_top: groups must be non-decreasing from 0 in steps of 1, got "
                         f"{groups}")
    sizes = tuple(int(np.size(s)) for s in scores)
    if sum(sizes) >= 2**31:
        raise ValueError(f"keep_top supports < 2**31 entries, got {sum(sizes)}")
    lay = _Layout(sizes, groups)
    counts = jnp.asarray(counts, jnp.int32).reshape(lay.n_groups)
    shapes = tuple(tuple(np.shape(s)) for s in scores)
    return _keep_top(lay, shapes, scores, candidates, counts, num_candidates)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _keep_top(lay, shapes, scores, candidates, counts, num_candidates):
    blocks = []
    for s, c, nb in zip(scores, candidates, lay.blocks, strict=True):
        k = ordered_keys(s, c).reshape(-1)
        blocks.append(jnp.pad(k, (0, int(nb) * _BLOCK - k.size)).reshape(-1, _ROWS, _LANES))
    keys = jnp.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]
    if num_candidates is None:
        per_leaf = jnp.stack([jnp.sum(c, dtype=jnp.int32) for c in candidates])
        num_candidates = jnp.zeros((lay.n_groups,), jnp.int32).at[np.asarray(lay.groups)].add(
            per_leaf)
    n_cand = jnp.asarray(num_candidates, jnp.int32).reshape(lay.n_groups)
    k = jnp.clip(counts, 0, n_cand)
    t, r = _search(lay, keys, k, n_cand)
    tb = _per_block(lay, t)
    keep = lax.cond(jnp.any(r > 0), lambda: (keys > tb) | _tie_cut(lay, keys, t, r),
                    lambda: keys > tb)
    out = []
    for i, shape in enumerate(shapes):
        blk = keep[lay.block_start[i]:lay.block_start[i + 1]].reshape(-1)
        out.append(blk[: lay.sizes[i]].reshape(shape))
    return out


# ---------------------------------------------------------------------------------------
# One array, top-k by count along an axis (each row / column its own group).


def top_along(score: jax.Array, num_keep: int | jax.Array, axis: int | None = None) -> jax.Array:
    """Bool mask of the ``num_keep`` highest scores (flat, or along ``axis``); ties keep the
    lower index, NaN ranks lowest. ``num_keep`` may be traced.

    Sort-free (a sort is slow on CPU): 32 counting passes find, bit by bit, the largest key
    ``T`` with at least ``num_keep`` keys ``>= T``; everything above ``T`` is kept, and the
    entries equal to ``T`` in index order until the count is reached.

    >>> top_along(jnp.array([1.0, 3.0, 3.0, 2.0]), 2)
    Array([False,  True,  True, False], dtype=bool)
    >>> top_along(jnp.array([[1.0, 5.0], [2.0, 4.0], [3.0, 6.0]]), 1, axis=0)  # per column
    Array([[False, False],
           [False, False],
           [ True,  True]], dtype=bool)
    >>> top_along(jnp.array([1.0, 3.0, 3.0, 2.0]), 2)
    Array([False,  True,  True, False], dtype=bool)
    """
    shape = jnp.shape(score)
    s = jnp.asarray(score, jnp.float32)
    key = ordered_keys(jnp.where(jnp.isnan(s), -jnp.inf, s), True)  # NaN ties with -inf
    if axis is None:
        key, axis = key.reshape(-1), 0
    axis %= key.ndim
    k = jnp.asarray(num_keep, jnp.int32)
    count = lambda ok: jnp.sum(ok, axis=axis, keepdims=True, dtype=jnp.int32)  # noqa: E731

    def bit(i, t):
        cand = t | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        return jnp.where(count(key >= cand) >= k, cand, t)

    t = jax.lax.fori_loop(0, 32, bit, jnp.zeros(jnp.shape(count(key)), jnp.uint32))
    above = key > t
    tie = key == t
    tie_rank = jnp.cumsum(tie, axis=axis, dtype=jnp.int32)  # 1-based among the ties
    keep = (above | (tie & (tie_rank <= k - count(above)))) & (k > 0)
    return keep.reshape(shape)


__all__ = ["keep_top", "ordered_keys", "top_along"]
