"""Cost of a supermask training step (Bernoulli, top-k) vs the dense training step, same run.

    .venv/bin/python benchmarks/bench_supermask.py         # LeNet-300-100 (MNIST) + Conv-4 (CIFAR)
    .venv/bin/python benchmarks/bench_supermask.py --quick # LeNet-300-100 only, fewer repeats

Each variant is ``jaxsparse.train.make_step`` on the same model and batch, jitted, ``steps``
calls per timing, compile time excluded, medians of interleaved repeats:
  * dense: SGD on the weights;
  * bernoulli: ``jaxsparse.supermask.learned_supermask`` (sample a mask per layer per step,
    straight-through gradient to the logits, dynamic rescaling);
  * topk: ``jaxsparse.supermask.edge_popup`` at sparsity 0.5 (per-layer exact top-k of |score|).
Writes benchmarks/results/supermask.json (supermask_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import optax

from jaxsparse import supermask, train
from jaxsparse.models import conv4, functional, lenet300


def make_runner(apply_fn, params, model_state, batch, steps: int):
    tx = optax.sgd(0.1, momentum=0.9)
    state = train.init_state(params, tx, key=jax.random.key(0), model_state=model_state)
    step = train.make_step(apply_fn, tx)

    # One jitted step per call, looped in Python: on XLA:CPU a convolution inside lax.scan
    # (a while loop) runs orders of magnitude slower than the same step jitted alone.
    step = jax.jit(step)
    jax.block_until_ready(step(state, batch))  # compile

    def run():
        s = state
        for _ in range(steps):
            s, _m = step(s, batch)
        jax.block_until_ready(s)

    return run


def bench_model(name: str, fn, batch, *, steps: int, repeats: int) -> dict:
    bern = supermask.learned_supermask(fn.apply_fn, weights="signed_constant", rescale=True)
    topk = supermask.edge_popup(fn.apply_fn, 0.5)
    runners = {"dense": make_runner(fn.apply_fn, fn.params, fn.model_state, batch, steps)}
    for label, sm in (("bernoulli", bern), ("topk", topk)):
        p, st = sm.init(fn.params, fn.model_state, key=jax.random.key(1))
        runners[label] = make_runner(sm.apply, p, st, batch, steps)
    times = {k: [] for k in runners}
    for _ in range(repeats):  # interleaved, so load changes hit every variant alike
        for k, r in runners.items():
            t = time.perf_counter()
            r()
            times[k].append((time.perf_counter() - t) / steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    n_weights = sum(x.size for x in jax.tree.leaves(fn.params) if x.ndim >= 2)
    row = {"model": name, "batch": int(batch[0].shape[0]), "prunable_weights": int(n_weights),
           "ms_per_step": {k: v * 1e3 for k, v in med.items()},
           "ratio_vs_dense": {k: med[k] / med["dense"] for k in med}}
    print(f"{name:10s} batch {row['batch']:4d}  " + "  ".join(
        f"{k} {v * 1e3:8.3f} ms ({med[k] / med['dense']:.2f}x)" for k, v in med.items()))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    steps, repeats = (20, 5) if args.quick else (50, 7)
    key = jax.random.key(0)
    rows = []
    fn = functional(lenet300(key=key, input_shape=(28, 28, 1)))
    x = jax.random.normal(key, (60, 28, 28, 1))
    y = jax.random.randint(key, (60,), 0, 10)
    rows.append(bench_model("lenet300", fn, (x, y), steps=steps, repeats=repeats))
    if not args.quick:
        fn = functional(conv4(key=key, input_shape=(32, 32, 3)))
        x = jax.random.normal(key, (128, 32, 32, 3))
        y = jax.random.randint(key, (128,), 0, 10)
        rows.append(bench_model("conv4", fn, (x, y), steps=10, repeats=5))
    out = {"benchmark": "supermask step vs dense step", "rows": rows,
           "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
           "jax": jax.__version__, "machine": platform.machine(),
           "note": "medians of interleaved repeats; compile excluded; CPU timings are noisy "
                   "when other jobs share the machine"}
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    path = os.path.join(os.path.dirname(__file__), "results",
                        "supermask_quick.json" if args.quick else "supermask.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
