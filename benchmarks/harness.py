"""What every benchmark shares: interleaved timing, the environment record, the JSON file.

Benchmarks are run as scripts (``python benchmarks/bench_x.py``), so they import this module
as ``harness`` (the script's own directory is on ``sys.path``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax

SHARED_CPU_NOTE = ("CPU shared with other processes during the measurement; "
                   "medians of interleaved runs")


def step_args(doc: str, *, steps: tuple[int, int], rounds: tuple[int, int]) -> argparse.Namespace:
    """``--quick``, ``--steps``, ``--rounds`` of a training-step benchmark, defaults resolved.

    ``steps`` / ``rounds`` are the (quick, full) defaults; the namespace holds the chosen ints.
    """
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args()
    args.steps = args.steps or steps[not args.quick]
    args.rounds = args.rounds or rounds[not args.quick]
    return args


LENET_ADAM = dict(model="LeNet-300-100 (784-300-100-10)", optimizer="adam 1.2e-3", batch=60)


def interleaved(runs: dict[str, Callable[[], Any]], rounds: int, *,
                per_call: int = 1) -> dict[str, list[float]]:
    """Seconds per unit of each run over ``rounds`` rounds, the runs taking turns in a round.

    Args:
      runs: name -> a call that does the work (its result is blocked on).
      rounds: how many times each run is timed.
      per_call: units of work per call (e.g. training steps in a chunk); times are divided.

    Returns:
      name -> ``rounds`` times, in seconds per unit.
    """
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            t = time.perf_counter()
            jax.block_until_ready(run())
            times[name].append((time.perf_counter() - t) / per_call)
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in times.items()}


def ratios(values: dict[str, float], baseline: str) -> dict[str, float]:
    return {k: v / values[baseline] for k, v in values.items()}


def print_table(values: dict[str, float], rel: dict[str, float], *, unit: str, scale: float,
                against: str, digits: int = 3) -> None:
    """One row per run: its median time in ``unit`` (seconds x ``scale``) and its ratio."""
    width = max(16, *(len(k) + 2 for k in values))
    print(f"{'variant':<{width}}{'median ' + unit:>16}{'vs ' + against:>10}")
    for k, v in values.items():
        print(f"{k:<{width}}{v * scale:>16.{digits}f}{rel[k]:>10.3f}")


def environment() -> dict[str, str]:
    """The jax version, backend and machine a measurement ran on."""
    return dict(jax=jax.__version__, backend=jax.default_backend(),
                machine=f"{platform.machine()} {os.cpu_count()} cpus")


def save(name: str, result: dict[str, Any], *, quick: bool = False) -> str:
    """Writes ``benchmarks/results/<name>.json`` (``<name>_quick.json`` for a quick run)."""
    os.makedirs("benchmarks/results", exist_ok=True)
    path = f"benchmarks/results/{name}{'_quick' if quick else ''}.json"
    with open(path, "w") as f:
        json.dump({**result, **environment(), "quick": quick}, f, indent=2)
    return path
