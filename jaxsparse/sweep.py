"""Populations: many models in one compiled program, sharded over every device.

A *population* is a pytree whose leaves carry a leading member axis: params, optimizer
states, masks, keys and per-member hyperparameters (sparsity target, learning rate, seed,
rewind step, criterion index, ...). Anything that does not change array shapes can vary per
member, as a traced value, so the whole grid compiles once.

The pieces:

* :func:`grid`, :func:`stack_configs`, :func:`init_population` build a population.
* :func:`population_map` runs any pure per-member function over it, in two levels: the
  *outer* layout spreads members over the devices (``jit`` + ``NamedSharding`` over a
  :func:`make_mesh` ``population`` axis by default, or ``jax.pmap`` with
  ``backend="pmap"``; sizes that do not divide the device count are padded, and a
  population can run in fixed-size chunks compiled once); the *inner* strategy says how
  one device runs its share inside the same program: one ``vmap`` (accelerators) or
  cache-sized groups one after another (CPU, where a vmapped population was slower than
  running the members one after another; see ``docs/sweeps.md``).
* :func:`train_population` is the population trainer: ``lax.scan`` over time-major batches
  for every member, with the same outer/inner layout.
* :func:`use_cpu_devices` gives a CPU run one device per core (call before any JAX op).
* :func:`memory_plan` / :func:`check_fits` estimate device memory per member and refuse a
  population that would not fit.
* Multi-host and job arrays live in :mod:`jaxsparse.sweep_io` (``init_distributed``,
  ``task_slice``, ``merge_results``, resumable chunk files), re-exported here.

Shared step clock: a decision such as "prune now?" must depend on a value shared by all
members (the step count, passed with ``in_axes=None``), never on a per-member value. A
``lax.cond`` whose predicate is batched turns into a ``select`` that runs *both* branches on
every step (the mask selection included): measured 14x slower on 8 models.

>>> members = grid(lr=[1e-3, 3e-3], seed=[0, 1])
>>> hp = stack_configs(members, ["lr", "seed"])
>>> f = population_map(lambda lr, x: lr * x, in_axes=(0, None))
>>> f(hp["lr"], 2.0).shape
(4,)
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxsparse import rules as rules_lib
from jaxsparse.sweep_io import (  # noqa: F401 - re-exported: one namespace for sweeps
    format_table,
    init_distributed,
    load_tree,
    merge_results,
    read_results,
    resumable,
    save_tree,
    task_slice,
    write_results,
)
from jaxsparse.typing import PyTree

AxisSpec = int | None | Sequence[int | None]

POPULATION_AXIS = "population"



def _last_level_cache_bytes(default: int = 8 * 2**20) -> int:
    """Size of the CPU's last-level cache (Linux sysfs), ``default`` where unknown.

    ``JAXSPARSE_CPU_CACHE_BYTES`` overrides it (e.g. a per-CCX L3 on a many-core EPYC).
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


# On CPU a group of members steps together (vmapped) while its training state stays in
# cache: groups are sized so that group x (working set per member) stays under this budget,
# half the last-level cache (read once at import; see `cache_group_size`): the rest holds
# the streaming batches, and on a VM other tenants share that cache.
CPU_CACHE_BUDGET_BYTES = _last_level_cache_bytes() // 2


# --------------------------------------------------------------------------- building


def grid(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """The cartesian product of hyperparameter axes, one dict per member (last axis fastest).

    >>> grid(sparsity=[0.5, 0.9], seed=[0, 1])[1]
    {'sparsity': 0.5, 'seed': 1}
    """
    for name, values in axes.items():
        if isinstance(values, str) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"grid axis {name!r} must be a non-empty list, got {values!r}")
    names = list(axes)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes.values())]


def stack_configs(
    configs: Sequence[dict[str, Any]], fields: Sequence[str] | None = None
) -> dict[str, jax.Array]:
    """Per-member hyperparameters as stacked arrays (traced inside the compiled program).

    Floats become float32, ints int32, bools bool. Strings are refused: map them to an index
    first (e.g. ``criterion_index = names.index(cfg["criterion"])``) so the value stays traced.

    Args:
      configs: one dict per member, e.g. from :func:`grid`.
      fields: which keys to stack; all keys of the first config when ``None``.

    Returns:
      ``{field: array of shape (population,)}``.

    >>> stack_configs(grid(lr=[0.1, 0.2]))["lr"].dtype
    dtype('float32')
    """
    if not configs:
        raise ValueError("stack_configs needs at least one config")
    fields = list(configs[0]) if fields is None else list(fields)
    out = {}
    for f in fields:
        missing = [i for i, c in enumerate(configs) if f not in c]
        if missing:
            raise ValueError(f"field {f!r} is missing from configs {missing[:5]}")
        values = [c[f] for c in configs]
        if any(isinstance(v, str) for v in values):
            raise ValueError(
                f"field {f!r} holds strings {sorted(set(map(str, values)))[:5]}: map them to an "
                "integer index so the value can be traced (one compile for the whole grid)"
            )
        arr = np.asarray(values)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        elif arr.dtype.kind in "iu":
            arr = arr.astype(np.int32)
        elif arr.dtype.kind != "b":
            raise ValueError(f"field {f!r} has values of dtype {arr.dtype}; give numbers/bools")
        out[f] = jnp.asarray(arr)
    return out


def member_keys(seeds: Sequence[int] | jax.Array) -> jax.Array:
    """One PRNG key per member from integer seeds (``jax.random.key(seed)`` for each).

    >>> member_keys([0, 1, 2]).shape
    (3,)
    """
    return jax.vmap(jax.random.key)(jnp.asarray(seeds, dtype=jnp.uint32))


def init_population(init_fn: Callable[[jax.Array], PyTree], keys: jax.Array) -> PyTree:
    """``init_fn`` vmapped over one key per member: a population pytree.

    Member ``i`` equals ``init_fn(keys[i])`` exactly (same random bits).

    >>> pop = init_population(lambda k: jax.random.normal(k, (3,)), member_keys([0, 1]))
    >>> pop.shape
    (2, 3)
    """
    return jax.jit(jax.vmap(init_fn))(keys)


def population_size(tree: PyTree, axis: int = 0) -> int:
    """The member count of a population pytree; a clear error if the leaves disagree."""
    fast = {np.shape(x)[axis] for x in jax.tree.leaves(tree) if len(np.shape(x)) > axis}
    if len(fast) == 1 and all(len(np.shape(x)) > axis for x in jax.tree.leaves(tree)):
        return fast.pop()  # the common case, without building leaf paths
    sizes = {}
    for path, leaf in rules_lib.leaves_with_paths(tree):
        shape = np.shape(leaf)
        if len(shape) <= axis:
            raise ValueError(f"leaf {path!r} of shape {shape} has no population axis {axis}")
        sizes.setdefault(shape[axis], path)
    if len(sizes) != 1:
        raise ValueError(f"population leaves disagree on the member count: {sizes}")
    return next(iter(sizes))


def take_member(tree: PyTree, i: int, axis: int = 0) -> PyTree:
    """Member ``i`` of a population pytree (the member axis removed)."""
    return jax.tree.map(lambda a: jnp.take(a, i, axis=axis), tree)


def stack_members(trees: Sequence[PyTree], axis: int = 0) -> PyTree:
    """Stacks single-member pytrees into a population (inverse of :func:`take_member`)."""
    return jax.tree.map(lambda *a: jnp.stack(a, axis=axis), *trees)


# --------------------------------------------------------------------------- sharding


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def use_cpu_devices(count: int | None = None) -> int:
    """One JAX CPU device per core, for populations on a CPU; call before any JAX operation.

    XLA:CPU splits each small matmul of ONE device between the intra-op threads, which
    scales poorly (LeNet-300-100 on 2 cores: 1.5x one core); with a device per core the
    population is sharded over the cores and each runs whole members (measured 1.34–1.39x the
    members run one after another; ``benchmarks/bench_population.py --cpu-devices 2``).
    Sets ``jax_num_cpu_devices``; only the CPU backend is affected (a GPU run is not).

    Leaves the device count alone, and returns it, when the user already chose one
    (``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``, or the config) or when
    JAX has already started its backends (then it is too late to change).

    Args:
      count: devices (default: the cores this process may run on).

    Returns:
      The number of CPU devices JAX will use.
    """
    count = _cores() if count is None else int(count)
    if count < 1:
        raise ValueError(f"use_cpu_devices needs count >= 1, got {count}")
    flags = os.environ.get("XLA_FLAGS", "")
    chosen = getattr(jax.config, "jax_num_cpu_devices", -1)
    if "xla_force_host_platform_device_count" in flags or chosen not in (-1, None):
        return len(jax.local_devices(backend="cpu"))
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # backends already initialised: keep what there is
        return len(jax.local_devices(backend="cpu"))
    return count


def make_mesh(
    devices: Sequence[Any] | None = None,
    *,
    axis_name: str = POPULATION_AXIS,
    axis_type: str = "auto",
) -> Mesh:
    """A 1-d ``Mesh`` over ``devices`` (all devices, over every host) named ``population``.

    The axis type is given explicitly where the jax version has ``jax.sharding.AxisType``
    (jax >= 0.5; a plain ``Mesh`` otherwise). ``"auto"`` is the default because results
    sharded over an ``Explicit`` axis refuse plain indexing (``pop[3]`` needs an
    ``out_sharding``); ``"explicit"`` gives sharding-in-types and the same numbers.

    >>> make_mesh().axis_names
    ('population',)
    """
    if axis_type not in ("auto", "explicit"):
        raise ValueError(f"axis_type must be 'auto' or 'explicit', got {axis_type!r}")
    devices = list(jax.devices() if devices is None else devices)
    types = getattr(jax.sharding, "AxisType", None)
    if types is not None and hasattr(jax, "make_mesh"):
        kind = types.Explicit if axis_type == "explicit" else types.Auto
        try:
            return jax.make_mesh((len(devices),), (axis_name,), axis_types=(kind,), devices=devices)
        except TypeError:  # make_mesh without axis_types/devices keywords
            pass
    if axis_type == "explicit":
        raise ValueError("this jax version has no explicit mesh axes; use axis_type='auto'")
    return Mesh(np.asarray(devices), (axis_name,))


@functools.lru_cache(maxsize=1)
def _default_mesh() -> Mesh:
    return make_mesh()


@functools.lru_cache(maxsize=64)
def _sub_mesh(mesh: Mesh, size: int) -> Mesh:
    return make_mesh(list(mesh.devices.flat[:size]), axis_name=mesh.axis_names[0],
                     axis_type="explicit" if _is_explicit(mesh) else "auto")


def _is_explicit(mesh: Mesh) -> bool:
    return any(str(t).endswith("Explicit") for t in getattr(mesh, "axis_types", ()) or ())


def _mesh_context(mesh: Mesh):
    """Context that makes ``mesh`` current (needed by Explicit axes); a no-op where absent."""
    for owner, name in ((jax, "set_mesh"), (jax.sharding, "use_mesh")):
        if hasattr(owner, name):
            return getattr(owner, name)(mesh)
    import contextlib

    return contextlib.nullcontext()


def _put(leaf: Any, sharding: NamedSharding, lazy: bool = False) -> jax.Array:
    current = getattr(leaf, "sharding", None) if lazy else None
    if current is not None and current.is_equivalent_to(sharding, leaf.ndim):
        return leaf  # already laid out: skip device_put (per-call Python overhead)
    if jax.process_count() == 1:
        return jax.device_put(leaf, sharding)
    # Multi-host: every process holds the whole (small) host value; each device takes its part.
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def shard_population(
    tree: PyTree, mesh: Mesh | None = None, *, axis: int = 0, _lazy: bool = False
) -> PyTree:
    """Lays the member axis of every leaf out over the mesh's ``population`` axis.

    The member count must be a multiple of the device count (see :func:`pad_population`).

    >>> pop = shard_population(jnp.zeros((4, 3)))
    >>> pop.sharding.spec[0]
    'population'
    """
    mesh = make_mesh() if mesh is None else mesh
    if not jax.tree.leaves(tree):  # e.g. an empty model_state: nothing to lay out
        return tree
    name = mesh.axis_names[0]
    n = population_size(tree, axis)
    if n % mesh.size:
        raise ValueError(
            f"population of {n} does not divide over {mesh.size} devices: pad it first "
            "(pad_population) or use population_map, which pads for you"
        )
    spec = PartitionSpec(*([None] * axis), name)
    sharding = NamedSharding(mesh, spec)
    return jax.tree.map(lambda a: _put(a, sharding, _lazy), tree)


def pad_population(tree: PyTree, size: int, *, axis: int = 0) -> PyTree:
    """Pads the member axis to ``size`` by repeating the last member (finite, never NaN)."""
    if not jax.tree.leaves(tree):  # e.g. an empty model_state: nothing to pad
        return tree
    n = population_size(tree, axis)
    if size < n:
        raise ValueError(f"cannot pad a population of {n} down to {size}")
    if size == n:
        return tree
    return _padder(size, axis, None)(tree)


@functools.lru_cache(maxsize=256)
def _padder(size: int, axis: int, sharding: NamedSharding | None) -> Callable:
    # ONE compiled program pads a whole pytree (and lays it out when given a sharding):
    # eager concatenates of sharded leaves compile a program per leaf shape and dispatch
    # one op per leaf, which dominated small populations' runs.
    def pad(tree):
        def one(a):
            n = a.shape[axis]
            last = jax.lax.slice_in_dim(a, n - 1, n, axis=axis)
            shape = a.shape[:axis] + (size - n,) + a.shape[axis + 1 :]
            return jnp.concatenate([a, jnp.broadcast_to(last, shape)], axis=axis)

        return jax.tree.map(one, tree)

    return jax.jit(pad, out_shardings=sharding)


@functools.lru_cache(maxsize=256)
def _unpadder(size: int, axis: int, sharding: NamedSharding | None) -> Callable:
    # Drops padded members in one compiled program. On a mesh the result is replicated
    # (its member count no longer divides the devices); pinning that layout also keeps jax
    # 0.7 from sharding a typed key's hidden trailing dim, which it then refuses to read.
    def keep(tree):
        return jax.tree.map(lambda a: jax.lax.slice_in_dim(a, 0, size, 1, axis), tree)

    return jax.jit(keep, out_shardings=sharding)


# --------------------------------------------------------------------------- running


def _axes(in_axes: AxisSpec, n: int) -> tuple[int | None, ...]:
    if in_axes is None or isinstance(in_axes, int):
        return (in_axes,) * n
    in_axes = tuple(in_axes)
    if len(in_axes) != n:
        raise ValueError(f"in_axes has {len(in_axes)} entries for {n} arguments")
    return in_axes


def _size_of(args: tuple, axes: tuple[int | None, ...]) -> int:
    # A leafless argument (e.g. an empty model_state dict) carries no member count.
    sizes = {population_size(a, ax) for a, ax in zip(args, axes, strict=True)
             if ax is not None and jax.tree.leaves(a)}
    if not sizes:
        raise ValueError("no argument has a population axis (every in_axes entry is None)")
    if len(sizes) != 1:
        raise ValueError(f"arguments disagree on the population size: {sorted(sizes)}")
    return sizes.pop()


@functools.partial(jax.jit, static_argnums=(1, 3))
def _slice(args: tuple, axes: tuple, start: jax.Array, size: int) -> tuple:
    # One compiled slice for every chunk (start is traced).
    return tuple(
        a if ax is None else jax.tree.map(
            lambda x, ax=ax: jax.lax.dynamic_slice_in_dim(x, start, size, ax), a)
        for a, ax in zip(args, axes, strict=True)
    )


@dataclasses.dataclass(frozen=True)
class _Layout:
    size: int  # real members
    chunk: int  # members per compiled call (a multiple of the device count)
    num_chunks: int


def _layout(size: int, chunk_size: int | None, devices: int) -> _Layout:
    chunk = size if chunk_size is None else max(1, min(int(chunk_size), size))
    chunk = -(-chunk // devices) * devices
    return _Layout(size, chunk, -(-size // chunk))


INNER_STRATEGIES = ("auto", "vmap", "map")


def cache_group_size(member_bytes: int, *, threads: int = 1, budget: int | None = None) -> int:
    """Members vmapped together on a CPU so that their step working set stays in cache.

    ``member_bytes`` is ONE member's training state (params, optimizer state, masks); its
    step working set is taken as 4/3 of it (plus the gradients of the params). Where the
    budget holds at least ``threads`` members the group is rounded down to a multiple of
    ``threads`` (the intra-op threads of a device): XLA:CPU then gives each thread whole
    members' matmuls instead of splitting every small matmul between the threads.

    >>> cache_group_size(4 * 2**20, budget=8 * 2**20), cache_group_size(2**16, budget=2**20)
    (1, 12)
    >>> cache_group_size(3_200_000, threads=2, budget=24 * 2**20)
    4
    """
    budget = CPU_CACHE_BUDGET_BYTES if budget is None else int(budget)
    working = max(1, int(member_bytes) * 4 // 3)
    group = max(1, budget // working)
    threads = max(1, int(threads))
    return group - group % threads if group >= threads else group


def _cpu_threads_and_budget() -> tuple[int, int]:
    """Intra-op threads per CPU device and its share of the cache budget.

    The CPU devices of one process (``--xla_force_host_platform_device_count``) run at the
    same time and share the cores and the last-level cache.
    """
    cpu_devices = max(1, len(jax.local_devices(backend="cpu")))
    return max(1, _cores() // cpu_devices), max(1, CPU_CACHE_BUDGET_BYTES // cpu_devices)


def _platform(backend: str, mesh: Mesh | None) -> str:
    if backend == "sharding" and mesh is not None:
        return mesh.devices.flat[0].platform
    if backend == "pmap":
        return jax.local_devices()[0].platform
    return jax.default_backend()


def _group(inner: str, inner_chunk: int | None, platform: str, member_bytes: int) -> int | None:
    """Members per vmapped group inside one device's program (``None``: all of them)."""
    if inner == "vmap" or (inner == "auto" and platform != "cpu"):
        return None
    if inner_chunk is not None:
        return max(1, int(inner_chunk))
    if inner == "map":
        return 1
    threads, budget = _cpu_threads_and_budget()
    return cache_group_size(member_bytes, threads=threads, budget=budget)


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def _device_program(fn: Callable, axes: tuple, out_axes: int, group: int | None) -> Callable:
    """What ONE device runs over its members: groups of vmapped members one after another.

    A group of one member runs the unbatched ``fn`` (plain matmuls); a group holding every
    member is a plain ``vmap``. The groups run one after another inside the same compiled
    program (no dispatch per member), each group's state staying in cache while it steps.
    When ``fn`` maps a state to a new state of the same shapes (its first output is shaped
    like its first argument: a training chunk), the groups run in a ``fori_loop`` that carries
    that state and writes each group's result back in place, reading the next group from the
    carry — no second state buffer, no zero-filled stacked outputs (what ``lax.map`` costs);
    otherwise ``lax.map`` over the groups.
    """

    def index(a, i, ax):
        return jax.lax.dynamic_index_in_dim(a, i, ax, False)

    def run(*args):
        n = _size_of(args, axes)
        g = n if group is None else _largest_divisor(n, group)

        def take(j, source):
            if g == 1:
                return tuple(
                    a if ax is None else jax.tree.map(lambda x, ax=ax: index(x, j, ax), a)
                    for a, ax in zip(source, axes, strict=True)
                )
            return tuple(
                a if ax is None else jax.tree.map(
                    lambda x, ax=ax: jax.lax.dynamic_slice_in_dim(x, j * g, g, ax), a)
                for a, ax in zip(source, axes, strict=True)
            )

        def one_group(j, source=args):
            part = take(j, source)
            return fn(*part) if g == 1 else jax.vmap(fn, in_axes=axes)(*part)

        if g == n and n > 1:
            return jax.vmap(fn, in_axes=axes, out_axes=out_axes)(*args)
        if n == 1:
            out = jax.tree.map(lambda o: o[None], one_group(0))
            return jax.tree.map(lambda o: jnp.moveaxis(o, 0, out_axes), out)
        shapes = jax.eval_shape(lambda: one_group(0))
        if _carries_state(shapes, args, axes, out_axes, g):
            return _in_place_groups(one_group, shapes, args, n, g)
        out = jax.lax.map(one_group, jnp.arange(n // g))
        out = jax.tree.map(lambda o: o.reshape((n,) + o.shape[1 if g == 1 else 2 :]), out)
        return jax.tree.map(lambda o: jnp.moveaxis(o, 0, out_axes), out)

    return run


def _carries_state(shapes, args, axes, out_axes, g) -> bool:
    """Is the group's first output shaped like the group's first argument (a state)?"""
    if out_axes != 0 or axes[0] != 0 or type(shapes) is not tuple or len(shapes) < 1:
        return False
    state = args[0]
    if jax.tree.structure(shapes[0]) != jax.tree.structure(state):
        return False
    for s, a in zip(jax.tree.leaves(shapes[0]), jax.tree.leaves(state), strict=True):
        want = a.shape[1:] if g == 1 else (g,) + a.shape[1:]
        if s.shape != want or s.dtype != a.dtype:
            return False
    return True


def _in_place_groups(one_group, shapes, args, n: int, g: int):
    """``fori_loop`` over groups: the state is the carry, updated in place group by group."""

    def write(buf, v, start):
        if g == 1:
            return jax.lax.dynamic_update_index_in_dim(buf, v, start, 0)
        return jax.lax.dynamic_update_slice_in_dim(buf, v, start, 0)

    rest0 = jax.tree.map(lambda s: jnp.zeros((n,) + s.shape[1 if g > 1 else 0:], s.dtype),
                         shapes[1:])

    def body(j, carry):
        state, rest = carry
        out = one_group(j, (state,) + args[1:])
        start = j * g
        state = jax.tree.map(lambda b, v: write(b, v, start), state, out[0])
        rest = jax.tree.map(lambda b, v: write(b, v, start), rest, tuple(out[1:]))
        return state, rest

    state, rest = jax.lax.fori_loop(0, n // g, body, (args[0], rest0))
    return (state, *rest)


def _shard_map(f: Callable, mesh: Mesh, in_specs: tuple, out_specs: Any) -> Callable:
    # jax.shard_map (jax >= 0.6) or the experimental one (older); no replication checks:
    # the members are independent, nothing is communicated.
    if hasattr(jax, "shard_map"):
        return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                             check_vma=False)
    from jax.experimental.shard_map import shard_map

    return shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


def population_map(
    fn: Callable[..., Any],
    *,
    in_axes: AxisSpec = 0,
    out_axes: int = 0,
    mesh: Mesh | None = None,
    backend: str = "sharding",
    chunk_size: int | None = None,
    inner: str = "auto",
    inner_chunk: int | None = None,
    _program: Callable[[int | None], Callable] | None = None,
    _donate: tuple[int, ...] = (),
) -> Callable[..., Any]:
    """Runs a pure per-member function over a population, sharded over the devices.

    Two levels: the *outer* layout spreads the members over the devices (``backend``); the
    *inner* strategy says how one device runs its share, inside the same compiled program:
    ``"vmap"`` batches all of them (what fills a GPU/TPU), ``"map"`` runs groups of
    ``inner_chunk`` members (default 1) one after another with ``lax.map``, each group
    vmapped (what a CPU wants: a member's state stays in cache, matmuls stay plain).
    ``"auto"`` picks ``"vmap"`` on accelerators and ``"map"`` on CPU, with groups sized so
    that a group's training state fits :data:`CPU_CACHE_BUDGET_BYTES` (a small model's
    replicates then stay one plain vmap). See ``docs/sweeps.md`` for the measurements.

    Args:
      fn: ``fn(*member_args) -> outputs`` for ONE member (unbatched).
      in_axes: member axis of each positional argument (``None`` = shared by all members,
        e.g. the step clock or a batch every member sees).
      out_axes: member axis of every output leaf.
      mesh: a mesh from :func:`make_mesh` (default: all devices); its first axis is used.
      backend: ``"sharding"`` (``jit`` + ``NamedSharding``, the default; ``shard_map`` for
        the ``"map"`` inner strategy), ``"pmap"`` (single host) or ``"vmap"`` (one device).
      chunk_size: members per compiled call; ``None`` runs the whole population at once.
        Rounded up to a multiple of the device count; the last chunk is padded.
      inner: ``"auto"``, ``"vmap"`` or ``"map"`` (see above).
      inner_chunk: members per vmapped group for ``"map"``; on CPU ``"auto"`` derives it
        from the bytes of one member's mapped arguments (:func:`cache_group_size`).

    Returns:
      ``g(*args)`` with the per-member outputs stacked along ``out_axes``; the function is
      compiled once per chunk shape (once in all).

    >>> g = population_map(lambda w, x: w @ x, in_axes=(0, None))
    >>> g(jnp.ones((6, 2, 3)), jnp.ones(3)).shape
    (6, 2)
    """
    if backend not in ("sharding", "pmap", "vmap"):
        raise ValueError(f"backend must be 'sharding', 'pmap' or 'vmap', got {backend!r}")
    if inner not in INNER_STRATEGIES:
        raise ValueError(f"inner must be one of {INNER_STRATEGIES}, got {inner!r}")
    compiled: dict[tuple, Callable] = {}

    layouts: dict[tuple, tuple] = {}  # per argument signature: the call's layout

    def plan_call(args, axes):
        size = _size_of(args, axes)
        the_mesh = None
        if backend == "vmap":
            devices = 1
        elif backend == "pmap":
            devices = jax.local_device_count()
        else:
            the_mesh = _default_mesh() if mesh is None else mesh
            if size < the_mesh.size and len(the_mesh.axis_names) == 1 \
                    and jax.process_count() == 1:
                # Fewer members than devices: the first `size` devices, no padded members
                # (a padded member costs as much as a real one).
                the_mesh = _sub_mesh(the_mesh, size)
            devices = the_mesh.size
        lay = _layout(size, chunk_size, devices)
        per_device = lay.chunk // devices
        mapped = [a for a, ax in zip(args, axes, strict=True) if ax is not None]
        group = _group(inner, inner_chunk, _platform(backend, the_mesh),
                       _tree_bytes(mapped) // size)
        # A plain vmap (GSPMD-partitioned under "sharding") when one group holds a device's
        # members; the per-device program otherwise (a lone member runs unbatched).
        # (`_program(group)`, when given, is the caller's own per-device program.)
        plain = _program is None and per_device > 1 and (group is None or group >= per_device)
        return size, the_mesh, devices, lay, group, plain

    def call(*args):
        axes = _axes(in_axes, len(args))
        sig = (axes, _signature(args))
        if sig not in layouts:  # (keyed on the mesh too: `_default_mesh` is cached)
            layouts[sig] = plan_call(args, axes)
        size, the_mesh, devices, lay, group, plain = layouts[sig]
        key = (axes, plain, group, devices)
        if key not in compiled:
            if plain:
                prog = jax.vmap(fn, in_axes=axes, out_axes=out_axes)
            elif _program is not None:
                prog = _program(group)
            else:
                prog = _device_program(fn, axes, out_axes, group)
            if backend == "pmap":
                compiled[key] = jax.pmap(prog, in_axes=axes, out_axes=out_axes,
                                         donate_argnums=_donate)
            elif backend == "sharding" and not plain and devices > 1:
                name = the_mesh.axis_names[0]
                specs = tuple(PartitionSpec() if ax is None
                              else PartitionSpec(*([None] * ax), name) for ax in axes)
                out_spec = PartitionSpec(*([None] * out_axes), name)
                compiled[key] = jax.jit(_shard_map(prog, the_mesh, specs, out_spec),
                                        donate_argnums=_donate)
            elif backend == "sharding" and devices > 1:
                # Pin the outputs' layout to the member axis (the inputs' layout) rather than
                # leaving it to GSPMD, so the next call's inputs are already in place.
                name = the_mesh.axis_names[0]
                out_sharding = NamedSharding(the_mesh, PartitionSpec(*([None] * out_axes), name))
                compiled[key] = jax.jit(prog, out_shardings=out_sharding,
                                        donate_argnums=_donate)
            else:
                compiled[key] = jax.jit(prog, donate_argnums=_donate)
        run = compiled[key]
        total = lay.chunk * lay.num_chunks
        lay_out = None  # where padded inputs go at once (one chunk on a mesh)
        if backend == "sharding" and lay.num_chunks == 1:
            lay_out = lambda ax: NamedSharding(  # noqa: E731
                the_mesh, PartitionSpec(*([None] * ax), the_mesh.axis_names[0]))
        padded = args if total == size else tuple(
            a if ax is None or not jax.tree.leaves(a)
            else _padder(total, ax, None if lay_out is None else lay_out(ax))(a)
            for a, ax in zip(args, axes, strict=True)
        )
        outs = []
        for c in range(lay.num_chunks):
            part = padded
            if lay.num_chunks > 1:  # no copy of the inputs when one call takes them all
                part = _slice(padded, axes, jnp.int32(c * lay.chunk), lay.chunk)
            if backend == "sharding":
                part = tuple(
                    a if ax is None else shard_population(a, the_mesh, axis=ax, _lazy=True)
                    for a, ax in zip(part, axes, strict=True)
                )
                if _is_explicit(the_mesh):  # the context makes jit leave its fast C++ path
                    with _mesh_context(the_mesh):
                        outs.append(run(*part))
                else:
                    outs.append(run(*part))
            elif backend == "pmap":
                outs.append(_pmap_call(run, part, axes, devices, out_axes))
            else:
                outs.append(run(*part))
        if len(outs) == 1:
            out = outs[0]
        else:
            out = jax.tree.map(lambda *o: jnp.concatenate(o, axis=out_axes), *outs)
        if total != size:
            replicated = None
            if backend == "sharding":
                replicated = NamedSharding(the_mesh, PartitionSpec())
            out = _unpadder(size, out_axes, replicated)(out)
        return out

    call.compiled = compiled  # the jitted/pmapped functions, keyed by layout (for tests)
    return call


def _pmap_call(run, part, axes, devices, out_axes):
    def split(a, ax):
        return a.reshape(a.shape[:ax] + (devices, a.shape[ax] // devices) + a.shape[ax + 1 :])

    part = tuple(
        a if ax is None else jax.tree.map(lambda x, ax=ax: split(x, ax), a)
        for a, ax in zip(part, axes, strict=True)
    )
    out = run(*part)
    k = out_axes
    return jax.tree.map(lambda o: o.reshape(o.shape[:k] + (-1,) + o.shape[k + 2 :]), out)


def train_population(
    step_fn: Callable[[PyTree, PyTree], tuple[PyTree, PyTree]],
    state: PyTree,
    batches: PyTree,
    *,
    hparams: PyTree | None = None,
    shared_batches: bool = False,
    mesh: Mesh | None = None,
    backend: str = "sharding",
    chunk_size: int | str | None = "auto",
    inner: str = "auto",
    inner_chunk: int | None = None,
    donate: bool = False,
) -> tuple[PyTree, PyTree]:
    """Trains a population: ``lax.scan`` over time of ``step_fn``, for every member.

    Args:
      step_fn: ``step(state, batch) -> (state, metrics)`` for one member, or
        ``step(state, batch, hparams)`` when ``hparams`` is given.
      state: population state (leading member axis).
      batches: time-major batches ``[T, P, ...]`` (one data order per member) or ``[T, ...]``
        with ``shared_batches=True`` (every member sees the same batch).
      hparams: per-member hyperparameters (leading member axis), traced.
      chunk_size: members per compiled call; ``"auto"`` takes as many as fit the device
        memory (:func:`memory_plan`), ``None`` all at once.
      inner: how a device runs its members (:func:`population_map`): ``"auto"`` is a plain
        vmap on accelerators and, on CPU, ``lax.map`` over cache-sized groups.
      inner_chunk: members per group for ``"map"``; default on CPU: from ONE member's
        state bytes and the device's threads (:func:`cache_group_size`; 2 for
        LeNet-300-100 with Adam on a 2-core CPU with a 32 MiB last-level cache).
      donate: donate ``state`` to the call (its buffers become the output's: half the
        state memory; ``state`` must not be used afterwards).

    Returns:
      ``(state, metrics)``; metrics are ``[P, T, ...]``.

    >>> step = lambda w, x: (w + x, w.sum())
    >>> w, m = train_population(step, jnp.zeros((3, 2)), jnp.ones((5, 3, 2)))
    >>> w[0].tolist(), m.shape
    ([5.0, 5.0], (3, 5))
    """
    with_hp = hparams is not None
    axes = (0, None if shared_batches else 1) + ((0,) if with_hp else ())
    args = (state, batches) + ((hparams,) if with_hp else ())
    sig = _signature(args)
    options = (step_fn, axes, sig, mesh, backend, chunk_size, inner, inner_chunk)
    if options not in _TRAIN_LAYOUTS:  # sizes planned once per signature (Python overhead)
        chunk = chunk_size
        if chunk == "auto":
            chunk = _auto_chunk(step_fn, args, axes, shared_batches, sig)
        group = inner_chunk
        if group is None and inner != "vmap":
            # CPU groups from the member's STATE: it stays in cache while its batches stream
            # through (a size from the batches' bytes would be far too small). On an
            # accelerator population_map ignores it under "auto".
            group = _group(inner, None, "cpu", _tree_bytes(state) // population_size(state))
        _TRAIN_LAYOUTS[options] = (chunk, group)
    chunk, group = _TRAIN_LAYOUTS[options]
    run = _trainer(step_fn, with_hp, axes, mesh, backend, chunk, inner, group, bool(donate))
    return run(*args)


_TRAIN_LAYOUTS: dict[tuple, tuple] = {}


@functools.lru_cache(maxsize=64)
def _trainer(step_fn, with_hp, axes, mesh, backend, chunk_size, inner, inner_chunk, donate):
    # Cached so that calling train_population again reuses the compiled program.
    def member(s, b, hp=None):
        body = (lambda c, x: step_fn(c, x, hp)) if with_hp else step_fn
        return jax.lax.scan(body, s, b)

    def program(group):
        return _train_program(step_fn, with_hp, shared=axes[1] is None, group=group)

    return population_map(member, in_axes=axes, mesh=mesh, backend=backend,
                          chunk_size=chunk_size, inner=inner, inner_chunk=inner_chunk,
                          _program=program, _donate=(0,) if donate else ())


def _train_program(step_fn, with_hp: bool, *, shared: bool, group: int | None) -> Callable:
    """What ONE device runs to train its block of members (state ``[n, ...]``).

    Time-major batches ``[T, n, ...]`` (``[T, ...]`` when shared) are read in place, step
    by step. ``group=None`` (or a group holding the block) is one ``lax.scan`` of the
    vmapped step. Smaller groups run one after another in a ``fori_loop`` that carries the
    block's state and writes each group's result back in place: a group's state stays in
    cache for all its steps, and no stacked output buffer is zeroed and copied (what
    ``lax.map`` costs). A group of one runs the unbatched step (plain matmuls).
    """

    def index(a, i, axis=0):
        return jax.lax.dynamic_index_in_dim(a, i, axis, keepdims=False)

    def take(tree, start, size):
        if size == 1:
            return jax.tree.map(lambda a: index(a, start), tree)
        return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, size, 0), tree)

    def run_group(state_g, batches, hp_g, start, size):
        """``size`` members from ``start``: state, metrics ``[T, size, ...]`` (unbatched if 1)."""
        call = (lambda c, x, h: step_fn(c, x, h)) if with_hp else (lambda c, x, h: step_fn(c, x))
        if size > 1:
            call = jax.vmap(call, in_axes=(0, 0, 0 if with_hp else None))

        def body(c, t):
            x = jax.tree.map(lambda a: index(a, t), batches)
            if not shared:
                x = take(x, start, size)
            elif size > 1:
                # A shared batch broadcast to the group: batched matmuls over [g, B, ...]
                # rather than x against the stacked weights, which XLA:CPU transposes
                # (copies) every step.
                x = jax.tree.map(lambda a: jnp.broadcast_to(a, (size,) + a.shape), x)
            return call(c, x, hp_g)

        steps = jax.tree.leaves(batches)[0].shape[0]
        return jax.lax.scan(body, state_g, jnp.arange(steps))

    def run(state, batches, hp=None):
        n = population_size(state)
        g = n if group is None else _largest_divisor(n, group)
        if g == n:
            if n == 1:  # unbatched
                out = run_group(take(state, 0, 1), batches,
                                None if hp is None else take(hp, 0, 1), 0, 1)
                return jax.tree.map(lambda a: a[None], out)
            out, metrics = run_group(state, batches, hp, 0, n)
            return out, jax.tree.map(lambda m: jnp.moveaxis(m, 0, 1), metrics)

        def shape_of_metrics():
            one = take(state, 0, 1)
            h = None if hp is None else take(hp, 0, 1)
            x = jax.tree.map(lambda a: index(a, 0), batches)
            if not shared:
                x = take(x, 0, 1)
            args = (one, x, h) if with_hp else (one, x)
            return jax.eval_shape(step_fn, *args)[1]

        steps = jax.tree.leaves(batches)[0].shape[0]
        metrics0 = jax.tree.map(lambda m: jnp.zeros((n, steps) + m.shape, m.dtype),
                                shape_of_metrics())

        def one_group(j, carry):
            state, metrics = carry
            start = j * g
            out, m = run_group(take(state, start, g), batches,
                               None if hp is None else take(hp, start, g), start, g)
            if g == 1:  # out and m ([T, ...]) are the one member's
                write = lambda a, v: jax.lax.dynamic_update_index_in_dim(a, v, start, 0)  # noqa: E731
            else:
                write = lambda a, v: jax.lax.dynamic_update_slice_in_dim(a, v, start, 0)  # noqa: E731
                m = jax.tree.map(lambda v: jnp.moveaxis(v, 0, 1), m)  # [g, T, ...]
            return jax.tree.map(write, state, out), jax.tree.map(write, metrics, m)

        return jax.lax.fori_loop(0, n // g, one_group, (state, metrics0))

    return run


_PLANS: dict[tuple, int] = {}


def _signature(args: Any) -> tuple:
    """Tree structure, shapes and dtypes of ``args``: what a layout or plan depends on."""
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple((np.shape(x), getattr(x, "dtype", type(x))) for x in leaves)


def _auto_chunk(step_fn, args, axes, shared_batches, sig=None) -> int:
    state, batches = args[0], args[1]
    signature = (step_fn, axes, _signature(args) if sig is None else sig)
    if signature not in _PLANS:
        # Plan on ONE step (a cheap compile) plus the member's share of the batches.
        step_axes = (0, None if shared_batches else 0) + axes[2:]
        first = jax.tree.map(lambda b: b[0], batches)
        step_only = (lambda s, b, hp: step_fn(s, b, hp)) if len(args) > 2 else step_fn
        plan = memory_plan(step_only, state, first, *args[2:], in_axes=step_axes)
        size = _size_of(args, axes)
        if not shared_batches:
            extra = _tree_bytes(batches) // size
            plan = dataclasses.replace(plan, bytes_per_member=plan.bytes_per_member + extra)
        _PLANS[signature] = auto_chunk_size(plan, size)
    return _PLANS[signature]


# --------------------------------------------------------------------------- memory plan


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Device memory estimate for a population (bytes)."""

    bytes_per_member: int
    fixed_bytes: int
    device_bytes: int
    devices: int
    source: str  # "compiled" (XLA memory analysis) or "estimate" (byte count)

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
    """Usable memory of one device: the allocator limit, or host RAM shared by CPU devices."""
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
        return jax.ShapeDtypeStruct(tuple(shape), jax.numpy.result_type(x))

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


def _tree_bytes(tree: PyTree) -> int:
    def nbytes(x):
        dtype = getattr(x, "dtype", None)
        if isinstance(dtype, np.dtype):  # fast path: plain arrays (not PRNG keys)
            return int(np.prod(np.shape(x))) * dtype.itemsize
        dtype = jnp.result_type(x)
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            return 8 * int(np.prod(np.shape(x)))  # threefry: two uint32 words per key
        return int(np.prod(np.shape(x))) * dtype.itemsize

    return sum(nbytes(x) for x in jax.tree.leaves(tree))


def memory_plan(
    fn: Callable[..., Any],
    *args: Any,
    in_axes: AxisSpec = 0,
    devices: int | None = None,
    device_bytes: int | None = None,
    headroom: float = 0.9,
) -> MemoryPlan:
    """Estimates device memory per member for ``population_map(fn)(*args)``.

    Compiles the vmapped function for populations of 1 and 2 (shapes only, nothing runs) and
    reads XLA's memory analysis (arguments + outputs + temporaries); the difference is the
    cost of a member, the rest is fixed. Without a memory analysis it falls back to a byte
    count: 3x the member's argument bytes (arguments, outputs, temporaries).

    Args:
      fn, args, in_axes: as for :func:`population_map`.
      devices: devices the population spreads over (default: all).
      device_bytes: memory per device (default: :func:`device_memory_bytes`).
      headroom: fraction of the device memory the plan may use.
    """
    axes = _axes(in_axes, len(args))
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
        per, fixed, source = 3 * _tree_bytes(mapped), _tree_bytes(shared), "estimate"
    total = device_memory_bytes() if device_bytes is None else int(device_bytes)
    return MemoryPlan(
        bytes_per_member=int(per),
        fixed_bytes=int(fixed),
        device_bytes=int(total * headroom),
        devices=jax.device_count() if devices is None else int(devices),
        source=source,
    )


def check_fits(plan: MemoryPlan, population: int, chunk_size: int | None = None) -> None:
    """Raises :class:`PopulationTooLarge` (with the numbers) if a chunk would not fit."""
    members = population if chunk_size is None else min(population, chunk_size)
    per_device = -(-members // plan.devices)
    need = plan.fixed_bytes + per_device * plan.bytes_per_member
    if need > plan.device_bytes:
        raise PopulationTooLarge(
            f"a population of {members} needs ~{need / 2**30:.2f} GiB per device "
            f"({per_device} members x {plan.bytes_per_member / 2**20:.1f} MiB + "
            f"{plan.fixed_bytes / 2**20:.1f} MiB fixed) but only "
            f"{plan.device_bytes / 2**30:.2f} GiB are available; at most "
            f"{plan.max_population} members fit at once: pass chunk_size<="
            f"{max(1, plan.max_population)} or use more devices"
        )


def auto_chunk_size(plan: MemoryPlan, population: int, *, state_bytes: int | None = None) -> int:
    """Members per compiled call: as many as fit the device memory (refuses if none fits).

    How a device then runs its members (one vmap, or cache-sized groups one after another
    on CPU) is the inner strategy of :func:`population_map`, inside the same program.

    Args:
      plan: from :func:`memory_plan`.
      population: member count.
      state_bytes: unused; kept for compatibility.
    """
    del state_bytes
    check_fits(plan, population, chunk_size=max(1, min(population, plan.max_population)))
    return max(1, min(population, plan.max_population))
