"""The pruner contract: optax-shaped pairs of pure functions, schedules, ``chain``.

A pruning algorithm is a :class:`Pruner`, ``init(params, masks) -> state`` and
``update(masks, state, params, *, grads, step, key) -> (masks, state)``, with a
``<Algo>State(NamedTuple)`` that holds a ``count`` (number of updates that changed the
masks). Both are pure: jit them, vmap them over a population, checkpoint the state.

The trainer (:func:`jaxsparse.train.make_step`) calls ``update`` at the start of every
iteration ``step`` (0-based: ``step`` updates have been done) with the params before that
update and the *dense* gradient of the iteration's batch at those params (pruned entries
included: what RigL grows by). The masks it returns are in force for that update: the
trainer zeroes the dropped params, resets the optimizer moments of every changed entry, and
updates only the entries kept both before and after (a grown weight starts the next
iteration at exactly 0 with zero moments). ``due(step)`` says whether ``update`` can change
the masks at ``step``: the trainer runs ``update`` under ``lax.cond(due(step), ...)`` on the
step clock shared by a population (a plain Python/``jnp`` function of the step; ``None``:
every step), so a step that prunes nothing costs nothing.

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

PyTree = Any
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
    """``due`` true at ``begin, begin + frequency, ...`` up to ``end`` (inclusive)."""
    def due(step):
        step = jnp.asarray(step)
        ok = (step >= begin) & ((step - begin) % frequency == 0)
        return ok if end is None else ok & (step <= end)

    return due


def chain(*pruners: Pruner) -> Pruner:
    """Runs pruners one after another on the same step: each sees the masks of the last.

    ``due`` is true when any inner pruner's is; each inner ``update`` runs only on its own
    due steps (the others return the masks unchanged).
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
        inner = []
        for i, (p, s) in enumerate(zip(pruners, state.inner, strict=True)):
            k = jax.random.fold_in(key, i)
            if p.due is None:
                masks, s = p.update(masks, s, params, grads=grads, step=step, key=k)
            else:
                masks, s = jax.lax.cond(
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
    """Masks that never change (the masks given to the trainer; e.g. random ERK at init)."""

    def init(params, masks):
        del params, masks
        return StaticState(jnp.zeros((), jnp.int32))

    def update(masks, state, params, *, grads, step, key):
        del params, grads, step, key
        return masks, state

    return Pruner(init, update, never)


def check_schedule(name: str, *, begin: int, end: int | None, frequency: int) -> None:
    """Clear errors for a schedule that cannot run (names the pruner and the values)."""
    if frequency is None or int(frequency) < 1:
        raise ValueError(f"{name}: frequency must be >= 1, got {frequency!r}")
    if int(begin) < 0:
        raise ValueError(f"{name}: begin_step must be >= 0, got {begin!r}")
    if end is not None and int(end) < int(begin):
        raise ValueError(f"{name}: end_step ({end}) is before begin_step ({begin})")


def ensure_sequence(x: Any) -> Sequence:
    return x if isinstance(x, list | tuple) else (x,)
