"""Modal labels, Pruning Identified Exemplars, and the dense-vs-dense null.

An example is a **PIE** at a sparsity level when the modal (most frequent) predicted label of
the population pruned to that level differs from the modal label of the dense population
(Hooker et al. 2019). Populations are finite, so two *dense* populations disagree on some
examples too; :func:`pie_null` draws two disjoint dense sub-populations and a pruned one of
the same size ``m`` many times and reports the PIE share, the dense-vs-dense share (the
null) and their difference (the excess), so a report can say how much of the "PIE" share is
population noise.

**Tie rules** for the mode (:data:`TIE_RULES`):

* ``"prob"`` (the default): among the classes with the most votes, the one with the highest
  mean predicted probability over the members; exact ties of that mean go to the smallest
  class id. It uses what the members say about the tied classes instead of an arbitrary
  order of class ids, so it does not systematically push ties towards one end of the label
  range (with ``"largest"``, an example the population splits 15 / 15 between classes 3
  and 8 is always an "8": a bias that shows up as PIEs of particular classes).
* ``"largest"``: the largest class id — what the original PIE code does.
* ``"smallest"``: the smallest class id (``argmax`` order).

>>> pred = jnp.array([[1, 2], [2, 2], [1, 0], [2, 1]])  # 4 members, 2 examples
>>> modal_labels(pred, num_classes=3, tie="largest").tolist()
[2, 2]
>>> modal_labels(pred, num_classes=3, tie="smallest").tolist()
[1, 2]

References:
  Hooker, Courville, Clark, Dauphin, Frome 2019, "What Do Compressed Deep Neural Networks
  Forget?" (arXiv:1911.05248): PIEs, 30 models per level, modal labels.
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple, get_args

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.forgetting.predictions import Population, check_comparable, check_members

TieRule = Literal["prob", "largest", "smallest"]
TIE_RULES: tuple[str, ...] = get_args(TieRule)


def label_counts(predicted: jax.Array, *, num_classes: int) -> jax.Array:
    """int32 ``[N, C]``: how many of the ``K`` members predict each class for each example.

    >>> label_counts(jnp.array([[0, 1], [0, 0]]), num_classes=2).tolist()
    [[2, 0], [1, 1]]
    """
    return jnp.sum(jax.nn.one_hot(predicted, num_classes, dtype=jnp.int32), axis=0)


def _check_tie(tie: str, probs) -> None:
    if tie not in TIE_RULES:
        raise ValueError(f"tie must be one of {TIE_RULES}, got {tie!r}")
    if tie == "prob" and probs is None:
        raise ValueError("tie='prob' breaks ties by the members' mean probability: pass probs "
                         "(a population with logits or probs), or choose tie='smallest' / "
                         "'largest'")


@functools.partial(jax.jit, static_argnames=("num_classes", "tie"))
def _modes(predicted, probs, *, num_classes, tie):
    counts = label_counts(predicted, num_classes=num_classes)
    if tie == "smallest":
        return jnp.argmax(counts, axis=-1).astype(jnp.int32)
    if tie == "largest":
        return (num_classes - 1 - jnp.argmax(counts[:, ::-1], axis=-1)).astype(jnp.int32)
    top = counts == jnp.max(counts, axis=-1, keepdims=True)
    mean = jnp.mean(probs, axis=0)
    return jnp.argmax(jnp.where(top, mean, -jnp.inf), axis=-1).astype(jnp.int32)


def modal_labels(
    predicted: jax.Array,
    *,
    num_classes: int,
    tie: TieRule = "prob",
    probs: jax.Array | None = None,
) -> jax.Array:
    """int32 ``[N]``: each example's most frequent predicted label over the members.

    Args:
      predicted: int ``[K, N]`` predicted labels.
      num_classes: ``C``.
      tie: ``"prob"`` (default), ``"largest"`` or ``"smallest"`` (module docstring).
      probs: float ``[K, N, C]`` probabilities; required by ``tie="prob"``.

    >>> pred = jnp.array([[0, 1], [1, 1]])
    >>> probs = jnp.array([[[0.6, 0.4], [0.1, 0.9]], [[0.45, 0.55], [0.2, 0.8]]])
    >>> modal_labels(pred, num_classes=2, probs=probs).tolist()  # 1-1 tie: mean p(0)=0.525
    [0, 1]
    """
    _check_tie(tie, probs)
    return _modes(jnp.asarray(predicted), None if tie != "prob" else jnp.asarray(probs),
                  num_classes=num_classes, tie=tie)


def population_modes(pop: Population, *, tie: TieRule = "prob") -> jax.Array:
    """:func:`modal_labels` of a :class:`Population` (int32 ``[N]``)."""
    if tie == "prob" and pop.kind == "none":
        raise ValueError(f"population {pop.name!r} stores no logits or probabilities, so "
                         "tie='prob' cannot break ties: use tie='smallest' or 'largest'")
    return modal_labels(pop.predicted, num_classes=pop.num_classes, tie=tie,
                        probs=pop.probs if tie == "prob" else None)


class PIE(NamedTuple):
    """Pruning (or compression) identified exemplars of one population against the dense one.

    Attributes:
      mask: bool ``[N]``: the modal labels differ (the example is a PIE).
      dense_mode, pruned_mode: int32 ``[N]`` modal labels.
      pruned_right: bool ``[N]``: PIEs whose pruned modal label is the true label.
      dense_right: bool ``[N]``: PIEs whose dense modal label is the true label.
      share: float, fraction of examples that are PIEs.
    """

    mask: jax.Array
    dense_mode: jax.Array
    pruned_mode: jax.Array
    pruned_right: jax.Array
    dense_right: jax.Array
    share: float


def pie(dense: Population, pruned: Population, *, tie: TieRule = "prob") -> PIE:
    """The PIEs of ``pruned`` against ``dense``: examples whose modal labels differ.

    Both directions are reported: ``dense_right`` (what pruning lost) and ``pruned_right``
    (PIEs that the pruned population gets right). Works for any compressed variant (a
    quantised population gives the *modal CIEs* of Hooker et al. 2020).

    >>> lab = jnp.array([0, 1, 1])
    >>> d = forgetting.population("dense", labels=lab, predicted=jnp.array([[0, 1, 0]] * 3),
    ...                           num_classes=2)
    >>> p = forgetting.population("pruned", labels=lab, predicted=jnp.array([[1, 1, 1]] * 3),
    ...                           num_classes=2)
    >>> r = pie(d, p, tie="smallest")
    >>> r.mask.tolist(), r.dense_right.tolist(), r.pruned_right.tolist()
    ([True, False, True], [True, False, False], [False, False, True])

    References:
      Hooker et al. 2019, "What Do Compressed Deep Neural Networks Forget?".
    """
    check_comparable(dense, pruned)
    dm = population_modes(dense, tie=tie)
    pm = population_modes(pruned, tie=tie)
    mask = dm != pm
    return PIE(mask, dm, pm, mask & (pm == dense.labels), mask & (dm == dense.labels),
               float(jnp.mean(mask.astype(jnp.float32))))


def subset_accuracy(pop: Population, subset: jax.Array) -> jax.Array:
    """float32 ``[K]``: each member's accuracy on the examples where ``subset`` is true.

    NaN when ``subset`` is empty.
    """
    subset = jnp.asarray(subset, bool)
    if subset.shape != (pop.num_examples,):
        raise ValueError(f"subset has shape {tuple(subset.shape)}, population {pop.name!r} has "
                         f"{pop.num_examples} examples")
    w = subset.astype(jnp.float32)
    n = jnp.sum(w)
    hits = jnp.sum(pop.correct.astype(jnp.float32) * w[None, :], axis=1)
    return jnp.where(n > 0, hits / jnp.maximum(n, 1.0), jnp.nan)


class PIENull(NamedTuple):
    """Draws of the PIE share against the dense-vs-dense null at one sub-population size.

    Attributes:
      size: members per sub-population (``m``).
      pie: float32 ``[B]``: share of examples where a random ``m`` pruned members' mode
        differs from the mode of a random ``m`` dense members (dense half A).
      null: float32 ``[B]``: share where dense half A's mode differs from the mode of a
        disjoint random ``m`` dense members (dense half B) — the same statistic between
        two dense populations.
      excess: float32 ``[B]``: ``pie - null`` per draw (paired: the same dense half A).
    """

    size: int
    pie: jax.Array
    null: jax.Array
    excess: jax.Array

    def summary(self, level: float = 0.95) -> dict[str, float]:
        """Means over draws and percentile intervals: ``{"pie", "pie_lo", "pie_hi", "null",
        ..., "excess", "excess_lo", "excess_hi", "excess_le0", "size", "draws"}``.

        ``excess_le0`` is the fraction of draws whose excess is ``<= 0`` (a one-sided
        resampling p-value for "no PIEs beyond the null"; NaN without a pruned population).
        """
        out: dict[str, float] = {"size": self.size, "draws": int(self.pie.shape[0])}
        for name in ("pie", "null", "excess"):
            x = np.asarray(getattr(self, name), np.float64)
            lo, hi = interval(x, level)
            out.update({name: float(x.mean()), f"{name}_lo": lo, f"{name}_hi": hi})
        excess = np.asarray(self.excess, np.float64)
        out["excess_le0"] = float(np.mean(excess <= 0)) if not np.isnan(excess).any() \
            else float("nan")
        return out


def interval(x: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of the draws ``x`` (linear interpolation)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    q = (1 - level) / 2
    lo, hi = np.quantile(np.asarray(x, np.float64), [q, 1 - q])
    return float(lo), float(hi)


@functools.partial(jax.jit, static_argnames=("size", "num_draws", "num_classes", "tie",
                                             "batch_size", "paired"))
def _null_draws(key, d_pred, d_probs, p_pred, p_probs, *, size, num_draws, num_classes, tie,
                batch_size, paired):
    kd, kp = d_pred.shape[0], None if p_pred is None else p_pred.shape[0]

    def modes(pred, probs, idx):
        sub_probs = None if probs is None else jnp.take(probs, idx, axis=0)
        return _modes(jnp.take(pred, idx, axis=0), sub_probs, num_classes=num_classes, tie=tie)

    def draw(b):
        k1, k2 = jax.random.split(jax.random.fold_in(key, b))
        perm = jax.random.permutation(k1, kd)
        a = modes(d_pred, d_probs, perm[:size])
        other = modes(d_pred, d_probs, perm[size:2 * size])
        null = jnp.mean((a != other).astype(jnp.float32))
        if p_pred is None:
            return null, jnp.float32(jnp.nan)
        sel = perm[size:2 * size] if paired else jax.random.permutation(k2, kp)[:size]
        p = modes(p_pred, p_probs, sel)
        return null, jnp.mean((a != p).astype(jnp.float32))

    return jax.lax.map(draw, jnp.arange(num_draws), batch_size=batch_size)


def pie_null(
    dense: Population,
    pruned: Population | None = None,
    *,
    key: jax.Array,
    size: int | None = None,
    num_draws: int = 1000,
    tie: TieRule = "prob",
    paired: bool = False,
    batch_size: int = 25,
) -> PIENull:
    """The PIE share and the dense-vs-dense null at sub-population size ``m``, ``num_draws`` times.

    Each draw permutes the dense members and takes two disjoint halves A and B of ``m``
    members (``m = size``, default ``min(K_dense // 2, K_pruned)``), and ``m`` random pruned
    members (without replacement). The null of the draw is the share of examples where the
    modes of A and B differ; the PIE share, where the modes of A and the pruned members
    differ. Both statistics compare two populations of ``m`` members each, so their
    difference is the PIE share in excess of population noise. The spread over draws is a
    member-resampling interval (see :meth:`PIENull.summary`): it shows how much the
    statistics move with the choice of members, for the members that were trained.

    ``paired=True`` is for a compressed copy of the dense population itself (member ``k``
    of ``pruned`` is dense member ``k`` quantised, say): the compressed members of a draw
    are then the copies of dense half B, so ``excess`` is the share that compressing B
    adds to the A-vs-B disagreement. Independently trained populations (pruned levels)
    use the default ``paired=False``.

    Args:
      dense: the dense population (at least 2 members).
      pruned: the pruned (compressed) population, or ``None`` for the null alone.
      key: PRNG key of the draws.
      size: members per sub-population; at most ``K_dense // 2`` (and ``K_pruned``).
      num_draws: number of draws ``B``.
      tie: tie rule of the modes (:data:`TIE_RULES`).
      paired: ``pruned`` is a member-by-member compressed copy of ``dense`` (see above).
      batch_size: draws computed together (memory: ``batch_size * m * N * C`` floats).

    Returns:
      :class:`PIENull` with ``[B]`` arrays (``pie`` / ``excess`` NaN without ``pruned``).

    >>> lab = jnp.zeros(4, jnp.int32)
    >>> pred = jnp.array([[0, 0, 1, 1], [0, 0, 1, 0], [0, 1, 1, 1], [0, 1, 1, 0]])
    >>> d = forgetting.population("dense", labels=lab, predicted=pred, num_classes=2)
    >>> r = pie_null(d, key=jax.random.key(0), size=1, num_draws=4, tie="smallest")
    >>> r.null.shape, bool(jnp.all(r.null > 0))  # any two members disagree on 1-2 examples
    ((4,), True)
    """
    check_members(dense, 2, "the dense-vs-dense null")
    if tie not in TIE_RULES:
        raise ValueError(f"tie must be one of {TIE_RULES}, got {tie!r}")
    for pop in (dense, pruned):
        if tie == "prob" and pop is not None and pop.kind == "none":
            raise ValueError(f"population {pop.name!r} stores no logits or probabilities, so "
                             "tie='prob' cannot break ties: use tie='smallest' or 'largest'")
    m = dense.size // 2 if pruned is None else min(dense.size // 2, pruned.size)
    if pruned is not None:
        check_comparable(dense, pruned)
    size = m if size is None else int(size)
    if not 1 <= size <= dense.size // 2:
        raise ValueError(f"size must be in [1, {dense.size // 2}] (half the {dense.size} members "
                         f"of {dense.name!r}), got {size}")
    if pruned is not None and size > pruned.size:
        raise ValueError(f"size {size} is larger than population {pruned.name!r} "
                         f"({pruned.size} members)")
    if paired and (pruned is None or not np.array_equal(pruned.seeds, dense.seeds)):
        raise ValueError("paired=True needs a compressed population whose members (seeds) are "
                         f"those of {dense.name!r}, in the same order")
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    probs = (lambda p: p.probs) if tie == "prob" else (lambda p: None)
    null, pie_share = _null_draws(
        key, dense.predicted, probs(dense),
        None if pruned is None else pruned.predicted,
        None if pruned is None else probs(pruned),
        size=size, num_draws=int(num_draws), num_classes=dense.num_classes, tie=tie,
        batch_size=min(int(batch_size), int(num_draws)), paired=bool(paired))
    return PIENull(size, pie_share, null, pie_share - null)
