"""optax integration: keep pruned entries exactly zero under any optimizer.

``masked(tx)`` wraps any optax transformation; masks are passed at update time
(``tx.update(grads, state, params, masks=masks)``), never stored in the optimizer state, so
rewinding, checkpointing and vmap treat them like params. The masks are checked where they
enter (``jaxsparse.masks.validate``: bool, the params' exact shapes, never broadcast). Flax:
``nnx.Optimizer(model, masked(tx), wrt=nnx.Param)`` then ``optimizer.update(model, grads,
masks=masks)``; a Linen ``TrainState`` steps with :func:`masked_apply_gradients`.

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
from jaxsparse.typing import PyTree


def _zero_pruned(tree: PyTree, masks: PyTree) -> PyTree:
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
            raise TypeError(
                "masked(tx).update needs the current masks: tx.update(grads, opt_state, params, "
                "masks=masks). nnx.Optimizer: optimizer.update(model, grads, masks=masks); Linen "
                "TrainState (apply_gradients cannot pass them): "
                "jaxsparse.optim.masked_apply_gradients(state, grads=grads, masks=masks)")
        masks_lib.validate(updates, masks, where="masked(tx).update", names=("updates", "masks"))
        updates = _zero_pruned(updates, masks)
        updates, state = inner.update(updates, state, params, **extra_args)
        return _zero_pruned(updates, masks), state

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
    masks_lib.validate(None, masks, where="reset_moments")
    m_def = jax.tree_util.tree_structure(masks)
    keep = masks if where == "pruned" else masks_lib.invert(masks)

    def is_buffer(x: Any) -> bool:
        return _matches(x, masks, m_def)

    def visit(x: Any) -> Any:
        if is_buffer(x):
            return _zero_pruned(x, keep)
        return x

    return jax.tree.map(visit, opt_state, is_leaf=is_buffer)


def masked_apply_gradients(state: Any, *, grads: PyTree, masks: PyTree, **kwargs: Any) -> Any:
    """``state.apply_gradients(grads=grads)`` for a Flax Linen ``TrainState`` with masks.

    ``TrainState.apply_gradients`` calls ``tx.update(grads, opt_state, params)`` and has no way to
    pass ``masks=``, so a ``TrainState`` built with ``tx=jaxsparse.masked(...)`` cannot use it.
    This does the same step with the masks: ``tx.update(..., masks=masks)``,
    ``optax.apply_updates``, ``step + 1``, and ``state.replace(**kwargs)`` for other fields.
    Works for any ``flax.struct`` dataclass with ``params``, ``opt_state``, ``tx``, ``step``
    fields (subclasses of ``TrainState`` included). Jit-able.

    Args:
      state: a ``flax.training.train_state.TrainState`` whose ``tx`` is :func:`masked`.
      grads: gradients with the structure of ``state.params``.
      masks: bool masks with the structure of ``state.params``.
      **kwargs: other fields to replace (e.g. ``batch_stats=...``).

    Returns:
      The new state.

    >>> from flax.training import train_state
    >>> params = {"w": jnp.array([1.0, 0.0])}
    >>> masks = {"w": jnp.array([True, False])}
    >>> st = train_state.TrainState.create(apply_fn=None, params=params,
    ...                                    tx=masked(optax.sgd(0.5)))
    >>> st = masked_apply_gradients(st, grads={"w": jnp.ones(2)}, masks=masks)
    >>> st.params["w"], int(st.step)
    (Array([0.5, 0. ], dtype=float32), 1)
    """
    for field in ("params", "opt_state", "tx", "step"):
        if not hasattr(state, field):
            raise TypeError(f"masked_apply_gradients needs a TrainState-like state with a "
                            f"{field!r} field, got {type(state).__name__}")
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params, masks=masks)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, **kwargs)
