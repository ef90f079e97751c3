"""Steps/second: the compiled-scan LeNet-300-100 trainer vs a plain PyTorch CPU loop.

Same training on the same machine in one run: LeNet-300-100 (784-300-100-10, ReLU), Adam
lr 1.2e-3, batch 60, softmax cross-entropy, on MNIST-shaped synthetic data (55,000 training
examples, reshuffled every epoch). jaxsparse runs chunks of ``--chunk`` iterations as one
compiled ``lax.scan`` with the (all-kept) masks applied inside the step; PyTorch runs the
textbook ``zero_grad / forward / backward / step`` loop over pre-shuffled CPU tensors.
Compilation and warm-up are excluded from both timings.

    python benchmarks/bench_train.py            # ~1 minute on an idle machine
    python benchmarks/bench_train.py --quick

Writes benchmarks/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np
import optax

from jaxsparse import data, models, train


def bench_jax(ds, steps: int, chunk: int, repeats: int) -> float:
    fn = models.functional(models.lenet300(key=jax.random.key(0)))
    tx = optax.adam(1.2e-3)
    state = train.init_state(fn.params, tx, key=jax.random.key(1))
    run = jax.jit(train.make_train_chunk(fn.apply_fn, tx, batch_size=60, num_steps=chunk))
    x, y = jax.device_put(ds.train.x), jax.device_put(ds.train.y)
    state, _ = run(state, x, y)  # compile + warm-up
    jax.block_until_ready(state)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps // chunk):
            state, m = run(state, x, y)
        jax.block_until_ready((state, m))
        best = max(best, (steps // chunk) * chunk / (time.perf_counter() - t0))
    return best


def bench_torch(ds, steps: int, repeats: int, threads: int | None) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 300), torch.nn.ReLU(),
        torch.nn.Linear(300, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1.2e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.from_numpy(ds.train.x)
    y = torch.from_numpy(ds.train.y.astype(np.int64))
    n, bs = len(y), 60
    per_epoch = n // bs

    def run(num: int) -> None:
        done = 0
        while done < num:
            perm = torch.randperm(n)
            for b in range(min(per_epoch, num - done)):
                idx = perm[b * bs:(b + 1) * bs]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(x[idx]), y[idx])
                loss.backward()
                opt.step()
            done += min(per_epoch, num - done)

    run(200)  # warm-up
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(steps)
        best = max(best, steps / (time.perf_counter() - t0))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    steps = args.steps or (1000 if args.quick else 3000)
    ds = data.synthetic(num_train=55000, num_val=10, num_test=10)
    jax_sps = bench_jax(ds, steps, min(args.chunk, steps), args.repeats)
    try:
        import torch

        default_threads = torch.get_num_threads()
    except ImportError:
        torch, default_threads = None, None
    torch_default = bench_torch(ds, steps, args.repeats, None)
    torch_one = bench_torch(ds, steps, args.repeats, 1)
    # Compare against the faster PyTorch setting (its default threads or one thread).
    torch_sps = max((v for v in (torch_default, torch_one) if v), default=None)
    rows = [("jaxsparse compiled scan", jax_sps),
            (f"PyTorch loop ({default_threads} thr)", torch_default),
            ("PyTorch loop (1 thread)", torch_one)]
    print(f"LeNet-300-100, batch 60, Adam, {steps} steps, best of {args.repeats}")
    print(f"{'trainer':<28}{'steps/s':>12}")
    for name, v in rows:
        print(f"{name:<28}{(f'{v:,.0f}' if v else 'n/a'):>12}")
    ratio = jax_sps / torch_sps if torch_sps else None
    if ratio:
        print(f"ratio jaxsparse / fastest PyTorch: {ratio:.2f}x")
    out = {
        "benchmark": "train_lenet300_batch60_adam",
        "steps": steps, "chunk": args.chunk, "repeats": args.repeats,
        "jaxsparse_steps_per_s": jax_sps, "torch_steps_per_s": torch_default,
        "torch_1thread_steps_per_s": torch_one, "torch_threads": default_threads,
        "ratio": ratio, "jax": jax.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "load_average_1min": os.getloadavg()[0],
        "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "backend": jax.default_backend(),
    }
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    path = os.path.join(os.path.dirname(__file__), "results", "train.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
