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

import argparse
import json
import os
import platform
import statistics
import time

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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args()
    rounds = args.rounds or (10 if args.quick else 40)

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

    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, (run, _) in runs.items():
            t = time.perf_counter()
            jax.block_until_ready(run(params, states[k], xs, ys))
            times[k].append((time.perf_counter() - t) / args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = {k: med[k] / med["dense"] for k in runs}
    print(f"LeNet-300-100 Adam step, batch 60, 80% sparse masks, {args.steps} steps x {rounds}")
    print(f"{'variant':<18}{'median us/step':>16}{'vs dense':>10}")
    for k in runs:
        print(f"{k:<18}{med[k] * 1e6:>16.1f}{ratio[k]:>10.3f}")
    result = dict(
        benchmark="masked_step",
        model="LeNet-300-100 (784-300-100-10)",
        optimizer="adam 1.2e-3",
        batch=60,
        sparsity=0.8,
        steps_per_call=args.steps,
        rounds=rounds,
        median_s_per_step=med,
        ratio_vs_dense=ratio,
        jax=jax.__version__,
        backend=jax.default_backend(),
        machine=f"{platform.machine()} {os.cpu_count()} cpus",
        note="CPU shared with other processes during the measurement; medians of interleaved runs",
        quick=args.quick,
    )
    os.makedirs("benchmarks/results", exist_ok=True)
    name = "masked_step_quick" if args.quick else "masked_step"
    with open(f"benchmarks/results/{name}.json", "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
