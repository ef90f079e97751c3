"""Compression Identified Exemplars, subgroup metrics, and int8 weight fake-quantisation.

Hooker et al. 2020 compare a population of compressed models (pruned, N:M, quantised) with
the dense population in two ways:

* **modal CIE**: the modal labels differ — :func:`jaxsparse.forgetting.pie` applies to any
  compressed variant, :func:`modal_cie` is the same function under the paper's name;
* **taxicab CIE**: per example, the L1 ("taxicab") distance between the two populations'
  label-frequency histograms (each normalised to sum to 1, so the distance is in
  ``[0, 2]``); the examples in the top decile of that distance are the CIEs
  (:func:`taxicab_cie`, exact count and tie rule below).

Subgroup metrics (:func:`subgroup_metrics`): error, false-positive and false-negative rate
inside user-given attribute groups, for both populations, and the compressed population's
change relative to the dense one.

>>> d = jnp.array([[0, 1], [0, 1]])  # 2 dense members, 2 examples
>>> c = jnp.array([[0, 0], [0, 1]])  # 2 compressed members
>>> taxicab_distance(d, c, num_classes=2).tolist()  # example 1: |1 - 0.5| + |0 - 0.5|
[0.0, 1.0]

References:
  Hooker, Moorosi, Clark, Bengio, Denton 2020, "Characterising Bias in Compressed Models"
  (arXiv:2010.03058).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse import rules as rules_lib
from jaxsparse.forgetting.modal import PIE, label_counts, pie
from jaxsparse.forgetting.predictions import Population, check_comparable
from jaxsparse.typing import PyTree


def label_histograms(predicted: jax.Array, *, num_classes: int) -> jax.Array:
    """float32 ``[N, C]``: the fraction of members predicting each class, per example."""
    k = predicted.shape[0]
    return label_counts(predicted, num_classes=num_classes).astype(jnp.float32) / k


def taxicab_distance(dense_predicted: jax.Array, compressed_predicted: jax.Array, *,
                     num_classes: int) -> jax.Array:
    """float32 ``[N]``: L1 distance between the two populations' label histograms.

    The populations may have different sizes (each histogram is normalised by its own).
    Computed as ``sum_c |n_d[c] K_c - n_c[c] K_d| / (K_d K_c)`` from the integer vote counts,
    so examples at the same distance get bitwise the same float (ties are real ties).
    """
    kd, kc = dense_predicted.shape[0], compressed_predicted.shape[0]
    nd = label_counts(dense_predicted, num_classes=num_classes)
    nc = label_counts(compressed_predicted, num_classes=num_classes)
    num = jnp.sum(jnp.abs(nd * kc - nc * kd), axis=-1)
    return num.astype(jnp.float32) / jnp.float32(kd * kc)


def taxicab_cie(distance: jax.Array, *, fraction: float = 0.1) -> jax.Array:
    """bool ``[N]``: the top ``fraction`` of examples by taxicab distance (the CIEs).

    Exact count: the ``ceil(fraction * N)`` examples with the largest distance, ties going
    to the lower example index; an example at distance 0 is never a CIE (so fewer are
    returned when fewer than that many examples have a positive distance).

    >>> taxicab_cie(jnp.array([0.0, 0.4, 0.4, 1.0, 0.2]), fraction=0.4).tolist()
    [False, True, False, True, False]
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    d = jnp.asarray(distance, jnp.float32)
    n = d.shape[0]
    k = math.ceil(fraction * n - 1e-9)
    order = jnp.argsort(-d, stable=True)  # descending, lower index first on ties
    top = jnp.zeros(n, bool).at[order[:k]].set(True)
    return top & (d > 0)


def modal_cie(dense: Population, compressed: Population, *, tie: str = "prob") -> PIE:
    """Modal CIEs: :func:`jaxsparse.forgetting.pie` for any compressed population."""
    return pie(dense, compressed, tie=tie)


def taxicab(dense: Population, compressed: Population, *,
            fraction: float = 0.1) -> tuple[jax.Array, jax.Array]:
    """``(distance [N], is_cie [N])`` of two :class:`Population` objects (checked comparable)."""
    check_comparable(dense, compressed)
    d = taxicab_distance(dense.predicted, compressed.predicted, num_classes=dense.num_classes)
    return d, taxicab_cie(d, fraction=fraction)


def _rates(pop: Population, group: np.ndarray, positive: int) -> dict[str, float]:
    pred = np.asarray(pop.predicted)[:, group]  # [K, n]
    y = np.asarray(pop.labels)[group]
    def mean_over_members(num: np.ndarray, den: np.ndarray) -> float:
        den = den.sum()
        return float(num.sum(axis=1).mean() / den) if den else float("nan")
    neg, pos = y != positive, y == positive
    return {
        "error": mean_over_members(pred != y[None], np.ones_like(y, bool)),
        "fpr": mean_over_members((pred == positive) & neg[None], neg),
        "fnr": mean_over_members((pred != positive) & pos[None], pos),
    }


def subgroup_metrics(
    dense: Population,
    compressed: Population,
    attributes: Mapping[str, Any],
    *,
    positive: int = 1,
) -> dict[str, dict[str, float]]:
    """Error, FPR and FNR per attribute group for both populations, and the relative change.

    A rate is the mean over members of the member's rate inside the group; FPR / FNR treat
    class ``positive`` against all others (a binary task such as CelebA "blond" in the
    paper). ``relative_<rate>`` is ``(compressed - dense) / dense`` (NaN when the dense
    rate is 0).

    Args:
      dense, compressed: :class:`Population` objects over the same examples.
      attributes: ``{name: array [N]}``; a bool array is one group (its ``True`` entries),
        any other array gives one group per distinct value, named ``"name=value"``.
      positive: the positive class of FPR / FNR.

    Returns:
      ``{group: {"n", "dense_error", "compressed_error", "relative_error", "dense_fpr", ...}}``
      with an ``"all"`` group over every example.

    >>> lab = jnp.array([1, 1, 0, 0])
    >>> d = forgetting.population("d", labels=lab, predicted=jnp.array([[1, 1, 0, 0]] * 2),
    ...                           num_classes=2)
    >>> c = forgetting.population("c", labels=lab, predicted=jnp.array([[1, 0, 0, 1]] * 2),
    ...                           num_classes=2)
    >>> m = subgroup_metrics(d, c, {"a": np.array([True, True, False, False])})
    >>> m["a"]["compressed_fnr"], m["a"]["n"]
    (0.5, 2)
    """
    check_comparable(dense, compressed)
    n = dense.num_examples
    groups = {"all": np.ones(n, bool)}
    for name, values in attributes.items():
        values = np.asarray(values)
        if values.shape != (n,):
            raise ValueError(f"attribute {name!r} has shape {values.shape}, but populations "
                             f"{dense.name!r} and {compressed.name!r} have {n} examples")
        if values.dtype == bool:
            groups[name] = values
        else:
            for v in np.unique(values):
                groups[f"{name}={v.item()}"] = values == v
    out = {}
    for name, g in groups.items():
        row: dict[str, float] = {"n": int(g.sum())}
        rd, rc = _rates(dense, g, positive), _rates(compressed, g, positive)
        for rate in ("error", "fpr", "fnr"):
            row[f"dense_{rate}"] = rd[rate]
            row[f"compressed_{rate}"] = rc[rate]
            row[f"relative_{rate}"] = ((rc[rate] - rd[rate]) / rd[rate]
                                       if rd[rate] not in (0.0,) and not math.isnan(rd[rate])
                                       else float("nan"))
        out[name] = row
    return out


def quantize_int8(params: PyTree, *, rules: rules_lib.Rules | None = None) -> PyTree:
    """Per-tensor symmetric int8 fake-quantisation of the prunable leaves (weights, kernels).

    Each selected leaf becomes ``round(w / s).clip(-127, 127) * s`` with ``s = max|w| / 127``
    (round half to even, float32), so it takes at most 255 distinct values and exact zeros
    (pruned entries) stay exactly zero. Leaves that ``rules`` does not make prunable
    (biases, norm parameters; :func:`jaxsparse.rules.prunable`) are returned unchanged, as
    is an all-zero leaf. Pure and jittable; vmap it over a population.

    >>> q = quantize_int8({"w": jnp.array([[1.0, -0.5], [0.0, 0.3]]), "b": jnp.array([0.123])})
    >>> jnp.round(q["w"] * 127).astype(int).tolist(), bool(q["b"][0] == 0.123)  # codes; bias
    ([[127, -64], [0, 38]], True)

    References:
      Hooker et al. 2020 compare int8 post-training quantisation with pruning.
    """
    checked = rules_lib.check_rules(rules)

    def quant(path: str, w: Any) -> Any:
        if not rules_lib.prunable(checked, path, w):
            return w
        w = jnp.asarray(w)
        amax = jnp.max(jnp.abs(w))
        scale = jnp.where(amax > 0, amax / 127.0, 1.0).astype(w.dtype)
        return (jnp.clip(jnp.round(w / scale), -127, 127) * scale).astype(w.dtype)

    return rules_lib.map_with_path(quant, params)
