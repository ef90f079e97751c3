"""Meshes and sharding: a ``population`` mesh axis over every device, one CPU device per core.

>>> make_mesh().axis_names
('population',)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any, Literal

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxsparse.population.build import population_size
from jaxsparse.typing import PyTree

POPULATION_AXIS = "population"

AxisType = Literal["auto", "explicit"]


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere).

    >>> cpu_cores() >= 1
    True
    """
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
      count: devices (default: :func:`cpu_cores`).

    Returns:
      The number of CPU devices JAX will use.
    """
    count = cpu_cores() if count is None else int(count)
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
    axis_type: AxisType = "auto",
) -> Mesh:
    """A 1-d ``Mesh`` over ``devices`` (all devices, over every host) named ``population``.

    The axis type is given explicitly where the jax version has ``jax.sharding.AxisType``
    (jax >= 0.5; a plain ``Mesh`` otherwise). ``"auto"`` is the default because results
    sharded over an ``Explicit`` axis refuse plain indexing (``pop[3]`` needs an
    ``out_sharding``); ``"explicit"`` gives sharding-in-types and the same numbers.

    >>> make_mesh(jax.devices()[:2]).size
    2
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


def is_explicit(mesh: Mesh) -> bool:
    """Whether ``mesh``'s axes are ``Explicit`` (sharding in types).

    >>> is_explicit(make_mesh()), is_explicit(make_mesh(axis_type="explicit"))
    (False, True)
    """
    return any(str(t).endswith("Explicit") for t in getattr(mesh, "axis_types", ()) or ())


def sub_mesh(mesh: Mesh, size: int) -> Mesh:
    """The mesh over the first ``size`` devices of ``mesh`` (same axis name and type).

    >>> sub_mesh(make_mesh(), 2).size
    2
    """
    return make_mesh(list(mesh.devices.flat[:size]), axis_name=mesh.axis_names[0],
                     axis_type="explicit" if is_explicit(mesh) else "auto")


def mesh_context(mesh: Mesh) -> contextlib.AbstractContextManager:
    """Context that makes ``mesh`` current (needed by Explicit axes); a no-op where absent."""
    for owner, name in ((jax, "set_mesh"), (jax.sharding, "use_mesh")):
        if hasattr(owner, name):
            return getattr(owner, name)(mesh)
    return contextlib.nullcontext()


def member_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """The sharding that splits dimension ``axis`` over the mesh's (first) axis.

    >>> tuple(member_sharding(make_mesh(), axis=1).spec)
    (None, 'population')
    """
    return NamedSharding(mesh, PartitionSpec(*([None] * axis), mesh.axis_names[0]))


def shard_population(tree: PyTree, mesh: Mesh | None = None, *, axis: int = 0) -> PyTree:
    """Lays the member axis of every leaf out over the mesh's ``population`` axis.

    The member count must be a multiple of the device count (see
    :func:`jaxsparse.population.pad_population`). A leaf already laid out that way is
    returned as it is (no copy, no per-call ``device_put``). On several hosts every process
    holds the whole (small) host value and each device takes its part.

    >>> pop = shard_population(jnp.zeros((4, 3)))
    >>> pop.sharding.spec[0]
    'population'
    """
    mesh = make_mesh() if mesh is None else mesh
    if not jax.tree.leaves(tree):  # e.g. an empty model_state: nothing to lay out
        return tree
    n = population_size(tree, axis)
    if n % mesh.size:
        raise ValueError(
            f"population of {n} does not divide over {mesh.size} devices: pad it first "
            "(pad_population) or use population_map, which pads for you"
        )
    sharding = member_sharding(mesh, axis)

    def put(leaf):
        current = getattr(leaf, "sharding", None)
        if current is not None and current.is_equivalent_to(sharding, leaf.ndim):
            return leaf  # already laid out
        if jax.process_count() == 1:
            return jax.device_put(leaf, sharding)
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(put, tree)
