"""Class disparity: which classes a pruned population loses more than its average accuracy.

For each member and class, the class recall (accuracy on the examples of that class) minus
the population's mean top-1 accuracy: a class whose centred recall falls further in the
pruned population than in the dense one is disproportionately affected. Per class, Welch's
two-sided t-test compares the dense members' centred recalls with the pruned members'
(:func:`welch_ttest`, identical to ``scipy.stats.ttest_ind(equal_var=False)``), and the
``C`` p-values are adjusted with Benjamini–Hochberg (:func:`benjamini_hochberg`) — the
original work tests each class at p <= 0.05 with no correction.

Statistics run in float64 on the host (``C`` tests of ``K`` numbers: nothing to jit).

>>> t, df, p = welch_ttest(np.array([[1.0], [2.0], [3.0]]), np.array([[2.0], [4.0], [6.0]]))
>>> round(float(t[0]), 4), round(float(df[0]), 3), round(float(p[0]), 4)
(-1.5492, 2.941, 0.2209)

References:
  Hooker et al. 2019, "What Do Compressed Deep Neural Networks Forget?" (class-level
  impact, Welch t-test).
  Benjamini & Hochberg 1995, "Controlling the False Discovery Rate".
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.forgetting.predictions import Population, check_comparable, check_members


def class_recall(predicted: jax.Array, labels: jax.Array, *, num_classes: int) -> jax.Array:
    """float32 ``[K, C]``: each member's accuracy on the examples of each class (NaN if absent).

    >>> class_recall(jnp.array([[0, 1, 1]]), jnp.array([0, 0, 1]), num_classes=3).tolist()
    [[0.5, 1.0, nan]]
    """
    labels = jnp.asarray(labels)
    correct = (jnp.asarray(predicted) == labels[None, :]).astype(jnp.int32)  # [K, N]
    n = jax.ops.segment_sum(jnp.ones_like(labels), labels, num_segments=num_classes)  # [C]
    hits = jax.ops.segment_sum(correct.T, labels, num_segments=num_classes).T  # [K, C]
    return jnp.where(n[None, :] > 0, hits / jnp.maximum(n, 1)[None, :], jnp.nan)


def welch_ttest(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Welch's two-sided t-test along axis 0: ``(t, df, p)``, float64.

    The same numbers as ``scipy.stats.ttest_ind(a, b, axis=0, equal_var=False)``, including
    its conventions for zero variance: ``t = ±inf`` (``p = 0``) when both samples are
    constant but differ, ``t = NaN`` when both are constant and equal, and ``df = 1`` where
    the Welch–Satterthwaite formula is ``0 / 0``.

    Args:
      a, b: ``[n_a, ...]`` and ``[n_b, ...]`` samples (``n >= 2`` each).
    """
    from scipy import special

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = a.shape[0], b.shape[0]
    if na < 2 or nb < 2:
        raise ValueError(f"Welch's t-test needs at least 2 samples per group, got {na} and {nb}")
    va, vb = a.var(axis=0, ddof=1) / na, b.var(axis=0, ddof=1) / nb
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
        df = np.where(np.isnan(df), 1.0, df)
        t = (a.mean(axis=0) - b.mean(axis=0)) / np.sqrt(va + vb)
    p = 2.0 * special.stdtr(df, -np.abs(t))
    return t, df, p


def bh_adjust(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values of a 1-D array of finite p-values (NumPy).

    ``p_adj[(i)] = min_{j >= i} min(1, m * p[(j)] / j)`` over the ascending order ``(i)``,
    ``i = 1..m``; returned in the input order.

    >>> bh_adjust(np.array([0.01, 0.04, 0.03, 0.5])).round(4).tolist()
    [0.04, 0.0533, 0.0533, 0.5]
    """
    p = np.asarray(p, np.float64)
    m = p.shape[0]
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    out = np.empty(m)
    out[order] = adjusted
    return out


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values; NaN entries stay NaN and are not counted among the tests.

    Uses ``scipy.stats.false_discovery_control`` when scipy has it (>= 1.11), else
    :func:`bh_adjust` (the same numbers).
    """
    p = np.asarray(p, np.float64)
    if p.ndim != 1:
        raise ValueError(f"p must be 1-D, got shape {p.shape}")
    finite = ~np.isnan(p)
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p[finite].min()}..{p[finite].max()}")
    out = np.full(p.shape, np.nan)
    try:
        from scipy.stats import false_discovery_control as fdc
    except ImportError:  # scipy < 1.11
        fdc = bh_adjust
    if finite.any():
        out[finite] = fdc(p[finite])
    return out


class ClassDisparity(NamedTuple):
    """Per-class effect of pruning (see the module docstring).

    Attributes:
      dense_recall, pruned_recall: ``[K_d, C]`` / ``[K_p, C]`` per-member class recall.
      dense_centred, pruned_centred: the recalls minus the population's mean top-1.
      difference: ``[C]`` mean pruned centred recall minus mean dense centred recall
        (negative: the class loses more than the average).
      t, df, p: ``[C]`` Welch's test of pruned vs dense centred recall (two-sided); ``p`` is
        NaN (not tested, never significant) for a class whose recall is the same for every
        member of both populations (e.g. 100%): its centred recalls differ by exactly the
        accuracy gap, which ``scipy`` would call infinitely significant.
      p_adjusted: ``[C]`` Benjamini–Hochberg adjusted ``p``.
      significant: ``[C]`` bool, ``p_adjusted <= alpha``.
    """

    dense_recall: np.ndarray
    pruned_recall: np.ndarray
    dense_centred: np.ndarray
    pruned_centred: np.ndarray
    difference: np.ndarray
    t: np.ndarray
    df: np.ndarray
    p: np.ndarray
    p_adjusted: np.ndarray
    significant: np.ndarray


def class_disparity(dense: Population, pruned: Population, *,
                    alpha: float = 0.05) -> ClassDisparity:
    """Per-class recall centred by mean accuracy, dense vs pruned, Welch test, BH correction.

    Args:
      dense, pruned: :class:`Population` objects over the same examples, 2+ members each.
      alpha: level of ``significant`` on the adjusted p-values.

    >>> lab = jnp.array([0, 0, 1, 1])
    >>> d = forgetting.population("dense", labels=lab, num_classes=2,
    ...                           predicted=jnp.array([[0, 0, 1, 1], [0, 0, 1, 0]]))
    >>> p = forgetting.population("pruned", labels=lab, num_classes=2,
    ...                           predicted=jnp.array([[0, 0, 0, 0], [0, 1, 0, 0]]))
    >>> class_disparity(d, p).difference.tolist()  # class 1 loses, class 0 gains
    [0.25, -0.25]

    References:
      Hooker et al. 2019; Benjamini & Hochberg 1995.
    """
    check_comparable(dense, pruned)
    check_members(dense, 2, "Welch's t-test")
    check_members(pruned, 2, "Welch's t-test")
    c = dense.num_classes
    rd = np.asarray(class_recall(dense.predicted, dense.labels, num_classes=c), np.float64)
    rp = np.asarray(class_recall(pruned.predicted, pruned.labels, num_classes=c), np.float64)
    cd = rd - np.asarray(dense.accuracy, np.float64).mean()
    cp = rp - np.asarray(pruned.accuracy, np.float64).mean()
    t, df, p = welch_ttest(cp, cd)
    # A class whose recall is constant in both populations carries no per-class evidence:
    # its centred recalls differ by exactly the populations' accuracy gap. Not tested.
    flat = (np.ptp(cd, axis=0) == 0) & (np.ptp(cp, axis=0) == 0)
    p = np.where(flat, np.nan, p)
    q = benjamini_hochberg(p)
    with np.errstate(invalid="ignore"):
        significant = q <= alpha
    return ClassDisparity(rd, rp, cd, cp, cp.mean(0) - cd.mean(0), t, df, p, q, significant)
