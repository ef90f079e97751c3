"""2:4 (and 4:8) mask time vs the memory-bandwidth floor, lax.top_k and argsort; compressed
matmul reference timings. All in one run, so the ratios are comparable.

    .venv/bin/python benchmarks/bench_nm.py            # 4096x4096 Dense, 3x3x512x512 conv
    .venv/bin/python benchmarks/bench_nm.py --quick    # 1024x1024, fewer repeats

Floors, measured on the same tensor:
  * ``copy``: ``x * 2`` (reads and writes the f32 tensor: what any elementwise op costs);
  * ``compare``: ``x > 0`` (reads f32, writes bool: the same bytes as a mask; the tightest
    floor a mask can reach).
Formulations of the same exact mask (all jitted, compile time excluded; minimum over
interleaved rounds, each function warmed up before it is timed; medians also saved; each
checked equal to ``nm_mask``):
  * ``nm_mask``: jaxsparse's sort-free rank-by-comparison (``m - 1`` compares per element);
  * ``top_k``: reduction axis moved last, ``lax.top_k(|w|, n)`` per group, one-hot back;
  * ``argsort``: stable ``argsort`` of ``-|w|`` per group, rank < n.
Writes benchmarks/results/nm.json (nm_quick.json with --quick).
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
import numpy as np

import jaxsparse as js


def topk_mask(w, n, m, axis):
    a = jnp.moveaxis(jnp.abs(w), axis, -1)
    g = a.reshape(a.shape[:-1] + (-1, m))
    _, idx = jax.lax.top_k(g, n)  # top_k breaks ties by lower index, like nm_mask
    keep = jnp.any(idx[..., None] == jnp.arange(m), axis=-2)
    return jnp.moveaxis(keep.reshape(a.shape), -1, axis)


def argsort_mask(w, n, m, axis):
    a = jnp.moveaxis(jnp.abs(w), axis, -1)
    g = a.reshape(a.shape[:-1] + (-1, m))
    order = jnp.argsort(-g, axis=-1, stable=True)
    rank = jnp.argsort(order, axis=-1, stable=True)
    return jnp.moveaxis((rank < n).reshape(a.shape), -1, axis)


def timeit(fns: dict, args, repeats: int) -> dict[str, float]:
    """Min over ``repeats`` rounds; each round runs every function warm then times it twice.

    Rounds interleave the functions, so load changes hit every variant alike; the warm call
    keeps one function's allocations (a slow argsort's huge temporaries) from being billed
    to the next one.
    """
    for f in fns.values():
        jax.block_until_ready(f(*args))  # compile
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            jax.block_until_ready(f(*args))
            for _ in range(2):
                t = time.perf_counter()
                jax.block_until_ready(f(*args))
                times[k].append(time.perf_counter() - t)
    # min: the least-disturbed run (the machine is shared); medians go to the JSON too
    timeit.medians = {k: statistics.median(v) for k, v in times.items()}
    return {k: min(v) for k, v in times.items()}


def bench_masks(quick: bool, repeats: int) -> list[dict]:
    d = 1024 if quick else 4096
    c = 128 if quick else 512
    cases = [
        ("dense (in,out) axis 0", (d, d), 0, 2, 4),
        ("conv HWIO axis -2", (3, 3, c, c), 2, 2, 4),
        ("dense axis 1 (minor)", (d, d), 1, 2, 4),
        ("dense 4:8 axis 0", (d, d), 0, 4, 8),
    ]
    rows = []
    for name, shape, axis, n, m in cases:
        w = jax.random.normal(jax.random.key(0), shape, jnp.float32)
        fns = {
            "copy": jax.jit(lambda x: x * 2),
            "compare": jax.jit(lambda x: x > 0),
            "nm_mask": jax.jit(lambda x, n=n, m=m, a=axis: js.nm_mask(x, n, m, axis=a)),
            "top_k": jax.jit(lambda x, n=n, m=m, a=axis: topk_mask(x, n, m, a)),
            "argsort": jax.jit(lambda x, n=n, m=m, a=axis: argsort_mask(x, n, m, a)),
        }
        ref = np.asarray(fns["nm_mask"](w))
        for k in ("top_k", "argsort"):
            if not np.array_equal(np.asarray(fns[k](w)), ref):
                raise AssertionError(f"{k} disagrees with nm_mask on {name}")
        t = timeit(fns, (w,), repeats)
        row = dict(case=name, shape=list(shape), n=n, m=m, axis=axis,
                   bytes=int(w.size * 4), ms={k: v * 1e3 for k, v in t.items()},
                   median_ms={k: v * 1e3 for k, v in timeit.medians.items()})
        for k in ("nm_mask", "top_k", "argsort"):
            row[f"{k}_vs_copy"] = t[k] / t["copy"]
            row[f"{k}_vs_compare"] = t[k] / t["compare"]
        row["copy_GBps"] = 2 * w.size * 4 / t["copy"] / 1e9
        # the same three again without the slow top_k / argsort in the rounds: in the mixed
        # rounds the mask runs right after a ~1 s sort and measures several times slower
        fast = timeit({k: fns[k] for k in ("copy", "compare", "nm_mask")}, (w,), repeats)
        row["fast_only_ms"] = {k: v * 1e3 for k, v in fast.items()}
        row["fast_only_nm_mask_vs_copy"] = fast["nm_mask"] / fast["copy"]
        row["fast_only_nm_mask_vs_compare"] = fast["nm_mask"] / fast["compare"]
        rows.append(row)
        print(f"{name:<24} {str(shape):<18} " + "  ".join(
            f"{k} {v * 1e3:8.2f}ms" for k, v in t.items()))
        print(f"{'':<43} nm_mask/copy {row['nm_mask_vs_copy']:.2f}x  nm_mask/compare "
              f"{row['nm_mask_vs_compare']:.2f}x  top_k/copy {row['top_k_vs_copy']:.1f}x  "
              f"argsort/copy {row['argsort_vs_copy']:.1f}x")
        print(f"{'':<43} without top_k/argsort in the rounds: copy {fast['copy'] * 1e3:.2f}ms "
              f"compare {fast['compare'] * 1e3:.2f}ms nm_mask {fast['nm_mask'] * 1e3:.2f}ms "
              f"-> nm_mask/copy {row['fast_only_nm_mask_vs_copy']:.2f}x, nm_mask/compare "
              f"{row['fast_only_nm_mask_vs_compare']:.2f}x")
    return rows


def bench_matmul(quick: bool, repeats: int) -> list[dict]:
    b, k, o = (64, 512, 512) if quick else (64, 2048, 2048)
    w = jax.random.normal(jax.random.key(1), (k, o), jnp.float32)
    x = jax.random.normal(jax.random.key(2), (b, k), jnp.float32)
    mask = js.nm_mask(w, 2, 4)
    ws = jnp.where(mask, w, 0)
    c = js.nm.compress(w, 2, 4)
    fns = {
        "dense_masked": jax.jit(lambda x, c: x @ ws),
        "decompress_matmul": jax.jit(lambda x, c: js.nm.nm_matmul(x, c)),
        "gather": jax.jit(lambda x, c: js.nm.nm_matmul(x, c, method="gather")),
        "decompress_only": jax.jit(lambda x, c: js.nm.decompress(c)),
    }
    t = timeit(fns, (x, c), repeats)
    mem = js.nm.memory(c)
    print(f"compressed matmul x{(b, k)} @ W{(k, o)} 2:4 f32: " + "  ".join(
        f"{kk} {v * 1e3:.2f}ms" for kk, v in t.items()))
    print(f"  memory: dense {mem['dense_bytes']} B, compressed {mem['compressed_bytes']} B "
          f"(uint8 idx, {mem['ratio']:.3f}), packed 2-bit idx {mem['compressed_bytes_packed']}"
          f" B ({mem['ratio_packed']:.3f})")
    return [dict(x=[b, k], w=[k, o], ms={kk: v * 1e3 for kk, v in t.items()}, memory=mem)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    repeats = args.repeats or (3 if args.quick else 5)
    out = dict(
        jax=jax.__version__, backend=jax.default_backend(), devices=str(jax.devices()),
        platform=platform.platform(), cpu_count=os.cpu_count(), repeats=repeats,
        note="CPU only; min over interleaved repeats; other processes may share the machine",
        masks=bench_masks(args.quick, repeats),
        matmul=bench_matmul(args.quick, repeats),
    )
    path = os.path.join(os.path.dirname(__file__), "results",
                        "nm_quick.json" if args.quick else "nm.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
