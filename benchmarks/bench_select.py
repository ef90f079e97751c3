"""Global exact selection (jaxsparse.prune) vs a full-sort threshold, same run.

    .venv/bin/python benchmarks/bench_select.py            # ~25.7M prunable weights, 90%
    .venv/bin/python benchmarks/bench_select.py --quick    # ~2.6M weights, fewer repeats

The tree is a realistic mixed model: an embedding, conv kernels, dense kernels, biases and
norm scales (not prunable). Baselines:
  * full sort: concatenate every prunable score, ``jnp.sort``, take the k-th value as the
    threshold and keep ``score > threshold`` (what jaxpruner and open_lth do);
  * ``lax.top_k`` on the concatenation (exact, for reference).
All are jitted; compile time is excluded; timings are medians of interleaved runs. The script
checks that prune keeps exactly the requested count and the same entries as the sort baseline.
Writes benchmarks/results/select.json.
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

import jaxsparse as js


def make_tree(scale: float, key: jax.Array) -> dict:
    def d(n: int) -> int:
        return max(8, int(n * scale))

    shapes = {"embed/embedding": (d(31000), 384)}
    for i in range(4):
        shapes[f"conv{i}/kernel"] = (3, 3, 256, 256)
        shapes[f"conv{i}/bias"] = (256,)
        shapes[f"bn{i}/scale"] = (256,)
    for i in range(8):
        shapes[f"block{i}/mlp_in/kernel"] = (768, d(1536))
        shapes[f"block{i}/mlp_in/bias"] = (d(1536),)
        shapes[f"block{i}/norm/scale"] = (768,)
    shapes["dense/kernel"] = (1024, 1024)
    shapes["head/kernel"] = (384, 1000)
    shapes["head/bias"] = (1000,)
    tree: dict = {}
    for i, (path, shape) in enumerate(shapes.items()):
        mod, name = path.split("/", 1) if path.count("/") == 1 else path.rsplit("/", 1)
        tree.setdefault(mod, {})[name] = jax.random.normal(jax.random.fold_in(key, i), shape)
    return tree


def _flat_kept_scores(scores, masks):
    """Every prunable score in one vector, pruned entries at -inf (the baselines' input)."""
    leaves = [
        (s, m)
        for s, m in zip(jax.tree.leaves(scores), jax.tree.leaves(masks), strict=True)
        if m.ndim
    ]
    return jnp.concatenate([jnp.where(m, s, -jnp.inf).reshape(-1) for s, m in leaves])


def sort_threshold_masks(scores, masks, sparsity):
    flat = _flat_kept_scores(scores, masks)
    n_prune = js.num_pruned(sparsity, flat.size)
    thr = jnp.sort(flat)[n_prune - 1]
    return jax.tree.map(lambda s, m: (s > thr) & m if m.ndim else m, scores, masks)


def topk_masks(scores, masks, sparsity):
    flat = _flat_kept_scores(scores, masks)
    k = flat.size - js.num_pruned(sparsity, flat.size)
    thr = jax.lax.top_k(flat, k)[0][-1]
    return jax.tree.map(lambda s, m: (s >= thr) & m if m.ndim else m, scores, masks)


def timeit(fn, *args) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--no-topk", action="store_true")
    args = ap.parse_args()
    scale = 0.1 if args.quick else 1.0
    repeats = args.repeats or (3 if args.quick else 5)

    params = make_tree(scale, jax.random.key(0))
    scores = js.scores.magnitude(params)
    masks = js.ones_like(params)
    n = js.count_total(masks)
    s = args.sparsity
    want_kept = n - js.num_pruned(s, n)

    fns = {
        "prune": jax.jit(lambda sc, m: js.prune(sc, m, sparsity=s)),
        "full_sort": jax.jit(lambda sc, m: sort_threshold_masks(sc, m, s)),
    }
    if not args.no_topk:
        fns["top_k"] = jax.jit(lambda sc, m: topk_masks(sc, m, s))
    # Quantised scores: many ties at the threshold, exercising the exact tie resolution.
    q_scores = jax.tree.map(lambda x: jnp.round(x * 8) / 8, scores)
    fns_ties = {"prune_ties": fns["prune"]}

    outs, compile_s = {}, {}
    for name, fn in {**fns}.items():
        compile_s[name] = timeit(fn, scores, masks)
        outs[name] = fn(scores, masks)
    compile_s["prune_ties"] = 0.0
    outs["prune_ties"] = fns_ties["prune_ties"](q_scores, masks)

    times: dict[str, list[float]] = {k: [] for k in [*fns, "prune_ties"]}
    for _ in range(repeats):  # interleaved
        for name, fn in fns.items():
            times[name].append(timeit(fn, scores, masks))
        times["prune_ties"].append(timeit(fns["prune"], q_scores, masks))
    med = {k: statistics.median(v) for k, v in times.items()}

    kept = {k: int(js.count_kept(v)) for k, v in outs.items()}
    same_as_sort = js.masks.equal(outs["prune"], outs["full_sort"])

    # Exactness without a reference sort: every kept score >= every pruned score, and the
    # sort-threshold masks (which drop all ties at the threshold) are a subset of prune's.
    def split_minmax(sc, m):
        pairs = [
            (s, x) for s, x in zip(jax.tree.leaves(sc), jax.tree.leaves(m), strict=True) if x.ndim
        ]
        lo = min(float(jnp.min(jnp.where(x, s, jnp.inf))) for s, x in pairs)
        hi = max(float(jnp.max(jnp.where(x, -jnp.inf, s))) for s, x in pairs)
        return lo, hi

    min_kept, max_pruned = split_minmax(scores, outs["prune"])
    ordered = min_kept >= max_pruned
    superset = js.masks.equal(js.union(outs["prune"], outs["full_sort"]), outs["prune"])
    ratio = med["full_sort"] / med["prune"]
    print(
        f"{n:,} prunable weights in {len(js.masks.prunable_paths(masks))} leaves, "
        f"global sparsity {s}, target kept {want_kept:,}"
    )
    print(f"{'method':<12}{'median s':>10}{'kept':>14}{'compile s':>11}")
    for k in times:
        print(f"{k:<12}{med[k]:>10.3f}{kept[k]:>14,}{compile_s[k]:>11.2f}")
    print(
        f"prune is {ratio:.1f}x faster than the full sort; exact count: "
        f"{kept['prune'] == want_kept}; every kept score >= every pruned score: {ordered}; "
        f"contains the sort-threshold mask: {superset} (identical: {same_as_sort}; the sort "
        "threshold drops the ties at the threshold, so its count can be off); "
        f"with many ties exact: {kept['prune_ties'] == want_kept}"
    )

    result = dict(
        benchmark="select",
        n_prunable=n,
        n_leaves=len(js.masks.prunable_paths(masks)),
        sparsity=s,
        target_kept=want_kept,
        kept=kept,
        median_s=med,
        all_s=times,
        compile_s=compile_s,
        speedup_vs_full_sort=ratio,
        exact=kept["prune"] == want_kept and kept["prune_ties"] == want_kept,
        identical_to_sort_threshold=same_as_sort,
        kept_scores_ge_pruned_scores=ordered,
        contains_sort_threshold_mask=superset,
        quick=args.quick,
        repeats=repeats,
        jax=jax.__version__,
        backend=jax.default_backend(),
        machine=f"{platform.machine()} {os.cpu_count()} cpus",
        note="CPU shared with other processes during the measurement; medians of interleaved runs",
    )
    os.makedirs("benchmarks/results", exist_ok=True)
    name = "select_quick" if args.quick else "select"
    with open(f"benchmarks/results/{name}.json", "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
