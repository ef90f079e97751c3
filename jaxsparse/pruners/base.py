"""The pruner contract: optax-shaped pairs of pure functions, schedules, ``chain``, top-k.

A pruning algorithm is a :class:`Pruner`, ``init(params, masks) -> state`` and
``update(masks, state, params, *, grads, step, key) -> (masks, state)``, with a
``<Algo>State(NamedTuple)`` that holds a ``count`` (number of mask updates done). Both are
pure: jit them, vmap them over a population, checkpoint the state.

The trainer (:func:`jaxsparse.train.make_step`) calls ``update`` at the start of every
iteration ``step`` (0-based: ``step`` updates have been done) with the params before that
update and the *dense* gradient of the iteration's batch at those params (pruned entries
included: what RigL grows by). The masks it returns are in force for that update: the
trainer zeroes the dropped params, resets the optimizer moments of every changed entry, and
updates only the entries kept both before and after (a grown weight starts the next
iteration at exactly 0 with zero moments). ``due(step)`` says whether ``update`` can change
the masks at ``step``: the trainer runs ``update`` under ``lax.cond(due(step), ...)`` on the
step clock shared by a population (a plain Python/``jnp`` function of the step; ``None``:
every step), so a step that prunes nothing costs nothing. Every ``update`` here also checks
its own schedule, so calling it on a step that is not due returns the masks unchanged.

:func:`keep_top` is the exact, sort-free top-k by *count* that the pruners select with (the
drop and grow of SET / RigL, every step of GMP); :func:`jaxsparse.prune` is the selection
by *fraction* (one-shot pruning).

>>> p = chain(static(), static())
>>> masks = {"w": jnp.ones((2, 2), bool)}
>>> state = p.init({"w": jnp.ones((2, 2))}, masks)
>>> new, state = p.update(masks, state, {"w": jnp.ones((2, 2))}, grads=None,
...                       step=jnp.int32(0), key=jax.random.key(0))
>>> bool(new["w"].all()), bool(p.due(jnp.int32(5)))
(True, False)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsparse import masks as masks_lib
from jaxsparse import rules as rules_lib
from jaxsparse.typing import PyTree

Schedule = Callable[[jax.Array], jax.Array]


class Pruner(NamedTuple):
    """A pruning algorithm as pure functions (see the module docstring).

    Attributes:
      init: ``init(params, masks) -> state``.
      update: ``update(masks, state, params, *, grads, step, key) -> (masks, state)``.
      due: ``due(step) -> bool scalar``: can ``update`` change the masks at ``step``?
        ``None`` means every step.
    """

    init: Callable[[PyTree, PyTree], NamedTuple]
    update: Callable[..., tuple[PyTree, NamedTuple]]
    due: Callable[[jax.Array], jax.Array] | None = None


class ChainState(NamedTuple):
    """State of :func:`chain`: one inner state per pruner, in order."""

    count: jax.Array
    inner: tuple


def never(step: jax.Array) -> jax.Array:
    """A ``due`` that is never true (a static mask)."""
    return jnp.zeros((), bool) & (jnp.asarray(step) < 0)


def at_step(at: int) -> Schedule:
    """``due`` true at iteration ``at`` only."""
    return lambda step: jnp.asarray(step) == at


def every(frequency: int, *, begin: int = 0, end: int | None = None) -> Schedule:
    """``due`` true at ``begin, begin + frequency, ...`` up to ``end`` (inclusive).

    >>> due = every(10, begin=5, end=30)
    >>> [int(s) for s in range(40) if due(s)]
    [5, 15, 25]
    """
    check_schedule("every", begin=begin, end=end, frequency=frequency)

    def due(step):
        step = jnp.asarray(step)
        ok = (step >= begin) & ((step - begin) % frequency == 0)
        return ok if end is None else ok & (step <= end)

    return due


def chain(*pruners: Pruner) -> Pruner:
    """Runs pruners one after another on the same step: each sees the masks of the last.

    ``due`` is true when any inner pruner's is; each inner ``update`` runs only on its own
    due steps (the others return the masks unchanged). Inner pruner ``i`` gets the key
    ``fold_in(key, i)``.

    >>> from jaxsparse import pruners
    >>> p = chain(pruners.one_shot(step=0, sparsity=0.5), pruners.one_shot(step=3, sparsity=0.75))
    >>> [int(s) for s in range(6) if p.due(s)]
    [0, 3]
    """
    pruners = tuple(pruners)
    if not pruners:
        raise ValueError("chain needs at least one pruner")
    for i, p in enumerate(pruners):
        if not isinstance(p, Pruner):
            raise TypeError(f"chain: argument {i} is a {type(p).__name__}, not a Pruner")

    def init(params, masks):
        return ChainState(jnp.zeros((), jnp.int32), tuple(p.init(params, masks) for p in pruners))

    def update(masks, state, params, *, grads, step, key):
        if not isinstance(state, ChainState) or len(state.inner) != len(pruners):
            raise ValueError(
                f"chain: expected the ChainState of {len(pruners)} pruners (from this chain's "
                f"init), got {_describe(state)}"
            )
        inner = []
        for i, (p, s) in enumerate(zip(pruners, state.inner, strict=True)):
            k = jax.random.fold_in(key, i)
            if p.due is None:
                masks, s = p.update(masks, s, params, grads=grads, step=step, key=k)
            else:
                masks, s = cond(
                    p.due(step),
                    lambda m, s, p=p, k=k: p.update(m, s, params, grads=grads, step=step, key=k),
                    lambda m, s: (m, s),
                    masks, s)
            inner.append(s)
        return masks, ChainState(state.count + 1, tuple(inner))

    dues = [p.due for p in pruners]
    if any(d is None for d in dues):
        due = None
    else:
        def due(step):
            out = dues[0](step)
            for d in dues[1:]:
                out = out | d(step)
            return out

    return Pruner(init, update, due)


class StaticState(NamedTuple):
    """State of :func:`static`."""

    count: jax.Array


def static() -> Pruner:
    """Masks that never change (the masks given to the trainer; e.g. random ERK at init).

    See :func:`jaxsparse.pruners.random_erk` for random ERK masks to start from.
    """

    def init(params, masks):
        check_masks("static", params, masks)
        return StaticState(jnp.zeros((), jnp.int32))

    def update(masks, state, params, *, grads, step, key):
        del params, grads, step, key
        if not isinstance(state, StaticState):
            raise ValueError(f"static: expected a StaticState, got {_describe(state)}")
        return masks, state

    return Pruner(init, update, never)


def cond(pred: Any, true_fn: Callable, false_fn: Callable, *operands: Any) -> Any:
    """``lax.cond``, or a plain Python branch when ``pred`` is concrete (eager calls then
    compile nothing extra and run only the branch taken)."""
    if isinstance(pred, jax.core.Tracer):
        return lax.cond(pred, true_fn, false_fn, *operands)
    return true_fn(*operands) if bool(pred) else false_fn(*operands)


# ---------------------------------------------------------------------------------------
# Argument and state checks shared by the pruners.


def check_schedule(name: str, *, begin: int, end: int | None, frequency: int) -> None:
    """Clear errors for a schedule that cannot run (names the pruner and the values)."""
    if frequency is None or isinstance(frequency, bool) or int(frequency) != frequency \
            or int(frequency) < 1:
        raise ValueError(f"{name}: frequency must be an integer >= 1, got {frequency!r}")
    if int(begin) != begin or int(begin) < 0:
        raise ValueError(f"{name}: begin_step must be an integer >= 0, got {begin!r}")
    if end is not None and int(end) < int(begin):
        raise ValueError(f"{name}: end_step ({end}) is before begin_step ({begin})")


def check_sparsity(name: str, value: Any, what: str = "sparsity") -> None:
    """A sparsity must be a number in ``[0, 1)`` (the error names the pruner and value)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: {what} must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name}: {what} must be in [0, 1), got {value!r}")


def check_masks(name: str, params: PyTree, masks: PyTree) -> None:
    """:func:`jaxsparse.masks.validate` with the pruner's name in front of the error."""
    try:
        masks_lib.validate(params, masks)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{name}: {e}") from None


def prunable_sizes(masks: PyTree) -> np.ndarray:
    """Entries of each prunable leaf of ``masks`` (static), the fingerprint of a model."""
    return np.asarray([int(np.size(m)) for m in jax.tree_util.tree_leaves(masks)
                       if masks_lib.is_prunable(m)], np.int32)


def check_state(name: str, state: Any, cls: type, masks: PyTree) -> None:
    """Errors unless ``state`` is a ``cls`` made by ``init`` for a model like ``masks``.

    Pruner states that depend on the model carry ``leaf_sizes`` (entries of each prunable
    leaf at ``init``): the number of leaves is checked always (it is static), the sizes
    where they are concrete.
    """
    if not isinstance(state, cls):
        raise ValueError(
            f"{name}: expected a {cls.__name__} (from this pruner's init), got {_describe(state)}"
        )
    sizes = prunable_sizes(masks)
    got = state.leaf_sizes
    if np.shape(got) != sizes.shape:
        n_got = np.shape(got)[-1] if np.ndim(got) else 0
        raise ValueError(
            f"{name}: the state was made for a model with {n_got} prunable leaves, but these "
            f"masks have {sizes.size} (a pruner state from another model? call init with this "
            "model's params and masks)"
        )
    if not isinstance(got, jax.core.Tracer):
        got = np.asarray(got)
        paths = masks_lib.prunable_paths(masks)
        for path, a, b in zip(paths, got, sizes, strict=True):
            if a != b:
                raise ValueError(
                    f"{name}: the state was made for a model whose leaf {path!r} has {int(a)} "
                    f"entries, but it has {int(b)} here (a pruner state from another model?)"
                )


def _describe(state: Any) -> str:
    return type(state).__name__ if isinstance(state, tuple) else repr(state)


def prunable(tree: PyTree, masks: PyTree) -> list[Any]:
    """The leaves of ``tree`` at the prunable leaves of ``masks``, in tree order."""
    return [x for x, m in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(masks),
                              strict=True) if masks_lib.is_prunable(m)]


def replace_prunable(masks: PyTree, new: Sequence[jax.Array]) -> PyTree:
    """``masks`` with its prunable leaves replaced by ``new`` (in tree order)."""
    leaves, treedef = jax.tree_util.tree_flatten(masks)
    it = iter(new)
    out = [next(it) if masks_lib.is_prunable(m) else m for m in leaves]
    return jax.tree_util.tree_unflatten(treedef, out)


def leaf_paths(masks: PyTree) -> list[str]:
    """Paths of the prunable leaves (for error messages)."""
    return [p for p, m in rules_lib.leaves_with_paths(masks) if masks_lib.is_prunable(m)]


# ---------------------------------------------------------------------------------------
# Exact top-k by count, sort-free.
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


def _keys(score: jax.Array, cand: jax.Array) -> jax.Array:
    """Order-preserving uint32 keys: non-candidates 0, NaN 1, numbers above (-0.0 == 0.0)."""
    s = jnp.asarray(score).astype(jnp.float32)
    s = jnp.where(s == 0, jnp.zeros((), jnp.float32), s)
    b = lax.bitcast_convert_type(s, jnp.uint32)
    k = jnp.where(b >> 31 == 1, ~b, b | jnp.uint32(0x80000000))
    k = jnp.where(jnp.isnan(s), jnp.uint32(1), k)
    return jnp.where(cand, k, jnp.uint32(0))


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
        k = _keys(s, c).reshape(-1)
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
