"""N:M structured sparsity along the reduction dimension (hardware-legal masks).

Sparse tensor cores (NVIDIA Ampere / Hopper / Blackwell, AMD MI300) run an N:M sparse GEMM
only when every group of ``m`` **consecutive elements along the reduction (K) dimension** of
the sparse operand keeps at most ``n``. This module builds such masks for every layer type,
validates whole trees, and plugs into :func:`jaxsparse.prune` as ``structure=NM(2, 4)``.

Reduction axis per layer type (``reduction_axis``; override with ``axis=`` or path rules). It is
**never guessed**: a leaf none of these rules covers is an error that names the leaf, its shape
and the rule to add.

==============================================  ==========================  ===============
leaf (path)                                     shape                       N:M axis (K)
==============================================  ==========================  ===============
any 2-D leaf (Dense / nnx.Linear ``x @ W``)     ``(in, out)``               ``0`` (``in``)
``<conv-like>/kernel``, rank >= 3 (*)           ``(*spatial, C_in, C_out)`` ``-2`` (``C_in``)
any 4-D ``.../kernel`` (HWIO 2-D conv)          ``(H, W, C_in, C_out)``     ``-2`` (``C_in``)
``query|key|value|q|k|v[_proj]/kernel``, 3-D    ``(in, heads, head_dim)``   ``0`` (``in``)
``out|o|out_proj|o_proj/kernel``, 3-D           ``(heads, head_dim, out)``  ``-2`` (``head_dim``)
==============================================  ==========================  ===============

(*) the kernel's module name contains ``conv`` (any case): ``Conv_0``, ``conv1``, ``conv1d``,
``s0b0/conv2`` — Conv 1-D / 2-D / 3-D, Linen and NNX. A 4-D leaf named ``kernel`` is taken as
HWIO wherever it is (Flax's only 4-D ``kernel`` is a 2-D conv's; a 4-D ``DenseGeneral`` kernel
needs its rule).

Anything else of rank >= 3 — a bare array (path ``"<array>"``), an einsum / ``DenseGeneral``
kernel such as ``wq`` of shape ``(in, heads, head_dim)``, a fused qkv, a 5-D kernel outside a
conv-like path — needs its axis: ``axis=`` for one array, or
``NM(2, 4, axis_rules=[("attn/wq", 0)])`` / ``axis_rules=`` of :func:`nm_masks` /
:func:`is_nm` for a tree.

* Conv: the hardware sees the im2col GEMM with ``K = prod(spatial) * C_in`` ordered
  ``(*spatial, C_in)`` (channels fastest, the NHWC / HWIO order XLA and cuDNN use), so groups of
  ``m`` consecutive ``C_in`` entries at a fixed spatial tap are consecutive in ``K``.
* Attention (Flax ``MultiHeadDotProductAttention`` / ``nnx.MultiHeadAttention``): the
  q/k/v projections are ``DenseGeneral(features=(heads, head_dim), axis=-1)`` contracting the
  ``in`` axis; the output projection is ``DenseGeneral(axis=(-2, -1))`` contracting
  ``(heads, head_dim)``; flattened row-major that is ``K = heads * head_dim`` with
  ``head_dim`` fastest, so groups along ``head_dim`` are consecutive in ``K`` (needs
  ``head_dim % m == 0``).
* Any other ``DenseGeneral`` / einsum kernel (fused qkv, ``wq``, 4-D ``DenseGeneral``, ...):
  give the axis with a rule, e.g. ``NM(2, 4, axis_rules=[("proj/kernel", 1)])`` — the axis to
  use is the *last* (fastest) of the contracted axes in the order the GEMM flattens them.

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
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse import masks as masks_lib
from jaxsparse import rules as rules_lib
from jaxsparse.typing import PyTree

AxisRules = Sequence[tuple[rules_lib.Pattern, int]]

# Flax attention q/k/v projections: DenseGeneral kernels (in, heads, head_dim) contracting `in`.
_QKV = re.compile(r"(^|/)(query|key|value|q|k|v)(_proj)?/kernel$")
# Flax attention output projection: DenseGeneral kernel (heads, head_dim, out).
_OUT = re.compile(r"(^|/)(out|o|out_proj|o_proj)/kernel$")
# A conv kernel: the module's name contains "conv" (Conv_0, conv1, conv1d, s0b0/conv2, ...).
_CONV = re.compile(r"(^|/)[^/]*conv[^/]*/kernel$", re.IGNORECASE)
_KERNEL = re.compile(r"(^|/)kernel$")


def _check_nm(n: int, m: int) -> None:
    if not (isinstance(n, int | np.integer) and isinstance(m, int | np.integer)):
        raise TypeError(f"N:M needs Python ints, got n={n!r}, m={m!r}")
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < n < m, got n={n}, m={m}")


def reduction_axis(
    path: str, shape: Sequence[int], axis_rules: AxisRules | None = None
) -> int:
    """The (non-negative) axis of a kernel along which N:M groups must run.

    Never guessed: a leaf of rank >= 3 that no rule of the module table (nor ``axis_rules``)
    covers is an error naming the leaf, its shape and the rule to add.

    Args:
      path: the leaf's path string (``"Dense_0/kernel"``, ``"attn/query/kernel"``).
      shape: the leaf's shape.
      axis_rules: ``[(regex or predicate, axis), ...]`` on paths, first match wins; they
        override the defaults in the module docstring.

    Returns:
      The axis as a non-negative int.

    Raises:
      ValueError: a leaf of rank < 2, an unknown leaf of rank >= 3, or an axis out of range.

    >>> reduction_axis("conv/kernel", (3, 3, 16, 32))
    2
    >>> reduction_axis("attn/wq", (64, 4, 16), [("attn/wq", 0)])
    0
    """
    ndim = len(shape)
    axis = rules_lib.match(axis_rules, path, None, default=None)
    if axis is None:
        axis = _default_axis(path, tuple(shape))
    if isinstance(axis, bool) or not isinstance(axis, int | np.integer):
        raise TypeError(f"N:M at {path!r}: axis rule gave {axis!r}; an axis is an int")
    if not -ndim <= axis < ndim:
        raise ValueError(f"N:M at {path!r}: axis {axis} out of range for shape {tuple(shape)}")
    return int(axis) % ndim


def _default_axis(path: str, shape: tuple[int, ...]) -> int:
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(
            f"N:M at {path!r}: leaf of shape {shape} has no reduction axis "
            "(need ndim >= 2 or an axis rule)"
        )
    if ndim == 2:
        return 0  # (in, out): y = x @ W contracts `in`
    if ndim == 3 and _QKV.search(path):
        return 0  # (in, heads, head_dim)
    if ndim == 3 and _OUT.search(path):
        return 1  # (heads, head_dim, out): head_dim is the fastest contracted axis
    if _CONV.search(path) or (ndim == 4 and _KERNEL.search(path)):
        return ndim - 2  # (*spatial, C_in, C_out)
    bare = path == "<array>"
    rule = "axis=AXIS" if bare else f"axis_rules=[({_rule_regex(path)!r}, AXIS)]"
    raise ValueError(
        f"N:M at {path!r}: cannot tell the reduction axis of a {ndim}-D "
        f"{'array' if bare else 'leaf'} of shape {shape} (known: 2-D (in, out) kernels, "
        "'<conv>/kernel' (*spatial, C_in, C_out), 4-D 'kernel' HWIO, attention "
        "'query|key|value/kernel' (in, heads, head_dim) and 'out/kernel' (heads, head_dim, out)); "
        f"give it: {rule}, AXIS = the fastest contracted axis of the GEMM"
        f"{' (or path= with a known kernel name)' if bare else ''}"
    )


def _rule_regex(path: str) -> str:
    return re.escape(path) + "$"


def _group_keep(key: jax.Array, n: int, m: int, axis: int, valid: jax.Array | None = None):
    """Bool mask keeping the ``n`` highest ``key`` per group of ``m`` along ``axis``.

    ``key`` has ``shape[axis] % m == 0``. Lexicographic order ``(valid, key, -index)``: valid
    entries first, then larger key, then lower index. The rank of element ``i`` is the number
    of group members that beat it: ``j < i`` beats it when ``key_j >= key_i``, ``j > i`` when
    ``key_j > key_i`` — a strict total order, so exactly ``n`` entries have rank ``< n``.
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
    """
    _check_nm(n, m)
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
        out = _group_keep(key, n, m, axis, valid)
        return jax.lax.slice_in_dim(out, 0, size, axis=axis)
    return _group_keep(key, n, m, axis, None if valid is None else jnp.asarray(valid, bool))


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
        :func:`reduction_axis`.
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
      axis: fixed axis for every leaf; ``None`` derives it per leaf (:func:`reduction_axis`).
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
        _check_nm(self.n, self.m)
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
    params: PyTree,
    n: int = 2,
    m: int = 4,
    *,
    rules: rules_lib.Rules | None = None,
    axis_rules: AxisRules | None = None,
    pad: bool = False,
) -> PyTree:
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


@dataclasses.dataclass(frozen=True)
class NMLeafReport:
    path: str
    shape: tuple[int, ...]
    axis: int
    groups: int
    bad_groups: int
    max_kept: int
    min_kept: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.bad_groups == 0


@dataclasses.dataclass(frozen=True)
class NMReport:
    """Per-leaf N:M validation; ``ok`` is True iff every checked leaf is legal."""

    n: int
    m: int
    exact: bool
    rows: tuple[NMLeafReport, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        want = f"exactly {self.n}" if self.exact else f"at most {self.n}"
        lines = [f"N:M {self.n}:{self.m} check ({want} nonzero per group of {self.m})"]
        for r in self.rows:
            status = "ok" if r.ok else (r.error or f"{r.bad_groups}/{r.groups} groups illegal")
            lines.append(
                f"  {r.path:<32} {str(r.shape):<18} axis={r.axis:<2} kept/group="
                f"[{r.min_kept},{r.max_kept}]  {status}"
            )
        lines.append(f"  -> {'LEGAL' if self.ok else 'NOT LEGAL'}")
        return "\n".join(lines)


def is_nm(
    tree: PyTree,
    n: int = 2,
    m: int = 4,
    *,
    exact: bool = False,
    rules: rules_lib.Rules | None = None,
    axis_rules: AxisRules | None = None,
) -> NMReport:
    """Checks that every prunable leaf of ``tree`` (params or masks) is N:M along its
    reduction axis; returns a per-leaf report.

    An entry counts as kept when it is nonzero (``True`` for masks). Hardware needs *at most*
    ``n`` kept per group (``exact=False``); ``exact=True`` demands exactly ``n``. Leaves that
    cannot be grouped (axis length not divisible by ``m``) are reported with an error naming
    the path and shape. Non-prunable leaves (``rules``; scalar mask leaves) are skipped. Every
    leaf is checked along its true reduction axis (:func:`reduction_axis`, ``axis_rules``): a
    leaf whose axis is unknown raises a ``ValueError`` naming it, never a guess.

    >>> w = jnp.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 0.0]])
    >>> is_nm({"kernel": w}, 2, 4).ok
    True
    """
    _check_nm(n, m)
    rules = rules_lib.check_rules(rules)
    structure = NM(n, m, axis_rules=tuple(axis_rules or ()))
    rows = []
    for path, leaf in rules_lib.leaves_with_paths(tree):
        if np.ndim(leaf) == 0 or not rules_lib.prunable(rules, path, leaf):
            continue
        x = np.asarray(leaf)
        axis = structure.axis_for(path, x.shape)
        if x.shape[axis] % m:
            err = (
                f"dimension {axis} of shape {x.shape} has size {x.shape[axis]}, "
                f"not divisible by m={m}"
            )
            rows.append(NMLeafReport(path, x.shape, axis, 0, 0, 0, 0, err))
            continue
        nz = np.moveaxis(x != 0, axis, -1)
        counts = nz.reshape(nz.shape[:-1] + (-1, m)).sum(-1)
        bad = (counts != n) if exact else (counts > n)
        rows.append(
            NMLeafReport(
                path, x.shape, axis, int(counts.size), int(bad.sum()),
                int(counts.max(initial=0)), int(counts.min(initial=0)),
            )
        )
    return NMReport(n, m, exact, tuple(rows))
