"""A population's predictions on one split: the input of every forgetting analysis.

A :class:`Population` holds what ``K`` members (seeds of one variant: a sparsity level, a
quantised copy, ...) predicted on the same ``N`` examples of one split at one checkpoint:
the predicted labels ``[K, N]`` and, optionally, the logits or probabilities ``[K, N, C]``.
Build one with :func:`population` (which checks shapes and rejects NaN, naming the member
and the example) or load one from a per-example record (:mod:`jaxsparse.forgetting.records`).

>>> logits = jnp.array([[[2.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [3.0, 0.0]]])  # [K=2, N=2, C=2]
>>> pop = population("dense", labels=jnp.array([0, 1]), logits=logits)
>>> pop.predicted.tolist(), pop.size, pop.num_examples
([[0, 1], [0, 0]], 2, 2)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

VALUE_KINDS = ("logits", "probs", "none")


class Population(NamedTuple):
    """Predictions of ``K`` members on the same ``N`` examples of one split.

    Attributes:
      name: the variant (e.g. ``"sparsity=0.9"``, ``"dense"``, ``"int8"``).
      split: ``"train"``, ``"test"``, ...
      checkpoint: training step the predictions were made at (``-1``: unknown).
      seeds: int64 ``[K]`` host array, the members' seeds (or any member ids).
      example_ids: int64 ``[N]`` host array, the examples' ids (index in the split).
      labels: int32 ``[N]`` the labels the predictions are scored against.
      predicted: int32 ``[K, N]`` predicted labels.
      values: float32 ``[K, N, C]`` logits or probabilities, or ``None``.
      kind: what ``values`` holds: ``"logits"``, ``"probs"`` or ``"none"``.
      num_classes: ``C``.
    """

    name: str
    split: str
    checkpoint: int
    seeds: np.ndarray
    example_ids: np.ndarray
    labels: jax.Array
    predicted: jax.Array
    values: jax.Array | None
    kind: str
    num_classes: int

    @property
    def size(self) -> int:
        """Number of members ``K``."""
        return int(self.predicted.shape[0])

    @property
    def num_examples(self) -> int:
        """Number of examples ``N``."""
        return int(self.predicted.shape[1])

    @property
    def probs(self) -> jax.Array | None:
        """float32 ``[K, N, C]`` probabilities (softmax of the logits), or ``None``."""
        if self.kind == "logits":
            return jax.nn.softmax(self.values, axis=-1)
        return self.values if self.kind == "probs" else None

    @property
    def correct(self) -> jax.Array:
        """bool ``[K, N]``: member ``k`` predicts example ``n``'s label."""
        return self.predicted == self.labels[None, :]

    @property
    def accuracy(self) -> jax.Array:
        """float32 ``[K]``: each member's accuracy on the split."""
        return jnp.mean(self.correct.astype(jnp.float32), axis=1)


def population(
    name: str,
    *,
    labels: jax.Array,
    logits: jax.Array | None = None,
    probs: jax.Array | None = None,
    predicted: jax.Array | None = None,
    num_classes: int | None = None,
    example_ids: np.ndarray | None = None,
    seeds: np.ndarray | None = None,
    split: str = "test",
    checkpoint: int = -1,
) -> Population:
    """A checked :class:`Population` from predictions of ``K`` members on ``N`` examples.

    Give exactly one of ``logits`` / ``probs`` (``[K, N, C]``), or only ``predicted``
    (``[K, N]``, then ``num_classes`` is required). ``predicted`` defaults to the argmax of
    the values (lowest class id on ties, as ``jnp.argmax``).

    Args:
      name: the variant's name (used in every error message).
      labels: int ``[N]`` labels.
      logits, probs: float ``[K, N, C]``; NaN is an error naming the member and example.
      predicted: int ``[K, N]`` predicted labels (checked to lie in ``[0, C)``).
      num_classes: ``C``; default the values' last dimension.
      example_ids: ``[N]`` ids (default ``0..N-1``); must be unique.
      seeds: ``[K]`` member ids (default ``0..K-1``).
      split, checkpoint: where the predictions come from.

    Returns:
      The :class:`Population`, arrays on the default device.
    """
    if (logits is not None) and (probs is not None):
        raise ValueError(f"population {name!r}: give logits or probs, not both")
    values = logits if logits is not None else probs
    kind = "logits" if logits is not None else ("probs" if probs is not None else "none")
    labels = jnp.asarray(labels)
    if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"population {name!r}: labels must be an int [N] array, got "
                         f"{labels.dtype}{list(labels.shape)}")
    n = labels.shape[0]
    if values is not None:
        values = jnp.asarray(values, jnp.float32)
        if values.ndim != 3 or values.shape[1] != n:
            raise ValueError(f"population {name!r}: {kind} must be [K, N={n}, C], got shape "
                             f"{tuple(values.shape)}")
        check_finite(values, name=name, kind=kind, example_ids=example_ids, seeds=seeds)
        if num_classes is not None and num_classes != values.shape[2]:
            raise ValueError(f"population {name!r}: num_classes={num_classes} but {kind} have "
                             f"{values.shape[2]} classes")
        num_classes = int(values.shape[2])
        if predicted is None:
            predicted = jnp.argmax(values, axis=-1)
    if predicted is None:
        raise ValueError(f"population {name!r}: give logits, probs or predicted")
    if num_classes is None:
        raise ValueError(f"population {name!r}: num_classes is required with predicted only")
    predicted = jnp.asarray(predicted).astype(jnp.int32)
    if predicted.ndim != 2 or predicted.shape[1] != n:
        raise ValueError(f"population {name!r}: predicted must be [K, N={n}], got shape "
                         f"{tuple(predicted.shape)}")
    k = predicted.shape[0]
    if k < 1:
        raise ValueError(f"population {name!r} has no members")
    if values is not None and values.shape[0] != k:
        raise ValueError(f"population {name!r}: {values.shape[0]} members of {kind} but {k} "
                         "of predicted")
    bad = (predicted < 0) | (predicted >= num_classes)
    if bool(jnp.any(bad)):
        m, e = np.argwhere(np.asarray(bad))[0]
        raise ValueError(f"population {name!r}: member {m} predicts class "
                         f"{int(predicted[m, e])} for example {e}, outside [0, {num_classes})")
    example_ids = np.arange(n, dtype=np.int64) if example_ids is None else np.asarray(
        example_ids, np.int64)
    seeds = np.arange(k, dtype=np.int64) if seeds is None else np.asarray(seeds, np.int64)
    if example_ids.shape != (n,):
        raise ValueError(f"population {name!r}: example_ids has shape {example_ids.shape}, "
                         f"expected ({n},)")
    if len(np.unique(example_ids)) != n:
        raise ValueError(f"population {name!r}: example_ids are not unique")
    if seeds.shape != (k,):
        raise ValueError(f"population {name!r}: seeds has shape {seeds.shape}, expected ({k},)")
    return Population(name, split, int(checkpoint), seeds, example_ids, labels.astype(jnp.int32),
                      predicted, values, kind, int(num_classes))


def check_finite(values: jax.Array, *, name: str, kind: str = "logits",
                 example_ids: np.ndarray | None = None, seeds: np.ndarray | None = None) -> None:
    """Raises a ``ValueError`` naming the first member / example whose ``values`` hold a NaN."""
    nan = np.isnan(np.asarray(values))
    if nan.any():
        m, e = (int(i) for i in np.argwhere(nan)[0][:2])
        ex = e if example_ids is None else int(np.asarray(example_ids)[e])
        member = f"member {m}" + ("" if seeds is None else f" (seed {int(np.asarray(seeds)[m])})")
        raise ValueError(f"population {name!r}: {kind} of {member} are NaN for example {ex} "
                         f"({int(nan.any(-1).sum())} (member, example) pairs in all)")


def check_comparable(a: Population, b: Population) -> None:
    """Raises a ``ValueError`` unless ``a`` and ``b`` cover the same examples, labels, classes.

    The message names both populations and the first example id where they differ.
    """
    if a.split != b.split:
        raise ValueError(f"populations {a.name!r} and {b.name!r} are on different splits "
                         f"({a.split!r} vs {b.split!r})")
    if a.num_classes != b.num_classes:
        raise ValueError(f"populations {a.name!r} and {b.name!r} have {a.num_classes} and "
                         f"{b.num_classes} classes")
    if a.num_examples != b.num_examples or not np.array_equal(a.example_ids, b.example_ids):
        ia, ib = a.example_ids, b.example_ids
        only_a = np.setdiff1d(ia, ib)
        only_b = np.setdiff1d(ib, ia)
        detail = (f"{len(only_a)} ids only in {a.name!r} (first {only_a[:3].tolist()}), "
                  f"{len(only_b)} only in {b.name!r} (first {only_b[:3].tolist()})")
        if not len(only_a) and not len(only_b):
            detail = "the same ids in a different order"
        raise ValueError(f"populations {a.name!r} ({a.num_examples} examples) and {b.name!r} "
                         f"({b.num_examples}) are over different example sets: {detail}")
    if not bool(jnp.all(a.labels == b.labels)):
        i = int(np.argmax(np.asarray(a.labels != b.labels)))
        raise ValueError(f"populations {a.name!r} and {b.name!r} disagree on the label of "
                         f"example {int(a.example_ids[i])}")


def check_members(pop: Population, at_least: int, what: str) -> None:
    """Raises a ``ValueError`` when ``pop`` has fewer than ``at_least`` members."""
    if pop.size < at_least:
        raise ValueError(f"population {pop.name!r} has {pop.size} member"
                         f"{'s' if pop.size != 1 else ''}; {what} needs at least {at_least}")
