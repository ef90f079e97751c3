"""Meshes and sharding over 4 faked CPU devices; one CPU device per core in a fresh process."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsparse import population


def test_make_mesh_and_sub_mesh():
    mesh = population.make_mesh()
    assert mesh.axis_names == ("population",) and mesh.size == 4
    assert not population.is_explicit(mesh)
    explicit = population.make_mesh(axis_type="explicit")
    assert population.is_explicit(explicit)
    sub = population.sub_mesh(explicit, 3)
    assert sub.size == 3 and population.is_explicit(sub)
    assert list(sub.devices.flat) == jax.devices()[:3]
    with pytest.raises(ValueError, match="axis_type"):
        population.make_mesh(axis_type="manual")


def test_shard_population_lays_members_out_and_keeps_laid_out_leaves():
    tree = {"w": jnp.arange(24.0).reshape(8, 3), "x": jnp.zeros((2, 8))}
    out = population.shard_population(tree["w"])
    assert out.sharding.spec[0] == population.POPULATION_AXIS
    assert [s.data.shape for s in out.addressable_shards] == [(2, 3)] * 4
    np.testing.assert_array_equal(out, tree["w"])
    assert population.shard_population(out) is out  # already laid out: no copy
    along1 = population.shard_population(tree["x"], axis=1)
    assert tuple(along1.sharding.spec) == (None, "population")
    assert population.shard_population({}) == {}
    with pytest.raises(ValueError, match="population of 3 does not divide over 4 devices"):
        population.shard_population(jnp.ones((3, 2)))


def test_use_cpu_devices_in_a_fresh_process():
    # Before any JAX operation it sets the count; an explicit XLA_FLAGS count wins; after
    # the backend started it is too late and it reports what there is.
    code = (
        "import jax\nfrom jaxsparse import population\n"
        "n = population.use_cpu_devices(3)\n"
        "print(n, jax.device_count(), population.use_cpu_devices(2), jax.device_count())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    run = lambda e: subprocess.run([sys.executable, "-c", code], env=e, check=True,  # noqa: E731
                                   capture_output=True, text=True).stdout.split()
    assert run(env) == ["3", "3", "3", "3"]
    flags = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=5")
    assert run(flags) == ["5", "5", "5", "5"]
    with pytest.raises(ValueError, match="count >= 1"):
        population.use_cpu_devices(0)
    assert population.cpu_cores() == len(os.sched_getaffinity(0))
