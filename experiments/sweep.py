"""Runs a hyperparameter grid as one sharded population; resumable; merged table and plot.

    python -m experiments.sweep --config experiments/configs/sweep_digits.py
    python -m experiments.sweep --config ... --task-index $SLURM_ARRAY_TASK_ID --num-tasks 4
    python -m experiments.sweep --config ... --merge-only      # after all array jobs

Every member (learning rate x sparsity x seed) trains in ONE compiled program: the per-member
values are traced arrays and the member axis is sharded over every device
(``jaxsparse.sweep.population_map``). State is saved after every ``eval_every`` steps
(``task_XX/seg_YYY.npz``); a relaunch continues from the last finished segment. Each task
writes ``task_XX/results.jsonl``; the merge writes ``table.txt``, ``table.json`` and
``accuracy.png`` (mean +- std bands over seeds).
"""

from __future__ import annotations

import argparse
import glob
import os
import time

from experiments import common

AXES = ("learning_rate", "sparsity", "seed")


def _model(hidden, num_in, num_classes):
    import jax
    import jax.numpy as jnp

    sizes = (num_in, *hidden, num_classes)

    def init(key, sparsity):
        keys = jax.random.split(key, 2 * (len(sizes) - 1))
        params, masks = [], []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            w = jax.nn.initializers.glorot_normal()(keys[2 * i], (a, b))
            # Random pruning at init with a traced (per-member) sparsity = fraction pruned.
            m = jax.random.uniform(keys[2 * i + 1], (a, b)) >= sparsity
            params.append({"w": jnp.where(m, w, 0.0), "b": jnp.zeros(b)})
            masks.append({"w": m, "b": jnp.ones((), bool)})
        return params, masks

    def apply(params, x):
        h = x.reshape(x.shape[0], -1)
        for i, layer in enumerate(params):
            h = h @ layer["w"] + layer["b"][None]
            if i < len(params) - 1:
                h = jax.nn.relu(h)
        return h

    return init, apply


def _member_fns(config, num_in, num_classes, x_tr, y_tr):
    import jax
    import jax.numpy as jnp
    import optax

    import jaxsparse as js

    init, apply = _model(tuple(config.hidden), num_in, num_classes)
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)

    def member_init(hp):
        key = jax.random.key(hp["seed"])
        params, masks = init(key, hp["sparsity"])
        opt = tx.init(params)
        opt.hyperparams["learning_rate"] = hp["learning_rate"]  # traced per member
        return {"params": params, "masks": masks, "opt": opt, "key": key, "step": jnp.int32(0)}

    def loss_fn(params, x, y):
        logits = apply(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def segment(state, x, y, num_steps):
        def body(s, _):
            k = jax.random.fold_in(s["key"], s["step"])
            idx = jax.random.randint(k, (config.batch_size,), 0, x.shape[0])
            grads = jax.grad(loss_fn)(s["params"], x[idx], y[idx])
            updates, opt = tx.update(grads, s["opt"], s["params"])
            params = js.apply_masks(optax.apply_updates(s["params"], updates), s["masks"])
            return dict(s, params=params, opt=opt, step=s["step"] + 1), None

        return jax.lax.scan(body, state, None, length=num_steps)[0]

    def evaluate(state, x, y):
        logits = apply(state["params"], x)
        return {
            "loss": optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(),
            "accuracy": (logits.argmax(-1) == y).mean(),
            "density": js.density(state["masks"]),
        }

    return member_init, segment, evaluate


def run_task(config, out: str, task_index: int, num_tasks: int) -> str:
    import functools

    import jax
    import jax.numpy as jnp

    from jaxsparse import data as data_lib
    from jaxsparse import sweep

    members = sweep.task_slice(sweep.grid(**{a: list(config[a]) for a in AXES}),
                               task_index, num_tasks)
    task_dir = os.path.join(out, f"task_{task_index:02d}")
    if os.path.exists(os.path.join(task_dir, "results.jsonl")):
        print(f"{task_dir}: finished, skipped")
        return task_dir
    ds = data_lib.digits()
    x_tr, y_tr = jnp.asarray(ds.train.x), jnp.asarray(ds.train.y)
    x_te, y_te = jnp.asarray(ds.test.x), jnp.asarray(ds.test.y)
    num_in = int(x_tr[0].size)
    member_init, segment, evaluate = _member_fns(config, num_in, ds.num_classes, x_tr, y_tr)
    hp = sweep.stack_configs(members, AXES)
    layout = dict(backend=config.backend, chunk_size=config.chunk_size or None)
    state = sweep.population_map(member_init, **layout)(hp)
    train = sweep.population_map(
        functools.partial(segment, num_steps=config.eval_every), in_axes=(0, None, None), **layout
    )
    ev = sweep.population_map(evaluate, in_axes=(0, None, None), **layout)
    like = jax.eval_shape(lambda s: s, state)
    history = {"step": [0], "accuracy": [jax.device_get(ev(state, x_te, y_te)["accuracy"])]}
    t0 = time.time()
    for seg in range(config.num_steps // config.eval_every):
        path = os.path.join(task_dir, f"seg_{seg:03d}.npz")
        state, loaded = sweep.resumable(path, lambda s=state: train(s, x_tr, y_tr), like)
        metrics = jax.device_get(ev(state, x_te, y_te))
        history["step"].append((seg + 1) * config.eval_every)
        history["accuracy"].append(metrics["accuracy"])
        print(f"task {task_index}: step {history['step'][-1]} "
              f"{'(resumed) ' if loaded else ''}mean test acc {metrics['accuracy'].mean():.4f}"
              f" [{time.time() - t0:.1f}s]")
    rows = []
    for i, cfg in enumerate(members):
        rows.append(dict(cfg, test_accuracy=float(metrics["accuracy"][i]),
                         density=float(metrics["density"][i]),
                         curve=[float(a[i]) for a in history["accuracy"]],
                         steps=history["step"]))
    sweep.write_results(task_dir, rows)
    return task_dir


def merge(out: str) -> None:
    from jaxsparse import sweep

    dirs = sorted(glob.glob(os.path.join(out, "task_*", "results.jsonl")))
    if not dirs:
        raise FileNotFoundError(f"no task results under {out}")
    rows = sweep.read_results(dirs)
    for r in rows:
        r.pop("steps", None)
    table = sweep.merge_results(rows, metrics=["test_accuracy", "density", "curve"])
    text = sweep.format_table(table, ["test_accuracy", "density"])
    print(text)
    with open(os.path.join(out, "table.txt"), "w") as f:
        f.write(text + "\n")
    common.write_json(os.path.join(out, "table.json"), table)
    _plot(os.path.join(out, "accuracy.png"), table, sweep.read_results(dirs[:1])[0]["steps"])


def _plot(path: str, table, steps) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in table:
        mean, std = np.asarray(row["curve_mean"]), np.asarray(row["curve_std"])
        label = f"lr={row['learning_rate']:g} sparsity={row['sparsity']:g} (n={row['n']})"
        (line,) = ax.plot(steps, mean, label=label)
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("iteration")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", default="runs/sweeps")
    parser.add_argument("--task-index", type=int, default=None)
    parser.add_argument("--num-tasks", type=int, default=None)
    parser.add_argument("--merge-only", action="store_true")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    parser.add_argument("--cpu-devices", default="auto", help=common.CPU_DEVICES_HELP)
    args = parser.parse_args(argv)

    from jaxsparse import sweep

    config = common.apply_overrides(common.load_config(args.config), args.set)
    env_index = os.environ.get("SLURM_ARRAY_TASK_ID")
    index = args.task_index if args.task_index is not None else int(env_index or 0)
    num = args.num_tasks if args.num_tasks is not None else int(
        os.environ.get("SLURM_ARRAY_TASK_COUNT", 1))
    # Both before any JAX operation: the CPU device count, then multi-host start-up.
    grid = sweep.grid(**{a: list(config[a]) for a in AXES})
    common.cpu_devices(args.cpu_devices, len(sweep.task_slice(grid, index, num)))
    sweep.init_distributed()  # multi-host when SLURM / JAX_COORDINATOR_ADDRESS say so
    out = os.path.join(args.out, f"{config.name}-{common.config_hash(config)}")
    os.makedirs(out, exist_ok=True)
    common.write_json(os.path.join(out, "config.json"), common.to_dict(config))
    if not args.merge_only:
        run_task(config, out, index, num)
    done = len(glob.glob(os.path.join(out, "task_*", "results.jsonl")))
    if args.merge_only or done == num:
        merge(out)
        print(f"wrote {out}/table.txt, table.json, accuracy.png")
    else:
        print(f"{done}/{num} tasks finished; merge with --merge-only when all are done")


if __name__ == "__main__":
    main()
