"""Calibration + SparseGPT time per layer vs matrix size: jaxsparse.oneshot vs NumPy, one run.

    .venv/bin/python benchmarks/bench_oneshot.py          # K = N in 128 .. 2048, 5 rounds
    .venv/bin/python benchmarks/bench_oneshot.py --quick  # K = N in 128 .. 512, 3 rounds

One square ``[K, K]`` linear layer, ``--rows`` calibration tokens (``X [rows, K]``, correlated
features). Per size, interleaved rounds; median and minimum seconds (compilation excluded:
every jitted function is called once first; on a shared machine the minimum is the steadier
figure):
  * calibration: ``jaxsparse.oneshot.calibrate`` of ``x @ W`` (the dot_general capture, one
    compiled scan over ``--batches`` batches summing ``X^T X``) vs NumPy ``sum X_b^T X_b``;
  * SparseGPT (50% unstructured and 2:4, blocksize 128, 1% dampening): the jitted
    ``jaxsparse.oneshot.sparsegpt`` vs the same algorithm in NumPy float32 (column loop with
    lazy block updates, as in the paper's reference code).
Also reports how many mask entries the two float32 implementations agree on. Writes
``benchmarks/results/oneshot.json`` (``oneshot_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxsparse as js
from jaxsparse import oneshot


def np_sparsegpt(w: np.ndarray, h: np.ndarray, *, sparsity: float | None, nm: tuple | None,
                 blocksize: int = 128, percdamp: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """SparseGPT in NumPy float32 on W [K, N] (inputs along axis 0)."""
    w = w.astype(np.float32).copy()
    h = h.astype(np.float32).copy()
    k, cols = w.shape
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead] = 0.0
    h[np.diag_indices(k)] += percdamp * np.mean(np.diag(h))
    u = np.linalg.cholesky(np.linalg.inv(h)).T.astype(np.float32)
    keep_all = np.zeros(w.shape, bool)
    for i1 in range(0, k, blocksize):
        i2 = min(i1 + blocksize, k)
        bs = i2 - i1
        w1, u1, err1 = w[i1:i2].copy(), u[i1:i2, i1:i2], np.zeros((bs, cols), np.float32)
        d = np.diag(u1)
        keep = np.zeros((bs, cols), bool)
        if nm is None:
            score = (w1 ** 2 / d[:, None] ** 2).ravel()
            n_prune = (math.floor(sparsity * i2 * cols + 0.5)
                       - math.floor(sparsity * i1 * cols + 0.5))
            keep.ravel()[np.argsort(-score, kind="stable")[: bs * cols - n_prune]] = True
        for i in range(bs):
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                score = w1[i:i + m] ** 2 / d[i:i + m, None] ** 2
                top = np.argsort(-score, axis=0, kind="stable")[:n]
                np.put_along_axis(keep[i:i + m], top, True, axis=0)
            row = w1[i].copy()
            err = (row - np.where(keep[i], row, 0.0)) / u1[i, i]
            w1[i:] -= np.outer(u1[i, i:], err)
            err1[i] = err
        w[i1:i2] = np.where(keep, w1, 0.0)
        w[i2:] -= u[i1:i2, i2:].T @ err1
        keep_all[i1:i2] = keep
    return w, keep_all


def _times(fn, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def bench_size(k: int, rows: int, batches: int, rounds: int) -> dict:
    rng = np.random.default_rng(k)
    x = (rng.normal(size=(rows, k)) @ (np.eye(k) + rng.normal(size=(k, k)) / np.sqrt(k)))
    x = x.astype(np.float32)
    w = (rng.normal(size=(k, k)) / np.sqrt(k)).astype(np.float32)
    xs = jnp.asarray(x.reshape(batches, rows // batches, k))
    params = {"layer": {"kernel": jnp.asarray(w)}}

    def apply_fn(p, xb):
        return xb @ p["layer"]["kernel"]

    def jax_calib():
        return jax.block_until_ready(oneshot.calibrate(apply_fn, params, xs))

    def np_calib():
        xb = x.reshape(batches, rows // batches, k)
        return sum(b.T @ b for b in xb)

    h = np.asarray(jax_calib()["layer/kernel"].xtx)
    np.testing.assert_allclose(h, np_calib(), rtol=1e-3, atol=1e-2 * np.abs(h).max())
    hj, wj = jnp.asarray(h), jnp.asarray(w)
    out = {"K": k, "N": k, "rows": rows}
    runs = {"calibration": (jax_calib, np_calib)}
    for name, kw, nm in (("sparsegpt_unstructured_0.5", {"sparsity": 0.5}, None),
                         ("sparsegpt_2:4", {"structure": js.NM(2, 4)}, (2, 4))):
        def jax_run(kw=kw):
            return jax.block_until_ready(oneshot.sparsegpt(wj, hj, **kw))

        def np_run(kw=kw, nm=nm):
            return np_sparsegpt(w, h, sparsity=kw.get("sparsity"), nm=nm)

        mask_j = np.asarray(jax_run().mask)  # compiles
        out[f"{name}_mask_agreement"] = float((mask_j == np_run()[1]).mean())
        runs[name] = (jax_run, np_run)
    times = {f"{name}_{impl}": [] for name in runs for impl in ("jax", "numpy")}
    for _ in range(rounds):  # interleaved rounds
        for name, (jax_run, np_run) in runs.items():
            times[f"{name}_jax"] += _times(jax_run, 1)
            times[f"{name}_numpy"] += _times(np_run, 1)
    for key, ts in times.items():
        out[f"{key}_s"] = statistics.median(ts)
        out[f"{key}_min_s"] = min(ts)
    for name in runs:
        out[f"{name}_ratio_numpy_over_jax"] = out[f"{name}_numpy_s"] / out[f"{name}_jax_s"]
        out[f"{name}_ratio_numpy_over_jax_min"] = (out[f"{name}_numpy_min_s"]
                                                   / out[f"{name}_jax_min_s"])
    for stat in ("", "_min"):
        total_j = out[f"calibration_jax{stat}_s"] + out[f"sparsegpt_unstructured_0.5_jax{stat}_s"]
        total_n = (out[f"calibration_numpy{stat}_s"]
                   + out[f"sparsegpt_unstructured_0.5_numpy{stat}_s"])
        out[f"total_jax{stat}_s"], out[f"total_numpy{stat}_s"] = total_j, total_n
        out[f"total_ratio_numpy_over_jax{stat}"] = total_n / total_j
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="*", default=None)
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    args = ap.parse_args()
    sizes = args.sizes or ([128, 256, 512] if args.quick else [128, 256, 512, 1024, 2048])
    rows = args.rows or (2048 if args.quick else 8192)
    rounds = args.rounds or (3 if args.quick else 5)
    results = []
    print(f"one [K, K] layer, {rows} calibration rows, {jax.default_backend()}")
    print("seconds per layer, minimum of the rounds (medians in the JSON)")
    print(f"{'K':>6}{'calib jax':>11}{'calib np':>10}{'sgpt jax':>10}{'sgpt np':>10}"
          f"{'2:4 jax':>10}{'2:4 np':>10}{'total np/jax':>14}{'mask agree':>12}")
    for k in sizes:
        r = bench_size(k, rows, args.batches, rounds)
        results.append(r)
        print(f"{k:>6}{r['calibration_jax_min_s']:>11.4f}{r['calibration_numpy_min_s']:>10.4f}"
              f"{r['sparsegpt_unstructured_0.5_jax_min_s']:>10.4f}"
              f"{r['sparsegpt_unstructured_0.5_numpy_min_s']:>10.4f}"
              f"{r['sparsegpt_2:4_jax_min_s']:>10.4f}{r['sparsegpt_2:4_numpy_min_s']:>10.4f}"
              f"{r['total_ratio_numpy_over_jax_min']:>14.2f}"
              f"{r['sparsegpt_unstructured_0.5_mask_agreement']:>12.4f}", flush=True)
    result = dict(
        benchmark="oneshot",
        what="calibration (X^T X) + SparseGPT per [K, K] layer, jaxsparse.oneshot vs NumPy",
        rows=rows, batches=args.batches, rounds=rounds, blocksize=128, percdamp=0.01,
        sizes=results, jax=jax.__version__, numpy=np.__version__,
        backend=jax.default_backend(), device=str(jax.devices()[0]),
        machine=f"{platform.machine()} {os.cpu_count()} cpus",
        note="medians and minima of interleaved rounds, compilation excluded; CPU shared "
             "with other processes during the measurement",
        quick=args.quick,
    )
    path = args.out
    if path is None:
        os.makedirs("benchmarks/results", exist_ok=True)
        path = f"benchmarks/results/{'oneshot_quick' if args.quick else 'oneshot'}.json"
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
