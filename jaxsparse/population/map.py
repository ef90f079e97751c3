"""The population map: any pure per-member function over a population, sharded over devices.

Two levels: the *outer* layout spreads the members over the devices (``jit`` +
``NamedSharding`` over a ``population`` mesh axis, or ``jax.pmap``; sizes that do not divide
the device count are padded, and a population can run in fixed-size chunks compiled once);
the *inner* strategy says how one device runs its share inside the same program: one
``vmap`` (accelerators) or cache-sized groups one after another (CPU, where a vmapped
population was slower than running the members one after another; ``docs/sweeps.md``).

Shared step clock: a decision such as "prune now?" must depend on a value shared by all
members (the step count, passed with ``in_axes=None``), never on a per-member value. A
``lax.cond`` whose predicate is batched turns into a ``select`` that runs *both* branches on
every step (the mask selection included): measured 14x slower on 8 models.

>>> f = population_map(lambda lr, x: lr * x, in_axes=(0, None))
>>> f(jnp.asarray([1.0, 2.0, 3.0]), 2.0).tolist()
[2.0, 4.0, 6.0]
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxsparse.population.build import (
    AxisSpec,
    args_population_size,
    in_axes_tuple,
    pad_population,
    unpad_population,
)
from jaxsparse.population.memory import cache_group_size, cpu_device_share, tree_bytes
from jaxsparse.population.mesh import (
    is_explicit,
    make_mesh,
    member_sharding,
    mesh_context,
    shard_population,
    sub_mesh,
)
from jaxsparse.typing import PyTree

Backend = Literal["sharding", "pmap", "vmap"]
Inner = Literal["auto", "vmap", "map"]
BACKENDS: tuple[Backend, ...] = ("sharding", "pmap", "vmap")
INNER_STRATEGIES: tuple[Inner, ...] = ("auto", "vmap", "map")


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one call of a :class:`PopulationMap` runs, planned once per argument signature.

    Attributes:
      size: real members.
      chunk: members per compiled call (a multiple of ``devices``).
      num_chunks: compiled calls (the last one padded).
      devices: devices the members are spread over.
      group: members per vmapped group inside one device's program (``None``: all).
      plain: whether the program is a plain ``vmap`` (one group holds a device's members).
      mesh: the mesh of ``backend="sharding"`` (``None`` otherwise).
    """

    size: int
    chunk: int
    num_chunks: int
    devices: int
    group: int | None
    plain: bool
    mesh: Mesh | None


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of ``n`` that is at most ``at_most``.

    >>> largest_divisor(12, 5), largest_divisor(7, 3)
    (4, 1)
    """
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def inner_group(inner: Inner, inner_chunk: int | None, platform: str,
                member_bytes: int) -> int | None:
    """Members per vmapped group inside one device's program (``None``: all of them).

    ``"vmap"`` (and ``"auto"`` off CPU) is one group; ``inner_chunk`` when given; ``"map"``
    defaults to 1; ``"auto"`` on CPU is :func:`~jaxsparse.population.cache_group_size` of one
    member's bytes with this device's share of the threads and the cache.

    >>> inner_group("auto", None, "gpu", 10**9) is None, inner_group("map", None, "gpu", 10)
    (True, 1)
    """
    if inner == "vmap" or (inner == "auto" and platform != "cpu"):
        return None
    if inner_chunk is not None:
        return max(1, int(inner_chunk))
    if inner == "map":
        return 1
    threads, budget = cpu_device_share()
    return cache_group_size(member_bytes, threads=threads, budget=budget)


def _signature(args: Any) -> tuple:
    """Tree structure, shapes and dtypes of ``args``: what a layout depends on."""
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple((np.shape(x), getattr(x, "dtype", type(x))) for x in leaves)


@functools.partial(jax.jit, static_argnums=(1, 3))
def _slice(args: tuple, axes: tuple, start: jax.Array, size: int) -> tuple:
    # One compiled slice for every chunk (start is traced).
    return tuple(
        a if ax is None else jax.tree.map(
            lambda x, ax=ax: jax.lax.dynamic_slice_in_dim(x, start, size, ax), a)
        for a, ax in zip(args, axes, strict=True)
    )


class PopulationMap:
    """A per-member function run over a population; holds its layouts and compiled programs.

    Built by :func:`population_map` (see there for the arguments). Calling it runs the
    population; ``compiled`` maps a layout key to its jitted / pmapped program (compiled
    once per chunk shape), :meth:`layout` says how a call runs.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        in_axes: AxisSpec = 0,
        out_axes: int = 0,
        mesh: Mesh | None = None,
        backend: Backend = "sharding",
        chunk_size: int | None = None,
        inner: Inner = "auto",
        inner_chunk: int | None = None,
        donate_argnums: Sequence[int] = (),
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be 'sharding', 'pmap' or 'vmap', got {backend!r}")
        if inner not in INNER_STRATEGIES:
            raise ValueError(f"inner must be one of {INNER_STRATEGIES}, got {inner!r}")
        self.fn, self.in_axes, self.out_axes = fn, in_axes, int(out_axes)
        self.mesh, self.backend, self.chunk_size = mesh, backend, chunk_size
        self.inner, self.inner_chunk = inner, inner_chunk
        self.donate_argnums = tuple(int(i) for i in donate_argnums)
        self.compiled: dict[tuple, Callable] = {}
        self._layouts: dict[tuple, Layout] = {}  # per argument signature
        self._meshes: dict[int | None, Mesh] = {}  # the whole mesh (None) and sub-meshes
        self._reshapers: dict[tuple, Callable] = {}  # compiled pads / un-pads per layout

    # ----------------------------------------------------------------- planning

    def _mesh_for(self, size: int) -> Mesh:
        if None not in self._meshes:
            self._meshes[None] = make_mesh() if self.mesh is None else self.mesh
        whole = self._meshes[None]
        if size < whole.size and len(whole.axis_names) == 1 and jax.process_count() == 1:
            # Fewer members than devices: the first `size` devices, no padded members
            # (a padded member costs as much as a real one).
            if size not in self._meshes:
                self._meshes[size] = sub_mesh(whole, size)
            return self._meshes[size]
        return whole

    def layout(self, *args: Any) -> Layout:
        """How ``self(*args)`` runs (planned once per argument signature, then reused)."""
        axes = in_axes_tuple(self.in_axes, len(args))
        sig = (axes, _signature(args))
        if sig not in self._layouts:
            self._layouts[sig] = self._plan(args, axes)
        return self._layouts[sig]

    def _plan(self, args: tuple, axes: tuple) -> Layout:
        size = args_population_size(args, axes)
        mesh = None
        if self.backend == "vmap":
            devices, platform = 1, jax.default_backend()
        elif self.backend == "pmap":
            devices, platform = jax.local_device_count(), jax.local_devices()[0].platform
        else:
            mesh = self._mesh_for(size)
            devices, platform = mesh.size, mesh.devices.flat[0].platform
        chunk = size if self.chunk_size is None else max(1, min(int(self.chunk_size), size))
        chunk = -(-chunk // devices) * devices
        per_device = chunk // devices
        mapped = [a for a, ax in zip(args, axes, strict=True) if ax is not None]
        group = inner_group(self.inner, self.inner_chunk, platform, tree_bytes(mapped) // size)
        # A plain vmap (GSPMD-partitioned under "sharding") when one group holds a device's
        # members; the per-device program otherwise (a lone member runs unbatched).
        plain = per_device > 1 and (group is None or group >= per_device)
        return Layout(size=size, chunk=chunk, num_chunks=-(-size // chunk), devices=devices,
                      group=group, plain=plain, mesh=mesh)

    # ----------------------------------------------------------------- compiling

    def _program(self, axes: tuple, lay: Layout) -> Callable:
        key = (axes, lay.plain, lay.group, lay.devices)
        if key in self.compiled:
            return self.compiled[key]
        fn, out_axes, donate = self.fn, self.out_axes, self.donate_argnums
        if lay.plain:
            prog = jax.vmap(fn, in_axes=axes, out_axes=out_axes)
        else:
            prog = _device_program(fn, axes, out_axes, lay.group)
        if self.backend == "pmap":
            run = jax.pmap(prog, in_axes=axes, out_axes=out_axes, donate_argnums=donate)
        elif self.backend == "sharding" and not lay.plain and lay.devices > 1:
            name = lay.mesh.axis_names[0]
            specs = tuple(PartitionSpec() if ax is None
                          else PartitionSpec(*([None] * ax), name) for ax in axes)
            out_spec = PartitionSpec(*([None] * out_axes), name)
            run = jax.jit(_shard_map(prog, lay.mesh, specs, out_spec), donate_argnums=donate)
        elif self.backend == "sharding" and lay.devices > 1:
            # Pin the outputs' layout to the member axis (the inputs' layout) rather than
            # leaving it to GSPMD, so the next call's inputs are already in place.
            run = jax.jit(prog, out_shardings=member_sharding(lay.mesh, out_axes),
                          donate_argnums=donate)
        else:
            run = jax.jit(prog, donate_argnums=donate)
        self.compiled[key] = run
        return run

    def _reshaper(self, kind: str, size: int, axis: int,
                  sharding: NamedSharding | None) -> Callable:
        # ONE compiled program pads (un-pads) a whole argument, laid out at once: eager pads
        # and slices of sharded arrays (typed keys among them) dispatch an op per leaf and
        # made jax 0.7 abort. A replicated un-padded result also keeps jax 0.7 from sharding
        # a typed key's hidden trailing dim, which it then refuses to read.
        key = (kind, size, axis, sharding)
        if key not in self._reshapers:
            op = pad_population if kind == "pad" else unpad_population
            self._reshapers[key] = jax.jit(functools.partial(op, size=size, axis=axis),
                                           out_shardings=sharding)
        return self._reshapers[key]

    # ----------------------------------------------------------------- running

    def __call__(self, *args: Any) -> Any:
        axes = in_axes_tuple(self.in_axes, len(args))
        lay = self.layout(*args)
        run = self._program(axes, lay)
        backend, out_axes, mesh = self.backend, self.out_axes, lay.mesh
        total = lay.chunk * lay.num_chunks
        padded = args
        if total != lay.size:
            one_chunk_on_mesh = backend == "sharding" and lay.num_chunks == 1
            padded = tuple(
                a if ax is None or not jax.tree.leaves(a)
                else self._reshaper("pad", total, ax,
                                    member_sharding(mesh, ax) if one_chunk_on_mesh else None)(a)
                for a, ax in zip(args, axes, strict=True)
            )
        outs = []
        for c in range(lay.num_chunks):
            part = padded
            if lay.num_chunks > 1:  # no copy of the inputs when one call takes them all
                part = _slice(padded, axes, jnp.int32(c * lay.chunk), lay.chunk)
            if backend == "sharding":
                part = tuple(a if ax is None else shard_population(a, mesh, axis=ax)
                             for a, ax in zip(part, axes, strict=True))
                if is_explicit(mesh):  # the context makes jit leave its fast C++ path
                    with mesh_context(mesh):
                        outs.append(run(*part))
                else:
                    outs.append(run(*part))
            elif backend == "pmap":
                outs.append(_pmap_call(run, part, axes, lay.devices, out_axes))
            else:
                outs.append(run(*part))
        out = outs[0] if len(outs) == 1 else jax.tree.map(
            lambda *o: jnp.concatenate(o, axis=out_axes), *outs)
        if total != lay.size:
            replicated = NamedSharding(mesh, PartitionSpec()) if backend == "sharding" else None
            out = self._reshaper("unpad", lay.size, out_axes, replicated)(out)
        return out


def population_map(
    fn: Callable[..., Any],
    *,
    in_axes: AxisSpec = 0,
    out_axes: int = 0,
    mesh: Mesh | None = None,
    backend: Backend = "sharding",
    chunk_size: int | None = None,
    inner: Inner = "auto",
    inner_chunk: int | None = None,
    donate_argnums: Sequence[int] = (),
) -> PopulationMap:
    """Runs a pure per-member function over a population, sharded over the devices.

    Two levels: the *outer* layout spreads the members over the devices (``backend``); the
    *inner* strategy says how one device runs its share, inside the same compiled program:
    ``"vmap"`` batches all of them (what fills a GPU/TPU), ``"map"`` runs groups of
    ``inner_chunk`` members (default 1) one after another, each group vmapped (what a CPU
    wants: a member's state stays in cache, matmuls stay plain). ``"auto"`` picks ``"vmap"``
    on accelerators and ``"map"`` on CPU, with groups sized so that a group's state fits the
    device's share of :func:`~jaxsparse.population.cpu_cache_budget` (a small model's
    replicates then stay one plain vmap). See ``docs/sweeps.md`` for the measurements.

    When ``fn`` maps a state to a new state of the same shapes (its first output is shaped
    like its first argument: a training chunk), the groups run in a ``fori_loop`` that
    carries that state and writes each group's result back in place (no second state
    buffer, no zero-filled stacked outputs); otherwise ``lax.map`` over the groups.

    Args:
      fn: ``fn(*member_args) -> outputs`` for ONE member (unbatched).
      in_axes: member axis of each positional argument (``None`` = shared by all members,
        e.g. the step clock or a batch every member sees).
      out_axes: member axis of every output leaf.
      mesh: a mesh from :func:`~jaxsparse.population.make_mesh` (default: all devices, made
        on the first call); its first axis is used.
      backend: ``"sharding"`` (``jit`` + ``NamedSharding``, the default; ``shard_map`` for
        the grouped inner strategy), ``"pmap"`` (single host) or ``"vmap"`` (one device).
      chunk_size: members per compiled call; ``None`` runs the whole population at once
        (:func:`~jaxsparse.population.auto_chunk_size` gives as many as fit the memory).
        Rounded up to a multiple of the device count; the last chunk is padded.
      inner: ``"auto"``, ``"vmap"`` or ``"map"`` (see above).
      inner_chunk: members per vmapped group for ``"map"``; on CPU ``"auto"`` derives it
        from the bytes of one member's mapped arguments
        (:func:`~jaxsparse.population.cache_group_size`).
      donate_argnums: positional arguments donated to the call (their buffers become the
        outputs': half the state memory of a large population; they must not be used
        afterwards).

    Returns:
      A :class:`PopulationMap`: ``g(*args)`` with the per-member outputs stacked along
      ``out_axes``, compiled once per chunk shape (once in all).

    >>> g = population_map(lambda w, x: w @ x, in_axes=(0, None))
    >>> g(jnp.ones((6, 2, 3)), jnp.ones(3)).shape
    (6, 2)
    """
    return PopulationMap(fn, in_axes=in_axes, out_axes=out_axes, mesh=mesh, backend=backend,
                         chunk_size=chunk_size, inner=inner, inner_chunk=inner_chunk,
                         donate_argnums=donate_argnums)


# --------------------------------------------------------------------------- one device


def _device_program(fn: Callable, axes: tuple, out_axes: int, group: int | None) -> Callable:
    """What ONE device runs over its members: groups of vmapped members one after another.

    A group of one member runs the unbatched ``fn`` (plain matmuls); a group holding every
    member is a plain ``vmap``. The groups run one after another inside the same compiled
    program (no dispatch per member), each group's state staying in cache while it steps.
    """

    def index(a, i, ax):
        return jax.lax.dynamic_index_in_dim(a, i, ax, False)

    def run(*args):
        n = args_population_size(args, axes)
        g = n if group is None else largest_divisor(n, group)

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


def _pmap_call(run: Callable, part: tuple, axes: tuple, devices: int, out_axes: int) -> PyTree:
    def split(a, ax):
        return a.reshape(a.shape[:ax] + (devices, a.shape[ax] // devices) + a.shape[ax + 1 :])

    part = tuple(
        a if ax is None else jax.tree.map(lambda x, ax=ax: split(x, ax), a)
        for a, ax in zip(part, axes, strict=True)
    )
    out = run(*part)
    k = out_axes
    return jax.tree.map(lambda o: o.reshape(o.shape[:k] + (-1,) + o.shape[k + 2 :]), out)
