"""Runs a hyperparameter grid as one sharded population; resumable; merged table and plot.

    python -m experiments.sweep --config experiments/configs/sweep/sweep_digits.py
    python -m experiments.sweep --config ... --task-index $SLURM_ARRAY_TASK_ID --num-tasks 4
    python -m experiments.sweep --config ... --merge-only      # after all array jobs

Every member (learning rate x sparsity x seed) of a task trains in ONE compiled program: the
one trainer (``jaxsparse.train.Trainer``) on the stacked population state, the per-member
learning rate in the optimizer state (``optax.inject_hyperparams``), the per-member sparsity
a traced value of the random layerwise pruning at init (exact counts), the member axis
sharded over every device (``jaxsparse.population.population_map``). The population is
checkpointed every ``checkpoint_every`` iterations (default ``eval_every``;
``task_XX/ckpt/``); a relaunch resumes from the newest checkpoint, bitwise. Each task writes
``task_XX/results.jsonl``; the merge writes ``table.txt``, ``table.csv``, ``table.json``
(mean and sample std over seeds: ``*_mean`` / ``*_sample_std``) and ``accuracy.png``
(mean ± sample std bands over seeds). The run directory's hash includes the data's content
hash.
"""

from __future__ import annotations

import glob
import os
import sys
import time
from typing import Any

from experiments import cli, common

AXES = ("learning_rate", "sparsity", "seed")
BACKENDS = ("sharding", "pmap", "vmap")


def validate(config: Any) -> None:
    """Grid axes, values and the training keys, before any training (UsageError)."""
    cli.positive(config, "batch_size", "num_steps", "eval_every")
    for a in AXES:
        v = config.get(a)
        if not isinstance(v, list | tuple) or not v:
            raise cli.UsageError(f"config {a}={v!r}: must be a non-empty list")
    for s in config.sparsity:
        if not isinstance(s, int | float) or not 0.0 <= float(s) < 1.0:
            raise cli.UsageError(f"config sparsity: {s!r} is not a fraction pruned in [0, 1)")
    for lr in config.learning_rate:
        if not isinstance(lr, int | float) or not float(lr) > 0:
            raise cli.UsageError(f"config learning_rate: {lr!r} is not a rate > 0")
    for seed in config.seed:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise cli.UsageError(f"config seed: {seed!r} is not an integer")
    if config.get("backend", "sharding") not in BACKENDS:
        raise cli.UsageError(f"config backend={config.backend!r}: expected one of {BACKENDS}")


def _member_state(fn, tx, hp):
    """One member's TrainState from its hyperparameters (traced: the grid compiles once)."""
    import jax

    import jaxsparse as js
    from jaxsparse import train

    k_init, k_mask, k_data = jax.random.split(jax.random.key(hp["seed"]), 3)
    params, model_state = fn.init_fn(k_init)
    masks = js.prune(js.scores.random(params, key=k_mask), js.ones_like(params),
                     sparsity=hp["sparsity"], scope="layerwise")
    state = train.init_state(params, tx, key=k_data, model_state=model_state, masks=masks)
    state.opt_state.hyperparams["learning_rate"] = hp["learning_rate"]
    return state


def run_task(config: Any, out: str, task_index: int, num_tasks: int, *, dataset: Any = None,
             show_progress: bool = True) -> str:
    """Trains task ``task_index``'s share of the grid as one population (resumable)."""
    import functools

    import jax
    import optax

    import jaxsparse as js
    from jaxsparse import population, train

    members = population.task_slice(population.grid(**{a: list(config[a]) for a in AXES}),
                                    task_index, num_tasks)
    task_dir = os.path.join(out, f"task_{task_index:02d}")
    if os.path.exists(os.path.join(task_dir, "results.jsonl")):
        print(f"{task_dir}: finished, skipped")
        return task_dir
    ds = common.load_dataset(config) if dataset is None else dataset
    fn = common.build_model(config, ds, model_kwargs={"hidden": tuple(config.hidden)})
    tx = js.masked(optax.inject_hyperparams(optax.adam)(learning_rate=1e-3))
    hp = population.stack_configs(members, AXES)
    backend = config.get("backend", "sharding")
    state = population.population_map(functools.partial(_member_state, fn, tx),
                                      backend=backend)(hp)
    ckpt = os.path.join(task_dir, "ckpt")
    from jaxsparse import checkpoint

    start = checkpoint.latest_step(ckpt) if os.path.isdir(ckpt) else None
    if start is not None:
        print(f"task {task_index}: resuming from step {start}", flush=True)
    t0 = time.time()
    bar, callback = (common.progress(config.num_steps, start or 0, f"task {task_index}")
                     if show_progress else (None, None))
    try:
        result = train.Trainer(fn.apply_fn, tx, batch_size=config.batch_size,
                               backend=backend).fit(
            state, ds, num_steps=config.num_steps, eval_every=config.eval_every,
            callback=callback, checkpoint_dir=ckpt,
            checkpoint_every=config.get("checkpoint_every") or config.eval_every,
            on_checkpoint=lambda step: common.pause_for_tests(f"task{task_index}:{step}"))
    finally:
        if bar is not None:
            bar.close()
    h = result.history
    print(f"task {task_index}: {len(members)} members, {config.num_steps} iterations, mean "
          f"final test accuracy {sum(h['test_accuracy'][-1]) / len(members):.4f} "
          f"[{time.time() - t0:.1f}s]", flush=True)
    density = jax.device_get(jax.vmap(js.density)(result.state.masks))
    rows = []
    for i, cfg in enumerate(members):
        rows.append(dict(cfg, test_accuracy=float(h["test_accuracy"][-1][i]),
                         density=float(density[i]),
                         curve=[float(a[i]) for a in h["test_accuracy"]], steps=h["step"]))
    population.write_results(task_dir, rows)
    return task_dir


def merge(out: str) -> list[dict]:
    """Merges every task's rows: mean and sample std over seeds per configuration."""
    from jaxsparse import population

    files = sorted(glob.glob(os.path.join(out, "task_*", "results.jsonl")))
    if not files:
        raise cli.UsageError(f"no task results under {out}")
    rows = population.read_results(files)
    steps = rows[0]["steps"]
    for r in rows:
        r.pop("steps", None)
    table = population.merge_results(rows, metrics=["test_accuracy", "density", "curve"])
    text = population.format_table(table, ["test_accuracy", "density"])
    text += f"\n(mean ± {common.SPREAD} over seeds; n = number of seeds)"
    print(text)
    with open(os.path.join(out, "table.txt"), "w") as f:
        f.write(text + "\n")
    # One spread, labelled: merge_results' `_std` is the sample std (ddof 1).
    labelled = [{(k[:-4] + "_sample_std" if k.endswith("_std") else k): v
                 for k, v in row.items()} for row in table]
    common.write_json(os.path.join(out, "table.json"), {"spread": common.SPREAD,
                                                        "steps": steps, "rows": labelled})
    common.write_rows(os.path.join(out, "table.csv"),
                      [{k: v for k, v in row.items() if not k.startswith("curve")}
                       for row in labelled])
    _plot(os.path.join(out, "accuracy.png"), table, steps)
    return labelled


def _plot(path: str, table, steps) -> None:
    import numpy as np

    fig, ax = common.subplots(figsize=(7, 4.5))
    for row in table:
        mean, std = np.asarray(row["curve_mean"]), np.asarray(row["curve_std"])
        label = f"lr={row['learning_rate']:g} sparsity={row['sparsity']:g} (n={row['n']})"
        (line,) = ax.plot(steps, mean, label=label)
        if row["n"] > 1:
            ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"test accuracy (mean ± {common.SPREAD} over seeds)")
    ax.legend(fontsize=6, ncol=2)
    common.save_figure(fig, path, dpi=120)


def _task(args) -> tuple[int, int]:
    env_index = os.environ.get("SLURM_ARRAY_TASK_ID")
    index = args.task_index if args.task_index is not None else int(env_index or 0)
    num = args.num_tasks if args.num_tasks is not None else int(
        os.environ.get("SLURM_ARRAY_TASK_COUNT", 1))
    if not 0 <= index < num:
        raise cli.UsageError(f"--task-index {index} must be in [0, --num-tasks={num})")
    return index, num


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, out="runs/sweeps")
    p.add_argument("--task-index", type=int, default=None)
    p.add_argument("--num-tasks", type=int, default=None)
    p.add_argument("--merge-only", action="store_true")

    def members(config: Any, args) -> int:
        from jaxsparse import population

        index, num = _task(args)
        grid = population.grid(**{a: list(config[a]) for a in AXES})
        return len(population.task_slice(grid, index, num))

    def run(config: Any, args) -> None:
        from jaxsparse import population

        index, num = _task(args)
        population.init_distributed()  # multi-host when SLURM / JAX_COORDINATOR_ADDRESS say so
        dataset = common.load_dataset(config)
        out = common.run_dir(args.out, config, dataset=dataset)
        if not args.merge_only:
            run_task(config, out, index, num, dataset=dataset, show_progress=not args.quiet)
        done = len(glob.glob(os.path.join(out, "task_*", "results.jsonl")))
        if args.merge_only or done == num:
            merge(out)
            print(f"wrote {out}/table.txt, table.csv, table.json, accuracy.png")
        else:
            print(f"{done}/{num} tasks finished; merge with --merge-only when all are done")

    return cli.main(p, argv, run, validate=validate, members=members, driver="sweep")


if __name__ == "__main__":
    sys.exit(main())
