"""Model-steps per second: a population of LeNet-300-100 Adam trainers vs sequential runs.

    python benchmarks/bench_population.py                    # populations 1, 4, 16, 64
    python benchmarks/bench_population.py --quick            # populations 1, 4, 16, fewer steps
    python benchmarks/bench_population.py --cpu-devices 2    # one faked CPU device per core

Everything runs the one trainer's compiled chunk (``jaxsparse.train.Trainer.chunk``: ``steps``
iterations in one ``lax.scan``, every member gathering its own batches from one shared
training set on device). Every population size runs, side by side in one process and
interleaved repetition by repetition in a shuffled order (other processes share the CPU:
only ratios measured together mean something):

* ``sequential``   the members one after another, each ``Trainer.chunk(steps)`` (jitted, on
                   one device: XLA's intra-op threads on every core);
* ``naive vmap``   ``jit(vmap(chunk))`` over the stacked state;
* ``population``   ``Trainer.chunk(steps, population=True)``: the chunk through
                   ``jaxsparse.population.population_map`` with its defaults
                   (``inner="auto"``: on CPU, groups of members sized to the last-level cache
                   and the device's threads, one after another in a ``fori_loop`` that
                   writes the state back in place; one vmap on accelerators), one compiled
                   program for the whole population, sharded over the devices;
* ``inner=vmap``   the same chunk with every member of a device in one vmap;
* ``inner=map group=g``  groups of ``g`` vmapped members (g=1: unbatched) one after another.

Prints a table (median model-steps/s, ratio to sequential, achieved GFLOP/s) and writes
``benchmarks/results/population[_cpuN].json``.
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
    parser.add_argument("--pops", type=int, nargs="*")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--reps", type=int)
    parser.add_argument("--groups", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--cpu-devices", type=int, default=0,
                        help="fake this many CPU devices (XLA_FLAGS; set before jax starts)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    ARGS = _args()
    if ARGS.cpu_devices:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={ARGS.cpu_devices}")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxsparse import models, population, train  # noqa: E402

BATCH, SIZES, EXAMPLES = 60, (784, 300, 100, 10), 6000
TX = optax.adam(1.2e-3)


def flops_per_step() -> int:
    """Matmul FLOPs of one training step (forward, weight grads, input grads but the first)."""
    fwd = sum(2 * BATCH * a * b for a, b in zip(SIZES[:-1], SIZES[1:], strict=True))
    return 3 * fwd - 2 * BATCH * SIZES[0] * SIZES[1]


def bench(pop: int, steps: int, reps: int, groups: list[int]) -> dict:
    fn = models.functional(models.lenet300(key=jax.random.key(0), input_shape=(28, 28, 1)))
    trainer = train.Trainer(fn.apply_fn, TX, batch_size=BATCH)
    init = lambda k: trainer.init_state(models.functional(  # noqa: E731
        models.lenet300(key=k, input_shape=(28, 28, 1))).params, key=k)
    keys = jax.random.split(jax.random.key(pop), pop)
    states = [init(k) for k in keys]
    stacked = population.stack_members(states)
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (EXAMPLES, 28, 28, 1))
    y = jax.random.randint(ky, (EXAMPLES,), 0, SIZES[-1])
    clock = jnp.int32(0)
    one, many = trainer.chunk(steps), trainer.chunk(steps, population=True)
    raw = train.make_train_chunk(fn.apply_fn, TX, batch_size=BATCH, num_steps=steps)
    axes = (0, None, None, None)
    mesh = population.make_mesh()
    if pop % mesh.size == 0:  # lay the population out once, as the trainer's loop does
        stacked = population.shard_population(stacked, mesh)
    naive = jax.jit(jax.vmap(raw, in_axes=axes))
    cases = {
        "sequential": lambda: [one(s, x, y, clock) for s in states],
        "naive vmap": lambda: naive(stacked, x, y, clock),
        "population": lambda: many(stacked, x, y, clock),
    }
    inner_vmap = population.population_map(raw, in_axes=axes, mesh=mesh, inner="vmap")
    cases["inner=vmap"] = lambda: inner_vmap(stacked, x, y, clock)
    for g in groups:
        if g < pop:
            grouped = population.population_map(raw, in_axes=axes, mesh=mesh, inner="map",
                                                 inner_chunk=g)
            cases[f"inner=map group={g}"] = lambda f=grouped: f(stacked, x, y, clock)
    for f in cases.values():  # compile + warm up
        jax.block_until_ready(f())
    times: dict[str, list[float]] = {k: [] for k in cases}
    order = list(cases)
    rng = np.random.default_rng(pop)
    for _ in range(reps):
        rng.shuffle(order)  # no case always runs right after the cache-thrashing naive vmap
        for name in order:
            t0 = time.perf_counter()
            jax.block_until_ready(cases[name]())
            times[name].append(time.perf_counter() - t0)
    base = float(np.median(times["sequential"]))
    out = {}
    for name, ts in times.items():
        med = float(np.median(ts))
        rate = pop * steps / med
        out[name] = {
            "model_steps_per_s": rate,
            "ratio_vs_sequential": base / med,
            "gflops": rate * flops_per_step() / 1e9,
            "seconds": ts,
        }
    out["population"]["group"] = many.layout(stacked, x, y, clock).group
    return out


def main() -> None:
    args = ARGS
    pops = args.pops or ([1, 4, 16] if args.quick else [1, 4, 16, 64])
    steps = args.steps or (10 if args.quick else 40)
    reps = args.reps or (3 if args.quick else 7)
    results = {}
    print(f"{jax.devices()[0].device_kind} x{jax.device_count()}, LeNet-300-100 Adam batch "
          f"{BATCH}, {steps} steps, median of {reps}, {flops_per_step() / 1e6:.1f} MFLOP/step")
    print(f"{'P':>3}  {'method':<22} {'model-steps/s':>13} {'x seq':>6} {'GFLOP/s':>8}")
    for pop in pops:
        res = bench(pop, steps, reps, args.groups)
        results[str(pop)] = res
        for name, r in res.items():
            print(f"{pop:>3}  {name:<22} {r['model_steps_per_s']:>13.1f} "
                  f"{r['ratio_vs_sequential']:>6.2f} {r['gflops']:>8.1f}")
    meta = {
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "jax": jax.__version__,
        "steps": steps,
        "reps": reps,
        "batch": BATCH,
        "mflop_per_step": flops_per_step() / 1e6,
        "cpu_cache_budget_bytes": population.cpu_cache_budget(),
        "argv": sys.argv[1:],
    }
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    name = f"population_cpu{args.cpu_devices}.json" if args.cpu_devices else "population.json"
    if args.quick:
        name = name.replace(".json", "_quick.json")
    path = os.path.join(os.path.dirname(__file__), "results", name)
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
