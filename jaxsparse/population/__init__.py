"""Populations: many models in one compiled program, sharded over every device.

A *population* is a pytree whose leaves carry a leading member axis (params, optimizer
states, masks, keys, per-member hyperparameters). The one trainer, :class:`jaxsparse.train.Trainer`,
runs a stacked ``TrainState`` population through :func:`population_map`; see
``docs/sweeps.md``.

=====================================  ======================================================
:mod:`~jaxsparse.population.build`     :func:`grid`, :func:`stack_configs`, :func:`member_keys`,
                                       :func:`init_population`, :func:`take_member`,
                                       :func:`stack_members`, :func:`pad_population`
:mod:`~jaxsparse.population.mesh`      :func:`make_mesh`, :func:`shard_population`,
                                       :func:`use_cpu_devices`, :func:`cpu_cores`
:mod:`~jaxsparse.population.map`       :func:`population_map` (outer layout x inner strategy)
:mod:`~jaxsparse.population.memory`    :func:`memory_estimate`, :func:`check_fits`,
                                       :func:`auto_chunk_size`, :func:`cache_group_size`
:mod:`~jaxsparse.population.jobs`      :func:`init_distributed`, :func:`task_slice`,
                                       :func:`resumable`
:mod:`~jaxsparse.population.tables`    :func:`write_results`, :func:`merge_results`,
                                       :func:`format_table`
=====================================  ======================================================

>>> from jaxsparse import population
>>> hp = population.stack_configs(population.grid(lr=[1e-3, 3e-3], seed=[0, 1]))
>>> f = population.population_map(lambda lr, x: lr * x, in_axes=(0, None))
>>> f(hp["lr"], 2.0).shape
(4,)
"""

from jaxsparse.population.build import (
    AxisSpec,
    args_population_size,
    grid,
    in_axes_tuple,
    init_population,
    member_keys,
    pad_population,
    population_size,
    stack_configs,
    stack_members,
    take_member,
    unpad_population,
)
from jaxsparse.population.jobs import init_distributed, resumable, task_slice
from jaxsparse.population.map import (
    BACKENDS,
    INNER_STRATEGIES,
    Backend,
    Inner,
    Layout,
    PopulationMap,
    inner_group,
    largest_divisor,
    population_map,
)
from jaxsparse.population.memory import (
    MemoryEstimate,
    PopulationTooLarge,
    auto_chunk_size,
    cache_group_size,
    check_fits,
    cpu_cache_budget,
    cpu_device_share,
    device_memory_bytes,
    last_level_cache_bytes,
    memory_estimate,
    tree_bytes,
)
from jaxsparse.population.mesh import (
    POPULATION_AXIS,
    cpu_cores,
    is_explicit,
    make_mesh,
    member_sharding,
    mesh_context,
    shard_population,
    sub_mesh,
    use_cpu_devices,
)
from jaxsparse.population.tables import format_table, merge_results, read_results, write_results

__all__ = [
    # building
    "AxisSpec", "args_population_size", "grid", "in_axes_tuple", "init_population",
    "member_keys", "pad_population", "population_size", "stack_configs", "stack_members",
    "take_member", "unpad_population",
    # meshes and sharding
    "POPULATION_AXIS", "cpu_cores", "is_explicit", "make_mesh", "member_sharding",
    "mesh_context", "shard_population", "sub_mesh", "use_cpu_devices",
    # the map
    "BACKENDS", "INNER_STRATEGIES", "Backend", "Inner", "Layout", "PopulationMap",
    "inner_group", "largest_divisor", "population_map",
    # memory
    "MemoryEstimate", "PopulationTooLarge", "auto_chunk_size", "cache_group_size", "check_fits",
    "cpu_cache_budget", "cpu_device_share", "device_memory_bytes", "last_level_cache_bytes",
    "memory_estimate", "tree_bytes",
    # jobs and tables
    "format_table", "init_distributed", "merge_results", "read_results", "resumable",
    "task_slice", "write_results",
]
