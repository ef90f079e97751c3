"""The PIE study's training: 6 population programs vs 180 sequential trainings (wall time).

    python benchmarks/bench_forgetting.py            # 30 members x 6 levels, 1,500 iterations
    python benchmarks/bench_forgetting.py --quick    # 6 members x 6 levels, 300 iterations
    python benchmarks/bench_forgetting.py --members 10 --steps 600

What ``experiments/forgetting.py`` trains for ``hooker2019_pie_digits``: LeNet-300-100 on
the 1,197 digits training images, Adam 1.2e-3, batch 60, gradual magnitude pruning
(``jaxsparse.pruners.gmp``, sparsity 0 / 0.3 / 0.5 / 0.7 / 0.9 / 0.95) and the study's two
hooks (forgetting events, parameter snapshots), evaluated on the test split every
``steps / 6`` iterations. Per level, side by side in one process:

* ``population``  ONE ``Trainer.fit`` on a stacked state of all members (the driver's way);
* ``sequential``  one ``Trainer.fit`` per member, one after another, with the same
                  ``Trainer`` (each chunk length compiles once per level, as for the
                  population).

Wall times include compilation (what a user waits for); levels alternate between the two
so that other processes on the machine weigh on both alike. Prints the per-level table and
the total ratio, and writes ``benchmarks/results/forgetting[_quick].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def _args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--members", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--sparsities", type=float, nargs="*",
                        default=[0.0, 0.3, 0.5, 0.7, 0.9, 0.95])
    parser.add_argument("--cpu-devices", type=int, default=0,
                        help="CPU devices the population shards over (default: one per core)")
    parser.add_argument("--out", default=None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    ARGS = _args()
    from jaxsparse.population import use_cpu_devices

    use_cpu_devices(ARGS.cpu_devices or None)  # before jax starts its backends

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxsparse import data, forgetting, models, train  # noqa: E402

BATCH, LR = 60, 1.2e-3


def level_trainer(fn, sparsity: float, steps: int, num_train: int) -> train.Trainer:
    """The study's Trainer of one level: GMP to ``sparsity`` and the two hooks."""
    from jaxsparse.pruners import gmp

    pruner = None if sparsity == 0 else gmp(
        final_sparsity=sparsity, begin_step=steps // 10, end_step=(6 * steps) // 10,
        frequency=max(1, steps // 30), allocation="uniform")
    snaps = sorted({steps // 25, *range(steps // 10, steps + 1, steps // 10)})
    hooks = (forgetting.forgetting_events(num_train), forgetting.param_snapshots(snaps))
    return train.Trainer(fn.apply_fn, optax.adam(LR), batch_size=BATCH, hooks=hooks,
                         pruner=pruner)


def member_state(trainer: train.Trainer, fn, seed):
    key = jax.random.key(seed)
    params, model_state = fn.init_fn(jax.random.fold_in(key, 0))
    return trainer.init_state(params, key=jax.random.fold_in(key, 1), model_state=model_state)


def main() -> None:
    members = ARGS.members or (6 if ARGS.quick else 30)
    steps = ARGS.steps or (300 if ARGS.quick else 1500)
    ds = data.digits()
    split = {"train": (ds.train.x, ds.train.y),
             "test": (np.concatenate([ds.val.x, ds.test.x]),
                      np.concatenate([ds.val.y, ds.test.y]))}
    fn = models.functional(models.lenet300(key=jax.random.key(0), input_shape=ds.input_shape))
    eval_every = max(1, steps // 6)
    rows = []
    print(f"{members} members x {len(ARGS.sparsities)} levels, {steps} iterations, "
          f"{jax.device_count()} {jax.default_backend()} device(s)")
    for i, s in enumerate(ARGS.sparsities):
        seeds = np.arange(members) + 1000 * i
        row = {"sparsity": s}
        order = ("population", "sequential") if i % 2 == 0 else ("sequential", "population")
        for how in order:
            trainer = level_trainer(fn, s, steps, len(ds.train.y))
            t0 = time.perf_counter()
            if how == "population":
                state = jax.vmap(lambda k, t=trainer: member_state(t, fn, k))(
                    jnp.asarray(seeds, jnp.uint32))
                out = trainer.fit(state, split, num_steps=steps, eval_every=eval_every)
                acc = np.asarray(out.history["test_accuracy"][-1])
            else:
                acc = []
                for seed in seeds:
                    out = trainer.fit(member_state(trainer, fn, int(seed)), split,
                                      num_steps=steps, eval_every=eval_every)
                    acc.append(out.history["test_accuracy"][-1])
                acc = np.asarray(acc)
            jax.block_until_ready(out.state.params)
            row[f"{how}_s"] = time.perf_counter() - t0
            row[f"{how}_test_accuracy"] = float(acc.mean())
        row["ratio"] = row["sequential_s"] / row["population_s"]
        rows.append(row)
        print(f"sparsity {s:4.2f}: population {row['population_s']:7.1f}s  sequential "
              f"{row['sequential_s']:7.1f}s  ratio {row['ratio']:.2f}x  (test acc "
              f"{row['population_test_accuracy']:.4f} / {row['sequential_test_accuracy']:.4f})",
              flush=True)
    total_p = sum(r["population_s"] for r in rows)
    total_s = sum(r["sequential_s"] for r in rows)
    print(f"total: {len(rows)} population programs {total_p:.1f}s vs {members * len(rows)} "
          f"sequential trainings {total_s:.1f}s: {total_s / total_p:.2f}x")
    result = {
        "members": members, "steps": steps, "sparsities": ARGS.sparsities, "rows": rows,
        "population_s": total_p, "sequential_s": total_s, "ratio": total_s / total_p,
        "devices": jax.device_count(), "backend": jax.default_backend(),
        "machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "jax": jax.__version__, "python": sys.version.split()[0],
    }
    out = ARGS.out or os.path.join(os.path.dirname(__file__), "results",
                                   f"forgetting{'_quick' if ARGS.quick else ''}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print("wrote", out)


if __name__ == "__main__":
    main()
