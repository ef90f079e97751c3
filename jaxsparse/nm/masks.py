"""N:M masks along the reduction axis: one array, one tree, and the ``NM`` structure for ``prune``.

Every group of ``m`` consecutive entries along a kernel's reduction axis
(:func:`jaxsparse.nm.reduction_axis`) keeps ``n``. :class:`NM` plugs into
:func:`jaxsparse.prune` as ``structure=NM(2, 4)``.

Selection rule (exact): in each group of ``m`` along the axis, keep the ``n`` largest
magnitudes (or scores). **Ties: the lower index wins.** NaN ranks below every number. The
rank of each element inside its group is computed by ``m - 1`` pairwise comparisons — no sort,
no ``top_k`` — so the whole mask is one fused elementwise pass (see ``benchmarks/bench_nm.py``).

References:
  Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks" (NVIDIA 2:4, ASP).
  Zhou et al. 2021 (ICLR), "Learning N:M Fine-grained Structured Sparse Neural Networks From
  Scratch".
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse import masks as masks_lib
from jaxsparse import rules as rules_lib
from jaxsparse.nm.axes import AxisRules, reduction_axis
from jaxsparse.typing import Masks, Params


def check_nm(n: int, m: int) -> None:
    """Raises unless ``n`` and ``m`` are Python (or NumPy) ints with ``0 < n < m``.

    >>> check_nm(2, 4)
    >>> check_nm(4, 4)
    Traceback (most recent call last):
    ValueError: N:M needs 0 < n < m, got n=4, m=4
    """
    if not (isinstance(n, int | np.integer) and isinstance(m, int | np.integer)):
        raise TypeError(f"N:M needs Python ints, got n={n!r}, m={m!r}")
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < n < m, got n={n}, m={m}")


def group_keep(
    key: jax.Array, n: int, m: int, axis: int, valid: jax.Array | None = None
) -> jax.Array:
    """Bool mask keeping the ``n`` highest ``key`` per group of ``m`` along ``axis`` (sort-free).

    The building block of every N:M selection (:func:`nm_keep`, compression, permutation
    search); it checks nothing, so callers validate ``n``, ``m`` and shapes first.

    Args:
      key: a real array with ``key.shape[axis] % m == 0``; NaN must already be replaced.
      n, m: keep ``n`` of every ``m`` (static ints).
      axis: the non-negative grouping axis.
      valid: optional bool array of ``key``'s shape; valid entries outrank invalid ones.

    Returns:
      A bool array of ``key.shape`` with exactly ``n`` kept per group. The order is
      lexicographic in ``(valid, key, -index)``: valid entries first, then larger key, then
      lower index. The rank of element ``i`` is the number of group members that beat it:
      ``j < i`` beats it when ``key_j >= key_i``, ``j > i`` when ``key_j > key_i`` — a strict
      total order, so exactly ``n`` entries have rank ``< n``.

    >>> group_keep(jnp.array([1, 3, 3, 0]), 2, 4, 0)
    Array([False,  True,  True, False], dtype=bool)
    """
    shape = key.shape
    split = shape[:axis] + (shape[axis] // m, m) + shape[axis + 1 :]
    k = key.reshape(split)
    v = None if valid is None else valid.reshape(split)
    rank_dtype = jnp.int8 if m < 128 else jnp.int32

    def beats(kj, ki, j_lt_i, vj=None, vi=None):
        b = jnp.where(j_lt_i, kj >= ki, kj > ki)
        if vj is not None:
            b = (vj & ~vi) | ((vj == vi) & b)
        return b

    if axis < len(shape) - 1:
        # Groups run along a non-minor axis (Dense (in, out) axis 0, conv C_in): broadcast
        # element i against member j on a new axis and count; XLA fuses this into one loop
        # that vectorises over the minor axis.
        ki, kj = jnp.expand_dims(k, axis + 2), jnp.expand_dims(k, axis + 1)
        tri = np.tril(np.ones((m, m), bool), -1).reshape((m, m) + (1,) * (len(shape) - axis - 1))
        vi = vj = None
        if v is not None:
            vi, vj = jnp.expand_dims(v, axis + 2), jnp.expand_dims(v, axis + 1)
        rank = jnp.sum(beats(kj, ki, tri, vj, vi), axis=axis + 2, dtype=rank_dtype)
        return (rank < n).reshape(shape)
    # Groups along the minor axis: per-member planes (strided reads), stacked back.
    ks = [k[..., j] for j in range(m)]
    vs = None if v is None else [v[..., j] for j in range(m)]
    kept = []
    for i in range(m):
        rank = jnp.zeros(ks[i].shape, rank_dtype)
        for j in range(m):
            if j != i:
                b = beats(ks[j], ks[i], j < i, *((vs[j], vs[i]) if vs else ()))
                rank = rank + b.astype(rank_dtype)
        kept.append(rank < n)
    return jnp.stack(kept, axis=-1).reshape(shape)


def _rank_key(x: jax.Array, *, magnitude: bool) -> jax.Array:
    x = jnp.asarray(x)
    if magnitude:
        x = jnp.abs(x)
    if jnp.issubdtype(x.dtype, jnp.floating):
        x = jnp.where(jnp.isnan(x), jnp.array(-jnp.inf, x.dtype), x)
    return x


def _pad_axis(x: jax.Array, axis: int, m: int, value) -> tuple[jax.Array, int]:
    size = x.shape[axis]
    extra = (-size) % m
    if extra == 0:
        return x, size
    pads = [(0, 0)] * x.ndim
    pads[axis] = (0, extra)
    return jnp.pad(x, pads, constant_values=value), size


def _check_divisible(path: str, shape: Sequence[int], axis: int, m: int, pad: bool) -> None:
    if shape[axis] % m and not pad:
        raise ValueError(
            f"N:M at {path!r}: dimension {axis} of shape {tuple(shape)} has size "
            f"{shape[axis]}, not divisible by m={m} (pass pad=True to treat the tail as "
            "zero-padded, or exclude the leaf with a rule)"
        )


def nm_keep(
    scores: jax.Array,
    n: int,
    m: int,
    *,
    axis: int,
    valid: jax.Array | None = None,
    pad: bool = False,
    path: str = "<array>",
    magnitude: bool = False,
) -> jax.Array:
    """Bool mask keeping the ``n`` highest ``scores`` in each group of ``m`` along ``axis``.

    Args:
      scores: any real array; higher = keep. NaN ranks lowest.
      n, m: keep ``n`` of every ``m`` (``0 < n < m``).
      axis: the grouping axis.
      valid: optional bool array; valid entries always outrank invalid ones (used to pick
        among the entries an existing mask still keeps). The result is *not* ANDed with it.
      pad: if the axis length is not a multiple of ``m``, pad the tail group with virtual
        entries that always lose (so the tail group of ``r < m`` keeps ``min(n, r)``);
        otherwise raise an error naming ``path`` and the shape.
      path: used in error messages.
      magnitude: rank ``|scores|`` instead of ``scores``.

    Returns:
      A bool array of ``scores.shape``: exactly ``n`` per full group; ties -> lower index.

    >>> nm_keep(jnp.array([0.5, 2.0, -3.0, 1.0]), 2, 4, axis=0)
    Array([False,  True, False,  True], dtype=bool)
    """
    check_nm(n, m)
    scores = jnp.asarray(scores)
    if scores.ndim == 0:
        raise ValueError(f"N:M at {path!r}: scalar leaf cannot be grouped")
    if not -scores.ndim <= axis < scores.ndim:
        raise ValueError(f"N:M at {path!r}: axis {axis} out of range for shape {scores.shape}")
    axis %= scores.ndim
    _check_divisible(path, scores.shape, axis, m, pad)
    if valid is not None:
        masks_lib.validate_leaf(path, scores, valid, where="N:M")
        if np.shape(valid) != scores.shape:
            raise ValueError(
                f"N:M at {path!r}: mask shape {np.shape(valid)} != score shape {scores.shape}"
            )
    return _nm_keep_jit(scores, valid, n, m, axis, magnitude)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _nm_keep_jit(scores, valid, n, m, axis, magnitude):
    # one compiled kernel per shape, also when called eagerly (op-by-op is ~10x slower)
    key = _rank_key(scores, magnitude=magnitude)
    size = key.shape[axis]
    if size % m:
        if jnp.issubdtype(key.dtype, jnp.floating):
            low = -jnp.inf
        else:
            low = jnp.iinfo(key.dtype).min
        valid = jnp.ones(key.shape, bool) if valid is None else jnp.asarray(valid, bool)
        key, _ = _pad_axis(key, axis, m, low)
        valid, _ = _pad_axis(valid, axis, m, False)
        out = group_keep(key, n, m, axis, valid)
        return jax.lax.slice_in_dim(out, 0, size, axis=axis)
    return group_keep(key, n, m, axis, None if valid is None else jnp.asarray(valid, bool))


def nm_mask(
    w: jax.Array,
    n: int = 2,
    m: int = 4,
    *,
    axis: int | None = None,
    pad: bool = False,
    path: str = "<array>",
) -> jax.Array:
    """Hardware-legal N:M mask of a weight array by magnitude: keep the ``n`` largest ``|w|``
    of every ``m`` consecutive entries along the reduction axis.

    Args:
      w: a kernel (``(in, out)`` Dense, ``(*spatial, C_in, C_out)`` conv, ...).
      n, m: keep ``n`` of every ``m`` (1:2, 1:4, 2:4, 4:8, 2:8, ...).
      axis: grouping axis; ``None`` derives it from the shape (and ``path``) by
        :func:`jaxsparse.nm.reduction_axis`.
      pad: see :func:`nm_keep`.
      path: the leaf's path (used for the default axis and in error messages).

    Returns:
      Bool array of ``w.shape``. Exactly ``n`` kept per group; ties -> lower index; NaN
      ranks lowest. Jit-able and vmap-able; the selection is sort-free.

    >>> nm_mask(jnp.array([[1.0], [-4.0], [3.0], [2.0]]), 2, 4)[:, 0]
    Array([False,  True,  True, False], dtype=bool)

    References:
      Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks".
    """
    w = jnp.asarray(w)
    if axis is None:
        axis = reduction_axis(path, w.shape)
    return nm_keep(w, n, m, axis=axis, pad=pad, path=path, magnitude=True)


@dataclasses.dataclass(frozen=True)
class NM:
    """N:M structure for :func:`jaxsparse.prune` (``structure=NM(2, 4)``) and tree helpers.

    Args:
      n, m: keep ``n`` of every ``m`` along the reduction axis.
      axis: fixed axis for every leaf; ``None`` derives it per leaf
        (:func:`jaxsparse.nm.reduction_axis`).
      axis_rules: ``[(path regex or predicate, axis), ...]`` overriding the derivation.
      pad: allow a reduction dimension not divisible by ``m`` (see :func:`nm_keep`).

    >>> s = NM(2, 4)
    >>> s.leaf_mask(jnp.arange(8.0).reshape(4, 2), jnp.ones((4, 2), bool), path="d/kernel")[:, 0]
    Array([False, False,  True,  True], dtype=bool)
    """

    n: int = 2
    m: int = 4
    axis: int | None = None
    axis_rules: tuple = ()
    pad: bool = False

    def __post_init__(self):
        check_nm(self.n, self.m)
        object.__setattr__(self, "axis_rules", tuple(rules_lib.check_rules(self.axis_rules)))

    def axis_for(self, path: str, shape: Sequence[int]) -> int:
        """The grouping axis of the leaf at ``path``."""
        if self.axis is not None and rules_lib.match_index(self.axis_rules, path) is None:
            return reduction_axis(path, shape, [(lambda p, x: True, self.axis)])
        return reduction_axis(path, shape, self.axis_rules)

    def leaf_mask(self, score: jax.Array, mask: jax.Array, *, path: str) -> jax.Array:
        """Keeps the ``n`` highest-scoring entries per group among those ``mask`` keeps.

        Entries already pruned are never revived: the result is ANDed with ``mask``, and
        still-kept entries outrank pruned ones when the groups are filled.
        """
        score = jnp.asarray(score)
        axis = self.axis_for(path, score.shape)
        keep = nm_keep(score, self.n, self.m, axis=axis, valid=mask, pad=self.pad, path=path)
        return keep & jnp.asarray(mask, bool)


def nm_masks(
    params: Params,
    n: int = 2,
    m: int = 4,
    *,
    rules: rules_lib.Rules | None = None,
    axis_rules: AxisRules | None = None,
    pad: bool = False,
) -> Masks:
    """One-shot magnitude N:M masks for every prunable leaf of a params tree.

    Args:
      params: any pytree of arrays.
      n, m: keep ``n`` of every ``m`` along each leaf's reduction axis.
      rules: which leaves are prunable (as in :func:`jaxsparse.ones_like`).
      axis_rules: per-path axis overrides (see :class:`NM`).
      pad: see :func:`nm_keep`.

    Returns:
      A masks pytree (scalar ``True`` on non-prunable leaves).

    >>> masks = nm_masks({"d": {"kernel": jnp.ones((8, 3)), "bias": jnp.ones(3)}})
    >>> int(masks["d"]["kernel"].sum()), masks["d"]["bias"].shape
    (12, ())
    """
    structure = NM(n, m, axis_rules=tuple(axis_rules or ()), pad=pad)
    rules = rules_lib.check_rules(rules)

    def one(path: str, p: Any) -> jax.Array:
        if not rules_lib.prunable(rules, path, p):
            return jnp.ones((), bool)
        axis = structure.axis_for(path, np.shape(p))
        return nm_mask(p, n, m, axis=axis, pad=pad, path=path)

    return rules_lib.map_with_path(one, params)
