"""Lottery tickets: the prune-and-rewind step, mask-1 / mask-0 actions, controls, export.

One level of iterative magnitude pruning (IMP) is: train, score the trained weights, prune a
fraction of what is still kept, and restart training from the *rewind point* with the new
masks. This package is the pure part of that loop plus the loop itself, :func:`imp` (levels
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

from jaxsparse.lottery.actions import MASK0_ACTIONS, MASK1_ACTIONS, Mask0Action, Mask1Action, rewind
from jaxsparse.lottery.loop import REWINDS, Rewind, imp, summarise
from jaxsparse.lottery.plan import (
    Branch,
    Plan,
    Scope,
    Weights,
    action_branch,
    branch_start,
    criterion_branch,
    next_masks,
    prune_and_rewind,
    random_pruning_control,
    reinit_control,
)
from jaxsparse.lottery.tickets import Ticket, export_ticket, load_ticket, read_ticket

__all__ = [
    "MASK0_ACTIONS", "MASK1_ACTIONS", "REWINDS", "Branch", "Mask0Action", "Mask1Action", "Plan",
    "Rewind", "Scope", "Ticket", "Weights", "action_branch", "branch_start", "criterion_branch",
    "export_ticket", "imp", "load_ticket", "next_masks", "prune_and_rewind",
    "random_pruning_control", "read_ticket", "reinit_control", "rewind", "summarise",
]
