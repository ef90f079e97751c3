"""A level's starting weights: mask-1 actions (rewind, re-init, reshuffle, signed ...) and
mask-0 actions (zero, frozen), from the rewind point and the masks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import jax
import jax.numpy as jnp

from jaxsparse import masks as masks_lib
from jaxsparse import rules as rules_lib
from jaxsparse.typing import Key, Masks, Params, PyTree

Mask1Action = Literal[
    "rewind", "reinit", "reshuffle", "signed_reinit", "signed_reshuffle", "signed_constant"]
Mask0Action = Literal["zero", "frozen"]
MASK1_ACTIONS: tuple[str, ...] = get_args(Mask1Action)
MASK0_ACTIONS: tuple[str, ...] = get_args(Mask0Action)
_NEEDS_KEY = ("reinit", "reshuffle", "signed_reinit", "signed_reshuffle")


# ---------------------------------------------------------------------------------------
# Mask-1 / mask-0 actions.


def _sign(x: jax.Array) -> jax.Array:
    # An exact zero counts as positive so that a sign-preserving action never yields 0 for a
    # kept weight (an init value of exactly 0.0 has probability ~0 under a continuous init).
    return jnp.where(x < 0, -1.0, 1.0).astype(x.dtype)


def _permute_kept(x: jax.Array, m: jax.Array, key: jax.Array) -> jax.Array:
    """Randomly permutes the values of ``x`` among the positions where ``m`` is True.

    Works with a traced mask (no data-dependent shapes): ``src`` lists the kept positions in
    random order, ``dst`` lists them in index order, both first; pruned positions follow in
    both lists and map to pruned positions, which the caller then overwrites.
    """
    flat, mflat = x.reshape(-1), m.reshape(-1)
    u = jax.random.uniform(key, flat.shape)
    src = jnp.argsort(jnp.where(mflat, u, 2.0))
    dst = jnp.argsort(jnp.logical_not(mflat), stable=True)
    return jnp.zeros_like(flat).at[dst].set(flat[src]).reshape(x.shape)


def _leaf_stds(std: float | rules_lib.Rules | None, params: PyTree) -> list[jax.Array]:
    """Per-leaf standard deviation of the init distribution (see :func:`rewind`)."""
    leaves = rules_lib.leaves_with_paths(params)
    out = []
    for path, leaf in leaves:
        if std is None:
            value = None
        elif isinstance(std, int | float):
            value = float(std)
        else:
            value = rules_lib.match(std, path, leaf, default=None)
        if value is None:
            value = jnp.std(jnp.asarray(leaf).astype(jnp.float32))
        out.append(jnp.asarray(value, jnp.float32))
    return out


def rewind(
    params_rewind: Params,
    masks: Masks,
    *,
    action: Mask1Action = "rewind",
    mask0: Mask0Action = "zero",
    key: Key | None = None,
    init_fn: Callable[[Key], Params] | None = None,
    std: float | rules_lib.Rules | None = None,
) -> Params:
    """A ticket's starting weights: a mask-1 action on kept weights, a mask-0 action on pruned.

    Mask-1 actions (kept entries of prunable leaves):

    * ``"rewind"``: the value at the rewind point (init, or the snapshot at iteration k).
    * ``"reinit"``: a fresh draw from the layer's init distribution: ``init_fn(key)`` when
      given (a whole fresh params tree, e.g. ``lambda k: functional.init_fn(k)[0]``), else a
      normal with the layer's standard deviation (``std``, see below).
    * ``"reshuffle"``: the rewind-point values permuted at random among the kept entries of
      each leaf (same multiset of values per layer, new positions).
    * ``"signed_reinit"``: the magnitudes of a ``"reinit"`` draw with the rewind-point signs.
    * ``"signed_reshuffle"``: the magnitudes of a ``"reshuffle"`` with the rewind-point signs.
    * ``"signed_constant"``: ``±σ`` with the rewind-point signs, σ the layer's init std.

    The layer's init std σ is ``std`` when given (a float for every leaf, or path rules
    ``[(regex, float), ...]``, first match wins), otherwise the standard deviation of that leaf
    of ``params_rewind`` over all its entries (kept and pruned) — the empirical init
    distribution when the rewind point is the initialisation.

    Mask-0 actions (pruned entries): ``"zero"`` (default), or ``"frozen"``: the rewind-point
    value. Frozen weights are part of the forward pass but never trained: train with masks
    of all ones and ``trainable`` = the ticket's masks (``jaxsparse.train.init_state(...,
    trainable=masks)``; :func:`imp` does this), so they stay constant, not zero.

    Non-prunable leaves (scalar ``True`` mask: biases, norms) always take their rewind-point
    value. Exact zeros: with ``mask0="zero"`` every pruned entry is ``0.0`` (``jnp.where``).

    Args:
      params_rewind: the rewind point, unmasked (the full init, or the snapshot at k).
      masks: bool mask tree for the params (see :mod:`jaxsparse.masks`).
      action: mask-1 action, one of :data:`MASK1_ACTIONS`.
      mask0: mask-0 action, ``"zero"`` or ``"frozen"``.
      key: required by ``reinit``, ``reshuffle``, ``signed_reinit``, ``signed_reshuffle``.
      init_fn: ``key -> params`` re-initialiser for the ``*reinit`` actions.
      std: the init standard deviation (float or path rules) for ``*reinit`` without
        ``init_fn`` and for ``signed_constant``.

    Returns:
      The starting params, with the structure of ``params_rewind``.

    >>> p = {"w": jnp.array([[-2.0, 3.0]])}
    >>> rewind(p, {"w": jnp.array([[True, False]])}, action="signed_constant", std=0.5)["w"]
    Array([[-0.5,  0. ]], dtype=float32)

    References:
      Zhou, Lan, Liu & Yosinski 2019, "Deconstructing Lottery Tickets", NeurIPS.
    """
    if action not in MASK1_ACTIONS:
        raise ValueError(f"unknown mask-1 action {action!r}; expected one of {MASK1_ACTIONS}")
    if mask0 not in MASK0_ACTIONS:
        raise ValueError(f"unknown mask-0 action {mask0!r}; expected one of {MASK0_ACTIONS}")
    if action in _NEEDS_KEY and key is None:
        raise ValueError(f"action {action!r} is random: pass key=jax.random.key(...)")
    masks_lib.validate(params_rewind, masks, where="rewind")

    leaves = rules_lib.leaves_with_paths(params_rewind)
    mask_leaves = jax.tree_util.tree_leaves(masks)
    stds = _leaf_stds(std, params_rewind)
    draw = None
    if action in ("reinit", "signed_reinit") and init_fn is not None:
        draw = init_fn(key)
        if jax.tree_util.tree_structure(draw) != jax.tree_util.tree_structure(params_rewind):
            raise ValueError("init_fn(key) must return a tree with the params' structure")
        draw = jax.tree_util.tree_leaves(draw)

    out = []
    for i, ((path, x), m) in enumerate(zip(leaves, mask_leaves, strict=True)):
        x = jnp.asarray(x)
        if not masks_lib.is_prunable(m):
            out.append(x)
            continue
        leaf_key = None if key is None else jax.random.fold_in(key, i)
        if action == "rewind":
            new = x
        elif action in ("reinit", "signed_reinit"):
            if draw is not None:
                new = jnp.asarray(draw[i]).astype(x.dtype)
                if new.shape != x.shape:
                    raise ValueError(f"init_fn draw at {path!r} has shape {new.shape}, "
                                     f"expected {x.shape}")
            else:
                new = (jax.random.normal(leaf_key, x.shape) * stds[i]).astype(x.dtype)
            if action == "signed_reinit":
                new = _sign(x) * jnp.abs(new)
        elif action in ("reshuffle", "signed_reshuffle"):
            new = _permute_kept(x, m, leaf_key)
            if action == "signed_reshuffle":
                new = _sign(x) * jnp.abs(new)
        else:  # signed_constant
            new = _sign(x) * stds[i].astype(x.dtype)
        fill = x if mask0 == "frozen" else jnp.zeros((), x.dtype)
        out.append(jnp.where(m, new, fill))
    treedef = jax.tree_util.tree_structure(params_rewind)
    return jax.tree_util.tree_unflatten(treedef, out)
