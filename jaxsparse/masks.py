"""Mask pytrees: build, apply, count, report, validate, set operations, and analyses.

A *masks* pytree has exactly the tree structure of the params it masks, with ``bool``
leaves. A prunable leaf carries a full-shape bool array (``True`` = kept); a leaf that is not
prunable (bias, norm scale, scalar) carries a scalar ``True``. Masks are ordinary values:
they jit, vmap, shard and checkpoint like params.

>>> params = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}}
>>> masks = ones_like(params)
>>> masks["dense"]["kernel"].shape, masks["dense"]["bias"].shape
((3, 4), ())
>>> float(density(masks))
1.0

:func:`report` is the per-leaf density table; :func:`compact_report` counts the units a mask
disconnects (no kept incoming or outgoing weight), e.g. of a supermask or a ticket.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse import flax_utils
from jaxsparse import rules as rules_lib
from jaxsparse.typing import Masks, PyTree


def is_prunable(mask_leaf: Any) -> bool:
    """A mask leaf marks a prunable param leaf iff it is not a scalar."""
    return np.ndim(mask_leaf) > 0


def ones_like(params: PyTree, rules: rules_lib.Rules | None = None) -> PyTree:
    """All-kept masks for ``params``.

    Args:
      params: any pytree of arrays (Linen params dict, NNX ``State``, plain dicts).
      rules: ``[(regex or predicate, prunable: bool), ...]`` on leaf paths, first match
        wins; leaves no rule matches use :func:`jaxsparse.rules.default_prunable` (weight
        matrices and conv kernels yes; biases, norm parameters, scalars no).

    Returns:
      A bool pytree with the params' structure: ``True`` arrays of the leaf's shape for
      prunable leaves, scalar ``True`` for the others.

    Raises:
      ValueError / TypeError: ``params`` holds more than trainable weights: an NNX ``State``
      with non-``Param`` variables (``nnx.state(model)``: BatchNorm statistics, RNG state), an
      ``nnx.Module``, or a Linen ``variables`` dict; the message names them and what to pass
      (``nnx.state(model, nnx.Param)``, ``variables["params"]``). See docs/flax.md.

    >>> ones_like({"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}, rules=[("b", True)])["b"]
    Array([ True,  True], dtype=bool)
    """
    flax_utils.check_params_only(params, where="ones_like")
    rules = rules_lib.check_rules(rules)

    def one(path: str, leaf: Any) -> jax.Array:
        if rules_lib.prunable(rules, path, leaf):
            return jnp.ones(np.shape(leaf), dtype=bool)
        return jnp.ones((), dtype=bool)

    return rules_lib.map_with_path(one, params)


def check_structure(
    params: PyTree, masks: PyTree, names: tuple[str, str] = ("params", "masks"), where: str = ""
) -> None:
    """A ``ValueError`` naming the leaves only one of two trees has, if their structures differ.

    >>> check_structure({"w": 0, "b": 0}, {"w": 0})
    Traceback (most recent call last):
    ValueError: masks and params have different tree structures: leaves only in params: ['b'];
    """
    p_def = jax.tree_util.tree_structure(params)
    m_def = jax.tree_util.tree_structure(masks)
    if p_def != m_def:
        a, b = names
        p_paths = set(rules_lib.leaf_paths(params))
        m_paths = set(rules_lib.leaf_paths(masks))
        only_p = sorted(p_paths - m_paths)
        only_m = sorted(m_paths - p_paths)
        detail = ""
        if only_p:
            detail += f" leaves only in {a}: {only_p[:5]}{' ...' if len(only_p) > 5 else ''};"
        if only_m:
            detail += f" leaves only in {b}: {only_m[:5]}{' ...' if len(only_m) > 5 else ''};"
        if not detail:
            detail = f" {a} tree {p_def} vs {b} tree {m_def}"
        raise ValueError(f"{_prefix(where)}{b} and {a} have different tree structures:{detail}")


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def _dtype(x: Any) -> np.dtype:
    dtype = getattr(x, "dtype", None)
    return np.asarray(x).dtype if dtype is None else dtype


def _check_mask_leaf(path: str, m: Any, where: str = "", what: str = "mask") -> None:
    dtype = _dtype(m)
    if dtype != np.bool_:
        hint = ""
        if np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer):
            hint = (" (a numeric mask is ambiguous: 0.3 would count as kept; convert it "
                    "explicitly, e.g. `m > 0.5` or `m.astype(bool)`)")
        raise TypeError(f"{_prefix(where)}{what} at {path!r} has dtype {dtype}; masks must be "
                        f"bool{hint}")
    if np.shape(m) == () and _concrete_false(m):
        raise ValueError(
            f"{_prefix(where)}scalar {what} at {path!r} is False; a non-prunable leaf's mask must "
            "be True (prune it with a full-shape mask instead)"
        )


def _check_leaf(path: str, p: Any, m: Any, where: str = "", what: str = "param") -> None:
    _check_mask_leaf(path, m, where)
    m_shape, p_shape = np.shape(m), np.shape(p)
    if m_shape != () and m_shape != p_shape:
        raise ValueError(
            f"{_prefix(where)}mask at {path!r} has shape {m_shape} but the {what} has shape "
            f"{p_shape} (a mask leaf is either the {what}'s shape or a scalar True; masks are "
            "never broadcast)"
        )


def _concrete_false(m: Any) -> bool:
    if isinstance(m, jax.core.Tracer):  # traced: only shapes and dtypes can be checked
        return False
    try:
        return not bool(m)
    except jax.errors.ConcretizationTypeError:
        return False


def validate(
    params: PyTree | None,
    masks: PyTree,
    *,
    where: str = "",
    names: tuple[str, str] = ("params", "masks"),
) -> None:
    """Raises a clear error unless ``masks`` is a valid mask tree (for ``params``).

    The one check every jaxsparse function that takes masks runs. Checks: identical tree
    structure to ``params`` (skipped when ``params`` is ``None``); ``bool`` dtype on every leaf
    (a float mask is refused, never thresholded); each leaf has *exactly* the param's shape or
    is a scalar (a ``(1, 5)`` mask over a ``(4, 5)`` kernel is refused, never broadcast); a
    scalar (non-prunable) mask is ``True``. Shapes and dtypes are checked under ``jit`` too;
    values only when concrete. Every error names the offending leaf path and shapes.

    Args:
      params: the params (or updates, scores, ...) the masks are for, or ``None`` to check the
        mask tree alone.
      masks: the mask tree.
      where: the calling function, used as the prefix of error messages.
      names: what to call the two trees in structure errors.

    Raises:
      TypeError: a non-bool mask leaf. ValueError: structure, shape or a scalar ``False``.

    >>> validate({"w": jnp.ones((4, 5))}, {"w": jnp.ones((1, 5), bool)})
    Traceback (most recent call last):
    ...
    ValueError: mask at 'w' has shape (1, 5) but the param has shape (4, 5) (a mask leaf is \
either the param's shape or a scalar True; masks are never broadcast)
    """
    if params is None:
        for path, m in rules_lib.leaves_with_paths(masks):
            _check_mask_leaf(path, m, where)
        return
    check_structure(params, masks, names, where)
    what = names[0][:-1] if names[0].endswith("s") else names[0]
    for (path, p), (_, m) in zip(
        rules_lib.leaves_with_paths(params), rules_lib.leaves_with_paths(masks), strict=True
    ):
        _check_leaf(path, p, m, where, what)


def validate_leaf(path: str, param: Any, mask: Any, *, where: str = "") -> None:
    """:func:`validate` for one leaf: ``mask`` is bool and has ``param``'s shape (or is a scalar
    ``True``); errors name ``path``. For functions that take one array and its mask.

    >>> validate_leaf("k", jnp.ones((4, 2)), jnp.ones((4, 2)), where="compress")
    Traceback (most recent call last):
    ...
    TypeError: compress: mask at 'k' has dtype float32; masks must be bool (a numeric mask is \
ambiguous: 0.3 would count as kept; convert it explicitly, e.g. `m > 0.5` or `m.astype(bool)`)
    """
    _check_leaf(path, param, mask, where)


def nonzero_pruned(params: PyTree, masks: PyTree) -> dict[str, int]:
    """Pruned entries that are not exactly zero: ``{leaf path: count}``, only leaves with any.

    ``{}`` means every pruned entry is exactly ``0`` (what :func:`apply_masks` and
    :func:`jaxsparse.masked` guarantee). Host-side (needs concrete arrays).

    >>> p = {"w": jnp.array([[1.0, 0.0], [3.0, 4.0]])}
    >>> nonzero_pruned(p, {"w": jnp.array([[True, False], [False, True]])})
    {'w': 1}
    """
    validate(params, masks, where="nonzero_pruned")
    out = {}
    for (path, p), (_, m) in zip(
        rules_lib.leaves_with_paths(params), rules_lib.leaves_with_paths(masks), strict=True
    ):
        if is_prunable(m):
            bad = int(np.sum((np.asarray(p) != 0) & ~np.asarray(m)))
            if bad:
                out[path] = bad
    return out


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
    """Zeroes the pruned entries: ``jnp.where(mask, param, 0)`` on every prunable leaf.

    Non-prunable leaves (scalar ``True`` masks) are returned unchanged. Uses a select, not
    a float multiply, so ``inf``/``NaN`` in pruned entries become exact zeros.

    >>> apply_masks({"w": jnp.ones((1, 2))}, {"w": jnp.array([[True, False]])})["w"]
    Array([[1., 0.]], dtype=float32)
    """
    validate(params, masks, where="apply_masks")

    def one(path: str, p: Any, m: Any) -> Any:
        if not is_prunable(m):
            return p
        return jnp.where(m, p, jnp.zeros((), dtype=jnp.result_type(p)))

    return rules_lib.map_with_path(one, params, masks)


def _prunable_leaves(masks: PyTree, where: str | None) -> list[jax.Array]:
    if where is not None:
        validate(None, masks, where=where)
    return [m for m in jax.tree_util.tree_leaves(masks) if is_prunable(m)]


def _total(masks: PyTree, where: str | None) -> int:
    return int(sum(int(np.prod(np.shape(m))) for m in _prunable_leaves(masks, where)))


def _kept(masks: PyTree, where: str | None) -> jax.Array:
    leaves = _prunable_leaves(masks, where)
    if not leaves:
        return jnp.zeros((), jnp.int32)
    return sum(jnp.sum(m, dtype=jnp.int32) for m in leaves)


def _density(masks: PyTree, where: str) -> jax.Array:
    validate(None, masks, where=where)
    total = _total(masks, None)
    if total == 0:
        return jnp.ones((), jnp.float32)
    return _kept(masks, None).astype(jnp.float32) / total


def count_total(masks: PyTree) -> int:
    """Number of prunable entries (a static Python int)."""
    return _total(masks, "count_total")


def count_kept(masks: PyTree) -> jax.Array:
    """Number of kept prunable entries (an int32 array; jit-compatible)."""
    return _kept(masks, "count_kept")


def density(masks: PyTree) -> jax.Array:
    """Fraction of prunable entries kept (1.0 when nothing is prunable)."""
    return _density(masks, "density")


def sparsity(masks: PyTree) -> jax.Array:
    """Fraction of prunable entries pruned: ``1 - density(masks)``."""
    return 1.0 - _density(masks, "sparsity")


@dataclasses.dataclass(frozen=True)
class LeafReport:
    path: str
    shape: tuple[int, ...]
    kept: int
    total: int

    @property
    def density(self) -> float:
        return self.kept / self.total if self.total else 1.0


@dataclasses.dataclass(frozen=True)
class MaskReport:
    """Per-leaf mask statistics; ``str()`` gives a printable table, ``rows`` the data."""

    rows: tuple[LeafReport, ...]

    @property
    def kept(self) -> int:
        return sum(r.kept for r in self.rows)

    @property
    def total(self) -> int:
        return sum(r.total for r in self.rows)

    @property
    def density(self) -> float:
        return self.kept / self.total if self.total else 1.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def as_dicts(self) -> list[dict[str, Any]]:
        """Rows as dicts (path, shape, kept, total, density), e.g. for CSV or pandas."""
        return [
            dict(path=r.path, shape=r.shape, kept=r.kept, total=r.total, density=r.density)
            for r in self.rows
        ]

    def __str__(self) -> str:
        head = ("path", "shape", "kept", "total", "density")
        body = [(r.path, str(r.shape), str(r.kept), str(r.total), f"{r.density:.4f}")
                for r in self.rows]
        body.append(("TOTAL", "", str(self.kept), str(self.total), f"{self.density:.4f}"))
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(5)]
        fmt = lambda row: "  ".join(  # noqa: E731
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        rule = "-" * len(fmt(head))
        return "\n".join([fmt(head), rule, *map(fmt, body[:-1]), rule, fmt(body[-1])])


def report(masks: PyTree) -> MaskReport:
    """Per-leaf table of prunable leaves: path, shape, kept, total, density.

    >>> print(report({"w": jnp.array([[True, False]]), "b": jnp.array(True)}))
    path   shape   kept  total  density
    -----------------------------------
    w      (1, 2)     1      2   0.5000
    -----------------------------------
    TOTAL             1      2   0.5000
    """
    validate(None, masks, where="report")
    rows = []
    for path, m in rules_lib.leaves_with_paths(masks):
        if not is_prunable(m):
            continue
        m = np.asarray(m)
        rows.append(LeafReport(path, tuple(m.shape), int(m.sum()), int(m.size)))
    return MaskReport(tuple(rows))


# ---------------------------------------------------------------------------------------
# Set operations. Non-prunable leaves (scalar True) stay scalar True.


def _binary(op, a: PyTree, b: PyTree, where: str) -> PyTree:
    validate(None, a, where=where)
    validate(None, b, where=where)
    check_structure(a, b, ("a", "b"), where)

    def one(path: str, x: Any, y: Any) -> Any:
        if np.shape(x) and np.shape(y) and np.shape(x) != np.shape(y):
            raise ValueError(f"{where}: masks at {path!r} have shapes {np.shape(x)} and "
                             f"{np.shape(y)}")
        if not is_prunable(x) and not is_prunable(y):
            return x
        return op(x, y)

    return rules_lib.map_with_path(one, a, b)


def intersect(a: PyTree, b: PyTree) -> PyTree:
    """Entries kept in both ``a`` and ``b``."""
    return _binary(jnp.logical_and, a, b, "intersect")


def union(a: PyTree, b: PyTree) -> PyTree:
    """Entries kept in ``a`` or ``b``."""
    return _binary(jnp.logical_or, a, b, "union")


def difference(a: PyTree, b: PyTree) -> PyTree:
    """Entries kept in ``a`` but not in ``b`` (on prunable leaves)."""
    return _binary(lambda x, y: jnp.logical_and(x, jnp.logical_not(y)), a, b, "difference")


def invert(masks: PyTree) -> PyTree:
    """Swaps kept and pruned entries of prunable leaves; non-prunable leaves stay True."""
    validate(None, masks, where="invert")
    return jax.tree.map(lambda m: jnp.logical_not(m) if is_prunable(m) else m, masks)


def equal(a: PyTree, b: PyTree) -> bool:
    """Whether two concrete mask trees are identical (structure, shapes and values)."""
    if jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b):
        return False
    return all(
        np.shape(x) == np.shape(y) and bool(np.array_equal(np.asarray(x), np.asarray(y)))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    )


def prunable_paths(masks: PyTree) -> list[str]:
    """Paths of the prunable leaves of a mask tree."""
    return [p for p, m in rules_lib.leaves_with_paths(masks) if is_prunable(m)]


def stack(trees: Sequence[PyTree]) -> PyTree:
    """Stacks same-structured trees along a new leading (population) axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


# ---------------------------------------------------------------------------------------
# Mask analyses: units left with no incoming or no outgoing weight.


def compact_report(masks: Masks, *, order: list[str] | None = None) -> dict[str, Any]:
    """Counts the units a mask disconnects, per layer and between consecutive layers.

    For a prunable kernel of shape ``(..., in, out)`` (Dense ``(in, out)``, conv
    ``(h, w, in, out)``): an *output* unit with no kept incoming weight is ``dead_out``; an
    *input* unit with no kept outgoing weight is ``dead_in``. Consecutive prunable layers (in
    ``order``, default tree order) whose widths match are linked: a hidden unit between them
    is ``removable`` if it is dead on either side (it receives nothing but its bias, or feeds
    nothing). The compacted network drops the removable units.

    Returns:
      ``{"layers": [{path, shape, n_in, dead_in, n_out, dead_out}, ...],
      "links": [{from, to, units, removable}, ...], "removable": int, "hidden_units": int}``.

    >>> compact_report({"a": jnp.array([[True, False], [False, False]])})["layers"][0]["dead_out"]
    1
    """
    rows = {}
    for path, m in rules_lib.leaves_with_paths(masks):
        if not is_prunable(m):
            continue
        m = np.asarray(m, bool)
        m2 = m.reshape(-1, m.shape[-2], m.shape[-1]) if m.ndim >= 2 else m.reshape(1, -1, 1)
        has_out = m2.any(axis=(0, 2))  # per input unit: some kept outgoing weight
        has_in = m2.any(axis=(0, 1))   # per output unit: some kept incoming weight
        rows[path] = dict(path=path, shape=tuple(m.shape), n_in=int(has_out.size),
                          dead_in=int((~has_out).sum()), n_out=int(has_in.size),
                          dead_out=int((~has_in).sum()), _has_out=has_out, _has_in=has_in)
    order = list(rows) if order is None else order
    links = []
    for a, b in zip(order[:-1], order[1:], strict=True):
        ra, rb = rows[a], rows[b]
        if ra["n_out"] != rb["n_in"]:
            continue
        alive = ra["_has_in"] & rb["_has_out"]
        links.append({"from": a, "to": b, "units": ra["n_out"],
                      "removable": int((~alive).sum())})
    layers = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows.values()]
    return {"layers": layers, "links": links,
            "removable": sum(x["removable"] for x in links),
            "hidden_units": sum(x["units"] for x in links)}
