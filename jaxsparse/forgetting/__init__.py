"""What pruned networks forget: per-example records of populations and the analyses on them.

jaxsparse trains whole populations (30 dense and 30 pruned models per sparsity level) as
one program; this package records what every member predicts on every example and asks
which examples compression changes:

* :mod:`~jaxsparse.forgetting.records`: the per-example record, a directory of Parquet
  parts written as levels finish (resumable), loaded back as :class:`Population` objects;
* :mod:`~jaxsparse.forgetting.modal`: modal labels with explicit tie rules, Pruning
  Identified Exemplars (:func:`pie`), and the dense-vs-dense null (:func:`pie_null`);
* :mod:`~jaxsparse.forgetting.cie`: Compression Identified Exemplars (modal and taxicab),
  subgroup error / FPR / FNR, :func:`quantize_int8`;
* :mod:`~jaxsparse.forgetting.disparity`: per-class recall centred by mean accuracy,
  Welch's t-test per class, Benjamini–Hochberg;
* :mod:`~jaxsparse.forgetting.variance`: Variance of Gradients over checkpoints;
* :mod:`~jaxsparse.forgetting.events`: forgetting events counted on device by a training
  hook, parameter snapshots, EL2N and GraNd.

Imports only jax and numpy; pyarrow (records) and scipy (p-values) load on first use.

>>> lab = jnp.array([0, 1, 1])
>>> dense = population("dense", labels=lab, predicted=jnp.array([[0, 1, 1], [0, 1, 0]]),
...                    num_classes=2)
>>> pruned = population("pruned", labels=lab, predicted=jnp.array([[1, 1, 1], [1, 1, 1]]),
...                     num_classes=2)
>>> pie(dense, pruned, tie="smallest").mask.tolist()  # example 2: a 1-1 tie goes to class 0
[True, False, True]

References:
  Hooker et al. 2019, "What Do Compressed Deep Neural Networks Forget?"; Hooker et al. 2020,
  "Characterising Bias in Compressed Models"; Agarwal, D'souza, Hooker 2022 (VoG); Toneva
  et al. 2019 (forgetting events); Paul, Ganguli, Dziugaite 2021 (EL2N, GraNd).
"""

from jaxsparse.forgetting import cie, disparity, events, modal, predictions, records, variance
from jaxsparse.forgetting.cie import (
    label_histograms,
    modal_cie,
    quantize_int8,
    subgroup_metrics,
    taxicab,
    taxicab_cie,
    taxicab_distance,
)
from jaxsparse.forgetting.disparity import (
    ClassDisparity,
    benjamini_hochberg,
    bh_adjust,
    class_disparity,
    class_recall,
    welch_ttest,
)
from jaxsparse.forgetting.events import (
    Forgetting,
    ForgettingState,
    count_forgetting,
    el2n,
    forgetting_events,
    forgetting_summary,
    grand,
    param_snapshots,
)
from jaxsparse.forgetting.modal import (
    PIE,
    TIE_RULES,
    PIENull,
    interval,
    label_counts,
    modal_labels,
    pie,
    pie_null,
    population_modes,
    subset_accuracy,
)
from jaxsparse.forgetting.predictions import (
    Population,
    check_comparable,
    check_finite,
    check_members,
    population,
)
from jaxsparse.forgetting.variance import class_normalise, input_gradients, vog, vog_windows

__all__ = [
    "cie", "disparity", "events", "modal", "predictions", "records", "variance",
    "Population", "population", "check_comparable", "check_finite", "check_members",
    "TIE_RULES", "label_counts", "modal_labels", "population_modes", "PIE", "pie",
    "subset_accuracy", "PIENull", "pie_null", "interval",
    "label_histograms", "taxicab_distance", "taxicab_cie", "taxicab", "modal_cie",
    "subgroup_metrics", "quantize_int8",
    "class_recall", "welch_ttest", "bh_adjust", "benjamini_hochberg", "ClassDisparity",
    "class_disparity",
    "input_gradients", "vog", "vog_windows", "class_normalise",
    "Forgetting", "ForgettingState", "count_forgetting", "forgetting_events",
    "forgetting_summary", "param_snapshots", "el2n", "grand",
]
