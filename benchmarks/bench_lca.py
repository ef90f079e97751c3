"""A LeNet-300-100 training step with Loss Change Allocation on vs off, same run.

    .venv/bin/python benchmarks/bench_lca.py          # 20 interleaved rounds
    .venv/bin/python benchmarks/bench_lca.py --quick  # 5 rounds, fewer steps

LeNet-300-100 (784-300-100-10, ReLU), Adam 1.2e-3, batch 60, MNIST-shaped synthetic data
(5,000 training examples). Each variant is the trainer's own compiled chunk
(``jaxsparse.train.make_train_chunk``, one ``lax.scan`` over ``--steps`` iterations, jitted):

  * off:            no hook;
  * lca eval=60:    ``jaxsparse.lca.recorder`` on a 60-example evaluation set (= the batch:
                    the cost of the mechanism, two extra gradient evaluations per step);
  * lca eval=1000 / lca eval=5000: the same on 1,000 examples / the whole training set (what
                    Lan et al. do; the cost grows with the evaluation set, not the batch).

Default aggregates (per parameter, per layer per iteration, per iteration, helping counts).
Rounds are interleaved and the median per-step time is reported with the ratio to ``off``.
Writes benchmarks/results/lca.json (``lca_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from jaxsparse import data, lca, models, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args()
    steps = args.steps or (20 if args.quick else 50)
    rounds = args.rounds or (5 if args.quick else 20)

    ds = data.synthetic(num_train=5000, num_val=0, num_test=10, seed=0)
    x, y = jnp.asarray(ds.train.x), jnp.asarray(ds.train.y)
    fn = models.functional(models.lenet300(key=jax.random.key(0), input_shape=(28, 28, 1)))
    tx = optax.adam(1.2e-3)
    recorders = {f"lca eval={n}": lca.recorder(fn.apply_fn, (ds.train.x[:n], ds.train.y[:n]),
                                               num_steps=steps) for n in (60, 1000, 5000)}
    variants = {"off": [], **{k: [r.hook] for k, r in recorders.items()}}
    runs, states = {}, {}
    for name, hooks in variants.items():
        chunk = jax.jit(train.make_train_chunk(fn.apply_fn, tx, batch_size=60, num_steps=steps,
                                               hooks=hooks))
        states[name] = train.init_state(fn.params, tx, key=jax.random.key(1), hooks=hooks)
        out = jax.block_until_ready(chunk(states[name], x, y))  # compile + warm up
        runs[name] = chunk
        if hooks:  # the LCA adds up (a sanity check, not a timing)
            res = lca.summarise(recorders[name], out[0].hook_state[0])
            assert abs(res.error) < 0.05 * abs(res.loss_end - res.loss_start) + 1e-4, res.error
    # the trained params are the same with and without the hook
    ref = runs["off"](states["off"], x, y)[0].params
    got = runs["lca eval=60"](states["lca eval=60"], x, y)[0].params
    assert all(bool(jnp.all(a == b)) for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got),
                                                     strict=True))

    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, chunk in runs.items():
            t = time.perf_counter()
            jax.block_until_ready(chunk(states[name], x, y))
            times[name].append((time.perf_counter() - t) / steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = {k: med[k] / med["off"] for k in runs}
    print(f"LeNet-300-100 Adam step, batch 60, {steps} steps x {rounds} rounds")
    print(f"{'variant':<16}{'median ms/step':>16}{'vs off':>10}")
    for k in runs:
        print(f"{k:<16}{med[k] * 1e3:>16.3f}{ratio[k]:>10.2f}")
    result = dict(
        benchmark="lca",
        model="LeNet-300-100 (784-300-100-10)",
        optimizer="adam 1.2e-3",
        batch=60,
        train_examples=5000,
        steps_per_call=steps,
        rounds=rounds,
        median_s_per_step=med,
        ratio_vs_off=ratio,
        jax=jax.__version__,
        backend=jax.default_backend(),
        machine=f"{platform.machine()} {os.cpu_count()} cpus",
        note="CPU shared with other processes during the measurement; medians of interleaved "
             "runs. 'lca eval=60' = evaluation set of the batch's size (2 extra gradient "
             "evaluations per step); larger sets cost in proportion to their size.",
        quick=args.quick,
    )
    os.makedirs("benchmarks/results", exist_ok=True)
    name = "lca_quick" if args.quick else "lca"
    with open(f"benchmarks/results/{name}.json", "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
