"""One-shot pruning of transformers with calibration data: magnitude, Wanda, SparseGPT, OWL.

A trained model, a few calibration batches, and one call: the linear layers' input
statistics are collected block by block (each block sees the outputs of the blocks already
pruned, as in SparseGPT), every kernel is pruned (unstructured or N:M along its inputs), and
the result comes back as params + bool masks in the params' structure, ready for
``jaxsparse.nm.compress`` (2:4 export).

>>> from jaxsparse.models import transformer as tf
>>> model = tf.gpt(key=jax.random.key(0), d_model=16, num_layers=2, num_heads=2,
...                d_ff=16, max_len=8)
>>> params = models.functional(model).params
>>> tokens = jax.random.randint(jax.random.key(1), (2, 4, 8), 0, 256)  # 2 batches of 4
>>> out = prune(gpt_blocks(model), params, tokens, SparseGPT(), structure=js.NM(2, 4))
>>> js.is_nm(out.params["block0"], 2, 4), float(js.sparsity(out.masks))
(True, 0.5)
>>> out.layers["block0/attn/query/kernel"].relative < 1.0
True

Pieces:

* :mod:`~jaxsparse.oneshot.capture`: the inputs of every ``x @ W`` of any JAX function
  (jaxpr interception, works under ``jit``).
* :mod:`~jaxsparse.oneshot.methods`: one kernel at a time - :func:`magnitude`,
  :func:`wanda`, :func:`sparsegpt`; :class:`Magnitude` / :class:`Wanda` / :class:`SparseGPT`
  as values for :func:`prune`; OWL's :func:`outlier_ratio` and :func:`owl_sparsities`.
* :mod:`~jaxsparse.oneshot.sequential`: :class:`Blocks`, :func:`calibrate`, :func:`prune`,
  :func:`owl`.
* :mod:`~jaxsparse.oneshot.gpt`: :func:`gpt_blocks`, the bundled GPT as :class:`Blocks`.

References:
  Frantar & Alistarh 2023 (ICML), SparseGPT; Sun et al. 2023, Wanda; Yin et al. 2024 (ICML),
  OWL.
"""

from jaxsparse.oneshot import capture, gpt, methods, sequential
from jaxsparse.oneshot.capture import linear_inputs, trace_linear
from jaxsparse.oneshot.gpt import gpt_blocks
from jaxsparse.oneshot.methods import (
    Magnitude,
    Pruned,
    SparseGPT,
    Stats,
    Wanda,
    magnitude,
    outlier_ratio,
    owl_sparsities,
    sparsegpt,
    wanda,
)
from jaxsparse.oneshot.sequential import (
    Blocks,
    LayerReport,
    Result,
    calibrate,
    check_batches,
    data_mesh,
    get_subtree,
    owl,
    prune,
    set_subtree,
)

__all__ = [
    "Blocks", "LayerReport", "Magnitude", "Pruned", "Result", "SparseGPT", "Stats", "Wanda",
    "calibrate", "capture", "check_batches", "data_mesh", "get_subtree", "gpt", "gpt_blocks",
    "linear_inputs", "magnitude", "methods", "outlier_ratio", "owl",
    "owl_sparsities", "prune", "sequential", "set_subtree", "sparsegpt", "trace_linear", "wanda",
]
