"""Pruning by score at a fixed step, at initialisation, and gradually: one-shot, SNIP,
SynFlow, random ERK, GMP.

* :func:`one_shot` prunes once, at ``step``, with any criterion and any distribution that
  :func:`jaxsparse.prune` supports (global, layerwise, ERK, per-leaf rates, N:M, blocks).
* :func:`snip` and :func:`synflow` are the at-init criteria of :mod:`jaxsparse.scores` as
  pruners that act at step 0 (SNIP with the trainer's dense gradient of the first batch);
  :func:`synflow_masks` is iterative SynFlow as a function of masks.
* :func:`random_erk` builds fixed random ERK masks to start from (train them with
  :func:`jaxsparse.pruners.static`).
* :func:`gmp` is gradual magnitude pruning (Zhu & Gupta 2017): the cubic schedule
  :func:`gmp_schedule`, pruning every ``frequency`` steps, per layer (uniform, ERK, per-leaf
  overrides) or global.

A *criterion* is ``criterion(params, *, grads, key) -> scores`` (higher = keep):
:func:`magnitude_score` (default), :func:`snip_score`, :func:`random_score`, or any function
of that shape.

>>> import jaxsparse as js
>>> from jaxsparse import pruners
>>> params = {"w": jnp.arange(1.0, 9.0).reshape(2, 4), "b": jnp.zeros(4)}
>>> p = pruners.one_shot(step=0, sparsity=0.75)
>>> masks = js.ones_like(params)
>>> masks, state = p.update(masks, p.init(params, masks), params, grads=None,
...                         step=jnp.int32(0), key=jax.random.key(0))
>>> masks["w"].astype(int)
Array([[0, 0, 0, 0],
       [0, 0, 1, 1]], dtype=int32)

References:
  Zhu & Gupta 2017, "To prune, or not to prune: exploring the efficacy of pruning for model
  compression" (gradual magnitude pruning). Lee, Ajanthan, Torr 2019 (ICLR), "SNIP". Tanaka et
  al. 2020 (NeurIPS), "Pruning neural networks without any data by iteratively conserving
  synaptic flow". Evci et al. 2020 (ICML), "Rigging the Lottery" (ERK).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse import masks as masks_lib
from jaxsparse import rules as rules_lib
from jaxsparse import scores as scores_lib
from jaxsparse import select
from jaxsparse.pruners import base
from jaxsparse.typing import Masks, Params, PyTree

Criterion = Callable[..., PyTree]


# ---------------------------------------------------------------------------------------
# Criteria: criterion(params, *, grads, key) -> scores.


def magnitude_score(
    params: PyTree, *, grads: PyTree = None, key: jax.Array | None = None
) -> PyTree:
    """``|w|`` (the default criterion; ``grads`` and ``key`` unused)."""
    del grads, key
    return scores_lib.magnitude(params)


def snip_score(params: PyTree, *, grads: PyTree, key: jax.Array | None = None) -> PyTree:
    """SNIP connection sensitivity ``|g * w|`` from the trainer's dense gradient ``grads``.

    >>> snip_score({"w": jnp.array([2.0, -1.0])}, grads={"w": jnp.array([0.5, 3.0])})["w"]
    Array([1., 3.], dtype=float32)
    """
    del key
    if grads is None:
        raise ValueError("snip_score needs grads= (the dense gradient of a batch)")
    return jax.tree.map(lambda g, w: jnp.abs(jnp.asarray(g, jnp.float32) * w), grads, params)


def random_score(params: PyTree, *, grads: PyTree = None, key: jax.Array) -> PyTree:
    """Uniform random scores (:func:`jaxsparse.scores.random`): a random mask."""
    del grads
    return scores_lib.random(params, key=key)


# ---------------------------------------------------------------------------------------
# One-shot and at-init pruners.


class OneShotState(NamedTuple):
    """State of :func:`one_shot`, :func:`snip` and :func:`synflow`.

    Attributes:
      count: mask updates done (0 before ``step``, 1 after).
      leaf_sizes: entries of each prunable leaf at ``init`` (which model the state is for).
    """

    count: jax.Array
    leaf_sizes: jax.Array


def _check_step(name: str, step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
        raise ValueError(f"{name}: step must be an integer >= 0, got {step!r}")
    return int(step)


def _check_reachable(name: str, masks: PyTree, *, sparsity: Any, scope: str,
                     allocation: str | None, extra: str = "") -> None:
    """Error when a target sparsity keeps more than is left (pruned entries never revive)."""
    if sparsity is None or isinstance(sparsity, jax.core.Tracer):
        return
    leaves = base.prunable(masks, masks)
    if not leaves or any(isinstance(m, jax.core.Tracer) for m in leaves):
        return
    paths = base.leaf_paths(masks)
    kept = [int(np.sum(np.asarray(m))) for m in leaves]
    sizes = [int(np.size(m)) for m in leaves]
    s = float(sparsity)
    if allocation == "erk":
        targets = select.erk_kept([np.shape(m) for m in leaves], s)
    elif allocation == "uniform" or scope == "layerwise":
        targets = [n - select.num_pruned(s, n) for n in sizes]
    else:
        total = sum(sizes)
        target = total - select.num_pruned(s, total)
        if target > sum(kept):
            raise ValueError(
                f"{name}: target sparsity {s}{extra} keeps {target} of {total} entries, but the "
                f"masks keep only {sum(kept)} (sparsity {1 - sum(kept) / total:.6f}); pruned "
                "entries are never revived, so the target cannot be reached"
            )
        return
    how = "ERK" if allocation == "erk" else "uniform"
    for path, t, k, n in zip(paths, targets, kept, sizes, strict=True):
        if t > k:
            raise ValueError(
                f"{name}: the {how} distribution of sparsity {s}{extra} keeps {t} of {n} entries "
                f"of leaf {path!r}, but its mask keeps only {k}; pruned entries are never "
                "revived, so the target cannot be reached"
            )


def one_shot(
    *,
    step: int,
    sparsity: float | None = None,
    fraction_of_remaining: float | None = None,
    rates: rules_lib.Rules | None = None,
    scope: Literal["global", "layerwise"] = "global",
    allocation: Literal["uniform", "erk"] | None = None,
    structure: Any = None,
    criterion: Criterion = magnitude_score,
) -> base.Pruner:
    """Prunes once, at iteration ``step``, by ``criterion`` with :func:`jaxsparse.prune`.

    Args:
      step: the iteration (0-based) at whose start the masks change.
      sparsity, fraction_of_remaining, rates, scope, allocation, structure: the distribution,
        exactly as :func:`jaxsparse.prune` takes them (a target overall sparsity; or a
        fraction of the entries still kept; or per-leaf path rules of fractions of the
        remaining; global or layerwise; ``"erk"`` / ``"uniform"`` allocation;
        :class:`jaxsparse.NM` or :class:`jaxsparse.Block` structure).
      criterion: ``criterion(params, *, grads, key) -> scores``, higher = keep; default
        :func:`magnitude_score`. ``grads`` is the trainer's dense gradient of the batch.

    Returns:
      A :class:`~jaxsparse.pruners.Pruner` with ``due`` true at ``step`` only.

    >>> import jaxsparse as js
    >>> params = {"w": jnp.array([[4.0, -1.0], [0.5, 3.0]]), "b": jnp.ones(2)}
    >>> p = one_shot(step=2, structure=js.NM(1, 2))
    >>> m = js.ones_like(params)
    >>> m, _ = p.update(m, p.init(params, m), params, grads=None, step=jnp.int32(2),
    ...                 key=jax.random.key(0))
    >>> m["w"].tolist()  # 1 of every 2 along the reduction (input) axis
    [[True, False], [False, True]]
    """
    name = "one_shot"
    step = _check_step(name, step)
    leaf_structure = structure is not None and hasattr(structure, "leaf_mask")
    given = [k for k, v in (("sparsity", sparsity), ("fraction_of_remaining",
                                                      fraction_of_remaining),
                            ("rates", rates)) if v is not None]
    if leaf_structure and given:
        raise ValueError(f"{name}: structure {structure!r} decides the counts; do not also give "
                         f"{given}")
    if not leaf_structure and len(given) != 1:
        raise ValueError(f"{name}: give exactly one of sparsity=, fraction_of_remaining= or "
                         f"rates=; got {given or 'none'}")
    if sparsity is not None:
        base.check_sparsity(name, sparsity)
    if fraction_of_remaining is not None:
        f = float(fraction_of_remaining)
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"{name}: fraction_of_remaining must be in [0, 1], got "
                             f"{fraction_of_remaining!r}")
    if not callable(criterion):
        raise TypeError(f"{name}: criterion must be callable, got {criterion!r}")
    dist = dict(sparsity=sparsity, fraction_of_remaining=fraction_of_remaining, rates=rates,
                scope=scope, allocation=allocation, structure=structure)
    due = base.at_step(step)

    def init(params, masks):
        base.check_masks(name, params, masks)
        if structure is None:  # (block counts are checked by prune itself)
            _check_reachable(name, masks, sparsity=sparsity, scope=scope,
                             allocation=allocation)
        return OneShotState(jnp.zeros((), jnp.int32), jnp.asarray(base.prunable_sizes(masks)))

    def update(masks, state, params, *, grads, step, key):
        base.check_masks(name, params, masks)
        base.check_state(name, state, OneShotState, masks)

        def run(masks):
            return select.prune(criterion(params, grads=grads, key=key), masks, **dist)

        now = due(step)
        masks = base.cond(now, run, lambda m: m, masks)
        return masks, state._replace(count=state.count + now.astype(jnp.int32))

    return base.Pruner(init, update, due)


def snip(
    sparsity: float,
    *,
    scope: Literal["global", "layerwise"] = "global",
    allocation: Literal["uniform", "erk"] | None = None,
) -> base.Pruner:
    """SNIP at step 0: keeps the top ``|g * w|`` with the trainer's dense gradient of the
    first batch (:func:`one_shot` with :func:`snip_score`).

    >>> import jaxsparse as js
    >>> params = {"w": jnp.array([[2.0, 1.0], [1.0, 1.0]])}
    >>> grads = {"w": jnp.array([[0.1, 3.0], [1.0, 0.0]])}
    >>> p = snip(0.5)
    >>> m = js.ones_like(params)
    >>> m, _ = p.update(m, p.init(params, m), params, grads=grads, step=jnp.int32(0),
    ...                 key=jax.random.key(0))
    >>> m["w"].tolist()
    [[False, True], [True, False]]

    References:
      Lee, Ajanthan, Torr 2019 (ICLR), "SNIP: Single-shot Network Pruning based on Connection
      Sensitivity".
    """
    return one_shot(step=0, sparsity=sparsity, scope=scope, allocation=allocation,
                    criterion=snip_score)


def synflow(
    apply_fn: Callable[[PyTree, jax.Array], Any],
    input_shape: Sequence[int],
    sparsity: float,
    *,
    iterations: int = 100,
    rescale: bool | None = None,
) -> base.Pruner:
    """Iterative SynFlow at step 0 (:func:`synflow_masks`), data-free.

    Args:
      apply_fn: deterministic ``apply_fn(params, x) -> outputs`` (inference mode), e.g.
        ``lambda p, x: fn.apply_fn(p, fn.model_state, x, train=False, key=None)[0]`` for a
        :func:`jaxsparse.models.functional` model.
      input_shape: the all-ones input's shape, batch axis included, e.g. ``(1, 28, 28, 1)``.
      sparsity: target overall sparsity (global scope), reached exactly.
      iterations: score-and-prune rounds (the paper's exponential schedule).
      rescale: see :func:`jaxsparse.scores.synflow`.

    >>> import jaxsparse as js
    >>> params = {"w1": jnp.ones((4, 4)), "w2": jnp.ones((4, 2))}
    >>> p = synflow(lambda p, x: x @ p["w1"] @ p["w2"], (1, 4), 0.5, iterations=2)
    >>> m = js.ones_like(params)
    >>> m, _ = p.update(m, p.init(params, m), params, grads=None, step=jnp.int32(0),
    ...                 key=jax.random.key(0))
    >>> int(js.count_kept(m))
    12

    References:
      Tanaka, Kunin, Yamins, Ganguli 2020 (NeurIPS), "Pruning neural networks without any
      data by iteratively conserving synaptic flow".
    """
    name = "synflow"
    base.check_sparsity(name, sparsity)
    if isinstance(iterations, bool) or int(iterations) != iterations or iterations < 1:
        raise ValueError(f"{name}: iterations must be an integer >= 1, got {iterations!r}")
    if not callable(apply_fn):
        raise TypeError(f"{name}: apply_fn must be callable, got {apply_fn!r}")
    shape = tuple(int(d) for d in input_shape)
    due = base.at_step(0)

    def init(params, masks):
        base.check_masks(name, params, masks)
        _check_reachable(name, masks, sparsity=sparsity, scope="global", allocation=None)
        return OneShotState(jnp.zeros((), jnp.int32), jnp.asarray(base.prunable_sizes(masks)))

    def update(masks, state, params, *, grads, step, key):
        del grads, key
        base.check_masks(name, params, masks)
        base.check_state(name, state, OneShotState, masks)

        def run(masks):
            return synflow_masks(apply_fn, params, shape, masks, sparsity=sparsity,
                                 iterations=int(iterations), rescale=rescale)

        now = due(step)
        masks = base.cond(now, run, lambda m: m, masks)
        return masks, state._replace(count=state.count + now.astype(jnp.int32))

    return base.Pruner(init, update, due)


def synflow_masks(
    apply_fn: Callable[[Params, jax.Array], Any],
    params: Params,
    input_shape: Sequence[int],
    masks: Masks,
    *,
    sparsity: float | jax.Array,
    iterations: int = 100,
    rescale: bool | None = None,
) -> Masks:
    """Iterative SynFlow: ``iterations`` rounds of score-then-prune, global scope.

    Round ``j = 1..iterations`` prunes to sparsity ``1 - (1 - sparsity) ** (j / iterations)``
    (the paper's exponential schedule), rescoring with the current masks each time; the last
    round reaches ``sparsity`` exactly (rounding rule of :func:`jaxsparse.prune`). The scores
    are :func:`jaxsparse.scores.synflow`'s; :func:`synflow` is this as a pruner at step 0.

    >>> apply = lambda p, x: x @ p["w"]
    >>> m = synflow_masks(apply, {"w": jnp.ones((4, 4))}, (1, 4),
    ...                   {"w": jnp.ones((4, 4), bool)}, sparsity=0.5, iterations=2)
    >>> int(m["w"].sum())
    8
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")

    def body(j, m):
        s = 1.0 - (1.0 - jnp.asarray(sparsity, jnp.float32)) ** ((j + 1) / iterations)
        s = jnp.where(j == iterations - 1, jnp.asarray(sparsity, jnp.float32), s)
        sc = scores_lib.synflow(apply_fn, params, input_shape, masks=m, rescale=rescale)
        return select.prune(sc, m, sparsity=s)

    return jax.lax.fori_loop(0, iterations, body, masks)


def random_erk(
    params: PyTree,
    *,
    sparsity: float | jax.Array,
    key: jax.Array,
    masks: PyTree | None = None,
    rules: rules_lib.Rules | None = None,
) -> PyTree:
    """Random masks with the ERK distribution (exact counts, :func:`jaxsparse.select.erk_kept`).

    The static-sparse baseline of the RigL paper: train them with
    :func:`jaxsparse.pruners.static` (or start SET / RigL from them). jit/vmap-able.

    Args:
      params: the params (only shapes are read).
      sparsity: overall target sparsity over the prunable leaves.
      key: randomness.
      masks: which entries may be kept; default :func:`jaxsparse.ones_like` ``(params, rules)``.
      rules: prunable-leaf rules for the default masks.

    >>> import jaxsparse as js
    >>> params = {"fc": jnp.zeros((30, 40)), "out": jnp.zeros((40, 2)), "bias": jnp.zeros(2)}
    >>> m = random_erk(params, sparsity=0.9, key=jax.random.key(0))
    >>> [int(m[k].sum()) for k in ("fc", "out")], select.erk_kept([(30, 40), (40, 2)], 0.9)
    ([80, 48], [80, 48])

    References:
      Evci et al. 2020 (ICML), "Rigging the Lottery: Making All Tickets Winners".
    """
    if masks is None:
        masks = masks_lib.ones_like(params, rules)
    elif rules is not None:
        raise ValueError("random_erk: give masks= or rules=, not both")
    base.check_masks("random_erk", params, masks)
    return select.prune(scores_lib.random(params, key=key), masks, sparsity=sparsity,
                        allocation="erk")


# ---------------------------------------------------------------------------------------
# Gradual magnitude pruning.


def gmp_schedule(
    step: int | jax.Array,
    *,
    final_sparsity: float | jax.Array,
    begin_step: int,
    end_step: int,
    initial_sparsity: float | jax.Array = 0.0,
) -> jax.Array:
    """Zhu & Gupta's cubic sparsity at ``step`` (float32), for any step.

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n dt))**3`` with ``t0 = begin_step`` and
    ``t0 + n dt = end_step``; ``t`` is clipped into ``[begin_step, end_step]`` (``s_i`` before,
    ``s_f`` after). Plain function of the step: jit/vmap-able.

    >>> [round(float(gmp_schedule(t, final_sparsity=0.9, begin_step=0, end_step=100)), 4)
    ...  for t in (0, 50, 100, 200)]
    [0.0, 0.7875, 0.9, 0.9]

    References:
      Zhu & Gupta 2017, "To prune, or not to prune" (eq. 1).
    """
    span = max(int(end_step) - int(begin_step), 1)
    t = jnp.clip(jnp.asarray(step, jnp.int32), begin_step, end_step) - begin_step
    u = 1.0 - t.astype(jnp.float32) / jnp.float32(span)
    s_i = jnp.asarray(initial_sparsity, jnp.float32)
    s_f = jnp.asarray(final_sparsity, jnp.float32)
    return s_f + (s_i - s_f) * (u * u * u)


class GMPState(NamedTuple):
    """State of :func:`gmp`.

    Attributes:
      count: pruning steps done.
      leaf_sizes: entries of each prunable leaf at ``init`` (which model the state is for).
    """

    count: jax.Array
    leaf_sizes: jax.Array


def gmp(
    *,
    final_sparsity: float,
    begin_step: int,
    end_step: int,
    frequency: int,
    initial_sparsity: float = 0.0,
    scope: Literal["layerwise", "global"] = "layerwise",
    allocation: Literal["uniform", "erk"] = "uniform",
    overrides: rules_lib.Rules | None = None,
) -> base.Pruner:
    """Gradual magnitude pruning (Zhu & Gupta 2017) on the cubic :func:`gmp_schedule`.

    Prunes at the start of every step ``t`` with ``begin_step <= t <= end_step`` and
    ``(t - begin_step) % frequency == 0`` (tfmot's ``PolynomialDecay`` semantics: the final
    sparsity is reached at the last such step, exactly when ``end_step - begin_step`` is a
    multiple of ``frequency``). Each pruning step sets the target ``s_t`` and keeps, by
    ``|w|``, the top entries among those still kept, with exact counts (the rounding rule of
    :func:`jaxsparse.num_pruned`; ties keep the lower flat index, see
    :func:`jaxsparse.select.keep_top`):

    * ``scope="layerwise"``, ``allocation="uniform"``: every prunable leaf keeps
      ``n - num_pruned(s_t, n)`` of its ``n`` entries;
    * ``allocation="erk"``: leaf counts :func:`jaxsparse.select.erk_kept` at ``s_t``;
    * ``scope="global"``: one threshold over all leaves, ``N - num_pruned(s_t, N)`` kept;
    * ``overrides=[(path regex, final sparsity), ...]`` (first match wins): a matching leaf
      follows its own schedule from ``min(initial_sparsity, f)`` to ``f`` (``0.0``: never
      pruned); the other leaves share ``final_sparsity`` as above.

    A leaf already sparser than its target keeps what it has (pruned entries never revive);
    ``init`` refuses masks for which a final target cannot be reached.

    >>> import jaxsparse as js
    >>> params = {"w": jnp.arange(1.0, 101.0).reshape(10, 10)}
    >>> p = gmp(final_sparsity=0.9, begin_step=0, end_step=100, frequency=50)
    >>> m = js.ones_like(params)
    >>> state = p.init(params, m)
    >>> kept = []
    >>> for t in (0, 50, 100):
    ...     m, state = p.update(m, state, params, grads=None, step=jnp.int32(t),
    ...                         key=jax.random.key(0))
    ...     kept.append(int(m["w"].sum()))
    >>> kept  # 100 - num_pruned(s_t, 100) at s_t = 0, 0.7875, 0.9
    [100, 21, 10]

    References:
      Zhu & Gupta 2017, "To prune, or not to prune: exploring the efficacy of pruning for
      model compression".
    """
    name = "gmp"
    base.check_schedule(name, begin=begin_step, end=end_step, frequency=frequency)
    base.check_sparsity(name, final_sparsity, "final_sparsity")
    base.check_sparsity(name, initial_sparsity, "initial_sparsity")
    if float(initial_sparsity) > float(final_sparsity):
        raise ValueError(f"{name}: initial_sparsity ({initial_sparsity}) is above final_sparsity "
                         f"({final_sparsity})")
    if scope not in ("layerwise", "global"):
        raise ValueError(f"{name}: scope must be 'layerwise' or 'global', got {scope!r}")
    if allocation not in ("uniform", "erk"):
        raise ValueError(f"{name}: allocation must be 'uniform' or 'erk', got {allocation!r}")
    if scope == "global" and allocation == "erk":
        raise ValueError(f"{name}: allocation='erk' is per layer; it cannot be combined with "
                         "scope='global'")
    override_rules = rules_lib.check_rules(overrides, "overrides")
    for pattern, value in override_rules:
        base.check_sparsity(name, value, f"override for {pattern!r}")
    due = base.every(frequency, begin=begin_step, end=end_step)
    sched = dict(begin_step=begin_step, end_step=end_step)

    def plan(masks):
        """Static: per prunable leaf its override (or None), and the leaf order by group."""
        paths, leaves = base.leaf_paths(masks), base.prunable(masks, masks)
        used = [False] * len(override_rules)
        final = []
        for path, leaf in zip(paths, leaves, strict=True):
            i = rules_lib.match_index(override_rules, path, leaf)
            if i is not None:
                used[i] = True
            final.append(None if i is None else float(override_rules[i][1]))
        unused = [override_rules[i][0] for i, u in enumerate(used) if not u]
        if unused:
            raise ValueError(f"{name}: override pattern(s) {unused!r} match no prunable leaf; "
                             f"prunable leaf paths are {paths!r}")
        shared = [i for i, f in enumerate(final) if f is None]
        own = [i for i, f in enumerate(final) if f is not None]
        if scope == "global":  # the shared leaves: one group, first; then one per override
            order = shared + own
            first = int(bool(shared))
            groups = [0] * len(shared) + list(range(first, first + len(own)))
        else:
            order = list(range(len(final)))
            groups = list(range(len(final)))
        return paths, final, shared, own, order, groups

    def targets(masks, s_step: Callable[[float, float], Any]):
        """Kept entries per group (in ``order``), given ``s_step(s_i, s_f) -> s_t``."""
        paths, final, shared, own, order, groups = plan(masks)
        leaves = base.prunable(masks, masks)
        sizes = [int(np.size(m)) for m in leaves]
        keep = {}
        s = s_step(float(initial_sparsity), float(final_sparsity))
        if shared:
            if scope == "global":
                total = sum(sizes[i] for i in shared)
                keep["global"] = total - select.num_pruned(s, total)
            elif allocation == "erk":
                erk = select.erk_kept([np.shape(leaves[i]) for i in shared], s)
                keep.update(zip(shared, list(erk), strict=True))
            else:
                for i in shared:
                    keep[i] = sizes[i] - select.num_pruned(s, sizes[i])
        for i in own:
            s_own = s_step(min(float(initial_sparsity), final[i]), final[i])
            keep[i] = sizes[i] - select.num_pruned(s_own, sizes[i])
        if scope == "global":
            out = ([keep["global"]] if shared else []) + [keep[i] for i in own]
        else:
            out = [keep[i] for i in order]
        return out, order, groups

    def init(params, masks):
        base.check_masks(name, params, masks)
        leaves = base.prunable(masks, masks)
        if leaves and not any(isinstance(m, jax.core.Tracer) for m in leaves):
            final_keep, order, groups = targets(masks, lambda s_i, s_f: s_f)
            kept = [int(np.sum(np.asarray(leaves[i]))) for i in order]
            have = np.zeros(max(groups) + 1, np.int64)
            np.add.at(have, groups, kept)
            paths = base.leaf_paths(masks)
            for g, want in enumerate(final_keep):
                if int(want) > have[g]:
                    members = [paths[order[j]] for j in range(len(order)) if groups[j] == g]
                    where = f"leaf {members[0]!r}" if len(members) == 1 else f"leaves {members}"
                    raise ValueError(
                        f"{name}: the final target keeps {int(want)} entries of {where}, but "
                        f"the masks keep only {int(have[g])}; pruned entries are never "
                        "revived, so the target cannot be reached"
                    )
        return GMPState(jnp.zeros((), jnp.int32), jnp.asarray(base.prunable_sizes(masks)))

    def update(masks, state, params, *, grads, step, key):
        del grads, key
        base.check_masks(name, params, masks)
        base.check_state(name, state, GMPState, masks)
        leaves = base.prunable(masks, masks)
        if not leaves:
            return masks, state
        weights = base.prunable(params, masks)

        def run(leaves):
            keep, order, groups = targets(
                masks, lambda s_i, s_f: gmp_schedule(step, initial_sparsity=s_i,
                                                     final_sparsity=s_f, **sched))
            new = select.keep_top([jnp.abs(weights[i]) for i in order],
                                [leaves[i] for i in order],
                                jnp.stack([jnp.asarray(k, jnp.int32) for k in keep]),
                                groups=groups)
            out = [None] * len(order)
            for j, i in enumerate(order):
                out[i] = new[j]
            return out

        now = due(step)
        new = base.cond(now, run, lambda x: list(x), list(leaves))
        return (base.replace_prunable(masks, new),
                state._replace(count=state.count + now.astype(jnp.int32)))

    return base.Pruner(init, update, due)
