"""Sweeps beyond one program: multi-host start-up, job arrays, resumable chunks, merged tables.

* :func:`init_distributed` starts ``jax.distributed`` from the environment (SLURM, or the
  ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` variables); a
  no-op for a single process.
* :func:`task_slice` gives one job of an array job its share of a grid.
* :func:`save_tree` / :func:`load_tree` / :func:`resumable` write finished work (a chunk of a
  population at one level) atomically, so a relaunch skips it.
* :func:`write_results` / :func:`merge_results` collect per-member rows from every job into
  one table with mean and std per configuration (over seeds).

>>> task_slice(list(range(10)), task_index=1, num_tasks=3)
[3, 4, 5]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxsparse import rules as rules_lib
from jaxsparse.typing import PyTree


def init_distributed(**kwargs: Any) -> tuple[int, int]:
    """Starts multi-host JAX when the environment says there are several processes.

    Multi-process when ``SLURM_NTASKS`` > 1 (jax reads the SLURM variables itself) or when
    ``JAX_COORDINATOR_ADDRESS`` is set (with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``).
    Otherwise nothing happens. Call it once, before any other jax call.

    Args:
      kwargs: passed on to ``jax.distributed.initialize`` (e.g. ``local_device_ids``).

    Returns:
      ``(process_index, process_count)``.

    >>> init_distributed()  # single process: a no-op
    (0, 1)
    """
    env = os.environ
    coordinator = env.get("JAX_COORDINATOR_ADDRESS")
    slurm_tasks = int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1)
    if coordinator:
        kwargs.setdefault("coordinator_address", coordinator)
        if "JAX_NUM_PROCESSES" in env:
            kwargs.setdefault("num_processes", int(env["JAX_NUM_PROCESSES"]))
        if "JAX_PROCESS_ID" in env:
            kwargs.setdefault("process_id", int(env["JAX_PROCESS_ID"]))
    if coordinator or slurm_tasks > 1:
        if not _distributed_started():
            jax.distributed.initialize(**kwargs)
    return jax.process_index(), jax.process_count()


def _distributed_started() -> bool:
    is_init = getattr(jax.distributed, "is_initialized", None)
    if is_init is not None:
        return bool(is_init())
    return jax.process_count() > 1


def task_slice(items: Sequence[Any], task_index: int, num_tasks: int) -> list[Any]:
    """The contiguous share of ``items`` for job ``task_index`` of ``num_tasks``.

    Shares differ in length by at most one and together cover ``items`` once, in order.
    """
    if num_tasks < 1 or not 0 <= task_index < num_tasks:
        raise ValueError(f"need 0 <= task_index < num_tasks, got {task_index} of {num_tasks}")
    n = len(items)
    start = task_index * n // num_tasks
    stop = (task_index + 1) * n // num_tasks
    return list(items[start:stop])


# --------------------------------------------------------------------------- resumable chunks


def _is_key(x: Any) -> bool:
    return jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key)


def save_tree(path: str | os.PathLike, tree: PyTree) -> None:
    """Writes a pytree of arrays to ``path`` (``.npz``) atomically (tmp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    leaves = jax.tree.leaves(jax.device_get(tree))
    arrays = {
        f"leaf_{i:05d}": np.asarray(jax.random.key_data(x) if _is_key(x) else x)
        for i, x in enumerate(leaves)
    }
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def load_tree(path: str | os.PathLike, like: PyTree) -> PyTree:
    """Reads a tree written by :func:`save_tree`; ``like`` (arrays or ``ShapeDtypeStruct``)
    gives the structure, shapes and dtypes, and is checked leaf by leaf."""
    with np.load(path) as data:
        arrays = [data[k] for k in sorted(data.files)]
    expected = rules_lib.leaves_with_paths(like)
    if len(arrays) != len(expected):
        raise ValueError(f"{path}: {len(arrays)} leaves saved, {len(expected)} expected")
    out = []
    for (p, ref), a in zip(expected, arrays, strict=True):
        if _is_key(ref):
            try:
                a = jax.random.wrap_key_data(a, impl=jax.random.key_impl(ref))
            except (TypeError, AttributeError):  # a ShapeDtypeStruct: default impl
                a = jax.random.wrap_key_data(a)
        elif a.shape != tuple(ref.shape):
            raise ValueError(f"{path}: leaf {p!r} saved with shape {a.shape}, expected {ref.shape}")
        out.append(a)
    return jax.tree.unflatten(jax.tree.structure(like), out)


def resumable(
    path: str | os.PathLike, compute: Callable[[], PyTree], like: PyTree | None = None
) -> tuple[PyTree, bool]:
    """Loads finished work from ``path`` or computes and saves it.

    Args:
      path: the ``.npz`` file of this piece of work (e.g. ``level_03/chunk_0002.npz``).
      compute: runs the work; its result is saved atomically.
      like: the result's structure (e.g. ``jax.eval_shape`` of the work); needed to load.

    Returns:
      ``(result, loaded)`` with ``loaded`` True when the file was already there.
    """
    if like is not None and Path(path).exists():
        return load_tree(path, like), True
    result = compute()
    save_tree(path, result)
    return result, False


# --------------------------------------------------------------------------- results tables


def write_results(directory: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> Path:
    """Writes per-member result rows (config keys + metric values) as ``results.jsonl``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "results.jsonl"
    tmp = directory / f".results.jsonl.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps({k: _plain(v) for k, v in row.items()}) + "\n")
    os.replace(tmp, path)
    return path


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic | np.ndarray | jax.Array):
        return np.asarray(v).tolist()
    return v


def read_results(dirs: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """All rows of the ``results.jsonl`` files in ``dirs`` (directories or files)."""
    rows = []
    for d in dirs:
        p = Path(d)
        p = p / "results.jsonl" if p.is_dir() else p
        if not p.exists():
            raise FileNotFoundError(f"no results at {p}")
        with open(p) as f:
            rows.extend(json.loads(line) for line in f if line.strip())
    return rows


def merge_results(
    dirs: Sequence[str | os.PathLike] | Sequence[dict[str, Any]],
    *,
    metrics: Sequence[str],
    over: Sequence[str] = ("seed",),
) -> list[dict[str, Any]]:
    """One table from the rows of every job: mean and std of each metric per configuration.

    Rows that agree on every key except ``metrics`` and ``over`` form one configuration.
    ``std`` is the sample standard deviation (ddof=1; 0 for a single row).

    Args:
      dirs: result directories / files of the jobs, or the rows themselves.
      metrics: metric names to aggregate.
      over: keys that index replicates (averaged over).

    Returns:
      rows ``{config..., "n": count, "<metric>_mean": ..., "<metric>_std": ...}`` in order of
      first appearance.
    """
    if dirs and isinstance(dirs[0], dict):
        rows = list(dirs)
    else:
        rows = read_results(dirs)  # type: ignore[arg-type]
    skip = set(metrics) | set(over)
    groups: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for row in rows:
        missing = [m for m in metrics if m not in row]
        if missing:
            raise ValueError(f"row {row} lacks metrics {missing}")
        config = {k: v for k, v in row.items() if k not in skip}
        key = json.dumps(config, sort_keys=True)
        groups.setdefault(key, (config, []))[1].append(row)
    table = []
    for config, members in groups.values():
        out = dict(config, n=len(members))
        for m in metrics:
            vals = np.asarray([r[m] for r in members], dtype=np.float64)
            out[f"{m}_mean"] = float(vals.mean(axis=0)) if vals.ndim == 1 else vals.mean(0).tolist()
            std = vals.std(axis=0, ddof=1) if len(vals) > 1 else np.zeros_like(vals[0])
            out[f"{m}_std"] = float(std) if np.ndim(std) == 0 else std.tolist()
        table.append(out)
    return table


def format_table(table: Sequence[dict[str, Any]], metrics: Sequence[str]) -> str:
    """Plain-text table: configuration columns, ``n``, and ``mean ± std`` per metric."""
    if not table:
        return "(empty)"
    cfg_keys = [k for k in table[0] if k != "n" and not k.endswith(("_mean", "_std"))]
    head = cfg_keys + ["n"] + list(metrics)
    lines = []
    for row in table:
        cells = [str(row[k]) for k in cfg_keys] + [str(row["n"])]
        for m in metrics:
            mean, std = row[f"{m}_mean"], row[f"{m}_std"]
            if isinstance(mean, list):
                mean, std = mean[-1], std[-1]
            cells.append(f"{mean:.4f} ± {std:.4f}" if not math.isnan(mean) else "nan")
        lines.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in lines])
