"""Iterative magnitude pruning (lottery tickets): levels, replicates, controls, plots, export.

    python -m experiments.lottery --config experiments/configs/digits_lenet.py --out runs/demo
    python -m experiments.lottery --config experiments/configs/frankle2019_lenet300.py \\
        --data-file /path/mnist_subset_6k.npz --set num_steps=5000 --levels 8

Level 0 trains the dense network; level ``l >= 1`` prunes the trained weights of level
``l - 1`` with the config's plan (layerwise rates or a global rate, a criterion) and restarts
from the rewind point (``jaxsparse.lottery.prune_and_rewind``). The ``replicates`` are ONE
population: every training chunk and evaluation is one compiled program over all of them,
sharded over every device (``jaxsparse.sweep.population_map``; on a CPU-only machine up to
one device per core, ``--cpu-devices``), and pruning is ``jax.vmap``-ed. At every level >= 1 the
configured *branches* (controls) train from the same level: random re-initialisation of the
ticket's mask, random pruning with the ticket's per-layer counts, other criteria, other
mask-1 / mask-0 actions (``jaxsparse.lottery.branch_start``), through the same training
function as the ticket.

Rewinding (``config.rewind``): ``"init"`` (k = 0), ``"iteration"`` (to the snapshot taken at
iteration ``rewind_step`` of the dense run; later levels train iterations k..num_steps with
the schedule from k), ``"lr"`` (learning-rate rewinding: keep the trained weights, replay the
schedule from ``rewind_step``), ``"finetune"`` (keep the trained weights, train
``num_steps - rewind_step`` iterations at the schedule's final learning rate).

Output (``<out>/<name>-<hash>/``, the hash over the hyperparameters except ``levels`` and
where data lives, so asking for more levels extends a run): ``level_XX/<branch>/`` with
``ckpt/`` (orbax checkpoints of the population state every ``checkpoint_every`` iterations)
and ``result.json`` (per replicate: density, early-stop iteration and test accuracy there,
final test accuracy, history); ``level_XX/ticket/export/`` (replicate 0's ticket: masks +
starting weights + density report, ``jaxsparse.lottery.load_ticket``); ``levels.csv`` (the
level table: mean and std over replicates), ``replicates.csv``, ``accuracy.png`` and
``early_stop.png``. A relaunch skips finished levels and resumes a killed one from its newest
checkpoint; the table is then bitwise the one of an uninterrupted run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
import time
from typing import Any

import numpy as np

from experiments import common

HASH_EXCLUDE = (*common.NON_HASHED, "levels", "data_file")


# ---------------------------------------------------------------------------------------
# Building blocks from the config.


def load_dataset(config: Any):
    """The config's dataset; ``data_file`` = an ``.npz`` of ``images``/``labels`` (see below)."""
    from jaxsparse import data

    if config.get("data_file"):
        return npz_subset(config.data_file, test_size=config.get("test_size", 1000),
                          val_size=config.get("val_size", 500), seed=config.seed)
    return data.load(config.dataset, data_dir=config.get("data_dir"))


def npz_subset(path: str, *, test_size: int, val_size: int, seed: int = 0):
    """A fixed stratified train / val / test split of an ``.npz`` with uint8 ``images``, ``labels``.

    For the 6,000-digit MNIST subset: 4,500 / 500 / 1,000 by default, normalised with the MNIST
    constants. It is a subset, not the official MNIST split.
    """
    from sklearn.model_selection import train_test_split

    from jaxsparse import data

    with np.load(os.path.expanduser(path)) as z:
        x, y = z["images"], z["labels"].astype(np.int32)
    if x.ndim == 3:
        x = x[..., None]
    mean, std = data.NORMALISATION["mnist"]
    x = data.normalise(x, mean, std)
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=test_size, stratify=y, random_state=seed)
    train, val = train_test_split(rest, test_size=val_size, stratify=y[rest],
                                  random_state=seed + 1)
    split = lambda i: data.Split(x[i], y[i])  # noqa: E731
    return data.Dataset("mnist_subset", split(train), split(val), split(test), 10, mean, std,
                        source=os.path.abspath(path))


def build_model(config: Any, dataset: Any):
    """``jaxsparse.models.functional`` of the config's model for the dataset."""
    import jax

    from jaxsparse import models

    kwargs = dict(config.get("model_kwargs", {}) or {})
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    model = getattr(models, config.model)(key=jax.random.key(0), input_shape=dataset.input_shape,
                                          num_classes=dataset.num_classes, **kwargs)
    return models.functional(model)


def learning_rate(config: Any):
    """The config's schedule ``step -> lr`` (piecewise constant at ``lr_milestones``)."""
    import optax

    milestones = [int(m) for m in config.get("lr_milestones", ()) or ()]
    if not milestones:
        return optax.constant_schedule(config.learning_rate)
    return optax.piecewise_constant_schedule(
        config.learning_rate, {m: float(config.get("lr_gamma", 0.1)) for m in milestones})


def build_tx(config: Any, *, offset: int = 0, finetune: bool = False, freeze: bool = False):
    """The optimizer of a run that starts at iteration ``offset`` (schedule shifted to match).

    optax counts from 0 in a fresh optimizer state, so a run restarted at iteration k (late
    rewinding, learning-rate rewinding) reads the schedule at ``count + k``. ``finetune``:
    constant at the schedule's final value. ``freeze``: wrapped in
    ``jaxsparse.lottery.freeze_tx`` (mask-0 "frozen" branches).
    """
    import optax

    import jaxsparse
    from jaxsparse import lottery

    sched = learning_rate(config)
    if finetune:
        lr = float(sched(config.num_steps))
    else:
        lr = lambda count: sched(count + offset)  # noqa: E731
    if config.optimizer == "adam":
        tx = optax.adam(lr)
    elif config.optimizer == "sgd":
        tx = optax.sgd(lr, momentum=config.get("momentum", 0.0) or None)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r} (adam | sgd)")
    if config.get("weight_decay", 0.0):
        tx = optax.chain(optax.add_decayed_weights(config.weight_decay), tx)
    tx = jaxsparse.masked(tx)
    return lottery.freeze_tx(tx) if freeze else tx


def make_plan(config: Any):
    """``jaxsparse.lottery.Plan`` of the config (scope, rates / rate, criterion, weights)."""
    from jaxsparse import lottery

    weights = "trained" if config.rewind in ("lr", "finetune") else "rewind"
    if config.scope == "global":
        return lottery.Plan(scope="global", rate=config.rate, criterion=config.criterion,
                            weights=weights)
    rates = [tuple(r) for r in config.rates]
    return lottery.Plan(scope="layerwise", rates=rates, criterion=config.criterion,
                        weights=weights)


def parse_branch(name: str):
    """``"reinit"``, ``"random_prune"``, ``"crit:<criterion>"`` or ``"action:<mask1>:<mask0>"``."""
    from jaxsparse import lottery

    if name == "reinit":
        return lottery.reinit_control()
    if name == "random_prune":
        return lottery.random_pruning_control()
    if name.startswith("crit:"):
        return lottery.criterion_branch(name.split(":", 1)[1])
    if name.startswith("action:"):
        parts = name.split(":")
        if len(parts) != 3:
            raise ValueError(f"branch {name!r}: expected action:<mask1>:<mask0>")
        return lottery.action_branch(parts[1], parts[2])
    raise ValueError(f"unknown branch {name!r}: reinit | random_prune | crit:<name> | "
                     "action:<mask1>:<mask0>")


# ---------------------------------------------------------------------------------------
# Training a population (the one training loop of every level and branch).


def _pause_for_tests(level: int, branch: str, step: int) -> None:
    # Fault injection for the kill/resume test: stop here (the checkpoint of `step` is on
    # disk) and wait to be SIGKILLed from outside.
    target = os.environ.get("JAXSPARSE_LOTTERY_PAUSE")
    if target is not None and target == f"{level}:{branch}:{step}":
        with open(os.environ["JAXSPARSE_PAUSE_FILE"], "w") as f:
            f.write(target)
        while True:
            signal.pause()


@functools.cache
def _compiled(apply_fn, tx, batch_size: int, k: int, hooks: tuple, augment):
    from jaxsparse import sweep, train

    chunk = train.make_train_chunk(apply_fn, tx, batch_size=batch_size, num_steps=k,
                                   hooks=hooks, augment=augment)
    # The replicates are one population sharded over every device (one per core on a CPU,
    # `--cpu-devices`); the data is shared by all members.
    return sweep.population_map(chunk, in_axes=(0, None, None))


@functools.cache
def _compiled_eval(apply_fn):
    from jaxsparse import sweep, train

    return sweep.population_map(train.make_eval(apply_fn), in_axes=(0, 0, 0, None, None))


def train_population(apply_fn, tx, state, dataset, config, *, ckpt_dir: str, hooks=(),
                     tag=(0, "ticket")):
    """Trains a stacked ``TrainState`` to ``config.num_steps``; checkpointed, resumable.

    Returns ``(state, history)``; ``history[metric]`` is a list (one per evaluation) of
    per-replicate lists. Evaluations at the start and every ``eval_every`` iterations.
    """
    import jax
    import jax.numpy as jnp

    from jaxsparse import checkpoint as ckpt_lib
    from jaxsparse import data as data_lib

    augment = data_lib.augmentation_for(dataset.name) if config.get("augment") else None
    x_tr, y_tr = jnp.asarray(dataset.train.x), jnp.asarray(dataset.train.y)
    evals = {s: (jnp.asarray(getattr(dataset, s).x), jnp.asarray(getattr(dataset, s).y))
             for s in ("val", "test")}
    eval_fn = _compiled_eval(apply_fn)
    names = ("val_loss", "val_accuracy", "test_loss", "test_accuracy")
    history: dict[str, list] = {"step": [], **{n: [] for n in names}}

    def record(st):
        history["step"].append(int(st.step[0]))
        for split, (x, y) in evals.items():
            out = jax.device_get(eval_fn(st.params, st.model_state, st.masks, x, y))
            history[f"{split}_loss"].append([float(v) for v in out["loss"]])
            history[f"{split}_accuracy"].append([float(v) for v in out["accuracy"]])

    ckpt = ckpt_lib.Checkpointer(ckpt_dir, keep=config.get("keep_checkpoints", 2))
    try:
        latest = ckpt.latest_step()
        if latest is not None:
            state, meta = ckpt.restore(latest, target=state)
            history = {k: list(v) for k, v in meta["history"].items()}
        else:
            record(state)
        step = int(state.step[0])
        while step < config.num_steps:
            k = min(config.eval_every, config.num_steps - step)
            chunk = _compiled(apply_fn, tx, config.batch_size, k, tuple(hooks), augment)
            state, _ = chunk(state, x_tr, y_tr)
            step += k
            record(state)
            if step % config.checkpoint_every == 0 or step == config.num_steps:
                ckpt.save(step, state, metadata={"history": {k_: list(v) for k_, v in
                                                             history.items()}})
                if os.environ.get("JAXSPARSE_LOTTERY_PAUSE"):
                    ckpt.wait()
                    _pause_for_tests(tag[0], tag[1], step)
    finally:
        ckpt.close()
    return state, history


def summarise(history: dict[str, list]) -> dict[str, list]:
    """Per replicate: early-stop iteration (min val loss, earliest) and accuracies there."""
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


# ---------------------------------------------------------------------------------------
# The level loop.


class Experiment:
    """Holds what every level needs: data, model, population init, plan, keys, run dir."""

    def __init__(self, config: Any, out: str, *, show_progress: bool = True):
        import jax

        from jaxsparse import masks as masks_lib

        self.config = config
        self.show_progress = show_progress
        name = common.to_dict(config).get("name", "lottery")
        self.path = os.path.join(out, f"{name}-{common.config_hash(config, HASH_EXCLUDE)}")
        os.makedirs(self.path, exist_ok=True)
        common.write_json(os.path.join(self.path, "config.json"), common.to_dict(config))
        self.dataset = load_dataset(config)
        self.fn = build_model(config, self.dataset)
        self.plan = make_plan(config)
        self.branches = [parse_branch(b) for b in config.branches]
        R = config.replicates
        root = jax.random.key(config.seed)
        self.init_keys = jax.random.split(jax.random.fold_in(root, 0), R)
        self.data_keys = jax.random.split(jax.random.fold_in(root, 1), R)
        self.prune_root = jax.random.fold_in(root, 2)
        self.params0, self.model_state0 = jax.vmap(self.fn.init_fn)(self.init_keys)
        rules = [tuple(r) for r in config.get("prunable", ()) or ()]
        one = masks_lib.ones_like(self.fn.params, rules or None)
        self.masks0 = masks_lib.stack([one] * R)
        self.k = int(config.get("rewind_step", 0)) if config.rewind != "init" else 0
        self._tx: dict = {}
        self._steps: dict = {}

    def compiled_step(self, branch=None):
        """The jitted, vmapped prune-and-rewind step (or a branch's start), built once."""
        import jax

        from jaxsparse import lottery

        if branch not in self._steps:
            if branch is None:
                f = functools.partial(lottery.prune_and_rewind, plan=self.plan)
            else:
                f = functools.partial(lottery.branch_start, branch=branch, plan=self.plan,
                                      init_fn=self.init_fn_params)
            self._steps[branch] = jax.jit(jax.vmap(f))
        return self._steps[branch]

    def level_keys(self, level: int, salt: int):
        import jax

        key = jax.random.fold_in(jax.random.fold_in(self.prune_root, level), salt)
        return jax.random.split(key, self.config.replicates)

    def init_fn_params(self, key):
        return self.fn.init_fn(key)[0]

    def tx(self, *, offset: int, finetune: bool, freeze: bool):
        # One optimizer object per kind of run, so the compiled chunks are reused (the jit
        # cache is keyed on the transformation's identity).
        key = (offset, finetune, freeze)
        if key not in self._tx:
            self._tx[key] = build_tx(self.config, offset=offset, finetune=finetune,
                                     freeze=freeze)
        return self._tx[key]

    def _state(self, params, model_state, masks, *, hooks, tx, step: int, frozen: bool):
        import jax
        import jax.numpy as jnp

        from jaxsparse import lottery, train

        def one(p, ms, m, key):
            # Frozen mask-0: the forward pass sees every weight (all-ones training masks);
            # freeze_tx keeps the pruned ones at their rewind-point value.
            tm = jax.tree.map(lambda mm, pp: jnp.ones(pp.shape, bool), m, p) if frozen else m
            st = train.init_state(p, tx, key=key, model_state=ms, masks=tm, hooks=hooks)
            if frozen:
                st = st._replace(opt_state=lottery.set_trainable(st.opt_state, m))
            return st

        state = jax.vmap(one)(params, model_state, masks, self.data_keys)
        return state._replace(step=jnp.full_like(state.step, step))

    def run_one(self, level: int, name: str, params, model_state, masks, *,
                frozen: bool = False):
        """Trains one (level, branch) population or loads its finished result."""
        from jaxsparse import masks as masks_lib
        from jaxsparse import sweep, train

        cfg = self.config
        run = os.path.join(self.path, f"level_{level:02d}", name)
        os.makedirs(run, exist_ok=True)
        hooks = (train.snapshot_at(self.k),) if level == 0 and cfg.rewind == "iteration" else ()
        start = 0 if level == 0 else self.k
        tx = self.tx(offset=start, finetune=level > 0 and cfg.rewind == "finetune",
                     freeze=frozen)
        state = self._state(params, model_state, masks, hooks=hooks, tx=tx, step=start,
                            frozen=frozen)
        result_path = os.path.join(run, "result.json")
        t0 = time.perf_counter()
        state, history = train_population(self.fn.apply_fn, tx, state, self.dataset, cfg,
                                          ckpt_dir=os.path.join(run, "ckpt"), hooks=hooks,
                                          tag=(level, name))
        if not os.path.exists(result_path):
            reps = [masks_lib.report(sweep.take_member(masks, r)) for r in range(cfg.replicates)]
            result = {
                "level": level, "branch": name,
                "density": [rep.density for rep in reps],
                "layers": {row.path: float(np.mean([rp.rows[i].density for rp in reps]))
                           for i, row in enumerate(reps[0].rows)},
                **summarise(history), "history": history,
            }
            common.write_json(result_path, result)
            common.write_json(os.path.join(run, "timing.json"),
                              {"seconds_this_launch": time.perf_counter() - t0})
        with open(result_path) as f:
            result = json.load(f)
        return state, result

    def run(self) -> list[dict]:
        cfg = self.config
        results = []
        rewind_point = self.params0
        params, masks, model_state = self.params0, self.masks0, self.model_state0
        prev = None  # (trained params, masks, model state) of the previous level
        for level in range(cfg.levels + 1):
            if level > 0:
                masks, params = self.compiled_step()(prev[0], rewind_point, prev[1],
                                                     key=self.level_keys(level, 0),
                                                     init_params=self.params0)
                # Rewinding restarts the batch-norm statistics too; keeping the trained
                # weights (lr rewinding, fine-tuning) keeps the trained statistics.
                model_state = prev[2] if self.plan.weights == "trained" else self.model_state0
            if cfg.get("export", True):
                self.export(level, params, masks)
            state, res = self.run_one(level, "ticket", params, model_state, masks)
            self._print(res)
            results.append(res)
            if level == 0 and cfg.rewind == "iteration":
                rewind_point = state.hook_state[0]
            if level > 0 and (not cfg.branch_levels or level in cfg.branch_levels):
                for b_i, branch in enumerate(self.branches):
                    b_masks, b_params = self.compiled_step(branch)(
                        masks, rewind_point, prev[0], prev[1],
                        key=self.level_keys(level, 1 + b_i), init_params=self.params0)
                    _, b_res = self.run_one(level, branch.name, b_params, self.model_state0,
                                            b_masks, frozen=branch.mask0 == "frozen")
                    self._print(b_res)
                    results.append(b_res)
            prev = (state.params, masks, state.model_state)
        return results

    def export(self, level: int, params, masks) -> None:
        from jaxsparse import lottery, sweep

        path = os.path.join(self.path, f"level_{level:02d}", "ticket", "export")
        if os.path.exists(os.path.join(path, "density.json")):
            return
        lottery.export_ticket(path, sweep.take_member(params, 0), sweep.take_member(masks, 0),
                              metadata={"level": level, "replicate": 0,
                                        "config": common.to_dict(self.config)})

    def _print(self, res: dict) -> None:
        if self.show_progress:
            print(f"level {res['level']:2d} {res['branch']:>14s}: "
                  f"{100 * np.mean(res['density']):7.3f}% remaining, early stop "
                  f"{np.mean(res['early_stop_step']):7.0f}, test acc there "
                  f"{np.mean(res['early_stop_test_accuracy']):.4f}, final "
                  f"{np.mean(res['final_test_accuracy']):.4f}", flush=True)



# ---------------------------------------------------------------------------------------
# Tables.


def table_rows(results: list[dict]) -> list[dict]:
    """One row per (level, branch): densities and mean / std over replicates."""
    rows = []
    for res in results:
        row = {"level": res["level"], "branch": res["branch"],
               "percent_remaining": 100 * float(np.mean(res["density"]))}
        for path, d in res["layers"].items():
            row[f"density[{path}]"] = d
        for key in ("early_stop_step", "early_stop_test_accuracy", "final_test_accuracy"):
            v = np.asarray(res[key], np.float64)
            row[f"{key}_mean"] = float(v.mean())
            row[f"{key}_std"] = float(v.std())
        row["replicates"] = len(res["density"])
        rows.append(row)
    return rows


def write_tables(path: str, results: list[dict]) -> list[dict]:
    import csv

    rows = table_rows(results)
    for name, data in (("levels.csv", rows), ("replicates.csv", _replicate_rows(results))):
        tmp = os.path.join(path, name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(data[0]))
            w.writeheader()
            w.writerows(data)
        os.replace(tmp, os.path.join(path, name))
    return rows


def _replicate_rows(results: list[dict]) -> list[dict]:
    out = []
    for res in results:
        for r in range(len(res["density"])):
            out.append({"level": res["level"], "branch": res["branch"], "replicate": r,
                        "density": res["density"][r],
                        "early_stop_step": res["early_stop_step"][r],
                        "early_stop_test_accuracy": res["early_stop_test_accuracy"][r],
                        "final_test_accuracy": res["final_test_accuracy"][r]})
    return out


def format_table(rows: list[dict]) -> str:
    """The printable level table (layer densities in percent, accuracies in percent)."""
    layers = [k for k in rows[0] if k.startswith("density[")]
    short = [k[len("density["):-1].replace("/kernel", "") for k in layers]
    head = ["level", "branch", "%remain", *short, "ES iter", "ES test acc", "final acc"]
    body = []
    for r in rows:
        body.append([str(r["level"]), r["branch"], f"{r['percent_remaining']:.2f}",
                     *[f"{100 * r[k]:.1f}" for k in layers],
                     f"{r['early_stop_step_mean']:.0f}",
                     f"{100 * r['early_stop_test_accuracy_mean']:.2f}"
                     f"±{100 * r['early_stop_test_accuracy_std']:.2f}",
                     f"{100 * r['final_test_accuracy_mean']:.2f}"
                     f"±{100 * r['final_test_accuracy_std']:.2f}"])
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    fmt = lambda x: "  ".join(c.rjust(w) for c, w in zip(x, widths, strict=True))  # noqa: E731
    return "\n".join([fmt(head), "-" * len(fmt(head)), *map(fmt, body)])


def run(config: Any, out: str, *, show_progress: bool = True) -> list[dict]:
    """Runs (resumes, or skips the finished levels of) an IMP experiment; returns the table."""
    from experiments import plots

    t0 = time.perf_counter()
    exp = Experiment(config, out, show_progress=show_progress)
    print(f"{config.name}: {exp.dataset!r}, model {config.model}, {config.replicates} "
          f"replicates, levels 0..{config.levels}, branches {list(config.branches)}; "
          f"run dir {exp.path}", flush=True)
    results = exp.run()
    rows = write_tables(exp.path, results)
    print(format_table(rows))
    plots.accuracy_vs_density(os.path.join(exp.path, "accuracy.png"), results,
                              title=config.name)
    plots.early_stop_vs_density(os.path.join(exp.path, "early_stop.png"), results,
                                title=config.name)
    last = max(r["level"] for r in results)
    print(f"wrote {exp.path}/levels.csv, replicates.csv, accuracy.png, early_stop.png; "
          f"lowest-density ticket: {exp.path}/level_{last:02d}/ticket/export "
          f"({time.perf_counter() - t0:.1f}s)")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="python file with get_config()")
    parser.add_argument("--out", default="runs", help="parent of the run directories")
    parser.add_argument("--replicates", type=int, help="override config.replicates")
    parser.add_argument("--levels", type=int, help="override config.levels (0 = dense only)")
    parser.add_argument("--data-file", help="an .npz with images/labels (e.g. the MNIST subset)")
    parser.add_argument("--data-dir", help="directory with raw files or a tfds data dir")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (Python literal), repeatable")
    parser.add_argument("--quiet", action="store_true", help="no per-level lines")
    parser.add_argument("--cpu-devices", default="auto", help=common.CPU_DEVICES_HELP)
    args = parser.parse_args(argv)
    config = common.load_config(args.config)
    if args.replicates is not None:
        config.replicates = args.replicates
    if args.levels is not None:
        config.levels = args.levels
    if args.data_file:
        config.data_file = os.path.abspath(os.path.expanduser(args.data_file))
    if args.data_dir:
        config.data_dir = os.path.expanduser(args.data_dir)
    common.apply_overrides(config, args.set)
    common.cpu_devices(args.cpu_devices, int(config.replicates))
    run(config, args.out, show_progress=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
