"""Pruning algorithms in optax's shape: ``init`` / ``update`` pairs that the trainer runs.

Every pruner is a :class:`Pruner` ``(init, update, due)``: ``init(params, masks) -> state``,
``update(masks, state, params, *, grads, step, key) -> (masks, state)``, ``due(step)``. Give
the same pruner to :func:`jaxsparse.train.init_state` and :func:`jaxsparse.train.fit` /
``make_step``; see ``docs/pruners.md``.

=================================  ==========================================================
:func:`one_shot`                   prune once at a step, any criterion and distribution
:func:`snip`, :func:`synflow`      at-init criteria, at step 0
:func:`random_erk`, :func:`static`  fixed random ERK masks, trained as they are
:func:`gmp`                        gradual magnitude pruning (Zhu & Gupta 2017)
:func:`set_` (= ``set``)           SET (Mocanu et al. 2018)
:func:`rigl`                       RigL (Evci et al. 2020)
:func:`chain`                      several pruners on one step clock
=================================  ==========================================================

>>> from jaxsparse import pruners
>>> p = pruners.gmp(final_sparsity=0.9, begin_step=0, end_step=1000, frequency=100)
>>> [int(s) for s in (0, 100, 150, 1000) if p.due(s)]
[0, 100, 1000]
"""

from jaxsparse.pruners.base import (
    ChainState,
    Pruner,
    StaticState,
    at_step,
    chain,
    every,
    never,
    static,
)
from jaxsparse.pruners.dst import (
    RigLState,
    SETState,
    drop_fraction_schedule,
    rigl,
    set_,
    uniform_scores,
)
from jaxsparse.pruners.magnitude import (
    GMPState,
    OneShotState,
    gmp,
    gmp_schedule,
    magnitude_score,
    one_shot,
    random_erk,
    random_score,
    snip,
    snip_score,
    synflow,
    synflow_masks,
)

set = set_  # noqa: A001 - the paper's name; only inside this namespace (builtins untouched)

__all__ = [
    "ChainState", "GMPState", "OneShotState", "Pruner", "RigLState", "SETState", "StaticState",
    "at_step", "chain", "drop_fraction_schedule", "every", "gmp", "gmp_schedule",
    "magnitude_score", "never", "one_shot", "random_erk", "random_score", "rigl", "set",
    "set_", "snip", "snip_score", "static", "synflow", "synflow_masks", "uniform_scores",
]
