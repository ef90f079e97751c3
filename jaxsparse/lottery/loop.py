"""The IMP loop: levels x replicates (one population program) x branches over the one trainer."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse import masks as masks_lib
from jaxsparse import rules as rules_lib
from jaxsparse.lottery.plan import Branch, Plan, branch_start, prune_and_rewind
from jaxsparse.typing import PyTree

Rewind = Literal["init", "iteration", "lr", "finetune"]


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
    ...           key=jax.random.key(0), replicates=2, branches=[lottery.reinit_control()])
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
