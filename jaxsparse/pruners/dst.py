"""Dynamic sparse training: SET (Mocanu et al. 2018) and RigL (Evci et al. 2020).

Every ``frequency`` steps ``t`` with ``begin_step <= t <= end_step``, in every prunable leaf
with ``n`` kept (active) entries:

1. **drop** ``k = floor(d(t) * n)`` active entries with the smallest ``|w|`` (``d(t)`` and
   ``n`` as float32);
2. **grow** ``k`` entries among those inactive after the drop (a just-dropped entry may come
   back, and then it is unchanged): uniformly at random for SET, by the largest ``|dense
   gradient|`` for RigL.

So every leaf keeps exactly ``n`` entries. Ties: the drop keeps the *lower* flat index among
equal ``|w|`` (drops the higher first), the grow takes the lower flat index first among equal
scores (row-major inside a leaf, :func:`jaxsparse.select.keep_top`). SET's random scores
are :func:`uniform_scores`: one ``jax.random.uniform(key, (N,))`` draw over all ``N``
prunable entries, leaf after leaf in tree order.

``d(t)`` is :func:`drop_fraction_schedule`: constant, or the RigL code's cosine decay
``d0 / 2 * (1 + cos(pi * (t - begin) / (end - begin)))``. The trainer gives grown weights the
value 0 and zero optimizer moments (:func:`jaxsparse.train.change_masks`).

The update is traced end to end (no Python control flow on values): jit it once, vmap it over
a population with per-member keys. Its cost is a few counting passes over the weights, not a
sort (``benchmarks/bench_pruners.py``).

>>> import jaxsparse as js
>>> params = {"w": jnp.array([[0.1, 2.0, 0.0], [3.0, 0.0, 0.5]])}
>>> grads = {"w": jnp.array([[0.0, 0.0, 9.0], [0.0, 1.0, 0.0]])}
>>> masks = {"w": params["w"] != 0}
>>> p = rigl(begin_step=0, end_step=10, frequency=1, drop_fraction=0.5, anneal="constant")
>>> new, state = p.update(masks, p.init(params, masks), params, grads=grads,
...                       step=jnp.int32(0), key=jax.random.key(0))
>>> new["w"].astype(int)  # drops 0.1 and 0.5 (smallest |w|), grows where |g| is 9 and 1
Array([[0, 1, 1],
       [1, 1, 0]], dtype=int32)

References:
  Mocanu et al. 2018 (Nature Communications), "Scalable training of artificial neural
  networks with adaptive sparse connectivity inspired by network science" (SET).
  Evci, Gale, Menick, Castro, Elsen 2020 (ICML), "Rigging the Lottery: Making All Tickets
  Winners" (RigL).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse import select
from jaxsparse.pruners import base

Anneal = Literal["constant", "cosine"]


def drop_fraction_schedule(
    step: int | jax.Array,
    *,
    drop_fraction: float | jax.Array,
    begin_step: int,
    end_step: int,
    anneal: Anneal = "cosine",
) -> jax.Array:
    """The fraction ``d(t)`` of the active weights that SET / RigL drop at ``step`` (float32).

    ``"constant"``: ``d0``; ``"cosine"``: ``d0 / 2 * (1 + cos(pi * (t - begin) / (end -
    begin)))`` with ``t`` clipped into ``[begin, end]`` (``d0`` at the start, 0 at the end).

    >>> [round(float(drop_fraction_schedule(t, drop_fraction=0.3, begin_step=0,
    ...                                     end_step=100)), 4) for t in (0, 50, 100)]
    [0.3, 0.15, 0.0]
    """
    d0 = jnp.asarray(drop_fraction, jnp.float32)
    if anneal == "constant":
        return d0
    if anneal != "cosine":
        raise ValueError(f"anneal must be 'constant' or 'cosine', got {anneal!r}")
    span = max(int(end_step) - int(begin_step), 1)
    t = jnp.clip(jnp.asarray(step, jnp.int32), begin_step, end_step) - begin_step
    return d0 / 2 * (1 + jnp.cos(jnp.pi * t.astype(jnp.float32) / span))


def uniform_scores(key: jax.Array, shapes: list[tuple[int, ...]]) -> list[jax.Array]:
    """SET's growth scores: one ``jax.random.uniform(key, (N,))`` split into the leaves' shapes.

    >>> [x.shape for x in uniform_scores(jax.random.key(0), [(2, 3), (4,)])]
    [(2, 3), (4,)]
    """
    sizes = [int(np.prod(s)) for s in shapes]
    u = jax.random.uniform(key, (sum(sizes),), jnp.float32)
    out, start = [], 0
    for shape, n in zip(shapes, sizes, strict=True):
        out.append(u[start:start + n].reshape(shape))
        start += n
    return out


class SETState(NamedTuple):
    """State of :func:`set_`.

    Attributes:
      count: mask updates done.
      leaf_sizes: entries of each prunable leaf at ``init`` (which model the state is for).
      moved: int32 per prunable leaf, the entries dropped (and grown) by the last update.
    """

    count: jax.Array
    leaf_sizes: jax.Array
    moved: jax.Array


class RigLState(NamedTuple):
    """State of :func:`rigl` (fields as :class:`SETState`)."""

    count: jax.Array
    leaf_sizes: jax.Array
    moved: jax.Array


def _check(name: str, drop_fraction: Any, anneal: str) -> None:
    try:
        d = float(drop_fraction)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: drop_fraction must be a number in (0, 1), got "
                         f"{drop_fraction!r}") from None
    if not 0.0 < d < 1.0:
        raise ValueError(f"{name}: drop_fraction must be in (0, 1), got {drop_fraction!r}")
    if anneal not in ("constant", "cosine"):
        raise ValueError(f"{name}: anneal must be 'constant' or 'cosine', got {anneal!r}")


def _dst(name: str, state_cls: type, grow: str, *, begin_step: int, end_step: int,
         frequency: int, drop_fraction: float, anneal: Anneal) -> base.Pruner:
    base.check_schedule(name, begin=begin_step, end=end_step, frequency=frequency)
    _check(name, drop_fraction, anneal)
    due = base.every(frequency, begin=begin_step, end=end_step)
    sched = dict(drop_fraction=float(drop_fraction), begin_step=int(begin_step),
                 end_step=int(end_step), anneal=anneal)

    def init(params, masks):
        base.check_masks(name, params, masks)
        sizes = base.prunable_sizes(masks)
        return state_cls(jnp.zeros((), jnp.int32), jnp.asarray(sizes),
                         jnp.zeros(sizes.shape, jnp.int32))

    def update(masks, state, params, *, grads, step, key):
        base.check_masks(name, params, masks)
        base.check_state(name, state, state_cls, masks)
        if grow == "gradient":
            if grads is None:
                raise ValueError(f"{name}: grows by the dense gradient; give grads= (the "
                                 "trainer passes the gradient of the batch)")
            if jax.tree.structure(grads) != jax.tree.structure(masks):
                raise ValueError(f"{name}: grads and masks have different tree structures "
                                 f"({jax.tree.structure(grads)} vs {jax.tree.structure(masks)})")
        leaves = base.prunable(masks, masks)
        if not leaves:
            return masks, state
        weights = base.prunable(params, masks)
        g_leaves = base.prunable(grads, masks) if grow == "gradient" else None

        def run(leaves):
            d = drop_fraction_schedule(step, **sched)
            active = jnp.stack([jnp.sum(m, dtype=jnp.int32) for m in leaves])
            k = jnp.floor(d * active.astype(jnp.float32)).astype(jnp.int32)
            k = jnp.clip(k, 0, active)
            kept = select.keep_top([jnp.abs(w) for w in weights], leaves, active - k,
                                 num_candidates=active)
            if grow == "gradient":
                scores = [jnp.abs(g) for g in g_leaves]
            else:
                scores = uniform_scores(key, [m.shape for m in leaves])
            sizes = jnp.asarray([m.size for m in leaves], jnp.int32)
            grown = select.keep_top(scores, [~m for m in kept], k,
                                  num_candidates=sizes - (active - k))
            return [a | b for a, b in zip(kept, grown, strict=True)], k

        now = due(step)
        new, moved = base.cond(
            now, run, lambda x: (list(x), jnp.zeros((len(x),), jnp.int32)), list(leaves))
        return (base.replace_prunable(masks, new),
                state._replace(count=state.count + now.astype(jnp.int32), moved=moved))

    return base.Pruner(init, update, due)


def set_(
    *,
    end_step: int,
    begin_step: int = 0,
    frequency: int = 100,
    drop_fraction: float = 0.3,
    anneal: Anneal = "constant",
) -> base.Pruner:
    """SET: every ``frequency`` steps drop the smallest-``|w|`` fraction ``d(t)`` of each
    leaf's active weights and grow as many uniformly at random (see the module docstring).

    Named ``set_`` (``jaxsparse.pruners.set`` is the same function) so that it does not shadow
    the builtin. Mocanu et al. use a constant ``drop_fraction`` (their zeta, 0.3) once per
    epoch: set ``frequency`` to the steps per epoch.

    Args:
      end_step: last step (inclusive) at which the masks may change.
      begin_step: first step of the schedule.
      frequency: steps between two updates (``Delta T``).
      drop_fraction: ``d0`` in ``(0, 1)``.
      anneal: ``"constant"`` or ``"cosine"`` (:func:`drop_fraction_schedule`).

    >>> import jaxsparse as js
    >>> params = {"w": jax.random.normal(jax.random.key(0), (20, 10))}
    >>> masks = js.prune(js.scores.magnitude(params), js.ones_like(params), sparsity=0.8)
    >>> p = set_(end_step=1000)
    >>> new, state = p.update(masks, p.init(params, masks), params, grads=None,
    ...                       step=jnp.int32(0), key=jax.random.key(1))
    >>> int(new["w"].sum()), int(state.moved[0])  # 40 kept; 12 = floor(0.3 * 40) moved
    (40, 12)

    References:
      Mocanu et al. 2018 (Nature Communications), "Scalable training of artificial neural
      networks with adaptive sparse connectivity inspired by network science".
    """
    return _dst("set", SETState, "random", begin_step=begin_step, end_step=end_step,
                frequency=frequency, drop_fraction=drop_fraction, anneal=anneal)


def rigl(
    *,
    end_step: int,
    begin_step: int = 0,
    frequency: int = 100,
    drop_fraction: float = 0.3,
    anneal: Anneal = "cosine",
) -> base.Pruner:
    """RigL: every ``frequency`` steps drop the smallest-``|w|`` fraction ``d(t)`` of each
    leaf's active weights and grow as many where the dense gradient is largest.

    Defaults are the RigL paper's (``Delta T = 100``, ``d0 = 0.3``, cosine decay to 0 at
    ``end_step``, which they set to 75% of training). The gradient is the trainer's dense
    gradient of the batch of the update step (``grads=``).

    Args:
      end_step: last step (inclusive) at which the masks may change.
      begin_step: first step of the schedule.
      frequency: steps between two updates (``Delta T``).
      drop_fraction: ``d0`` in ``(0, 1)``.
      anneal: ``"cosine"`` or ``"constant"`` (:func:`drop_fraction_schedule`).

    See the module docstring for an example.

    References:
      Evci, Gale, Menick, Castro, Elsen 2020 (ICML), "Rigging the Lottery: Making All
      Tickets Winners".
    """
    return _dst("rigl", RigLState, "gradient", begin_step=begin_step, end_step=end_step,
                frequency=frequency, drop_fraction=drop_fraction, anneal=anneal)

