"""Job arrays and multi-host start-up: a task's share of a grid, resumable pieces of work.

* :func:`init_distributed` starts ``jax.distributed`` from the environment (SLURM, or the
  ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` variables); a
  no-op for a single process.
* :func:`task_slice` gives one job of an array job its share of a grid.
* :func:`resumable` writes finished work (a chunk of a population at one level) atomically
  through :func:`jaxsparse.checkpoint.save_tree`, so a relaunch skips it.

>>> task_slice(list(range(10)), task_index=1, num_tasks=3)
[3, 4, 5]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

from jaxsparse import checkpoint
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

    >>> [len(task_slice(range(10), i, 4)) for i in range(4)]
    [2, 3, 2, 3]
    """
    if num_tasks < 1 or not 0 <= task_index < num_tasks:
        raise ValueError(f"need 0 <= task_index < num_tasks, got {task_index} of {num_tasks}")
    n = len(items)
    start = task_index * n // num_tasks
    stop = (task_index + 1) * n // num_tasks
    return list(items[start:stop])


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

    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> work = lambda: {"x": jnp.arange(3)}
    >>> resumable(f"{tmp.name}/c.npz", work, jax.eval_shape(work))[1]
    False
    >>> resumable(f"{tmp.name}/c.npz", work, jax.eval_shape(work))[1]  # already done
    True
    >>> tmp.cleanup()
    """
    if like is not None and Path(path).exists():
        return checkpoint.load_tree(path, like), True
    result = compute()
    checkpoint.save_tree(path, result)
    return result, False
