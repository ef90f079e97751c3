"""The pruner contract: optax-shaped pairs of pure functions, schedules, ``chain``.

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

The pruners select with :func:`jaxsparse.select.keep_top`, the exact sort-free top-k by
*count* (the drop and grow of SET / RigL, every step of GMP); :func:`jaxsparse.prune` is the
selection by *fraction* (one-shot pruning).

>>> p = chain(static(), static())
>>> masks = {"w": jnp.ones((2, 2), bool)}
>>> state = p.init({"w": jnp.ones((2, 2))}, masks)
>>> new, state = p.update(masks, state, {"w": jnp.ones((2, 2))}, grads=None,
...                       step=jnp.int32(0), key=jax.random.key(0))
>>> bool(new["w"].all()), bool(p.due(jnp.int32(5)))
(True, False)
"""

from __future__ import annotations

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
