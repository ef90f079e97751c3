"""optax integration: keep pruned entries exactly zero under any optimizer.

``masked(tx)`` wraps any optax transformation; masks are passed at update time
(``tx.update(grads, state, params, masks=masks)``), never stored in the optimizer state, so
rewinding, checkpointing and vmap treat them like params.

>>> tx = masked(optax.adamw(1e-3, weight_decay=1e-4))
>>> params = {"w": jnp.array([1.0, 0.0])}
>>> masks = {"w": jnp.array([True, False])}
>>> state = tx.init(params)
>>> updates, state = tx.update({"w": jnp.ones(2)}, state, params, masks=masks)
>>> updates["w"][1]
Array(0., dtype=float32)
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax

from jaxsparse import masks as masks_lib

PyTree = Any


def _zero_pruned(tree: PyTree, masks: PyTree, what: str) -> PyTree:
    masks_lib._check_structure(tree, masks, names=(what, "masks"))

    def one(x, m):
        if x is None or not masks_lib.is_prunable(m):
            return x
        return jnp.where(m, x, jnp.zeros((), jnp.result_type(x)))

    return jax.tree.map(one, tree, masks)


def masked(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Wraps ``tx`` so that pruned entries get exactly zero update.

    The gradients are zeroed at pruned entries *before* ``tx`` (so moment estimates never see
    them) and the updates are zeroed *after* it (so decoupled weight decay, momentum left over
    from dense training, or any other term cannot move them). With ``optax.apply_updates`` a
    pruned param therefore keeps its exact value: a pruned ``0.0`` stays ``0.0`` forever.

    Args:
      tx: any optax transformation (extra keyword args are forwarded to it).

    Returns:
      A ``GradientTransformationExtraArgs`` whose ``update(updates, state, params=None, *,
      masks, **extra)`` requires ``masks`` (bool pytree with the params' structure).

    >>> tx = masked(optax.sgd(0.1, momentum=0.9))
    >>> st = tx.init({"w": jnp.zeros(2)})
    >>> u, st = tx.update({"w": jnp.ones(2)}, st, masks={"w": jnp.array([True, False])})
    >>> u["w"]
    Array([-0.1,  0. ], dtype=float32)
    """
    inner = optax.with_extra_args_support(tx)

    def init_fn(params: PyTree) -> optax.OptState:
        return inner.init(params)

    def update_fn(updates, state, params=None, *, masks=None, **extra_args):
        if masks is None:
            raise TypeError("masked(tx).update needs the current masks: update(..., masks=masks)")
        updates = _zero_pruned(updates, masks, "updates")
        updates, state = inner.update(updates, state, params, **extra_args)
        return _zero_pruned(updates, masks, "updates"), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _matches(subtree: PyTree, masks: PyTree, m_def) -> bool:
    if jax.tree_util.tree_structure(subtree) != m_def:
        return False
    return all(
        not masks_lib.is_prunable(m) or jnp.shape(x) == jnp.shape(m)
        for x, m in zip(
            jax.tree_util.tree_leaves(subtree), jax.tree_util.tree_leaves(masks), strict=True
        )
    )


def reset_moments(
    opt_state: optax.OptState,
    masks: PyTree,
    *,
    where: Literal["pruned", "kept"] = "pruned",
) -> optax.OptState:
    """Zeroes optimizer buffers (momentum, Adam moments, ...) at pruned or at kept entries.

    Walks ``opt_state`` and changes every subtree that has the masks' tree structure (and, on
    prunable leaves, the same shapes): that is how optax stores per-parameter buffers
    (``mu``, ``nu``, ``trace``, ...). Counters and other state are returned unchanged.

    Args:
      opt_state: any optax state (nested tuples / NamedTuples / dicts).
      masks: bool pytree with the params' structure.
      where: ``"pruned"`` zeroes entries whose mask is False (e.g. after pruning, so stale
        momentum cannot leak into a later regrowth); ``"kept"`` zeroes entries whose mask is
        True. For *newly kept* entries (regrowth), pass
        ``jaxsparse.difference(new_masks, old_masks)`` with ``where="kept"``.

    Returns:
      The new optimizer state.

    >>> st = optax.sgd(0.1, momentum=0.9).init({"w": jnp.zeros(2)})
    >>> st = jax.tree.map(lambda x: x + 1, st)
    >>> reset_moments(st, {"w": jnp.array([True, False])})[0].trace["w"]
    Array([1., 0.], dtype=float32)
    """
    if where not in ("pruned", "kept"):
        raise ValueError(f"where must be 'pruned' or 'kept', got {where!r}")
    m_def = jax.tree_util.tree_structure(masks)
    keep = masks if where == "pruned" else masks_lib.invert(masks)

    def is_buffer(x: Any) -> bool:
        return _matches(x, masks, m_def)

    def visit(x: Any) -> Any:
        if is_buffer(x):
            return _zero_pruned(x, keep, "optimizer buffer")
        return x

    return jax.tree.map(visit, opt_state, is_leaf=is_buffer)
