"""Lottery tickets: the prune-and-rewind step, mask-1 / mask-0 actions, controls, export.

One level of iterative magnitude pruning (IMP) is: train, score the trained weights, prune a
fraction of what is still kept, and restart training from the *rewind point* with the new
masks. This module is the pure part of that loop plus the loop itself, :func:`imp` (levels
x replicates x branches over the one trainer, :class:`jaxsparse.train.Trainer`).

* :func:`rewind` builds a level's starting weights from the rewind point and the masks. Kept
  weights (mask 1) get a *mask-1 action* — ``"rewind"`` (their value at the rewind point),
  ``"reinit"``, ``"reshuffle"``, ``"signed_reinit"``, ``"signed_reshuffle"``,
  ``"signed_constant"``; pruned weights (mask 0) get a *mask-0 action* — ``"zero"`` or
  ``"frozen"`` (their value at the rewind point, never updated; see :func:`rewind`).
* :func:`prune_and_rewind` is one level step: next masks from the trained weights under a
  :class:`Plan` (scope, per-level rates, criterion), then :func:`rewind`. It is jitted with the
  plan static, compiles once per plan, and runs under ``jax.vmap`` over replicates.
* The rewinding schemes: rewind to initialisation (pass the init as the rewind point), rewind to
  iteration ``k`` (pass the snapshot taken at iteration ``k`` of the first training; Frankle et
  al. 2020), learning-rate rewinding and fine-tuning (``Plan(weights="trained")``: keep the
  trained weights; the driver replays the learning-rate schedule or continues at the final
  rate — Renda et al. 2020). Only the training schedule differs between the last two.
* Controls are :class:`Branch` specs of a level, all built by the one function
  :func:`branch_start`: random re-initialisation with the ticket's mask
  (:func:`reinit_control`), random pruning with the ticket's per-layer counts
  (:func:`random_pruning_control`), another mask criterion (:func:`criterion_branch`), or any
  other mask-1 / mask-0 action (:func:`action_branch`).
* :func:`imp` runs a whole lottery-ticket experiment from a user's own code: levels x
  replicates (one population program) x branches, rewinding, checkpoints and resume.
* :func:`export_ticket` / :func:`load_ticket` / :func:`read_ticket` save and restore a ticket
  (masks + starting weights + every other model collection, e.g. BatchNorm statistics, via
  ``model_state=``) with orbax, with the per-layer density report alongside as JSON.

>>> params = {"w": jnp.arange(1.0, 7.0).reshape(2, 3), "b": jnp.zeros(3)}
>>> masks = {"w": jnp.array([[True, False, True], [False, True, True]]), "b": jnp.array(True)}
>>> rewind(params, masks)["w"]
Array([[1., 0., 3.],
       [0., 5., 6.]], dtype=float32)

References:
  Frankle & Carbin 2019, "The Lottery Ticket Hypothesis", ICLR.
  Frankle, Dziugaite, Roy & Carbin 2020, "Linear Mode Connectivity and the Lottery Ticket
  Hypothesis", ICML.
  Renda, Frankle & Carbin 2020, "Comparing Rewinding and Fine-tuning in Neural Network
  Pruning", ICLR.
  Zhou, Lan, Liu & Yosinski 2019, "Deconstructing Lottery Tickets: Zeros, Signs, and the
  Supermask", NeurIPS.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, get_args

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse import checkpoint, select
from jaxsparse import masks as masks_lib
from jaxsparse import rules as rules_lib
from jaxsparse import scores as scores_lib
from jaxsparse.typing import Key, Masks, Params, PyTree, Scores

Mask1Action = Literal[
    "rewind", "reinit", "reshuffle", "signed_reinit", "signed_reshuffle", "signed_constant"]
Mask0Action = Literal["zero", "frozen"]
Scope = Literal["layerwise", "global"]
Weights = Literal["rewind", "trained"]
Rewind = Literal["init", "iteration", "lr", "finetune"]
MASK1_ACTIONS: tuple[str, ...] = get_args(Mask1Action)
MASK0_ACTIONS: tuple[str, ...] = get_args(Mask0Action)
_NEEDS_KEY = ("reinit", "reshuffle", "signed_reinit", "signed_reshuffle")

# ---------------------------------------------------------------------------------------
# Mask-1 / mask-0 actions.


def _sign(x: jax.Array) -> jax.Array:
    # An exact zero counts as positive so that a sign-preserving action never yields 0 for a
    # kept weight (an init value of exactly 0.0 has probability ~0 under a continuous init).
    return jnp.where(x < 0, -1.0, 1.0).astype(x.dtype)


def _permute_kept(x: jax.Array, m: jax.Array, key: jax.Array) -> jax.Array:
    """Randomly permutes the values of ``x`` among the positions where ``m`` is True.

    Works with a traced mask (no data-dependent shapes): ``src`` lists the kept positions in
    random order, ``dst`` lists them in index order, both first; pruned positions follow in
    both lists and map to pruned positions, which the caller then overwrites.
    """
    flat, mflat = x.reshape(-1), m.reshape(-1)
    u = jax.random.uniform(key, flat.shape)
    src = jnp.argsort(jnp.where(mflat, u, 2.0))
    dst = jnp.argsort(jnp.logical_not(mflat), stable=True)
    return jnp.zeros_like(flat).at[dst].set(flat[src]).reshape(x.shape)


def _leaf_stds(std: float | rules_lib.Rules | None, params: PyTree) -> list[jax.Array]:
    """Per-leaf standard deviation of the init distribution (see :func:`rewind`)."""
    leaves = rules_lib.leaves_with_paths(params)
    out = []
    for path, leaf in leaves:
        if std is None:
            value = None
        elif isinstance(std, int | float):
            value = float(std)
        else:
            value = rules_lib.match(std, path, leaf, default=None)
        if value is None:
            value = jnp.std(jnp.asarray(leaf).astype(jnp.float32))
        out.append(jnp.asarray(value, jnp.float32))
    return out


def rewind(
    params_rewind: Params,
    masks: Masks,
    *,
    action: Mask1Action = "rewind",
    mask0: Mask0Action = "zero",
    key: Key | None = None,
    init_fn: Callable[[Key], Params] | None = None,
    std: float | rules_lib.Rules | None = None,
) -> Params:
    """A ticket's starting weights: a mask-1 action on kept weights, a mask-0 action on pruned.

    Mask-1 actions (kept entries of prunable leaves):

    * ``"rewind"``: the value at the rewind point (init, or the snapshot at iteration k).
    * ``"reinit"``: a fresh draw from the layer's init distribution: ``init_fn(key)`` when
      given (a whole fresh params tree, e.g. ``lambda k: functional.init_fn(k)[0]``), else a
      normal with the layer's standard deviation (``std``, see below).
    * ``"reshuffle"``: the rewind-point values permuted at random among the kept entries of
      each leaf (same multiset of values per layer, new positions).
    * ``"signed_reinit"``: the magnitudes of a ``"reinit"`` draw with the rewind-point signs.
    * ``"signed_reshuffle"``: the magnitudes of a ``"reshuffle"`` with the rewind-point signs.
    * ``"signed_constant"``: ``±σ`` with the rewind-point signs, σ the layer's init std.

    The layer's init std σ is ``std`` when given (a float for every leaf, or path rules
    ``[(regex, float), ...]``, first match wins), otherwise the standard deviation of that leaf
    of ``params_rewind`` over all its entries (kept and pruned) — the empirical init
    distribution when the rewind point is the initialisation.

    Mask-0 actions (pruned entries): ``"zero"`` (default), or ``"frozen"``: the rewind-point
    value. Frozen weights are part of the forward pass but never trained: train with masks
    of all ones and ``trainable`` = the ticket's masks (``jaxsparse.train.init_state(...,
    trainable=masks)``; :func:`imp` does this), so they stay constant, not zero.

    Non-prunable leaves (scalar ``True`` mask: biases, norms) always take their rewind-point
    value. Exact zeros: with ``mask0="zero"`` every pruned entry is ``0.0`` (``jnp.where``).

    Args:
      params_rewind: the rewind point, unmasked (the full init, or the snapshot at k).
      masks: bool mask tree for the params (see :mod:`jaxsparse.masks`).
      action: mask-1 action, one of :data:`MASK1_ACTIONS`.
      mask0: mask-0 action, ``"zero"`` or ``"frozen"``.
      key: required by ``reinit``, ``reshuffle``, ``signed_reinit``, ``signed_reshuffle``.
      init_fn: ``key -> params`` re-initialiser for the ``*reinit`` actions.
      std: the init standard deviation (float or path rules) for ``*reinit`` without
        ``init_fn`` and for ``signed_constant``.

    Returns:
      The starting params, with the structure of ``params_rewind``.

    >>> p = {"w": jnp.array([[-2.0, 3.0]])}
    >>> rewind(p, {"w": jnp.array([[True, False]])}, action="signed_constant", std=0.5)["w"]
    Array([[-0.5,  0. ]], dtype=float32)

    References:
      Zhou, Lan, Liu & Yosinski 2019, "Deconstructing Lottery Tickets", NeurIPS.
    """
    if action not in MASK1_ACTIONS:
        raise ValueError(f"unknown mask-1 action {action!r}; expected one of {MASK1_ACTIONS}")
    if mask0 not in MASK0_ACTIONS:
        raise ValueError(f"unknown mask-0 action {mask0!r}; expected one of {MASK0_ACTIONS}")
    if action in _NEEDS_KEY and key is None:
        raise ValueError(f"action {action!r} is random: pass key=jax.random.key(...)")
    masks_lib.validate(params_rewind, masks, where="rewind")

    leaves = rules_lib.leaves_with_paths(params_rewind)
    mask_leaves = jax.tree_util.tree_leaves(masks)
    stds = _leaf_stds(std, params_rewind)
    draw = None
    if action in ("reinit", "signed_reinit") and init_fn is not None:
        draw = init_fn(key)
        if jax.tree_util.tree_structure(draw) != jax.tree_util.tree_structure(params_rewind):
            raise ValueError("init_fn(key) must return a tree with the params' structure")
        draw = jax.tree_util.tree_leaves(draw)

    out = []
    for i, ((path, x), m) in enumerate(zip(leaves, mask_leaves, strict=True)):
        x = jnp.asarray(x)
        if not masks_lib.is_prunable(m):
            out.append(x)
            continue
        leaf_key = None if key is None else jax.random.fold_in(key, i)
        if action == "rewind":
            new = x
        elif action in ("reinit", "signed_reinit"):
            if draw is not None:
                new = jnp.asarray(draw[i]).astype(x.dtype)
                if new.shape != x.shape:
                    raise ValueError(f"init_fn draw at {path!r} has shape {new.shape}, "
                                     f"expected {x.shape}")
            else:
                new = (jax.random.normal(leaf_key, x.shape) * stds[i]).astype(x.dtype)
            if action == "signed_reinit":
                new = _sign(x) * jnp.abs(new)
        elif action in ("reshuffle", "signed_reshuffle"):
            new = _permute_kept(x, m, leaf_key)
            if action == "signed_reshuffle":
                new = _sign(x) * jnp.abs(new)
        else:  # signed_constant
            new = _sign(x) * stds[i].astype(x.dtype)
        fill = x if mask0 == "frozen" else jnp.zeros((), x.dtype)
        out.append(jnp.where(m, new, fill))
    treedef = jax.tree_util.tree_structure(params_rewind)
    return jax.tree_util.tree_unflatten(treedef, out)


# ---------------------------------------------------------------------------------------
# The pruning plan and the prune-and-rewind step.


def _hashable_rules(rules: Any) -> tuple[tuple[Any, Any], ...] | None:
    if rules is None:
        return None
    return tuple((p, float(v)) for p, v in rules_lib.check_rules(rules, "rates"))


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one IMP level prunes and restarts (hashable: a static argument of the jitted step).

    Attributes:
      scope: ``"layerwise"`` (each leaf loses ``rates`` of its remaining weights) or
        ``"global"`` (all prunable leaves ranked together; ``rate`` of the remaining weights
        removed in total).
      rates: layerwise: path rules ``[(regex, fraction of the leaf's remaining weights to
        remove per level), ...]``, first match wins, e.g. ``[("Dense_2|out", 0.1), (".*",
        0.2)]`` (Frankle & Carbin's 20% hidden / 10% output). Prunable leaves no rule
        matches are not pruned; a rule matching no prunable leaf is an error. Each leaf
        loses ``jaxsparse.num_pruned(rate, kept)`` entries (the rounding rule of
        :mod:`jaxsparse.select`).
      rate: global: fraction of the remaining prunable weights removed per level: the tree
        loses ``num_pruned(rate, kept)`` entries in total (the same rounding rule, exact at
        any size).
      criterion: a name of :func:`jaxsparse.scores.criterion` (``"magnitude"`` = |w_final|,
        ``"random"``, Zhou et al.'s ``"large_final"``, ``"magnitude_increase"``, ...), or a
        callable ``(init, final) -> scores``.
      weights: ``"rewind"`` (start from the rewind point, with the mask-1/mask-0 actions) or
        ``"trained"`` (keep the trained weights, masked: learning-rate rewinding and
        fine-tuning; the driver chooses the schedule).
      mask1, mask0: the actions of :func:`rewind` (only with ``weights="rewind"``).
    """

    scope: Scope = "layerwise"
    rates: Any = None
    rate: float | None = None
    criterion: str | Callable[[Params, Params], Scores] = "magnitude"
    weights: Weights = "rewind"
    mask1: Mask1Action = "rewind"
    mask0: Mask0Action = "zero"

    def __post_init__(self) -> None:
        object.__setattr__(self, "rates", _hashable_rules(self.rates))
        if self.scope not in ("layerwise", "global"):
            raise ValueError(f"Plan.scope must be 'layerwise' or 'global', got {self.scope!r}")
        if self.scope == "layerwise" and self.rates is None:
            if self.rate is None:
                raise ValueError("layerwise Plan needs rates=[(regex, fraction), ...] or rate")
            object.__setattr__(self, "rates", ((".*", float(self.rate)),))
        if self.scope == "global" and self.rate is None:
            raise ValueError("global Plan needs rate= (fraction of remaining removed per level)")
        for name, value in [("rate", self.rate)] + [(f"rates[{p!r}]", v)
                                                    for p, v in self.rates or ()]:
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"Plan.{name} = {value} is not a fraction in [0, 1)")
        if self.weights not in ("rewind", "trained"):
            raise ValueError(f"Plan.weights must be 'rewind' or 'trained', got {self.weights!r}")
        if self.weights == "trained" and (self.mask1, self.mask0) != ("rewind", "zero"):
            raise ValueError("mask-1/mask-0 actions apply to weights='rewind' only")
        if self.mask1 not in MASK1_ACTIONS:
            raise ValueError(f"unknown mask-1 action {self.mask1!r}; expected {MASK1_ACTIONS}")
        if self.mask0 not in MASK0_ACTIONS:
            raise ValueError(f"unknown mask-0 action {self.mask0!r}; expected {MASK0_ACTIONS}")
        if isinstance(self.criterion, str):
            scores_lib.criterion(self.criterion)  # a ValueError naming the known ones


def next_masks(
    final_params: Params,
    masks: Masks,
    *,
    plan: Plan,
    init_params: Params | None = None,
    key: Key | None = None,
) -> Masks:
    """The next level's masks: prune ``plan``'s rates of the remaining weights by its criterion.

    Pruned entries are never revived (``jaxsparse.prune`` keeps the top scores among the
    entries still kept); counts are exact under the rounding rule of ``jaxsparse.select``.
    """
    init_params = final_params if init_params is None else init_params
    s = scores_lib.criterion(plan.criterion)(init_params, final_params, key=key)
    if plan.scope == "layerwise":
        return select.prune(s, masks, scope="layerwise", rates=list(plan.rates))
    # Global: one threshold removes num_pruned(rate, kept) entries of the whole tree (exact at
    # any size; the same rounding rule as the per-leaf rates).
    return select.prune(s, masks, scope="global", fraction_of_remaining=plan.rate)


def _prune_and_rewind(
    final_params: Params,
    masks: Masks,
    rewind_params: Params,
    *,
    plan: Plan,
    key: Key | None = None,
    init_params: Params | None = None,
    init_fn: Callable[[Key], Params] | None = None,
    std: float | rules_lib.Rules | None = None,
) -> tuple[Masks, Params]:
    k_prune = k_rewind = None
    if key is not None:
        k_prune, k_rewind = jax.random.split(key)
    init_params = rewind_params if init_params is None else init_params
    new = next_masks(final_params, masks, plan=plan, init_params=init_params, key=k_prune)
    if plan.weights == "trained":
        return new, masks_lib.apply_masks(final_params, new)
    start = rewind(rewind_params, new, action=plan.mask1, mask0=plan.mask0, key=k_rewind,
                   init_fn=init_fn, std=std)
    return new, start


prune_and_rewind = jax.jit(_prune_and_rewind, static_argnames=("plan", "init_fn", "std"))
prune_and_rewind.__doc__ = """One IMP level: ``(next masks, next starting weights)``. Jitted.

The arguments read like :func:`rewind`'s: the params, their masks, then the rewind point.

Args:
  final_params: the weights at the end of this level's training.
  masks: this level's masks.
  rewind_params: the rewind point: the init (rewind to k = 0) or the snapshot taken at
    iteration k of the first (dense) training (Frankle et al. 2020). Ignored for the weights
    when ``plan.weights == "trained"`` (learning-rate rewinding / fine-tuning).
  plan: a :class:`Plan` (static: one compilation per plan).
  key: randomness for the random criterion and the random mask-1 actions.
  init_params: ``w_init`` for init-dependent criteria (defaults to ``rewind_params``).
  init_fn, std: see :func:`rewind` (static: pass a module-level function / a float / a tuple).

Returns:
  ``(masks, params)`` for the next level; pruned entries of ``params`` are exactly zero
  (unless ``plan.mask0 == "frozen"``).

Runs under ``jax.vmap`` over replicates (a leading axis on every array argument and on
``key``) and compiles once per plan and shapes.

>>> plan = Plan(rates=[("out", 0.1), (".*", 0.2)])
>>> masks, start = prune_and_rewind(final, masks, init, plan=plan)  # doctest: +SKIP

References:
  Frankle & Carbin 2019; Frankle et al. 2020; Renda et al. 2020.
"""


# ---------------------------------------------------------------------------------------
# Branches of a level: the controls.


@dataclasses.dataclass(frozen=True)
class Branch:
    """A run that branches off an IMP level: its masks and its starting weights.

    Attributes:
      name: label in tables and plots.
      masks: ``"ticket"`` (the level's IMP masks), ``"random"`` (random masks with the
        ticket's per-leaf counts), or a criterion (name or callable, see :class:`Plan`)
        used instead of the ticket's criterion to prune the previous level's trained weights
        with the same plan.
      mask1, mask0: the actions of :func:`rewind` applied to those masks.
    """

    name: str
    masks: str | Callable[[Params, Params], Scores] = "ticket"
    mask1: Mask1Action = "rewind"
    mask0: Mask0Action = "zero"

    def __post_init__(self) -> None:
        if self.mask1 not in MASK1_ACTIONS:
            raise ValueError(f"Branch {self.name!r}: unknown mask-1 action {self.mask1!r}")
        if self.mask0 not in MASK0_ACTIONS:
            raise ValueError(f"Branch {self.name!r}: unknown mask-0 action {self.mask0!r}")


def reinit_control() -> Branch:
    """Random re-initialisation with the ticket's mask (Frankle & Carbin 2019)."""
    return Branch("reinit", masks="ticket", mask1="reinit")


def random_pruning_control() -> Branch:
    """Random masks with the ticket's per-layer counts, from the rewind point."""
    return Branch("random_prune", masks="random")


def criterion_branch(criterion: str, **actions: Any) -> Branch:
    """Masks from another criterion (Zhou et al. 2019), e.g. ``"magnitude_increase"``."""
    return Branch(f"crit_{criterion}", masks=criterion, **actions)


def action_branch(mask1: Mask1Action = "rewind", mask0: Mask0Action = "zero") -> Branch:
    """The ticket's masks with another mask-1 / mask-0 action (Zhou et al. 2019)."""
    return Branch(f"{mask1}_{mask0}", masks="ticket", mask1=mask1, mask0=mask0)


def _branch_start(
    prev_final: Params,
    prev_masks: Masks,
    rewind_params: Params,
    ticket_masks: Masks,
    *,
    branch: Branch,
    plan: Plan,
    key: Key,
    init_params: Params | None = None,
    init_fn: Callable[[Key], Params] | None = None,
    std: float | rules_lib.Rules | None = None,
) -> tuple[Masks, Params]:
    k_mask, k_act = jax.random.split(key)
    if isinstance(branch.masks, str) and branch.masks == "ticket":
        m = ticket_masks
    elif isinstance(branch.masks, str) and branch.masks == "random":
        m = select.random_masks_like(ticket_masks, key=k_mask)
    else:
        crit_plan = dataclasses.replace(plan, criterion=branch.masks)
        init_params = rewind_params if init_params is None else init_params
        m = next_masks(prev_final, prev_masks, plan=crit_plan, init_params=init_params,
                       key=k_mask)
    start = rewind(rewind_params, m, action=branch.mask1, mask0=branch.mask0, key=k_act,
                   init_fn=init_fn, std=std)
    return m, start


branch_start = jax.jit(_branch_start, static_argnames=("branch", "plan", "init_fn", "std"))
branch_start.__doc__ = """A branch's ``(masks, starting weights)`` at an IMP level. Jitted.

The arguments are :func:`prune_and_rewind`'s (the previous level's trained weights and masks,
the rewind point), then the level's ticket masks.

Args:
  prev_final, prev_masks: the previous level's trained weights and masks (used only by
    criterion branches, which re-prune them with ``plan`` and another criterion).
  rewind_params: the rewind point (unmasked).
  ticket_masks: the level's IMP masks.
  branch: a :class:`Branch` (static).
  plan: the IMP :class:`Plan` (static).
  key: randomness (random masks, random actions).
  init_params, init_fn, std: as in :func:`prune_and_rewind`.

Runs under ``jax.vmap`` over replicates like :func:`prune_and_rewind`. Example (with the
ticket's masks ``tm``, the previous level's masks ``pm`` and weights ``init``/``final``)::

    m, p = branch_start(final, pm, init, tm, branch=reinit_control(), plan=plan, key=key)
"""


# ---------------------------------------------------------------------------------------
# Export.


_STATE = "model_state/"  # the model state's subtree in a ticket


class Ticket(NamedTuple):
    """A ticket as read back by :func:`read_ticket`.

    Attributes:
      params: the ticket's weights.
      masks: its bool masks (the params' structure).
      model_state: every other collection saved with it (BatchNorm statistics, NNX RNG state,
        ...), ``{}`` when there is none.
      metadata: the ``metadata`` dict given to :func:`export_ticket`.
    """

    params: Params
    masks: Masks
    model_state: PyTree
    metadata: dict[str, Any]


def _ticket_parts(params: PyTree, masks: PyTree, model_state: PyTree | None):
    """``(params, masks, model_state)`` as plain trees, from any of the accepted inputs."""
    from jaxsparse import flax_utils

    if flax_utils.is_nnx_module(params):
        if model_state is not None:
            raise ValueError("export_ticket: got an nnx.Module and model_state=; the module's "
                             "own non-parameter variables are exported, drop model_state=")
        p, rest = flax_utils.split_model(params)
        return p, flax_utils.to_pure(masks), rest
    cols = flax_utils.linen_collections(params)
    if cols:
        if model_state is not None:
            raise ValueError(f"export_ticket: got a Linen variables dict (collections {cols}) "
                             "and model_state=; its collections are exported, drop model_state=")
        return params["params"], masks, {k: v for k, v in params.items() if k != "params"}
    flax_utils.check_params_only(params, where="export_ticket")
    return (flax_utils.to_pure(params), flax_utils.to_pure(masks),
            flax_utils.to_pure(model_state) if model_state is not None else {})


def export_ticket(
    directory: str | os.PathLike,
    params: PyTree,
    masks: PyTree,
    *,
    model_state: PyTree | None = None,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Saves a ticket (masks + weights + every other collection) with orbax, and its report.

    Writes ``directory/ticket`` (:func:`jaxsparse.checkpoint.save_pytree` of ``{"params",
    "masks", "model_state"}``, the params as given), ``directory/density.json`` (per-leaf
    path/shape/kept/total/density, the total, ``metadata`` and the ``contents`` saved, with
    the PRNG implementation of every key leaf of the model state) and ``directory/density.txt``
    (the printable table).

    A network is more than its weights: BatchNorm statistics (Linen ``batch_stats``, NNX
    ``nnx.BatchStat``) and NNX RNG state belong to the ticket, or a model loaded from it
    evaluates with fresh statistics. Pass them by giving ``params`` as

    * an ``nnx.Module``: its ``nnx.Param`` variables are the params, every other variable the
      model state (``masks`` over ``nnx.state(model, nnx.Param)``);
    * a Linen ``variables`` dict ``{"params": ..., "batch_stats": ...}`` (``masks`` over
      ``variables["params"]``);
    * or plain params (a pytree, an ``nnx.Param`` ``State``) with ``model_state=`` (e.g.
      ``jaxsparse.models.functional(model).model_state``, a supermask's ``sm_state["model"]``).

    Args:
      directory: output folder (created; an existing ticket there is replaced).
      params: the ticket's weights (e.g. from :func:`prune_and_rewind`), in one of the forms
        above. An NNX ``State`` holding non-``Param`` variables is refused (name them).
      masks: the ticket's masks (validated against the params).
      model_state: the other collections, for plain ``params``.
      metadata: JSON-serialisable extras (level, config, accuracy, ...).

    Returns:
      The absolute path of the directory.

    >>> import os, tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> params = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0]]), "b": jnp.zeros(2)}
    >>> masks = {"w": jnp.array([[True, False], [False, True]]), "b": jnp.array(True)}
    >>> path = export_ticket(f"{tmp.name}/t", params, masks, metadata={"level": 5})
    >>> sorted(os.listdir(path))
    ['density.json', 'density.txt', 'ticket']
    >>> tmp.cleanup()
    """
    params, masks, model_state = _ticket_parts(params, masks, model_state)
    masks_lib.validate(params, masks, where="export_ticket")
    for what, tree in (("params", params), ("masks", masks)):
        keys = [p for p, x in rules_lib.leaves_with_paths(tree) if checkpoint.is_key(x)]
        if keys:
            raise ValueError(f"export_ticket: {what} leaf {keys[0]!r} holds PRNG keys; keys "
                             "belong to the model state (model_state=)")
    directory = os.path.abspath(os.fspath(directory))
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "ticket")
    impls = checkpoint.save_pytree(
        path, {"params": params, "masks": masks, "model_state": model_state})
    rep = masks_lib.report(masks)
    # The key implementations are recorded by path inside the model state (the format of
    # every ticket written so far).
    contents = {"params": rules_lib.leaf_paths(params),
                "model_state": rules_lib.leaf_paths(model_state),
                "prng_keys": {n.removeprefix(_STATE): v for n, v in impls.items()}}
    with open(os.path.join(directory, "density.json"), "w") as f:
        json.dump({"leaves": [dict(r, shape=list(r["shape"])) for r in rep.as_dicts()],
                   "kept": rep.kept, "total": rep.total, "density": rep.density,
                   "metadata": metadata or {}, "contents": contents}, f, indent=1)
    with open(os.path.join(directory, "density.txt"), "w") as f:
        f.write(str(rep) + "\n")
    return directory


def read_ticket(
    directory: str | os.PathLike,
    *,
    like: PyTree | None = None,
    model_state_like: PyTree | None = None,
) -> Ticket:
    """Everything :func:`export_ticket` saved: ``Ticket(params, masks, model_state, metadata)``.

    Args:
      directory: the folder given to :func:`export_ticket`.
      like: optional params tree whose structure ``params`` and ``masks`` take (leaves matched
        by path, shapes checked).
      model_state_like: optional model-state tree (e.g. ``functional(model).model_state``)
        whose structure ``model_state`` takes; every leaf it has must be in the ticket (a
        ``ValueError`` names the missing ones: a ticket exported without its statistics).

    Returns:
      A :class:`Ticket`. Without ``like`` / ``model_state_like`` the trees are orbax's nested
      dicts (typed PRNG keys rebuilt).

    Raises:
      FileNotFoundError: no ticket in ``directory``. ValueError: an unreadable or corrupt
      ticket (names the file), or a leaf missing or of another shape (names the leaf).
    """
    directory = os.path.abspath(os.fspath(directory))
    path = os.path.join(directory, "ticket")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no ticket at {directory} (expected {path}, written by "
                                "export_ticket)")
    info = {}
    report_path = os.path.join(directory, "density.json")
    if os.path.exists(report_path):
        try:
            with open(report_path) as f:
                info = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read {report_path}: {e}") from None
    impls = info.get("contents", {}).get("prng_keys", {})
    try:
        tree = checkpoint.load_pytree(path, impls={_STATE + n: v for n, v in impls.items()})
        params, masks = tree["params"], tree["masks"]
    except (checkpoint.CheckpointError, KeyError, TypeError) as e:
        raise ValueError(f"cannot read the ticket {path}: it is corrupt, truncated or not "
                         f"written by export_ticket ({type(e).__name__}: {e})") from None
    model_state = tree.get("model_state") or {}
    if like is None:
        params, masks = jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, masks)
    else:
        params = _restructure(params, like, "params")
        masks = _restructure(masks, like, "masks", masks=True)
    if model_state_like is None:
        model_state = jax.tree.map(jnp.asarray, model_state)
    else:
        unused = sorted(set(rules_lib.leaf_paths(model_state))
                        - set(rules_lib.leaf_paths(model_state_like)))
        if unused:
            import warnings

            warnings.warn(f"ticket {path} holds model state {unused[:6]} that the model does not "
                          "have; it is not loaded", UserWarning, stacklevel=3)
        model_state = _restructure(model_state, model_state_like, "model_state",
                                   hint=" (it was exported without it: pass model_state= or the "
                                        "model / variables to export_ticket)")
    masks_lib.validate(params, masks, where=f"ticket {path}")
    return Ticket(params, masks, model_state, dict(info.get("metadata", {})))


def load_ticket(directory: str | os.PathLike, *, like: PyTree | None = None) -> tuple[PyTree,
                                                                                      PyTree]:
    """Loads ``(params, masks)`` written by :func:`export_ticket`; never drops a collection.

    Args:
      directory: the folder given to :func:`export_ticket`.
      like: what to load into:

        * an ``nnx.Module``: the ticket's params **and every other variable** (BatchNorm
          statistics, RNG state) are written into it in place; returns
          ``(nnx.state(model, nnx.Param), masks)`` with masks an NNX ``State`` of the same
          structure (ready for ``jaxsparse.masked`` / ``nnx.Optimizer``). A model variable the
          ticket lacks is a ``ValueError`` naming it (the model would keep its current,
          e.g. freshly initialised, statistics);
        * a Linen ``variables`` dict ``{"params": ..., "batch_stats": ...}``: returns
          ``(variables, masks)`` with every collection from the ticket (a missing one is a
          ``ValueError`` naming it);
        * a params tree: ``(params, masks)`` in its structure (leaves matched by path, shapes
          checked); if the ticket also holds model state, a ``UserWarning`` names it (use
          :func:`read_ticket` or one of the forms above to get it);
        * ``None``: orbax's nested dicts (the same warning).

    Returns:
      ``(params, masks)`` as described.

    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> ticket = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0]]), "b": jnp.zeros(2)}
    >>> masks = {"w": jnp.array([[True, False], [False, True]]), "b": jnp.array(True)}
    >>> path = export_ticket(f"{tmp.name}/t", ticket, masks)
    >>> params, masks = load_ticket(path, like=ticket)
    >>> params["w"], masks["w"]
    (Array([[1., 0.],
           [0., 2.]], dtype=float32), Array([[ True, False],
           [False,  True]], dtype=bool))
    >>> tmp.cleanup()
    """
    import warnings

    from jaxsparse import flax_utils

    if flax_utils.is_nnx_module(like):
        model = like
        p_like, s_like = flax_utils.split_model(model)
        t = read_ticket(directory, like=p_like)
        have = set(rules_lib.leaf_paths(t.model_state))
        # RNG state may be absent (the model keeps its own); statistics may not
        missing = [(p, k) for p, k in flax_utils.non_param_variables(_nnx_rest(model), rng=False)
                   if p not in have]
        if missing:
            kinds = sorted({k for _, k in missing})
            raise ValueError(
                f"ticket {os.fspath(directory)} holds no {', '.join(kinds)} for "
                f"{type(model).__name__} ({[p for p, _ in missing][:6]}): loading it would keep "
                "the model's current values (e.g. fresh BatchNorm statistics). Export the "
                "ticket with export_ticket(dir, model, masks) or model_state=")
        unused = sorted(have - set(rules_lib.leaf_paths(s_like)))
        if unused:
            warnings.warn(f"ticket {os.fspath(directory)} holds model state {unused[:6]} that "
                          f"{type(model).__name__} does not have; it is not loaded", UserWarning,
                          stacklevel=2)
        state = _restructure(t.model_state, s_like, "model_state", fill=True)
        flax_utils.merge_into(model, t.params, state)
        p_state = _nnx_params(model)
        by_path = dict(rules_lib.leaves_with_paths(t.masks))
        masks = rules_lib.map_with_path(lambda path, _: by_path[path], p_state)
        return p_state, masks
    cols = flax_utils.linen_collections(like)
    if cols:
        t = read_ticket(directory, like=like["params"],
                        model_state_like={k: v for k, v in like.items() if k != "params"})
        return {"params": t.params, **t.model_state}, t.masks
    if like is not None:
        flax_utils.check_params_only(like, where="load_ticket(like=...)")
    t = read_ticket(directory, like=flax_utils.to_pure(like) if like is not None else None)
    extra = rules_lib.leaf_paths(t.model_state)
    if extra:
        warnings.warn(
            f"ticket {os.fspath(directory)} also holds model state {extra[:6]}"
            f"{' ...' if len(extra) > 6 else ''} that load_ticket(like=params) does not return: "
            "use read_ticket(dir).model_state, or load_ticket(dir, like=model) (NNX) / "
            "like=variables (Linen)", UserWarning, stacklevel=2)
    if like is not None and flax_utils.is_nnx_state(like):
        by_p = dict(rules_lib.leaves_with_paths(t.params))
        by_m = dict(rules_lib.leaves_with_paths(t.masks))
        return (rules_lib.map_with_path(lambda path, _: by_p[path], like),
                rules_lib.map_with_path(lambda path, _: by_m[path], like))
    return t.params, t.masks


def _nnx_params(model: Any) -> Any:
    from flax import nnx

    return nnx.state(model, nnx.Param)


def _nnx_rest(model: Any) -> Any:
    from flax import nnx

    return nnx.state(model, nnx.Not(nnx.Param))


def _restructure(tree: PyTree, like: PyTree, what: str, masks: bool = False,
                 hint: str = "", fill: bool = False) -> PyTree:
    """``tree``'s leaves in ``like``'s structure, matched by path; ``fill`` takes ``like``'s own
    value for a path ``tree`` lacks (NNX RNG state the ticket does not carry)."""
    by_path = dict(rules_lib.leaves_with_paths(tree))
    out = []
    for path, ref in rules_lib.leaves_with_paths(like):
        if path not in by_path and fill:
            out.append(ref)
            continue
        if path not in by_path:
            raise ValueError(f"ticket {what} has no leaf {path!r}{hint}; it has "
                             f"{sorted(by_path)[:12]}")
        value = by_path[path]
        if not (hasattr(value, "dtype") and jax.dtypes.issubdtype(value.dtype,
                                                                     jax.dtypes.prng_key)):
            value = jnp.asarray(value)
        if not masks or np.ndim(value) > 0:
            if np.shape(value) != np.shape(ref):
                raise ValueError(f"ticket {what} leaf {path!r} has shape {np.shape(value)}, "
                                 f"the model has {np.shape(ref)}")
        out.append(value)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), out)


__all__ = [
    "MASK0_ACTIONS", "MASK1_ACTIONS", "Branch", "Plan", "action_branch", "branch_start",
    "REWINDS", "Ticket", "criterion_branch", "export_ticket", "imp",
    "load_ticket", "next_masks", "prune_and_rewind",
    "random_pruning_control", "read_ticket", "reinit_control", "rewind", "summarise",
]


# ---------------------------------------------------------------------------------------
# The IMP loop: levels x replicates x branches over the one trainer.

REWINDS: tuple[str, ...] = get_args(Rewind)


def summarise(history: dict[str, list]) -> dict[str, list]:
    """Per replicate of a population history: early-stop iteration (min val loss, earliest)
    and the accuracies there, and the final test accuracy."""
    val = np.asarray(history["val_loss"], np.float64)  # [evals, R]
    i = np.argmin(val, axis=0)  # first minimum
    r = np.arange(val.shape[1])
    steps = np.asarray(history["step"])
    test = np.asarray(history["test_accuracy"], np.float64)
    return {
        "early_stop_step": [int(s) for s in steps[i]],
        "early_stop_test_accuracy": [float(v) for v in test[i, r]],
        "early_stop_val_loss": [float(v) for v in val[i, r]],
        "final_test_accuracy": [float(v) for v in test[-1]],
    }


def imp(
    apply_fn: Callable[..., Any],
    init_fn: Callable[[jax.Array], tuple[PyTree, PyTree]],
    data: Any,
    *,
    plan: Plan,
    levels: int,
    tx: Any,
    num_steps: int,
    batch_size: int,
    eval_every: int,
    key: jax.Array,
    replicates: int = 1,
    rewind_to: Rewind = "init",
    rewind_step: int = 0,
    branches: Sequence[Branch] = (),
    branch_levels: Sequence[int] | None = None,
    rules: rules_lib.Rules | None = None,
    directory: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    keep: int = 2,
    augment: Callable[..., jax.Array] | None = None,
    on_level: Callable[[int, PyTree, PyTree], None] | None = None,
    on_result: Callable[[dict], None] | None = None,
    on_checkpoint: Callable[[int, str, int], None] | None = None,
) -> list[dict]:
    """A lottery-ticket experiment: iterative magnitude pruning with rewinding and controls.

    Level 0 trains the dense network; level ``l >= 1`` prunes the trained weights of level
    ``l - 1`` by ``plan`` (:func:`prune_and_rewind`) and restarts from the rewind point. The
    ``replicates`` are ONE population: every chunk and evaluation is one compiled program
    (:class:`jaxsparse.train.Trainer`, sharded over the devices). At every level >= 1 (or the
    ``branch_levels``) each :class:`Branch` (the controls) trains from the same level.

    Rewinding (``rewind_to``): ``"init"``; ``"iteration"`` (the snapshot at iteration
    ``rewind_step`` of the dense run; later levels train iterations ``k..num_steps``);
    ``"lr"`` (learning-rate rewinding: the trained weights, the schedule replayed from
    ``rewind_step``); ``"finetune"`` (the trained weights, ``num_steps - rewind_step``
    iterations at the final learning rate). ``plan.weights`` must be ``"trained"`` for the
    last two and ``"rewind"`` otherwise.

    With ``directory`` every (level, branch) run is checkpointed in
    ``directory/level_XX/<branch>/ckpt`` and its result written to ``.../result.json``: a
    relaunch skips finished runs and resumes a killed one from its newest checkpoint, bitwise.

    Args:
      apply_fn, init_fn: the model (:func:`jaxsparse.models.functional`): ``init_fn(key) ->
        (params, model_state)``.
      data: a :class:`jaxsparse.data.Dataset` or ``{"train": (x, y), "val": ..., "test":
        ...}`` (the early-stop iteration needs ``val``; results need ``test``).
      plan: how each level prunes (:class:`Plan`).
      levels: number of pruning levels after the dense run (0 = dense only).
      tx: an optax optimizer, or ``tx(start_step, finetune) -> optimizer`` so that a run
        that starts at iteration ``k`` reads its schedule from ``k`` (optax counts from 0 in
        a fresh state) and fine-tuning uses the final rate. Wrap it in
        :func:`jaxsparse.masked` to keep pruned moments at zero.
      num_steps, batch_size, eval_every: the training of every level.
      key: randomness: init (replicate ``r`` uses ``split(fold_in(key, 0), R)[r]``), data
        order, pruning and controls.
      replicates: population size.
      rewind_to, rewind_step: see above.
      branches: the controls, e.g. ``[reinit_control(), random_pruning_control()]``.
      branch_levels: levels at which the branches run (default: every level >= 1).
      rules: path rules for what is prunable (:func:`jaxsparse.ones_like`).
      directory, checkpoint_every, keep: checkpoints and finished results (see above).
      augment: on-device augmentation (:func:`jaxsparse.data.augment_cifar`).
      on_level: ``on_level(level, params, masks, model_state)`` with the population's
        starting weights, masks and model state (BatchNorm statistics) of each level's
        ticket, before it trains (e.g. to export it with :func:`export_ticket`).
      on_result: ``on_result(result)`` after each (level, branch) run.
      on_checkpoint: ``on_checkpoint(level, branch, step)`` once a checkpoint is on disk.

    Returns:
      One dict per (level, branch) in run order: ``level``, ``branch``, ``density`` (per
      replicate), ``layers`` (mean density per prunable leaf path), ``early_stop_step``,
      ``early_stop_test_accuracy``, ``early_stop_val_loss``, ``final_test_accuracy`` (per
      replicate lists) and the ``history``.

    >>> fn = models.functional(models.lenet300(key=jax.random.key(0), input_shape=(8, 8, 1),
    ...                                        hidden=(16, 8)))
    >>> res = imp(fn.apply_fn, fn.init_fn, data.digits(), plan=Plan(rate=0.5), levels=1,
    ...           tx=optax.adam(1e-2), num_steps=20, batch_size=60, eval_every=10,
    ...           key=jax.random.key(0), replicates=2, branches=[reinit_control()])
    >>> [(r["level"], r["branch"], round(r["density"][0], 3)) for r in res]
    [(0, 'ticket', 1.0), (1, 'ticket', 0.5), (1, 'reinit', 0.5)]

    References:
      Frankle & Carbin 2019; Frankle et al. 2020 (rewinding to iteration k); Renda et al.
      2020 (learning-rate rewinding, fine-tuning); Zhou et al. 2019 (controls).
    """
    from jaxsparse import train
    from jaxsparse.population import take_member

    if rewind_to not in REWINDS:
        raise ValueError(f"rewind_to must be one of {REWINDS}, got {rewind_to!r}")
    if int(levels) < 0 or int(replicates) < 1:
        raise ValueError(f"need levels >= 0 and replicates >= 1, got levels={levels}, "
                         f"replicates={replicates}")
    trained = rewind_to in ("lr", "finetune")
    if trained != (plan.weights == "trained"):
        raise ValueError(f"rewind_to={rewind_to!r} needs Plan(weights="
                         f"{'trained' if trained else 'rewind'!r}), got {plan.weights!r}")
    k = int(rewind_step) if rewind_to != "init" else 0
    if not 0 <= k < int(num_steps):
        raise ValueError(f"rewind_step must be in [0, num_steps={num_steps}), got {rewind_step}")
    R = int(replicates)
    init_keys = jax.random.split(jax.random.fold_in(key, 0), R)
    data_keys = jax.random.split(jax.random.fold_in(key, 1), R)
    prune_root = jax.random.fold_in(key, 2)
    params0, model_state0 = jax.vmap(init_fn)(init_keys)
    one = masks_lib.ones_like(take_member(params0, 0), rules)
    masks0 = masks_lib.stack([one] * R)

    def init_params_fn(k_):
        return init_fn(k_)[0]

    steps: dict = {}

    def compiled_step(branch=None):
        if branch not in steps:
            if branch is None:
                f = functools.partial(prune_and_rewind, plan=plan)
            else:
                f = functools.partial(branch_start, branch=branch, plan=plan,
                                      init_fn=init_params_fn)
            steps[branch] = jax.jit(jax.vmap(f))
        return steps[branch]

    def level_keys(level, salt):
        return jax.random.split(jax.random.fold_in(jax.random.fold_in(prune_root, level), salt),
                                R)

    trainers: dict = {}

    def trainer(start: int, finetune: bool, frozen: bool, snapshot: bool):
        tkey = (start, finetune, frozen, snapshot)
        if tkey not in trainers:
            opt = tx(start, finetune) if callable(tx) and not hasattr(tx, "update") else tx
            hooks = (train.snapshot_at(k),) if snapshot else ()
            trainers[tkey] = train.Trainer(apply_fn, opt, batch_size=batch_size, hooks=hooks,
                                           augment=augment)
        return trainers[tkey]

    def run_one(level, name, params, model_state, masks, *, frozen=False):
        run_dir = None if directory is None else os.path.join(
            os.fspath(directory), f"level_{level:02d}", name)
        result_path = None if run_dir is None else os.path.join(run_dir, "result.json")
        snapshot = level == 0 and rewind_to == "iteration"
        start = 0 if level == 0 else k
        tr = trainer(start, level > 0 and rewind_to == "finetune", frozen, snapshot)

        def one_state(p, ms, m, dk):
            # Frozen mask-0: the forward pass sees every weight (all-ones masks); the state's
            # `trainable` = the ticket's masks keeps the pruned ones at their rewind value.
            if not frozen:
                return tr.init_state(p, key=dk, model_state=ms, masks=m)
            full = jax.tree.map(lambda mm, pp: jnp.ones(pp.shape, bool), m, p)
            return train.init_state(p, tr.tx, key=dk, model_state=ms, masks=full,
                                    trainable=m)

        state = jax.vmap(one_state)(params, model_state, masks, data_keys)
        state = state._replace(step=jnp.full_like(state.step, start))
        hook = None
        if on_checkpoint is not None:
            hook = lambda s: on_checkpoint(level, name, s)  # noqa: E731
        out = tr.fit(state, data, num_steps=num_steps, eval_every=eval_every,
                     checkpoint_dir=None if run_dir is None else os.path.join(run_dir, "ckpt"),
                     checkpoint_every=checkpoint_every, keep=keep, on_checkpoint=hook)
        if result_path is not None and os.path.exists(result_path):
            with open(result_path) as f:
                result = json.load(f)
        else:
            reps = [masks_lib.report(take_member(masks, r)) for r in range(R)]
            result = {
                "level": level, "branch": name,
                "density": [rep.density for rep in reps],
                "layers": {row.path: float(np.mean([rp.rows[i].density for rp in reps]))
                           for i, row in enumerate(reps[0].rows)},
                **summarise(out.history), "history": out.history,
            }
            if result_path is not None:
                os.makedirs(run_dir, exist_ok=True)
                tmp = result_path + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(result, f)
                os.replace(tmp, result_path)
        if on_result is not None:
            on_result(result)
        return out.state, result

    results = []
    rewind_point = params0
    params, masks, model_state = params0, masks0, model_state0
    prev = None  # (trained params, masks, model state) of the previous level
    for level in range(int(levels) + 1):
        if level > 0:
            masks, params = compiled_step()(prev[0], prev[1], rewind_point,
                                            key=level_keys(level, 0), init_params=params0)
            # Rewinding restarts the batch-norm statistics too; keeping the trained weights
            # (lr rewinding, fine-tuning) keeps the trained statistics.
            model_state = prev[2] if trained else model_state0
        if on_level is not None:
            on_level(level, params, masks, model_state)
        state, res = run_one(level, "ticket", params, model_state, masks)
        results.append(res)
        if level == 0 and rewind_to == "iteration":
            rewind_point = state.hook_state[0]
        if level > 0 and (not branch_levels or level in branch_levels):
            for b_i, branch in enumerate(branches):
                b_masks, b_params = compiled_step(branch)(
                    prev[0], prev[1], rewind_point, masks, key=level_keys(level, 1 + b_i),
                    init_params=params0)
                _, b_res = run_one(level, branch.name, b_params, model_state0, b_masks,
                                   frozen=branch.mask0 == "frozen")
                results.append(b_res)
        prev = (state.params, masks, state.model_state)
    return results
