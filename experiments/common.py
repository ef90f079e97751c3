"""Shared experiment plumbing: configs, run directories, metrics files, progress, plots.

* A config is a Python file with ``get_config()`` returning an ``ml_collections.ConfigDict``
  (or a dict); its docstring starts with the command that runs it and what it should reach.
* A run directory is ``<out>/<config name>-<hash>`` where the hash covers every
  hyperparameter (not where the data or outputs live), so the same config lands in the same
  directory, a relaunch skips finished work (``results.json`` exists) and an interrupted run
  resumes from its checkpoints.
* Metrics go to ``metrics.csv`` and ``results.json``; ``curves.png`` plots the learning curves.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import importlib.util
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

# Keys that say where things live, not what is computed: excluded from the run hash.
NON_HASHED = ("data_dir", "out", "name")


def load_config(path: str, arg: str | None = None) -> Any:
    """Imports the config file at ``path`` and returns ``get_config()`` (or ``get_config(arg)``)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"_jaxsparse_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"config file {path} has no get_config()")
    config = module.get_config() if arg is None else module.get_config(arg)
    if isinstance(config, dict):
        config.setdefault("name", name)
    elif not config.get("name"):
        config.name = name
    return config


def to_dict(config: Any) -> dict:
    """A plain JSON-able dict of a ``ConfigDict`` / dict config."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return json.loads(json.dumps(config, sort_keys=True, default=list))


def apply_overrides(config: Any, overrides: Iterable[str]) -> Any:
    """Applies ``key=value`` strings (Python literals; dotted keys for nesting) to ``config``."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw  # a bare string
        target = config
        parts = key.split(".")
        for p in parts[:-1]:
            target = target[p]
        if parts[-1] not in target:
            raise KeyError(f"override {key!r}: the config has no such key "
                           f"(keys: {sorted(target.keys())})")
        target[parts[-1]] = value
    return config


def config_hash(config: Any, exclude: Sequence[str] = NON_HASHED) -> str:
    """First 10 hex digits of the SHA-256 of the config's hyperparameters (sorted JSON)."""
    d = {k: v for k, v in to_dict(config).items() if k not in exclude}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def run_dir(out: str, config: Any) -> str:
    """``<out>/<config name>-<hash>``, created, with ``config.json`` written into it."""
    name = to_dict(config).get("name", "run")
    path = os.path.join(out, f"{name}-{config_hash(config)}")
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(to_dict(config), f, indent=2, sort_keys=True)
    return path


CPU_DEVICES_HELP = (
    "JAX CPU devices a population shards over: 'auto' = the most devices <= the cores "
    "that pad the population by at most 1/8 (padded members cost as much as real ones), "
    "or a number. "
    "No effect on a GPU/TPU run, nor when XLA_FLAGS already fixes a count. Must be chosen "
    "before JAX starts (jaxsparse.sweep.use_cpu_devices)."
)


def cpu_devices(flag: str, members: int) -> int:
    """Applies ``--cpu-devices`` for a population of ``members``; returns the device count.

    On a CPU one device per core runs whole members side by side (LeNet-300-100: 1.3x the
    one-device population, ``benchmarks/bench_population.py --cpu-devices 2``), but a
    population the device count does not divide is padded with members that cost as much as
    real ones (3 replicates on 2 devices: the digits demo ran 1.6x slower), so ``"auto"``
    takes the most devices, at most the core count, that pad the population by at most
    1/8 (a divisor of ``members`` needs no padding; 1 device never does).
    """
    from jaxsparse import sweep

    if flag == "auto":
        cores = sweep._cores()  # noqa: SLF001 - the affinity-aware core count
        members = max(1, members)
        count = max(d for d in range(1, min(cores, members) + 1)
                    if (-(-members // d) * d - members) * 8 <= members)
    elif str(flag).isdigit() and int(flag) >= 1:
        count = int(flag)
    else:
        raise ValueError(f"--cpu-devices must be 'auto' or a positive integer, got {flag!r}")
    return sweep.use_cpu_devices(count)


def is_finished(path: str, marker: str = "results.json") -> bool:
    """Whether a run directory already holds its final results."""
    return os.path.exists(os.path.join(path, marker))


def write_json(path: str, obj: Any) -> None:
    """Writes JSON atomically (temp file + rename), NaN as null."""
    def clean(x):
        if isinstance(x, float) and math.isnan(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(clean(obj), f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def write_csv(path: str, history: dict[str, list]) -> None:
    """Writes a column-per-metric CSV of an equal-length history dict."""
    keys = list(history)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for row in zip(*(history[k] for k in keys), strict=True):
            w.writerow(row)
    os.replace(tmp, path)


def plot_curves(path: str, history: dict[str, list], *, title: str = "",
                early_stop: int | None = None) -> None:
    """Loss and accuracy against iteration (train / val / test), PNG via matplotlib Agg.

    A metric recorded per replicate (one list of per-replicate values per evaluation) is
    drawn as the mean over replicates with a ± std band.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = history["step"]
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for split in ("train", "val", "test"):
            key = f"{split}_{metric}"
            if key not in history:
                continue
            values = np.asarray(history[key], np.float64)
            if values.ndim == 1:
                ax.plot(steps, values, label=split)
                continue
            mean, std = values.mean(axis=1), values.std(axis=1)  # [evaluations, replicates]
            (line,) = ax.plot(steps, mean, label=f"{split} (mean)")
            ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2,
                            lw=0, label=f"{split} ± std")
        if early_stop is not None:
            ax.axvline(early_stop, color="gray", ls="--", lw=0.8, label="early stop")
        ax.set_xlabel("iteration")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def progress(
    total: int, initial: int = 0, desc: str = ""
) -> tuple[Any, Callable[[int, dict], None]]:
    """A tqdm bar over iterations; returns ``(bar, callback(step, record))``."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, desc=desc, unit="it", dynamic_ncols=True)
    last = [initial]

    def callback(step: int, record: dict) -> None:
        bar.update(step - last[0])
        last[0] = step
        bar.set_postfix(val_acc=f"{record.get('val_accuracy', float('nan')):.4f}",
                        test_acc=f"{record.get('test_accuracy', float('nan')):.4f}")

    return bar, callback
