"""How one IMP level prunes (:class:`Plan`), the prune-and-rewind step, and the controls
(:class:`Branch` specs built by :func:`branch_start`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import jax

from jaxsparse import masks as masks_lib
from jaxsparse import rules as rules_lib
from jaxsparse import scores as scores_lib
from jaxsparse import select
from jaxsparse.lottery.actions import (
    MASK0_ACTIONS,
    MASK1_ACTIONS,
    Mask0Action,
    Mask1Action,
    rewind,
)
from jaxsparse.typing import Key, Masks, Params, Scores

Scope = Literal["layerwise", "global"]
Weights = Literal["rewind", "trained"]


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
