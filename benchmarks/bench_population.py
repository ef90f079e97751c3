"""Model-steps per second: a population of LeNet-300-100 Adam trainers vs sequential runs.

    python benchmarks/bench_population.py                    # populations 1, 4, 16, 64
    python benchmarks/bench_population.py --quick            # populations 1, 4, 16, fewer steps
    python benchmarks/bench_population.py --cpu-devices 2    # one faked CPU device per core

Every population size runs, side by side in one process and interleaved repetition by
repetition in a shuffled order (other processes share the CPU: only ratios measured together
mean something):

* ``sequential``   the members one after another, each a jitted ``lax.scan`` of its steps
                   (on one device, XLA's intra-op threads on every core);
* ``naive vmap``   ``jit(vmap(scan))`` over member-major data ``[P, T, ...]``;
* ``population``   ``jaxsparse.sweep.train_population`` with its defaults (time-major data,
                   ``inner="auto"``: on CPU, groups of members sized to the last-level cache
                   and the device's threads, one after another in a ``fori_loop``; one vmap
                   on accelerators), one compiled program for the whole population;
* ``inner=vmap``   the same program with every member of a device in one vmap;
* ``inner=map group=g``  groups of ``g`` vmapped members (g=1: unbatched) one after another;
* ``shared batch`` the default trainer, every member seeing the same batch.
* ``Trainer``      the one trainer, ``jaxsparse.train.Trainer``'s population chunk (every
                   member gathers its own batches from one shared training set, on
                   device) against the same chunk run member by member (``Trainer seq``):
                   what ``train.fit`` on a stacked state costs against sequential fits.

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

from jaxsparse import sweep  # noqa: E402

BATCH, SIZES = 60, (784, 300, 100, 10)
TX = optax.adam(1.2e-3)


def init_fn(key):
    keys = jax.random.split(key, len(SIZES) - 1)
    glorot = jax.nn.initializers.glorot_normal()
    return [
        {"w": glorot(k, (a, b)), "b": jnp.zeros(b)}
        for k, a, b in zip(keys, SIZES[:-1], SIZES[1:], strict=True)
    ]


def loss_fn(params, x, y):
    h = x
    for i, layer in enumerate(params):
        h = h @ layer["w"] + layer["b"][None]
        if i < len(params) - 1:
            h = jax.nn.relu(h)
    return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()


def step(state, batch):
    params, opt = state
    loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
    updates, opt = TX.update(grads, opt, params)
    return (optax.apply_updates(params, updates), opt), loss


def flops_per_step() -> int:
    """Matmul FLOPs of one training step (forward, weight grads, input grads but the first)."""
    fwd = sum(2 * BATCH * a * b for a, b in zip(SIZES[:-1], SIZES[1:], strict=True))
    return 3 * fwd - 2 * BATCH * SIZES[0] * SIZES[1]


def member_train(state, batches):
    return jax.lax.scan(step, state, batches)


def bench(pop: int, steps: int, reps: int, groups: list[int]) -> dict:
    keys = sweep.member_keys(np.arange(pop))
    params = sweep.init_population(init_fn, keys)
    state = (params, jax.vmap(TX.init)(params))
    kx, ky = jax.random.split(jax.random.key(pop))
    x_tm = jax.random.normal(kx, (steps, pop, BATCH, SIZES[0]))  # time-major
    y_tm = jax.random.randint(ky, (steps, pop, BATCH), 0, SIZES[-1])
    x_mm, y_mm = jnp.swapaxes(x_tm, 0, 1), jnp.swapaxes(y_tm, 0, 1)  # member-major
    single = jax.jit(member_train)
    members = [
        (sweep.take_member(state, i), (x_mm[i], y_mm[i])) for i in range(pop)
    ]
    naive = jax.jit(jax.vmap(member_train))
    shared = (x_tm[:, 0], y_tm[:, 0])
    mesh = sweep.make_mesh()
    if pop % mesh.size == 0:  # lay the population out once, as a training loop would
        state = sweep.shard_population(state, mesh)
        x_tm, y_tm = sweep.shard_population((x_tm, y_tm), mesh, axis=1)
        shared = jax.device_put(shared, jax.sharding.NamedSharding(
            mesh, jax.sharding.PartitionSpec()))
    cases = {
        "sequential": lambda: [single(*m) for m in members],
        "naive vmap": lambda: naive(state, (x_mm, y_mm)),
        "population": lambda: sweep.train_population(step, state, (x_tm, y_tm), mesh=mesh),
        "inner=vmap": lambda: sweep.train_population(step, state, (x_tm, y_tm), mesh=mesh,
                                                     inner="vmap"),
    }
    for g in groups:
        if g < pop:
            cases[f"inner=map group={g}"] = (
                lambda g=g: sweep.train_population(step, state, (x_tm, y_tm), mesh=mesh,
                                                   inner="map", inner_chunk=g)
            )
    cases["shared batch"] = lambda: sweep.train_population(
        step, state, shared, shared_batches=True, mesh=mesh
    )
    for f in cases.values():  # compile + warm up
        jax.block_until_ready(f())
    times: dict[str, list[float]] = {k: [] for k in cases}
    order = list(cases)
    rng = np.random.default_rng(pop)
    for _ in range(reps):
        rng.shuffle(order)  # no case always runs right after the cache-thrashing naive vmap
        for name in order:
            f = cases[name]
            t0 = time.perf_counter()
            jax.block_until_ready(f())
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
    return out


def bench_trainer(pop: int, steps: int, reps: int) -> dict:
    """The one trainer: a population chunk vs the same chunk member by member."""
    from jaxsparse import models, train

    fn = models.functional(models.lenet300(key=jax.random.key(0), input_shape=(28, 28, 1)))
    tr = train.Trainer(fn.apply_fn, TX, batch_size=BATCH)
    keys = jax.random.split(jax.random.key(pop), pop)
    states = [tr.init_state(fn.params, key=k) for k in keys]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *states)
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (6000, 28, 28, 1))
    y = jax.random.randint(ky, (6000,), 0, 10)
    one, many = tr.chunk(steps), tr.chunk(steps, population=True)
    clock = jnp.int32(0)
    cases = {"Trainer seq": lambda: [one(s, x, y, clock) for s in states],
             "Trainer": lambda: many(stacked, x, y, clock)}
    for f in cases.values():
        jax.block_until_ready(f())
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(reps):
        for name in (list(cases) if _ % 2 == 0 else list(cases)[::-1]):
            t0 = time.perf_counter()
            jax.block_until_ready(cases[name]())
            times[name].append(time.perf_counter() - t0)
    base = float(np.median(times["Trainer seq"]))
    return {name: {"model_steps_per_s": pop * steps / float(np.median(ts)),
                   "ratio_vs_sequential": base / float(np.median(ts)),
                   "gflops": pop * steps / float(np.median(ts)) * flops_per_step() / 1e9,
                   "seconds": ts} for name, ts in times.items()}


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
        res.update(bench_trainer(pop, steps, reps))
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
        "cpu_cache_budget_bytes": sweep.CPU_CACHE_BUDGET_BYTES,
        "argv": sys.argv[1:],
    }
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    name = f"population_cpu{args.cpu_devices}.json" if args.cpu_devices else "population.json"
    path = os.path.join(os.path.dirname(__file__), "results", name)
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
