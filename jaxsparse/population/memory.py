"""Memory: what a member costs on a device, refusal before an out-of-memory, CPU cache groups.

* :func:`memory_estimate` compiles the vmapped per-member function for populations of 1 and 2
  (shapes only) and reads XLA's memory analysis: a :class:`MemoryEstimate`.
* :func:`check_fits` raises :class:`PopulationTooLarge` with the numbers;
  :func:`auto_chunk_size` takes as many members per compiled call as fit.
* :func:`cache_group_size` sizes the groups of members a CPU device steps together so that
  their training state stays in the last-level cache (:func:`last_level_cache_bytes`, read
  when asked, never at import).

>>> est = MemoryEstimate(bytes_per_member=2**20, fixed_bytes=0, device_bytes=2**24, devices=2,
...                      source="estimate")
>>> est.max_population
32
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.population.build import AxisSpec, in_axes_tuple
from jaxsparse.population.mesh import cpu_cores
from jaxsparse.typing import PyTree


def tree_bytes(tree: PyTree) -> int:
    """Bytes of a pytree's leaves (arrays or ``ShapeDtypeStruct``; a threefry key is 8 bytes).

    >>> tree_bytes({"w": jnp.zeros((4, 4)), "key": jax.random.key(0)})
    72
    """

    def nbytes(x):
        dtype = getattr(x, "dtype", None)
        if isinstance(dtype, np.dtype):  # fast path: plain arrays (not PRNG keys)
            return int(np.prod(np.shape(x))) * dtype.itemsize
        dtype = jnp.result_type(x)
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            return 8 * int(np.prod(np.shape(x)))  # threefry: two uint32 words per key
        return int(np.prod(np.shape(x))) * dtype.itemsize

    return sum(nbytes(x) for x in jax.tree.leaves(tree))


# --------------------------------------------------------------------------- device memory


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Device memory estimate for a population (bytes)."""

    bytes_per_member: int
    fixed_bytes: int
    device_bytes: int
    devices: int
    source: Literal["compiled", "estimate"]  # XLA memory analysis, or a byte count

    @property
    def max_members_per_device(self) -> int:
        free = self.device_bytes - self.fixed_bytes
        return max(0, free // max(1, self.bytes_per_member))

    @property
    def max_population(self) -> int:
        return self.max_members_per_device * self.devices

    def __str__(self) -> str:
        return (
            f"{self.bytes_per_member / 2**20:.2f} MiB per member + "
            f"{self.fixed_bytes / 2**20:.2f} MiB fixed ({self.source}); device memory "
            f"{self.device_bytes / 2**30:.2f} GiB x {self.devices} devices -> at most "
            f"{self.max_population} members"
        )


class PopulationTooLarge(ValueError):
    """Raised before running when a population would not fit the device memory."""


def device_memory_bytes(device: Any | None = None) -> int:
    """Usable memory of one device: the allocator limit, or host RAM shared by CPU devices.

    >>> device_memory_bytes() > 0
    True
    """
    device = jax.devices()[0] if device is None else device
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning None
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(ram // max(1, jax.local_device_count()))


def _analysis_bytes(fn, args, axes, members: int) -> int | None:
    def spec(x, ax):
        shape = list(np.shape(x))
        if ax is not None:
            shape[ax] = members
        return jax.ShapeDtypeStruct(tuple(shape), jnp.result_type(x))

    specs = tuple(
        jax.tree.map(lambda x, ax=ax: spec(x, ax), a) for a, ax in zip(args, axes, strict=True)
    )
    try:
        ma = jax.jit(jax.vmap(fn, in_axes=axes)).lower(*specs).compile().memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend/version implements it
        return None
    if ma is None:
        return None
    return int(
        ma.argument_size_in_bytes
        + ma.output_size_in_bytes
        + ma.temp_size_in_bytes
        - ma.alias_size_in_bytes
    )


def memory_estimate(
    fn: Callable[..., Any],
    *args: Any,
    in_axes: AxisSpec = 0,
    devices: int | None = None,
    device_bytes: int | None = None,
    headroom: float = 0.9,
) -> MemoryEstimate:
    """Estimates device memory per member for ``population_map(fn)(*args)``.

    Compiles the vmapped function for populations of 1 and 2 (shapes only, nothing runs) and
    reads XLA's memory analysis (arguments + outputs + temporaries - aliased); the difference
    is the cost of a member, the rest is fixed. Without a memory analysis it falls back to a
    byte count: 3x the member's argument bytes (arguments, outputs, temporaries).

    Args:
      fn, args, in_axes: as for :func:`jaxsparse.population.population_map`.
      devices: devices the population spreads over (default: all).
      device_bytes: memory per device (default: :func:`device_memory_bytes`).
      headroom: fraction of the device memory the estimate may use.

    Returns:
      A :class:`MemoryEstimate`.

    >>> est = memory_estimate(lambda w: w * 2, jnp.zeros((8, 256)), device_bytes=2**20)
    >>> est.bytes_per_member >= 2 * 256 * 4, est.devices
    (True, 4)
    """
    axes = in_axes_tuple(in_axes, len(args))
    member = tuple(
        a if ax is None else jax.tree.map(lambda x, ax=ax: jax.lax.slice_in_dim(x, 0, 1, 1, ax), a)
        for a, ax in zip(args, axes, strict=True)
    )
    one = _analysis_bytes(fn, member, axes, 1)
    two = _analysis_bytes(fn, member, axes, 2)
    if one is not None and two is not None and two > one:
        per, fixed, source = two - one, max(0, 2 * one - two), "compiled"
    else:
        mapped = [a for a, ax in zip(member, axes, strict=True) if ax is not None]
        shared = [a for a, ax in zip(member, axes, strict=True) if ax is None]
        per, fixed, source = 3 * tree_bytes(mapped), tree_bytes(shared), "estimate"
    total = device_memory_bytes() if device_bytes is None else int(device_bytes)
    return MemoryEstimate(
        bytes_per_member=int(per),
        fixed_bytes=int(fixed),
        device_bytes=int(total * headroom),
        devices=jax.device_count() if devices is None else int(devices),
        source=source,
    )


def check_fits(estimate: MemoryEstimate, population: int, chunk_size: int | None = None) -> None:
    """Raises :class:`PopulationTooLarge` (with the numbers) if a chunk would not fit.

    >>> est = MemoryEstimate(2**20, 0, 2**21, devices=1, source="estimate")
    >>> check_fits(est, 4, chunk_size=2)  # two members per call fit
    """
    members = population if chunk_size is None else min(population, chunk_size)
    per_device = -(-members // estimate.devices)
    need = estimate.fixed_bytes + per_device * estimate.bytes_per_member
    if need > estimate.device_bytes:
        raise PopulationTooLarge(
            f"a population of {members} needs ~{need / 2**30:.2f} GiB per device "
            f"({per_device} members x {estimate.bytes_per_member / 2**20:.1f} MiB + "
            f"{estimate.fixed_bytes / 2**20:.1f} MiB fixed) but only "
            f"{estimate.device_bytes / 2**30:.2f} GiB are available; at most "
            f"{estimate.max_population} members fit at once: pass chunk_size<="
            f"{max(1, estimate.max_population)} or use more devices"
        )


def auto_chunk_size(estimate: MemoryEstimate, population: int) -> int:
    """Members per compiled call: as many as fit the device memory (refuses if none fits).

    Give it to ``population_map(..., chunk_size=...)``. How a device then runs its members
    (one vmap, or cache-sized groups one after another on CPU) is the inner strategy of
    :func:`jaxsparse.population.population_map`, inside the same program.

    >>> auto_chunk_size(MemoryEstimate(2**20, 0, 2**22, devices=2, source="estimate"), 100)
    8
    """
    chunk = max(1, min(population, estimate.max_population))
    check_fits(estimate, population, chunk_size=chunk)
    return chunk


# --------------------------------------------------------------------------- CPU cache


def last_level_cache_bytes(default: int = 8 * 2**20) -> int:
    """Size of the CPU's last-level cache (Linux sysfs), ``default`` where unknown.

    ``JAXSPARSE_CPU_CACHE_BYTES`` overrides it (e.g. a per-CCX L3 on a many-core EPYC). Read
    on every call (a few small files): whoever needs it keeps the value.

    >>> last_level_cache_bytes() > 0
    True
    """
    if os.environ.get("JAXSPARSE_CPU_CACHE_BYTES"):
        return int(os.environ["JAXSPARSE_CPU_CACHE_BYTES"])
    best = 0
    for index in range(8):
        path = f"/sys/devices/system/cpu/cpu0/cache/index{index}/size"
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:].upper(), 1)
        digits = text.rstrip("KkMmGg")
        if digits.isdigit():
            best = max(best, int(digits) * unit)
    return best or default


def cpu_cache_budget() -> int:
    """Bytes a CPU population's groups may keep in cache: half the last-level cache.

    The other half holds the streaming batches, and on a VM other tenants share the cache.
    """
    return last_level_cache_bytes() // 2


def cpu_device_share(devices: int | None = None) -> tuple[int, int]:
    """``(intra-op threads, cache budget bytes)`` of ONE of ``devices`` CPU devices.

    The CPU devices of one process (``--xla_force_host_platform_device_count``) run at the
    same time and share the cores and the last-level cache.

    Args:
      devices: CPU devices of this process (default: ``jax.local_devices(backend="cpu")``).
    """
    if devices is None:
        devices = len(jax.local_devices(backend="cpu"))
    devices = max(1, int(devices))
    return max(1, cpu_cores() // devices), max(1, cpu_cache_budget() // devices)


def cache_group_size(member_bytes: int, *, threads: int = 1, budget: int | None = None) -> int:
    """Members vmapped together on a CPU so that their step working set stays in cache.

    ``member_bytes`` is ONE member's training state (params, optimizer state, masks); its
    step working set is taken as 4/3 of it (plus the gradients of the params). Where the
    budget holds at least ``threads`` members the group is rounded down to a multiple of
    ``threads`` (the intra-op threads of a device): XLA:CPU then gives each thread whole
    members' matmuls instead of splitting every small matmul between the threads.

    Args:
      member_bytes: one member's state bytes.
      threads: intra-op threads of the device.
      budget: cache bytes the group may use (default: :func:`cpu_cache_budget`).

    >>> cache_group_size(4 * 2**20, budget=8 * 2**20), cache_group_size(2**16, budget=2**20)
    (1, 12)
    >>> cache_group_size(3_200_000, threads=2, budget=24 * 2**20)
    4
    """
    budget = cpu_cache_budget() if budget is None else int(budget)
    working = max(1, int(member_bytes) * 4 // 3)
    group = max(1, budget // working)
    threads = max(1, int(threads))
    return group - group % threads if group >= threads else group
