"""A masked LeNet-300-100 Adam step vs the dense step, same run.

    .venv/bin/python benchmarks/bench_masked_step.py          # 40 interleaved rounds
    .venv/bin/python benchmarks/bench_masked_step.py --quick  # 10 rounds

LeNet-300-100 (784-300-100-10, ReLU), Adam lr 1.2e-3, batch 60 (Frankle & Carbin 2019).
Variants, each one jitted ``lax.scan`` over ``--steps`` training steps (so Python dispatch is
not measured):
  * dense:        grads -> optax.adam -> apply_updates;
  * masked:       grads -> jaxsparse.masked(optax.adam) with masks= -> apply_updates;
  * masked+apply: as masked, and the forward pass uses apply_masks(params, masks) (a
                  training loop that re-applies masks in the forward; costs a select forward
                  and backward per kernel);
  * masked+post-apply: as masked, and apply_masks after apply_updates (re-applying masks
                  to the new params; fuses with the update).
Masks: global magnitude pruning to 80% sparsity. Rounds are interleaved (dense, masked,
masked+apply, dense, ...) and the median per-step time is reported, with ratios to dense.
Writes benchmarks/results/masked_step.json.
"""

from __future__ import annotations

import harness
import jax
import jax.numpy as jnp
import optax

import jaxsparse as js


def init_lenet(key: jax.Array) -> dict:
    sizes = [784, 300, 100, 10]
    params = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        k = jax.random.fold_in(key, i)
        params[f"fc{i}"] = {
            "kernel": jax.nn.initializers.glorot_normal()(k, (a, b)),
            "bias": jnp.zeros(b),
        }
    return params


def forward(params: dict, x: jax.Array) -> jax.Array:
    for i in range(3):
        x = x @ params[f"fc{i}"]["kernel"] + params[f"fc{i}"]["bias"][None, :]
        if i < 2:
            x = jax.nn.relu(x)
    return x


def loss_fn(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(forward(params, x), y).mean()


def make_run(tx, masks, variant: str, steps: int):
    def step(carry, batch):
        params, state = carry
        x, y = batch
        if variant == "masked+apply":
            g = jax.grad(lambda p: loss_fn(js.apply_masks(p, masks), x, y))(params)
        else:
            g = jax.grad(loss_fn)(params, x, y)
        if variant == "dense":
            u, state = tx.update(g, state, params)
        else:
            u, state = tx.update(g, state, params, masks=masks)
        params = optax.apply_updates(params, u)
        if variant == "masked+post-apply":
            params = js.apply_masks(params, masks)
        return (params, state), None

    @jax.jit
    def run(params, state, xs, ys):
        return jax.lax.scan(step, (params, state), (xs, ys), length=steps)[0]

    return run


def main() -> None:
    args = harness.step_args(__doc__, steps=(100, 100), rounds=(10, 40))
    rounds = args.rounds

    key = jax.random.key(0)
    params = init_lenet(key)
    masks = js.prune(js.scores.magnitude(params), js.ones_like(params), sparsity=0.8)
    params = js.apply_masks(params, masks)
    xs = jax.random.normal(jax.random.fold_in(key, 10), (args.steps, 60, 784))
    ys = jax.random.randint(jax.random.fold_in(key, 11), (args.steps, 60), 0, 10)

    adam = optax.adam(1.2e-3)
    runs = {
        "dense": (make_run(adam, masks, "dense", args.steps), adam),
        "masked": (make_run(js.masked(adam), masks, "masked", args.steps), js.masked(adam)),
        "masked+apply": (
            make_run(js.masked(adam), masks, "masked+apply", args.steps),
            js.masked(adam),
        ),
        "masked+post-apply": (
            make_run(js.masked(adam), masks, "masked+post-apply", args.steps),
            js.masked(adam),
        ),
    }
    states = {k: tx.init(params) for k, (_, tx) in runs.items()}
    outs = {}
    for k, (run, _) in runs.items():  # compile + warm up
        outs[k] = jax.block_until_ready(run(params, states[k], xs, ys))
    # the masked variants keep pruned weights exactly zero
    for k in ("masked", "masked+apply", "masked+post-apply"):
        p = outs[k][0]
        assert js.masks.equal(
            js.masks.intersect(masks, jax.tree.map(lambda w, m: w != 0 if m.ndim else m, p, masks)),
            jax.tree.map(lambda w, m: w != 0 if m.ndim else m, p, masks),
        )

    times = harness.interleaved(
        {k: (lambda r=r, k=k: r(params, states[k], xs, ys)) for k, (r, _) in runs.items()},
        rounds, per_call=args.steps)
    med = harness.medians(times)
    ratio = harness.ratios(med, "dense")
    print(f"LeNet-300-100 Adam step, batch 60, 80% sparse masks, {args.steps} steps x {rounds}")
    harness.print_table(med, ratio, unit="us/step", scale=1e6, against="dense", digits=1)
    harness.save("masked_step", dict(
        benchmark="masked_step",
        **harness.LENET_ADAM,
        sparsity=0.8,
        steps_per_call=args.steps,
        rounds=rounds,
        median_s_per_step=med,
        ratio_vs_dense=ratio,
        note=harness.SHARED_CPU_NOTE,
    ), quick=args.quick)


if __name__ == "__main__":
    main()
