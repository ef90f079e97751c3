"""Cost of a mask update: RigL / SET / GMP steps vs an ordinary masked step, same run.

    .venv/bin/python benchmarks/bench_pruners.py          # 30 interleaved rounds
    .venv/bin/python benchmarks/bench_pruners.py --quick  # 8 rounds

LeNet-300-100 (784-300-100-10, ReLU; ``jaxsparse.models.lenet300``), Adam lr 1.2e-3, batch 60,
on the MNIST subset in ``../shared/data`` when it is there (random 28x28 images otherwise).
Every variant is ONE jitted ``lax.scan`` over ``--steps`` steps of the trainer's
``jaxsparse.train.make_step`` (so Python dispatch is not measured):

  * dense:          a plain step without masks (grads -> optax.adam -> apply_updates);
  * masked:         ``train.make_step`` without a pruner, 90% sparse masks (magnitude);
  * rigl:           ``make_step(pruner=rigl(frequency=1, anneal="constant"))``: a RigL mask
                    update (drop 30% of each layer's active weights by |w|, grow as many by
                    |dense gradient|) in EVERY step, plus the trainer's resets;
  * set:            the same with SET (random growth: 266k uniform draws per update);
  * gmp:            ``make_step(pruner=gmp(frequency=1))``: a gradual magnitude pruning step
                    (exact per-layer top-k by |w|) in every step;
  * rigl_dT100:     RigL with its usual ``frequency=100`` (one update per 100 steps).

And single steps in a realistic state (after 100 training steps with ``frequency=100``, so
the weights grown at step 0 have trained): ONE jitted ``make_step`` called at a step where the
update is due (step 100) and at one where it is not (step 101), interleaved: the RigL / GMP
"mask-update step vs ordinary step" ratio as a training run sees it (dispatch included in
both).

Reported: median and best (minimum) seconds per step over interleaved rounds, each variant's
ratio to the masked step (the update's own cost = ratio - 1), and masked vs dense. Also the
pruner's ``update`` alone (jitted, per call). On a shared machine the best-of-rounds ratios
are the more stable ones. Writes ``benchmarks/results/pruners.json``.
"""

from __future__ import annotations

import os
import statistics
import time

import harness
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxsparse as js
from jaxsparse import models, pruners, train

MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                     "mnist_subset_6k.npz")


def load_batches(steps: int, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    if os.path.exists(MNIST):
        d = np.load(MNIST)
        x = d["images"].astype(np.float32)[..., None] / 255.0
        y = d["labels"].astype(np.int32)
        idx = np.asarray(jax.random.randint(key, (steps, 60), 0, len(y)))
        return jnp.asarray(x[idx]), jnp.asarray(y[idx])
    xs = jax.random.uniform(key, (steps, 60, 28, 28, 1))
    ys = jax.random.randint(jax.random.fold_in(key, 1), (steps, 60), 0, 10)
    return xs, ys


def main() -> None:
    args = harness.step_args(__doc__, steps=(100, 100), rounds=(8, 30))
    rounds, steps = args.rounds, args.steps

    fn = models.functional(models.lenet300(key=jax.random.key(0), input_shape=(28, 28, 1)))
    params = fn.params
    masks = js.prune(js.scores.magnitude(params), js.ones_like(params), sparsity=0.9)
    xs, ys = load_batches(steps, jax.random.key(2))
    tx = optax.adam(1.2e-3)
    never_ends = 10**8
    variants = {
        "dense": None,
        "masked": None,
        "rigl": pruners.rigl(end_step=never_ends, frequency=1, anneal="constant"),
        "set": pruners.set_(end_step=never_ends, frequency=1),
        "gmp": pruners.gmp(final_sparsity=0.95, initial_sparsity=0.9, begin_step=0,
                           end_step=never_ends, frequency=1),
        "rigl_dT100": pruners.rigl(end_step=never_ends, frequency=100),
    }

    def dense_run(params, opt_state, xs, ys):
        def loss(p, x, y):
            logits, _ = fn.apply_fn(p, fn.model_state, x, train=True, key=None)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        def body(carry, batch):
            p, s = carry
            g = jax.grad(loss)(p, *batch)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(body, (params, opt_state), (xs, ys))[0]

    runs, states = {}, {}
    for name, pruner in variants.items():
        if name == "dense":
            runs[name] = jax.jit(dense_run)
            states[name] = (params, tx.init(params))
            continue
        step = train.make_step(fn.apply_fn, tx, pruner=pruner)
        runs[name] = jax.jit(
            lambda st, xs, ys, step=step: jax.lax.scan(lambda s, b: (step(s, b)[0], None), st,
                                                       (xs, ys))[0])
        states[name] = (train.init_state(params, tx, key=jax.random.key(1),
                                         model_state=fn.model_state, masks=masks,
                                         pruner=pruner),)

    compile_s, outs = {}, {}
    for name, run in runs.items():  # compile + warm up
        t = time.perf_counter()
        outs[name] = jax.block_until_ready(run(*states[name], xs, ys))
        compile_s[name] = time.perf_counter() - t
    # checks: every DST update kept the per-layer counts; GMP reached its schedule
    kept0 = [int(m.sum()) for m in jax.tree.leaves(masks) if m.ndim]
    for name in ("rigl", "set", "rigl_dT100"):
        kept = [int(m.sum()) for m in jax.tree.leaves(outs[name].masks) if m.ndim]
        assert kept == kept0, (name, kept, kept0)
        assert int(outs[name].pruner_state.count) == (steps if name != "rigl_dT100" else 1)
    changed = sum(int(jnp.sum(a != b)) for a, b in zip(
        jax.tree.leaves(masks), jax.tree.leaves(outs["rigl"].masks), strict=True))
    gmp_kept = [int(m.sum()) for m in jax.tree.leaves(outs["gmp"].masks) if m.ndim]

    times = harness.interleaved({k: (lambda r=r, k=k: r(*states[k], xs, ys))
                                 for k, r in runs.items()}, rounds, per_call=steps)
    med = harness.medians(times)
    best = {k: min(v) for k, v in times.items()}
    ratio, ratio_best = harness.ratios(med, "masked"), harness.ratios(best, "masked")

    # single steps in a trained state: due (step 100) vs not due (step 101), same program
    single = {}
    for name, pruner in (("rigl", pruners.rigl(end_step=never_ends, frequency=100)),
                         ("gmp", pruners.gmp(final_sparsity=0.95, initial_sparsity=0.9,
                                             begin_step=0, end_step=never_ends,
                                             frequency=100))):
        step = train.make_step(fn.apply_fn, tx, pruner=pruner)
        st = train.init_state(params, tx, key=jax.random.key(1), model_state=fn.model_state,
                              masks=masks, pruner=pruner)
        st = jax.jit(lambda s, step=step: jax.lax.scan(
            lambda s, b: (step(s, b)[0], None), s, (xs, ys))[0])(st)
        one = jax.jit(lambda s, b, step=step: step(s, b)[0])
        batch = (xs[0], ys[0])
        due = st._replace(step=jnp.int32(100))
        not_due = st._replace(step=jnp.int32(101))
        for s_ in (due, not_due):
            jax.block_until_ready(one(s_, batch))
        ts = harness.interleaved({"due": lambda one=one, s=due, b=batch: one(s, b),
                                  "not_due": lambda one=one, s=not_due, b=batch: one(s, b)},
                                 rounds * 25)
        single[name] = {k: (statistics.median(v), min(v)) for k, v in ts.items()}

    # the pruner update alone, jitted (per call)
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(3), p.shape) * 1e-3, params)
    update_s, update_best = {}, {}
    for name in ("rigl", "set", "gmp"):
        p = variants[name]
        upd = jax.jit(lambda m, s, w, g, p=p: p.update(m, s, w, grads=g, step=jnp.int32(0),
                                                        key=jax.random.key(4)))
        st = p.init(params, masks)
        jax.block_until_ready(upd(masks, st, params, grads))
        ts = harness.interleaved({name: lambda upd=upd, st=st: upd(masks, st, params, grads)},
                                 max(rounds, 10) * 5)[name]
        update_s[name] = statistics.median(ts)
        update_best[name] = min(ts)

    print(f"LeNet-300-100, Adam, batch 60, 90% sparse, {steps} steps x {rounds} rounds, "
          f"{jax.default_backend()}")
    print(f"{'variant':<12}{'median us/step':>16}{'vs masked':>11}{'best us/step':>14}"
          f"{'vs masked':>11}")
    for k in runs:
        print(f"{k:<12}{med[k] * 1e6:>16.1f}{ratio[k]:>11.3f}{best[k] * 1e6:>14.1f}"
              f"{ratio_best[k]:>11.3f}")
    print(f"masked vs dense: {med['masked'] / med['dense']:.3f} (median), "
          f"{best['masked'] / best['dense']:.3f} (best)")
    print("update alone, median / best (us): " + ", ".join(
        f"{k} {update_s[k] * 1e6:.0f} / {update_best[k] * 1e6:.0f}" for k in update_s))
    for name, d in single.items():
        (md, bd), (mn, bn) = d["due"], d["not_due"]
        print(f"single {name} step in a trained state, due vs not due: median {md * 1e6:.0f} / "
              f"{mn * 1e6:.0f} us = {md / mn:.3f}x, best {bd * 1e6:.0f} / {bn * 1e6:.0f} us = "
              f"{bd / bn:.3f}x")
    print(f"rigl changed {changed} mask entries over {steps} updates; gmp kept {gmp_kept}")
    harness.save("pruners", dict(
        benchmark="pruners",
        **harness.LENET_ADAM,
        sparsity=0.9,
        data="mnist_subset_6k" if os.path.exists(MNIST) else "random",
        steps_per_call=steps,
        rounds=rounds,
        median_s_per_step=med,
        ratio_vs_masked=ratio,
        masked_vs_dense=med["masked"] / med["dense"],
        best_s_per_step=best,
        best_ratio_vs_masked=ratio_best,
        best_masked_vs_dense=best["masked"] / best["dense"],
        single_step_due_vs_not_due={
            name: dict(median_s=[d["due"][0], d["not_due"][0]],
                       best_s=[d["due"][1], d["not_due"][1]],
                       ratio_median=d["due"][0] / d["not_due"][0],
                       ratio_best=d["due"][1] / d["not_due"][1])
            for name, d in single.items()},
        update_alone_median_s=update_s,
        update_alone_best_s=update_best,
        compile_s=compile_s,
        rigl_changed_entries=changed,
        note=harness.SHARED_CPU_NOTE + "; rigl/set/gmp update the masks in every one of the "
             "steps",
    ), quick=args.quick)


if __name__ == "__main__":
    main()
