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

import harness
import jax
import jax.numpy as jnp
import optax

from jaxsparse import data, lca, models, train


def main() -> None:
    args = harness.step_args(__doc__, steps=(20, 50), rounds=(5, 20))
    steps, rounds = args.steps, args.rounds

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

    times = harness.interleaved({k: (lambda c=c, k=k: c(states[k], x, y)) for k, c in runs.items()},
                                rounds, per_call=steps)
    med = harness.medians(times)
    ratio = harness.ratios(med, "off")
    print(f"LeNet-300-100 Adam step, batch 60, {steps} steps x {rounds} rounds")
    harness.print_table(med, ratio, unit="ms/step", scale=1e3, against="off")
    harness.save("lca", dict(
        benchmark="lca",
        **harness.LENET_ADAM,
        train_examples=5000,
        steps_per_call=steps,
        rounds=rounds,
        median_s_per_step=med,
        ratio_vs_off=ratio,
        note=harness.SHARED_CPU_NOTE + ". 'lca eval=60' = evaluation set of the batch's size (2 "
             "extra gradient evaluations per step); larger sets cost in proportion to their size.",
    ), quick=args.quick)


if __name__ == "__main__":
    main()
