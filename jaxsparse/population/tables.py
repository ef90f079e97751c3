"""Results tables: per-member rows from every job, merged into mean and std per configuration.

>>> rows = [{"lr": 0.1, "seed": s, "acc": a} for s, a in enumerate([0.5, 0.7])]
>>> merge_results(rows, metrics=["acc"])[0]["acc_mean"]
0.6
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np


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
