"""jaxsparse: a JAX-native sparsity toolkit.

Pure functions on pytrees: mask pytrees, scores, exact selection, optax integration,
pruning algorithms (``pruners``) run by one trainer (``train``), lottery tickets, supermasks,
N:M sparsity, population sweeps, and the analyses of what sparsity costs (``forgetting``,
``lca``, ``relearn``, ``oneshot``). Importing jaxsparse is light (jax and optax only): the
modules that need flax / tensorflow-datasets / orbax / pyarrow / scipy load on first
attribute access (``js.models``, ``js.data``, ``js.train``, ``js.checkpoint``, ...).

>>> import jaxsparse as js
>>> params = {"w": jnp.arange(20.0).reshape(4, 5), "b": jnp.zeros(5)}
>>> masks = js.prune(js.scores.magnitude(params), js.ones_like(params), sparsity=0.9)
>>> masks["w"][-1]  # the 10% largest magnitudes of the prunable leaves
Array([False, False, False,  True,  True], dtype=bool)
>>> int(js.count_kept(masks)), js.count_total(masks)  # biases are not prunable by default
(2, 20)
"""

import importlib
import warnings

from jaxsparse import (
    lottery,
    masks,
    nm,
    optim,
    pruners,
    rules,
    scores,
    select,
    supermask,
    testing,
)
from jaxsparse.lottery import (
    Plan,
    Ticket,
    export_ticket,
    imp,
    load_ticket,
    prune_and_rewind,
    read_ticket,
    rewind,
)
from jaxsparse.masks import (
    apply_masks,
    compact_report,
    count_kept,
    count_total,
    density,
    difference,
    intersect,
    invert,
    nonzero_pruned,
    ones_like,
    report,
    sparsity,
    union,
    validate,
)
from jaxsparse.nm import NM, is_nm, nm_mask, nm_masks, reduction_axis
from jaxsparse.optim import masked, masked_apply_gradients, reset_moments
from jaxsparse.population import (
    init_distributed,
    init_population,
    make_mesh,
    merge_results,
    population_map,
    shard_population,
    task_slice,
)
from jaxsparse.select import Block, num_pruned, prune
from jaxsparse.supermask import (
    Supermask,
    bernoulli_ste,
    edge_popup,
    learned_supermask,
    topk_ste,
)

__version__ = "0.1.0"

# Submodules with heavier dependencies, imported on first use: ``js.models``, ``js.data``...
_LAZY = ("models", "data", "train", "checkpoint", "flax_utils", "forgetting", "lca", "relearn",
         "oneshot", "textdata", "population", "sweep")

# N:M names that moved to ``jaxsparse.nm``: the top-level aliases work for one more release.
_NM_MOVED = ("NMCompressed", "compress", "decompress", "export_cutlass", "nm_matmul", "permute",
             "search_permutation", "sparse_weight", "sr_ste", "sr_ste_decay", "ste",
             "transposable_mask")


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f"jaxsparse.{name}")
    if name in _NM_MOVED:
        warnings.warn(f"jaxsparse.{name} is deprecated; use jaxsparse.nm.{name}",
                      DeprecationWarning, stacklevel=2)
        return getattr(nm, name)
    raise AttributeError(f"module 'jaxsparse' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])


__all__ = [
    # masks and rules
    "apply_masks", "count_kept", "count_total", "density", "difference", "intersect",
    "invert", "nonzero_pruned", "ones_like", "report", "sparsity", "union", "validate",
    # selection, scores, optax
    "Block", "num_pruned", "prune", "masked", "masked_apply_gradients", "reset_moments",
    # lottery tickets
    "Plan", "Ticket", "export_ticket", "imp", "load_ticket", "prune_and_rewind", "read_ticket",
    "rewind",
    # N:M
    "NM", "is_nm", "nm_mask", "nm_masks", "reduction_axis",
    # supermasks
    "Supermask", "bernoulli_ste", "compact_report", "edge_popup", "learned_supermask",
    "topk_ste",
    # sweeps
    "init_distributed", "init_population", "make_mesh", "merge_results", "population_map",
    "shard_population", "task_slice",
    # submodules
    "lottery", "masks", "nm", "optim", "pruners", "rules",
    "scores", "select", "supermask", "testing", *_LAZY,
]
