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


def build_tx(config: Any, *, offset: int = 0, finetune: bool = False):
    """The optimizer of a run that starts at iteration ``offset`` (schedule shifted to match).

    optax counts from 0 in a fresh optimizer state, so a run restarted at iteration k (late
    rewinding, learning-rate rewinding) reads the schedule at ``count + k``. ``finetune``:
    constant at the schedule's final value.
    """
    import optax

    import jaxsparse

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
    return jaxsparse.masked(tx)


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


def _pause_for_tests(level: int, branch: str, step: int) -> None:
    # Fault injection for the kill/resume test: stop here (the checkpoint of `step` is on
    # disk) and wait to be SIGKILLed from outside.
    target = os.environ.get("JAXSPARSE_LOTTERY_PAUSE")
    if target is not None and target == f"{level}:{branch}:{step}":
        with open(os.environ["JAXSPARSE_PAUSE_FILE"], "w") as f:
            f.write(target)
        while True:
            signal.pause()


# ---------------------------------------------------------------------------------------
# The experiment: the library's IMP loop (jaxsparse.lottery.imp) with this run's directory.


def run_dir(config: Any, out: str) -> str:
    name = common.to_dict(config).get("name", "lottery")
    return os.path.join(out, f"{name}-{common.config_hash(config, HASH_EXCLUDE)}")


def experiment(config: Any, path: str, dataset: Any, *, show_progress: bool = True) -> list:
    """Runs (resumes, or skips the finished runs of) the config's IMP experiment in ``path``."""
    import jax

    from jaxsparse import data as data_lib
    from jaxsparse import lottery, sweep

    fn = build_model(config, dataset)
    plan = make_plan(config)

    def export(level, params, masks):
        where = os.path.join(path, f"level_{level:02d}", "ticket", "export")
        if config.get("export", True) and not os.path.exists(os.path.join(where,
                                                                          "density.json")):
            lottery.export_ticket(where, sweep.take_member(params, 0),
                                  sweep.take_member(masks, 0),
                                  metadata={"level": level, "replicate": 0,
                                            "config": common.to_dict(config)})

    def report(res: dict) -> None:
        if show_progress:
            print(f"level {res['level']:2d} {res['branch']:>14s}: "
                  f"{100 * np.mean(res['density']):7.3f}% remaining, early stop "
                  f"{np.mean(res['early_stop_step']):7.0f}, test acc there "
                  f"{np.mean(res['early_stop_test_accuracy']):.4f}, final "
                  f"{np.mean(res['final_test_accuracy']):.4f}", flush=True)

    pause = _pause_for_tests if os.environ.get("JAXSPARSE_LOTTERY_PAUSE") else None
    rules = [tuple(r) for r in config.get("prunable", ()) or ()]
    return lottery.imp(
        fn.apply_fn, fn.init_fn, dataset, plan=plan, levels=int(config.levels),
        tx=lambda start, finetune: build_tx(config, offset=start, finetune=finetune),
        num_steps=int(config.num_steps), batch_size=int(config.batch_size),
        eval_every=int(config.eval_every), key=jax.random.key(config.seed),
        replicates=int(config.replicates), rewind_to=config.rewind,
        rewind_step=int(config.get("rewind_step", 0) or 0),
        branches=[parse_branch(b) for b in config.branches],
        branch_levels=list(config.get("branch_levels", ()) or ()), rules=rules or None,
        directory=path, checkpoint_every=int(config.checkpoint_every),
        keep=int(config.get("keep_checkpoints", 2)),
        augment=data_lib.augmentation_for(dataset.name) if config.get("augment") else None,
        on_level=export, on_result=report, on_checkpoint=pause)


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
    path = run_dir(config, out)
    os.makedirs(path, exist_ok=True)
    common.write_json(os.path.join(path, "config.json"), common.to_dict(config))
    dataset = load_dataset(config)
    print(f"{config.name}: {dataset!r}, model {config.model}, {config.replicates} "
          f"replicates, levels 0..{config.levels}, branches {list(config.branches)}; "
          f"run dir {path}", flush=True)
    results = experiment(config, path, dataset, show_progress=show_progress)
    rows = write_tables(path, results)
    print(format_table(rows))
    plots.accuracy_vs_density(os.path.join(path, "accuracy.png"), results,
                              title=config.name)
    plots.early_stop_vs_density(os.path.join(path, "early_stop.png"), results,
                                title=config.name)
    last = max(r["level"] for r in results)
    print(f"wrote {path}/levels.csv, replicates.csv, accuracy.png, early_stop.png; "
          f"lowest-density ticket: {path}/level_{last:02d}/ticket/export "
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
