"""Exact top-k selection of masks from scores: global, layerwise, per-leaf rates, ERK, blocks.

:func:`prune` keeps the highest-scoring entries **among those still kept**: an entry that is
already pruned ranks below every kept entry (even one whose score is ``-inf``), so it is never
revived. The counts are exact and follow two rules, the same everywhere in jaxsparse:

**Rounding rule.** Removing a fraction ``f`` (a target sparsity, an allocated per-leaf sparsity
or a per-leaf rate) of ``n`` entries removes ``num_pruned(f, n)`` of them::

    d = round(f * 10**7)                             # f rounded to 7 decimals (halves up)
    num_pruned(f, n) = floor(d * n / 10**7 + 1/2)    # nearest integer, exact halves round UP

computed in exact integer arithmetic (also under ``jit`` with a traced float32 ``f``), so a
traced and a Python ``f`` give the same count even for billions of entries, and a sparsity
written with at most 7 decimals means exactly what it says: ``num_pruned(0.9, 25_000_000) ==
22_500_000``, ``num_pruned(0.5, 3) == 2`` (``1.5`` rounds up), ``num_pruned(0.2, 7) == 1``.

**Tie rule.** Among entries with equal scores, the one with the lower *flat index* is kept. The
flat index orders leaves as ``jax.tree_util`` flattens them and entries row-major inside each
leaf (with ``scope="global"`` across the whole tree, otherwise inside each leaf). ``-0.0`` and
``0.0`` are equal. Scores are compared as float32.

**How it is fast.** No sort. Each float32 score maps to an order-preserving ``uint32`` key
(pruned entries map to ``0``, below every real number); all keys are packed in rows of 1008.
16 counting passes over the keys, each testing three candidates at once (three 0/1 counters
packed in 10-bit fields of one int32 per entry, summed per row), decide 2 bits per pass of the
exact k-th largest key ``T`` of each group. Everything above ``T`` is kept; if only some entries
equal to ``T`` fit, the per-row tie counts (from one more counting pass) locate the row where
the cut falls, and only that row is ranked entry by entry, so the lowest flat indices are kept
exactly. See ``benchmarks/bench_select.py`` for the speed against a full sort.

**Non-finite scores.** With concrete inputs a NaN or ``inf`` score on a kept entry of a prunable
leaf is an error naming the leaf path. Under ``jit``/``vmap`` nothing can be raised: ``+inf`` and
``-inf`` then rank as numbers and NaN ranks below every number (but above pruned entries), so a
NaN entry is only kept when there are not enough finite ones. Out-of-range traced ``sparsity``
and rates are clipped into ``[0, 1]``; a traced target below the current sparsity prunes nothing
more in that group.

>>> import jaxsparse as js
>>> params = {"w": jnp.arange(12.0).reshape(3, 4), "b": jnp.ones(4)}
>>> masks = js.prune(js.scores.magnitude(params), js.ones_like(params), sparsity=0.5)
>>> int(js.count_kept(masks)), masks["b"].shape
(6, ())

References:
  Evci et al. 2020 (ICML), "Rigging the Lottery: Making All Tickets Winners" (ERK allocation).
  Frankle & Carbin 2019 (ICLR), "The Lottery Ticket Hypothesis" (per-layer rates of the
  remaining weights).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsparse import masks as masks_lib
from jaxsparse import rules as rules_lib
from jaxsparse.select.top import keep_top, ordered_keys, top_along
from jaxsparse.typing import Key, Masks, PyTree

_DEC = 10**7  # fractions are first rounded to 7 decimals


def _decimal(fraction: jax.Array) -> jax.Array:
    """``round(fraction * 10**7)`` (halves up) of a float32 fraction in ``[0, 1]``, as int32.

    ``f * 10**7`` is formed without the float32 rounding of a plain product: ``f`` splits
    exactly into ``h / 4096 + lo``; ``h * 10**7 / 4096 = h * 78125 / 32`` is exact in int32 and
    ``lo * 10**7 < 2442`` carries an error below ``1e-3``. Any fraction written with at most 7
    decimals is therefore recovered exactly from its float32 value.
    """
    f = jnp.clip(jnp.nan_to_num(jnp.asarray(fraction, jnp.float32), nan=0.0), 0.0, 1.0)
    h = jnp.floor(f * 4096.0)
    lo = f - h / 4096.0
    a = h.astype(jnp.int32) * 78125
    frac = (a & 31).astype(jnp.float32) / 32.0 + lo * float(_DEC) + 0.5
    return (a >> 5) + jnp.floor(frac).astype(jnp.int32)


def _mul_div_round(d: jax.Array, n: jax.Array) -> jax.Array:
    """``floor((d * n + 10**7 / 2) / 10**7)`` exactly in 32-bit integers.

    ``d <= 10**7`` and ``n < 2**31``: the product needs 55 bits, so it is built from 16-bit
    limbs as a (hi, lo) pair of uint32 words, then divided by long division in base 128 (the
    running remainder stays below ``10**7 * 128 < 2**31``).
    """
    d = jnp.asarray(d, jnp.int32).astype(jnp.uint32)
    n = jnp.asarray(n, jnp.int32).astype(jnp.uint32)
    dl, dh = d & 0xFFFF, d >> 16
    nl, nh = n & 0xFFFF, n >> 16
    lo = dl * nl
    mid = dh * nl + dl * nh  # < 2**8 * 2**16 + 2**16 * 2**15 < 2**32
    lo2 = lo + (mid << 16)
    hi = dh * nh + (mid >> 16) + (lo2 < lo).astype(jnp.uint32)
    lo3 = lo2 + jnp.uint32(_DEC // 2)
    hi = hi + (lo3 < lo2).astype(jnp.uint32)
    q = jnp.zeros_like(d).astype(jnp.int32)
    r = jnp.zeros_like(d).astype(jnp.int32)
    for off in range(49, -1, -7):  # 56 bits, 7 at a time, most significant first
        if off >= 32:
            digit = (hi >> (off - 32)) & 127
        elif off + 7 <= 32:
            digit = (lo3 >> off) & 127
        else:
            digit = ((lo3 >> off) | (hi << (32 - off))) & 127
        r = r * 128 + digit.astype(jnp.int32)
        q = q * 128 + r // _DEC
        r = r % _DEC
    return q


def _num_pruned(fraction: jax.Array, n: jax.Array) -> jax.Array:
    """:func:`num_pruned` in 32-bit arithmetic (jit/vmap-able, traced ``fraction`` and ``n``)."""
    return _mul_div_round(_decimal(fraction), n)


_num_pruned_jit = jax.jit(_num_pruned)


def num_pruned(fraction: float | jax.Array, n: int | jax.Array) -> int | jax.Array:
    """How many of ``n`` entries removing ``fraction`` of them prunes (the rounding rule).

    ``fraction`` is rounded to 7 decimals, ``d = round(fraction * 10**7)`` (from its float32
    value; halves up), then ``round(d * n / 10**7)`` with halves rounded up (prune more),
    in exact integer arithmetic. Every jaxsparse function that turns a fraction into a count
    uses this rule, with Python and traced fractions alike: given Python numbers it checks
    them and returns an ``int``; given traced values (inside ``jit`` / ``vmap``, e.g. one
    sparsity per population member) or jax arrays it returns an ``int32`` array (traced
    values cannot be checked: keep ``fraction`` in [0, 1] and ``n < 2**31``).

    >>> num_pruned(0.9, 10), num_pruned(0.5, 3), num_pruned(0.2, 7), num_pruned(0.9, 25_000_000)
    (9, 2, 1, 22500000)
    >>> jax.jit(jax.vmap(num_pruned, in_axes=(0, None)))(jnp.array([0.9, 0.5]), 3).tolist()
    [3, 2]
    """
    if isinstance(fraction, jax.Array) or isinstance(n, jax.Array):
        for name, v, lo, hi in (("fraction", fraction, 0.0, 1.0), ("n", n, 0, 2**31 - 1)):
            if not isinstance(v, jax.core.Tracer):  # concrete: check it
                a = np.asarray(v)
                if a.size and not (np.all(a >= lo) and np.all(a <= hi)):
                    raise ValueError(f"{name} must be in [{lo}, {hi}], got {a}")
        return _num_pruned(jnp.asarray(fraction, jnp.float32), jnp.asarray(n, jnp.int32))
    f = float(fraction)
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    if not 0 <= int(n) < 2**31:
        raise ValueError(f"n must be in [0, 2**31), got {n}")
    with jax.ensure_compile_time_eval():  # concrete even when called while tracing
        return int(_num_pruned_jit(np.float32(f), np.int32(n)))


# ---------------------------------------------------------------------------------------
# Structures.


@dataclasses.dataclass(frozen=True)
class Block:
    """Block sparsity: whole ``bh x bw`` tiles of the last two axes are kept or pruned.

    A tile's score is the sum of the scores of its kept entries; counts (and the rounding rule)
    are in tiles. Leading axes (conv spatial taps) are independent. Every prunable leaf must be
    at least 2-D with its last two axes divisible by ``(bh, bw)``, else an error names the leaf.
    Entries already pruned inside a kept tile stay pruned; a tile is "still kept" while any of
    its entries is.

    >>> Block(4, 1)  # 4 consecutive input rows of a dense kernel [in, out] go together
    Block(bh=4, bw=1)
    """

    bh: int
    bw: int

    def __post_init__(self):
        for name in ("bh", "bw"):
            v = getattr(self, name)
            if not (isinstance(v, int | np.integer) and v >= 1):
                raise ValueError(f"Block.{name} must be a positive int, got {v!r}")

    def _check(self, path: str, shape: tuple[int, ...]) -> None:
        if len(shape) < 2 or shape[-2] % self.bh or shape[-1] % self.bw:
            raise ValueError(
                f"{self} needs leaf {path!r} to be >= 2-D with its last two axes divisible by "
                f"({self.bh}, {self.bw}); its shape is {shape}"
            )

    def to_units(self, x: jax.Array, reduce) -> jax.Array:
        *lead, h, w = x.shape
        x = x.reshape(*lead, h // self.bh, self.bh, w // self.bw, self.bw)
        return reduce(x, axis=(-3, -1))

    def from_units(self, u: jax.Array) -> jax.Array:
        return jnp.repeat(jnp.repeat(u, self.bh, axis=-2), self.bw, axis=-1)


# ---------------------------------------------------------------------------------------
# Static plan of one prune call (hashable: it is a static argument of the jitted core).

_ROW = 1008  # entries per row of the packed layout; < 1024 so 3 counters fit in 10-bit fields


@dataclasses.dataclass(frozen=True)
class _Plan:
    kind: str  # "global" | "layerwise" | "erk" | "rates"
    groups: tuple[int, ...]  # group id of each prunable leaf (groups are contiguous)
    n_groups: int
    sizes: tuple[int, ...]  # units (entries or blocks) per prunable leaf
    erk: _Erk | None  # ERK allocation (kind "erk" only)
    block: Block | None

    @functools.cached_property
    def rows(self) -> tuple[int, ...]:
        return tuple(-(-n // _ROW) for n in self.sizes)

    @functools.cached_property
    def row_leaf(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.sizes)), self.rows).astype(np.int32)

    @functools.cached_property
    def row_group(self) -> np.ndarray:
        return np.asarray(self.groups, np.int32)[self.row_leaf]

    @functools.cached_property
    def group_sizes(self) -> np.ndarray:
        return np.bincount(self.groups, weights=self.sizes, minlength=self.n_groups).astype(
            np.int64
        )


_POS_INF = np.uint32(0xFF800000)  # key of +inf
_NEG_INF = np.uint32(0x007FFFFF)  # key of -inf


def _pack(plan: _Plan, keys: list[jax.Array]) -> jax.Array:
    """All leaves' keys as one ``(rows, _ROW)`` array; each leaf padded (key 0) to whole rows."""
    parts = [
        jnp.pad(k.reshape(-1), (0, r * _ROW - k.size)) for k, r in zip(keys, plan.rows, strict=True)
    ]
    return jnp.concatenate(parts).reshape(-1, _ROW)


def _unpack(plan: _Plan, packed: jax.Array, shapes: list[tuple[int, ...]]) -> list[jax.Array]:
    out, row = [], 0
    for n, r, shape in zip(plan.sizes, plan.rows, shapes, strict=True):
        out.append(packed[row : row + r].reshape(-1)[:n].reshape(shape))
        row += r
    return out


def _segment_sums(x: jax.Array, ids: np.ndarray, n: int) -> jax.Array:
    """Sums of ``x`` over the contiguous runs of the sorted static ``ids`` (leading axis).

    A cumsum and differences at the static run ends: constant program size for any number
    of segments (``jax.ops.segment_sum`` gave wrong sums under ``jit(vmap)`` here).
    """
    ends = np.searchsorted(ids, np.arange(n), side="right")  # one past each run
    cs = jnp.cumsum(x, axis=0)
    cs = jnp.concatenate([jnp.zeros_like(cs[:1]), cs], axis=0)
    starts = np.concatenate([[0], ends[:-1]])
    return cs[ends] - cs[starts]


def _mul64(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``x * y`` of uint32 arrays as an exact ``(hi, lo)`` pair of uint32 words."""
    xl, xh = x & 0xFFFF, x >> 16
    yl, yh = y & 0xFFFF, y >> 16
    lo = xl * yl
    mid1, mid2 = xh * yl, xl * yh
    mid = mid1 + mid2
    carry = (mid < mid1).astype(jnp.uint32)  # the middle sum may wrap (by one bit)
    lo2 = lo + (mid << 16)
    hi = xh * yh + (mid >> 16) + (carry << 16) + (lo2 < lo).astype(jnp.uint32)
    return hi, lo2


def _gt64(a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array]) -> jax.Array:
    """``a > b`` for ``(hi, lo)`` uint32 pairs."""
    return (a[0] > b[0]) | ((a[0] == b[0]) & (a[1] > b[1]))


def _divmod64(hi: jax.Array, lo: jax.Array, d: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Low 32 bits of ``(hi, lo) // d`` and the remainder, for uint32 ``0 < d < 2**27``.

    Long division in base 16, most significant digit first: the running remainder stays
    below ``16 * d < 2**31``.
    """

    def digit(i, qr):
        q, r = qr
        off = jnp.uint32(60) - 4 * i.astype(jnp.uint32)
        word = jnp.where(off >= 32, hi >> (off & 31), lo >> (off & 31))
        r = r * 16 + (word & 15)
        return q * 16 + r // d, r % d

    zero = jnp.zeros_like(lo)
    return lax.fori_loop(0, 16, digit, (zero, zero))


_ERK_MAX_WEIGHT = 2**27  # sum over leaves of sum(shape): bound of the exact long division


@dataclasses.dataclass(frozen=True)
class _Erk:
    """Static part of the ERK allocation: units per leaf and weights ``sum(shape)``."""

    sizes: tuple[int, ...]
    weights: tuple[int, ...]

    def __post_init__(self):
        if sum(self.weights) >= _ERK_MAX_WEIGHT:
            raise ValueError(
                f"ERK supports a total of sum(shape) over leaves below 2**27, got "
                f"{sum(self.weights)}"
            )

    @functools.cached_property
    def order(self) -> np.ndarray:
        """Leaves by density factor ``weight / size``, largest first (ties: lower index).

        The leaves ERK makes dense are always a prefix of this order (the share of a leaf
        is proportional to its weight, so the leaf with the largest factor fills up first).
        """
        w, n = self.weights, self.sizes
        cmp = lambda i, j: (w[j] * n[i] - w[i] * n[j]) or (i - j)  # noqa: E731
        return np.asarray(sorted(range(len(n)), key=functools.cmp_to_key(cmp)), np.int64)


def _erk_kept(erk: _Erk, sparsity: jax.Array) -> jax.Array:
    """Kept units per leaf under ERK at overall ``sparsity`` (int32 ``[leaves]``), exactly.

    The total is the uniform budget ``K = N - num_pruned(sparsity, N)``. With the first ``p``
    leaves of ``erk.order`` dense (``D`` units) the others share ``K - D`` in proportion to
    their weights (``A`` in all): leaf ``l`` gets ``(K - D) * w_l / A``. ``p`` is the smallest
    for which the next leaf's share does not exceed its size (a leaf that would exceed density
    1 is kept dense and the rest re-solved, as in the RigL code). Every free leaf gets the
    floor of its share; the ``R`` units left over (fewer than the free leaves) go one each to
    the free leaves with the largest remainders, ties to the lower leaf index. Exact integer
    arithmetic (64-bit products as pairs of uint32 words), so traced and Python sparsities
    agree and each leaf is within one unit of its share.
    """
    order = erk.order
    n = np.asarray(erk.sizes, np.int64)[order]
    w = np.asarray(erk.weights, np.int64)[order]
    dense = np.concatenate([[0], np.cumsum(n)])  # D_p, p = 0..L
    free = np.concatenate([np.cumsum(w[::-1])[::-1], [0]])  # A_p
    total = int(dense[-1])
    budget = jnp.int32(total) - _num_pruned(sparsity, jnp.int32(total))
    # ok[p]: with p leaves dense, the share of leaf order[p] is at most its size.
    rest = jnp.maximum(budget - jnp.asarray(dense[:-1], jnp.int32), 0).astype(jnp.uint32)
    share = _mul64(rest, jnp.asarray(w, jnp.uint32))
    room = _mul64(jnp.asarray(n, jnp.uint32), jnp.asarray(free[:-1], jnp.uint32))
    ok = jnp.concatenate([~_gt64(share, room), jnp.ones((1,), bool)])
    p = jnp.argmax(ok)
    is_dense = jnp.arange(len(n)) < p
    rest = jnp.maximum(budget - jnp.asarray(dense, jnp.int32)[p], 0).astype(jnp.uint32)
    a = jnp.maximum(jnp.asarray(free, jnp.uint32)[p], 1)  # A_p (0 only when all are dense)
    q, r = _divmod64(*_mul64(rest, jnp.asarray(w, jnp.uint32)), a)
    q = jnp.where(is_dense, 0, q).astype(jnp.int32)
    r = jnp.where(is_dense, 0, r)
    left = rest.astype(jnp.int32) - jnp.sum(q)
    # rank of each free leaf's remainder: larger first, ties to the lower leaf index
    beats = (r[None, :] > r[:, None]) | (
        (r[None, :] == r[:, None]) & (order[None, :] < order[:, None])
    )
    rank = jnp.sum(beats & ~is_dense[None, :], axis=1)
    extra = (~is_dense & (rank < left)).astype(jnp.int32)
    kept = jnp.where(is_dense, jnp.asarray(n, jnp.int32), q + extra)
    return jnp.zeros(len(n), jnp.int32).at[order].set(kept)


_erk_kept_jit = jax.jit(_erk_kept, static_argnums=0)


def erk_kept(shapes: Sequence[Sequence[int]], sparsity: float | jax.Array) -> list[int] | jax.Array:
    """Entries each leaf keeps under the ERK allocation at overall ``sparsity`` (exact).

    What :func:`prune` with ``allocation="erk"`` keeps per prunable leaf (in tree order): the
    total is exactly the uniform budget ``N - num_pruned(sparsity, N)``, each leaf within one
    entry of its Erdos-Renyi-Kernel share (density proportional to ``sum(shape) /
    prod(shape)``, leaves that would exceed density 1 kept dense). The leftover entries after
    rounding every share down go one each to the leaves with the largest remainders (ties: the
    lower leaf index). A Python ``sparsity`` gives a list of ints; a traced or array one an
    int32 array.

    >>> kept = erk_kept([(3, 3, 4, 8), (400, 300), (300, 2)], 0.9)
    >>> kept, sum(kept) == 120888 - num_pruned(0.9, 120888)
    ([288, 11201, 600], True)

    References:
      Evci et al. 2020 (ICML), "Rigging the Lottery" (``get_sparsities_erdos_renyi``).
    """
    shapes = [tuple(int(d) for d in s) for s in shapes]
    for i, s in enumerate(shapes):
        if not s or int(np.prod(s)) == 0:
            raise ValueError(f"erk_kept: leaf {i} has shape {s}; need a non-empty array")
    erk = _Erk(tuple(int(np.prod(s)) for s in shapes), tuple(sum(s) for s in shapes))
    if sum(erk.sizes) >= 2**31:
        raise ValueError(f"erk_kept supports < 2**31 entries, got {sum(erk.sizes)}")
    if not _is_concrete(sparsity):
        return _erk_kept_jit(erk, jnp.asarray(sparsity, jnp.float32))
    _check_fraction(sparsity, "sparsity", upper_open=True)
    kept = _erk_kept_host(erk, float(np.asarray(sparsity)))
    return jnp.asarray(kept, jnp.int32) if isinstance(sparsity, jax.Array) else kept


def _erk_kept_host(erk: _Erk, sparsity: float) -> list[int]:
    """:func:`_erk_kept` for a concrete sparsity, in Python integers (no compilation)."""
    order = [int(i) for i in erk.order]
    n = [erk.sizes[i] for i in order]
    w = [erk.weights[i] for i in order]
    budget = sum(n) - num_pruned(sparsity, sum(n))
    p, dense, free = 0, 0, sum(w)
    while p < len(n) and max(budget - dense, 0) * w[p] > n[p] * free:
        dense, free, p = dense + n[p], free - w[p], p + 1
    rest = max(budget - dense, 0)
    qr = [divmod(rest * w[j], max(free, 1)) for j in range(p, len(n))]
    left = rest - sum(q for q, _ in qr)
    ranked = sorted(range(len(qr)), key=lambda j: (-qr[j][1], order[p + j]))
    bonus = set(ranked[:left])
    kept = n[:p] + [q + (j in bonus) for j, (q, _) in enumerate(qr)]
    out = [0] * len(n)
    for i, c in zip(order, kept, strict=True):
        out[i] = c
    return out


@functools.partial(jax.jit, static_argnames=("plan",))
def _core(plan: _Plan, scores, masks, sparsity, rates):
    """(new unit masks, diagnostics) for lists of prunable score and mask leaves."""
    if plan.block is not None:
        scores = [
            plan.block.to_units(jnp.where(m, s.astype(jnp.float32), 0.0), jnp.sum)
            for s, m in zip(scores, masks, strict=True)
        ]
        masks = [plan.block.to_units(m, jnp.any) for m in masks]
    shapes = [m.shape for m in masks]
    keys = _pack(plan, [ordered_keys(s, m) for s, m in zip(scores, masks, strict=True)])
    n_leaves = len(plan.sizes)

    # One pass: kept, NaN and +-inf counts per leaf, packed in 10-bit fields (rows < 1024).
    inf = (keys == _POS_INF) | (keys == _NEG_INF)
    packed = (keys >= 1).astype(jnp.int32) + ((keys == 1).astype(jnp.int32) << 10)
    packed = packed + (inf.astype(jnp.int32) << 20)
    rows = jnp.sum(packed, axis=1, dtype=jnp.int32)
    rows = jnp.stack([(rows >> (10 * j)) & 1023 for j in range(3)], axis=1)
    kept, n_nan, n_inf = _segment_sums(rows, plan.row_leaf, n_leaves).T
    diag = {"nan": n_nan, "inf": n_inf}
    g_ids = np.asarray(plan.groups)
    g_kept = _segment_sums(kept, g_ids, plan.n_groups)
    if plan.kind == "rates":
        target_keep = kept - _num_pruned(rates, kept)
    elif plan.kind == "remaining":
        target_keep = g_kept - _num_pruned(sparsity, g_kept)
    else:
        if plan.kind == "erk":
            target_keep = _erk_kept(plan.erk, sparsity)
        else:
            group_sp = jnp.broadcast_to(sparsity, (plan.n_groups,))
            g_sizes = jnp.asarray(plan.group_sizes, jnp.int32)
            target_keep = g_sizes - _num_pruned(group_sp, g_sizes)
    diag["target_keep"], diag["kept"] = target_keep, g_kept
    k = jnp.minimum(target_keep, g_kept)  # traced targets below current prune nothing more
    return _unpack(plan, _select(plan, keys, k), shapes), diag


def _count3(plan: _Plan, x: jax.Array, thresholds: jax.Array, valid=None) -> jax.Array:
    """Per group, ``#(x >= thresholds[g, j])`` for j = 0, 1, 2 in ONE pass over ``x``.

    ``x`` is ``(rows, _ROW)``; each row's three 0/1 indicators are packed in 10-bit fields
    of one int32 (a row has < 1024 entries), summed per row, unpacked, summed per group.
    """
    t = thresholds[plan.row_group]  # (rows, 3)
    packed = sum(
        (x >= t[:, j : j + 1]).astype(jnp.int32) << (10 * j) for j in range(3)
    )
    if valid is not None:
        packed = jnp.where(valid, packed, 0)
    rows = jnp.sum(packed, axis=1, dtype=jnp.int32)
    rows = jnp.stack([(rows >> (10 * j)) & 1023 for j in range(3)], axis=1)
    return _segment_sums(rows, plan.row_group, plan.n_groups)


def _select(plan: _Plan, keys: jax.Array, k: jax.Array) -> jax.Array:
    """Exact top-``k[g]`` keys of each group; ties by lower group-local flat index."""
    g = plan.row_group
    # k-th largest key per group, 2 bits per pass: t = max{c : #(key >= c) >= k}.
    def key_round(i, t):
        shift = jnp.asarray(30 - 2 * i, jnp.uint32)
        cand = t[:, None] | (jnp.arange(1, 4, dtype=jnp.uint32)[None, :] << shift)
        digit = jnp.sum(_count3(plan, keys, cand) >= k[:, None], axis=1)
        return t | (digit.astype(jnp.uint32) << shift)

    t = lax.fori_loop(0, 16, key_round, jnp.zeros((plan.n_groups,), jnp.uint32))
    t_rows = t[g][:, None]
    # (comparisons are recomputed where needed, so no full-size bool array is materialised)
    packed = (keys > t_rows).astype(jnp.int32) + ((keys == t_rows).astype(jnp.int32) << 10)
    rows = jnp.sum(packed, axis=1)
    rows = jnp.stack([rows & 1023, rows >> 10], axis=1)
    n_above, n_tie = _segment_sums(rows, g, plan.n_groups).T
    r = k - n_above  # how many of the ties are kept: those with the lowest flat indices

    # Ties are resolved from the per-row tie counts: rows of a group are in flat order, so
    # the kept ties fill whole rows up to row R[g], then the first columns of row R[g] up to
    # C[g]. Only that one row per group is looked at entry by entry (no sort, no full cumsum).
    tie_rows = rows[:, 1]
    cs = jnp.cumsum(tie_rows)  # inclusive, over all rows
    first = np.searchsorted(g, np.arange(plan.n_groups))  # first row of each group
    before_group = (cs - tie_rows)[first]  # ties in earlier groups
    cs_in = cs - before_group[g]  # inclusive count inside the row's group
    # R[g] = first row of the group whose inclusive count reaches r[g]
    short = (cs_in < r[g]).astype(jnp.int32)
    big_r = jnp.asarray(first, jnp.int32) + _segment_sums(short, g, plan.n_groups)
    big_r = jnp.minimum(big_r, keys.shape[0] - 1)
    need = r - (cs_in - tie_rows)[big_r]  # ties still needed inside row R[g]
    row_ties = keys[big_r] == t[:, None]  # (groups, _ROW)
    row_cs = jnp.cumsum(row_ties.astype(jnp.int32), axis=1)
    # C[g] = column of the need[g]-th tie of row R[g] (-1 when none is needed)
    big_c = jnp.sum((row_cs < need[:, None]).astype(jnp.int32), axis=1)
    big_c = jnp.where(need > 0, big_c, -1)
    row_id = jnp.arange(keys.shape[0], dtype=jnp.int32)[:, None]
    col_id = jnp.arange(_ROW, dtype=jnp.int32)[None, :]
    r_rows, c_rows = big_r[g][:, None], big_c[g][:, None]
    tie_kept = (row_id < r_rows) | ((row_id == r_rows) & (col_id <= c_rows))
    return (keys > t_rows) | ((keys == t_rows) & tie_kept)


# ---------------------------------------------------------------------------------------
# The public entry point.

Scope = Literal["global", "layerwise"]


def _is_concrete(x: Any) -> bool:
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x))


def _check_fraction(value: Any, what: str, upper_open: bool) -> None:
    if not _is_concrete(value):
        return
    arr = np.asarray(value)
    if arr.shape != ():
        raise ValueError(f"{what} must be a scalar, got shape {arr.shape}")
    v = float(arr)
    ok = 0.0 <= v < 1.0 if upper_open else 0.0 <= v <= 1.0
    if not ok:
        interval = "[0, 1)" if upper_open else "[0, 1]"
        raise ValueError(f"{what} must be in {interval}, got {v!r}")


def prune(
    scores: PyTree,
    masks: PyTree,
    *,
    sparsity: float | jax.Array | None = None,
    scope: Scope = "global",
    rates: rules_lib.Rules | None = None,
    allocation: Literal["uniform", "erk"] | None = None,
    structure: Any = None,
    fraction_of_remaining: float | jax.Array | None = None,
) -> PyTree:
    """New masks keeping the top-scoring entries among those still kept (exact counts).

    Exactly one of ``sparsity``, ``rates`` or ``fraction_of_remaining`` is given (none with a
    per-leaf ``structure`` such as :class:`jaxsparse.NM`, which decides the counts itself).
    See the module docstring for the rounding rule, the tie rule and what happens to NaN
    scores.

    Args:
      scores: pytree with the masks' structure; higher = keep. Only the prunable leaves
        (full-shape mask leaves) are read; they must have the mask's shape.
      masks: current masks (bool; scalar ``True`` on non-prunable leaves). Pruned entries stay
        pruned.
      sparsity: target overall sparsity (fraction of prunable entries pruned) after this call,
        in ``[0, 1)``; may be a traced scalar (one per population member under ``vmap``). It
        must not be below the current sparsity (of the group: tree, leaf or ERK leaf).
      scope: ``"global"``: one threshold across all prunable leaves; ``"layerwise"``: every
        prunable leaf pruned to ``sparsity`` on its own.
      rates: path rules ``[(regex or predicate, fraction), ...]``, first match wins: prune that
        fraction of each matching leaf's *remaining* (kept) entries, in ``[0, 1]``; prunable
        leaves no rule matches are not pruned; a rule matching no prunable leaf is an error.
      allocation: distribute a global ``sparsity`` per leaf instead of one threshold:
        ``"uniform"`` (same as ``scope="layerwise"``) or ``"erk"`` (Erdos-Renyi-Kernel:
        density proportional to ``sum(shape) / prod(shape)``, leaves that would exceed density
        1 are kept dense and the rest re-solved; the total kept is exactly the uniform budget
        and each leaf is within one entry of its share, see :func:`erk_kept`).
      fraction_of_remaining: prune this fraction (in ``[0, 1]``) of the entries still kept:
        ``num_pruned(f, kept)`` of them over the whole tree with ``scope="global"`` (one
        threshold; open_lth's global "prune 20% of what is left"), or of each leaf's kept
        entries with ``scope="layerwise"``. Exact at any size, unlike converting it to a
        ``sparsity``. May be traced.
      structure: ``None`` (unstructured), :class:`Block`, or an object with
        ``leaf_mask(score, mask, *, path) -> bool array`` applied per prunable leaf (ANDed
        with the current mask).

    Returns:
      Masks with the structure of ``masks``.

    >>> import jaxsparse as js
    >>> params = {"w": jnp.array([[3.0, -1.0], [0.5, 2.0]]), "b": jnp.ones(2)}
    >>> js.prune(js.scores.magnitude(params), js.ones_like(params), sparsity=0.5)["w"]
    Array([[ True, False],
           [False,  True]], dtype=bool)

    References:
      Evci et al. 2020 (ICML), "Rigging the Lottery" (ERK).
    """
    masks_lib.check_structure(scores, masks, names=("scores", "masks"))
    s_leaves = rules_lib.leaves_with_paths(scores)
    m_leaves = jax.tree_util.tree_leaves(masks)
    paths, ps, pm, idx = [], [], [], []
    for i, ((path, s), m) in enumerate(zip(s_leaves, m_leaves, strict=True)):
        dtype = m.dtype if hasattr(m, "dtype") else np.asarray(m).dtype
        if dtype != np.bool_:
            raise TypeError(f"mask at {path!r} has dtype {dtype}; masks must be bool")
        if not masks_lib.is_prunable(m) or np.size(m) == 0:
            continue
        if np.shape(s) != np.shape(m):
            raise ValueError(
                f"score at {path!r} has shape {np.shape(s)} but its mask has shape {np.shape(m)}"
            )
        if not jnp.issubdtype(jnp.result_type(s), jnp.number) or jnp.iscomplexobj(s):
            raise TypeError(f"score at {path!r} has dtype {jnp.result_type(s)}; need real numbers")
        paths.append(path)
        ps.append(jnp.asarray(s))
        pm.append(jnp.asarray(m))
        idx.append(i)

    leaf_structure = structure is not None and hasattr(structure, "leaf_mask")
    if leaf_structure:
        if sparsity is not None or rates is not None or fraction_of_remaining is not None:
            raise ValueError(
                f"structure {structure!r} decides the counts per leaf; do not also give "
                "sparsity or rates (call prune twice to combine them)"
            )
        new = [
            jnp.logical_and(jnp.asarray(structure.leaf_mask(s, m, path=p), bool), m)
            for p, s, m in zip(paths, ps, pm, strict=True)
        ]
        return _rebuild(masks, m_leaves, idx, new)

    given = [k for k, v in (("sparsity", sparsity), ("rates", rates),
                            ("fraction_of_remaining", fraction_of_remaining)) if v is not None]
    if len(given) != 1:
        raise ValueError(
            "give exactly one of sparsity= (a target), rates= (per-leaf rules) or "
            f"fraction_of_remaining= (one fraction of what is still kept); got {given or 'none'}"
        )
    if scope not in ("global", "layerwise"):
        raise ValueError(f"scope must be 'global' or 'layerwise', got {scope!r}")
    if allocation not in (None, "uniform", "erk"):
        raise ValueError(f"allocation must be None, 'uniform' or 'erk', got {allocation!r}")
    if structure is not None and not isinstance(structure, Block):
        raise TypeError(
            f"structure must be None, a Block, or have a leaf_mask method; got {structure!r}"
        )
    if not paths:
        return masks

    block = structure
    shapes = [tuple(m.shape) for m in pm]
    if block is not None:
        for p, shp in zip(paths, shapes, strict=True):
            block._check(p, shp)
    unit_sizes = tuple(
        int(np.prod(shp)) // (block.bh * block.bw if block else 1) for shp in shapes
    )
    if max(sum(unit_sizes), max(unit_sizes)) >= 2**31:
        raise ValueError(f"prune supports < 2**31 entries per call, got {sum(unit_sizes)}")
    n = len(paths)
    rate_values = jnp.zeros((n,), jnp.float32)
    if rates is not None:
        if allocation is not None:
            raise ValueError("rates= and allocation= cannot be combined")
        kind, groups = "rates", tuple(range(n))
        rate_values = _resolve_rates(rates, paths, ps)
        sp = jnp.zeros((), jnp.float32)
    elif fraction_of_remaining is not None:
        if allocation is not None:
            raise ValueError("fraction_of_remaining= and allocation= cannot be combined")
        _check_fraction(fraction_of_remaining, "fraction_of_remaining", upper_open=False)
        sp = jnp.asarray(fraction_of_remaining, jnp.float32)
        kind = "remaining"
        groups = tuple(range(n)) if scope == "layerwise" else (0,) * n
    else:
        _check_fraction(sparsity, "sparsity", upper_open=True)
        sp = jnp.asarray(sparsity, jnp.float32)
        if allocation == "erk":
            kind, groups = "erk", tuple(range(n))
        elif allocation == "uniform" or scope == "layerwise":
            kind, groups = "layerwise", tuple(range(n))
        else:
            kind, groups = "global", (0,) * n
    plan = _Plan(
        kind=kind,
        groups=groups,
        n_groups=max(groups) + 1,
        sizes=unit_sizes,
        erk=_Erk(unit_sizes, tuple(int(sum(shp)) for shp in shapes)) if kind == "erk" else None,
        block=block,
    )
    new, diag = _core(plan, ps, pm, sp, rate_values)
    if _is_concrete(diag):
        _raise_on_bad(diag, plan, paths, shapes, kind)
    if block is not None:
        new = [jnp.logical_and(block.from_units(u), m) for u, m in zip(new, pm, strict=True)]
    return _rebuild(masks, m_leaves, idx, new)


def _resolve_rates(rates: rules_lib.Rules, paths: list[str], leaves: list[jax.Array]):
    rule_list = rules_lib.check_rules(rates, "rates")
    used = [False] * len(rule_list)
    values = []
    for path, leaf in zip(paths, leaves, strict=True):
        i = rules_lib.match_index(rule_list, path, leaf)
        if i is None:
            values.append(0.0)
            continue
        used[i] = True
        value = rule_list[i][1]
        what = f"rate for leaf {path!r} (rule {rule_list[i][0]!r})"
        if _is_concrete(value) and np.shape(value) == () and float(value) > 1.0:
            raise ValueError(
                f"{what} is {float(value)}: a rate is the fraction of the leaf's remaining "
                "entries to remove, so more than 1 would prune more than are left"
            )
        _check_fraction(value, what, upper_open=False)
        values.append(value)
    unused = [rule_list[i][0] for i, u in enumerate(used) if not u]
    if unused:
        raise ValueError(
            f"rates: pattern(s) {unused!r} match no prunable leaf (first match wins; earlier "
            f"rules may shadow them); prunable leaf paths are {paths!r}"
        )
    return jnp.stack([jnp.asarray(v, jnp.float32).reshape(()) for v in values])


def _raise_on_bad(diag, plan: _Plan, paths, shapes, kind: str) -> None:
    unit = "block score(s)" if plan.block is not None else "score(s)"
    for i in range(len(paths)):
        counts = {k: int(np.asarray(diag[k])[i]) for k in ("nan", "inf")}
        if any(counts.values()):
            found = ", ".join(f"{c} x {v}" for v, c in counts.items() if c)
            raise ValueError(
                f"scores at {paths[i]!r} (shape {shapes[i]}) have non-finite {unit} on kept "
                f"entries ({found}); scores must be finite"
            )
    target, kept = np.asarray(diag["target_keep"]), np.asarray(diag["kept"])
    for g in np.flatnonzero(target > kept):
        members = [paths[i] for i in range(len(paths)) if plan.groups[i] == g]
        where = "the tree" if plan.n_groups == 1 and len(paths) > 1 else repr(members[0])
        unit = "blocks" if plan.block is not None else "entries"
        size = sum(plan.sizes[i] for i in range(len(paths)) if plan.groups[i] == g)
        raise ValueError(
            f"target sparsity for {where} keeps {int(target[g])} of {size} {unit}, but only "
            f"{int(kept[g])} are still kept (current sparsity {1 - kept[g] / size:.6f}); "
            "pruned entries are never revived, so the target must not be below the current "
            "sparsity"
        )


def _rebuild(masks: PyTree, m_leaves: list, idx: list[int], new: Sequence[jax.Array]) -> PyTree:
    out = list(m_leaves)
    for i, m in zip(idx, new, strict=True):
        out[i] = m
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(masks), out)


# ---------------------------------------------------------------------------------------
# Helpers on one array and on counts.


def num_kept(sparsity: float | jax.Array, n: int) -> int | jax.Array:
    """Entries kept out of ``n`` at ``sparsity``: ``n - num_pruned(sparsity, n)``.

    The rounding rule of :func:`num_pruned`: the nearest integer to ``(1 - sparsity) * n``,
    exact halves keeping FEWER (pruning more), e.g. ``num_kept(0.5, 3) == 1``. A Python float
    gives a Python int (checked to be in ``[0, 1]``), a traced sparsity an int32 array with the
    same value (one sparsity per population member under ``vmap``).

    >>> num_kept(0.5, 3), num_kept(0.7, 10), num_kept(0.3, 5)
    (1, 3, 3)
    """
    if isinstance(sparsity, int | float):
        if not 0.0 <= sparsity <= 1.0:
            raise ValueError(f"sparsity (fraction pruned) must be in [0, 1], got {sparsity}")
        # Evaluated eagerly even while tracing: the count must stay a static Python int.
        with jax.ensure_compile_time_eval():
            return int(n) - num_pruned(float(sparsity), n)
    s = jnp.clip(jnp.asarray(sparsity, jnp.float32), 0.0, 1.0)
    return (n - num_pruned(s, jnp.asarray(n, jnp.int32))).astype(jnp.int32)


def topk_mask(values: jax.Array, sparsity: float | jax.Array) -> jax.Array:
    """Bool mask keeping exactly ``num_kept(sparsity, values.size)`` largest entries.

    :func:`prune` on one array (``values.ndim >= 1``): selection by value (not absolute
    value), ties broken toward the lower flat (row-major) index, ``-0.0 == 0.0``, sort-free.
    ``sparsity`` (fraction PRUNED, in ``[0, 1]``; ``1`` keeps nothing) may be traced.

    >>> topk_mask(jnp.array([1.0, 3.0, 3.0, 2.0]), 0.5)
    Array([False,  True,  True, False], dtype=bool)
    """
    values = jnp.asarray(values)
    ones = jnp.ones(values.shape, bool)
    if isinstance(sparsity, int | float):
        num_kept(sparsity, 1)  # range check
        if sparsity == 1.0:
            return ~ones  # sparsity 1 is outside prune's range
        return prune({"v": values}, {"v": ones}, sparsity=float(sparsity),
                     scope="layerwise")["v"]
    s = jnp.asarray(sparsity, jnp.float32)
    everything = s >= 1.0
    m = prune({"v": values}, {"v": ones}, sparsity=jnp.where(everything, 0.0, s),
              scope="layerwise")["v"]
    return m & ~everything


def random_masks_like(masks: Masks, *, key: Key) -> Masks:
    """Random masks with exactly the per-leaf kept counts of ``masks``.

    The control "random pruning with the same layer-wise density" of Frankle & Carbin 2019:
    each prunable leaf keeps the same number of entries, chosen uniformly at random over the
    whole leaf. Works with traced masks (rank trick, no data-dependent shapes).

    >>> m = {"w": jnp.array([True, True, False, False])}
    >>> int(random_masks_like(m, key=jax.random.key(0))["w"].sum())
    2
    """
    out = []
    for i, m in enumerate(jax.tree_util.tree_leaves(masks)):
        if not masks_lib.is_prunable(m):
            out.append(m)
            continue
        flat = m.reshape(-1)
        k = jnp.sum(flat, dtype=jnp.int32)
        u = jax.random.uniform(jax.random.fold_in(key, i), flat.shape)
        rank = jnp.argsort(jnp.argsort(u))  # a uniformly random permutation of 0..n-1
        out.append((rank < k).reshape(m.shape))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(masks), out)


__all__ = ["Block", "Scope", "erk_kept", "keep_top", "num_kept", "num_pruned", "ordered_keys",
           "prune", "random_masks_like", "top_along", "topk_mask"]
