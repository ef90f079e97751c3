"""Memory estimates and refusal; CPU cache groups (read when asked, never at import)."""

import os

import jax
import jax.numpy as jnp
import pytest

from jaxsparse import population

P, T, B, D = 8, 3, 4, 64


def member(w, x):
    """One member: T steps of a tiny regression, in a scan."""
    def body(w, xt):
        grad = jax.grad(lambda w: jnp.mean((xt @ w) ** 2))(w)
        return w - 0.1 * grad, jnp.sum(w)

    return jax.lax.scan(body, w, x)


def test_memory_estimate_and_refusal():
    w, x = jnp.ones((P, D, D)), jnp.ones((P, T, B, D))
    est = population.memory_estimate(member, w, x, device_bytes=2**30)
    assert est.source == "compiled" and est.devices == 4
    assert est.bytes_per_member >= D * D * 4  # the member's weights at least
    assert est.max_population == est.devices * est.max_members_per_device > P
    assert "per member" in str(est)
    population.check_fits(est, P)
    tiny = population.memory_estimate(member, w, x, device_bytes=est.fixed_bytes
                                      + 2 * est.bytes_per_member, headroom=1.0)
    assert tiny.max_members_per_device == 2 and tiny.max_population == 8
    with pytest.raises(population.PopulationTooLarge, match="at most 8 members"):
        population.check_fits(tiny, 12)
    population.check_fits(tiny, 12, chunk_size=8)
    assert population.auto_chunk_size(tiny, 12) == 8
    none_fit = population.MemoryEstimate(10, 0, 5, devices=4, source="estimate")
    with pytest.raises(population.PopulationTooLarge, match="chunk_size<=1"):
        population.auto_chunk_size(none_fit, 3)


def test_memory_estimate_chunks_a_population_map():
    # What the estimate is for: as many members per call as fit, then the same results.
    w = jax.random.normal(jax.random.key(0), (P, D, D))
    x = jax.random.normal(jax.random.key(1), (P, T, B, D))
    est = population.memory_estimate(member, w, x)
    small = population.MemoryEstimate(est.bytes_per_member, est.fixed_bytes,
                                      est.fixed_bytes + est.bytes_per_member, devices=4,
                                      source=est.source)
    chunk = population.auto_chunk_size(small, P)
    assert chunk == 4
    f = population.population_map(member, chunk_size=chunk)
    ref = population.population_map(member, backend="vmap", inner="vmap")(w, x)
    out = f(w, x)
    assert f.layout(w, x).num_chunks == 2
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref), strict=True):
        assert jnp.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_cache_groups(monkeypatch):
    # Working set 4/3 of the state; as many members as the budget holds ...
    assert population.cache_group_size(3_200_000, budget=8 * 2**20) == 1
    assert population.cache_group_size(100_000, budget=2**20) == 2**20 * 3 // 400_000 == 7
    # ... rounded down to a multiple of the device's threads once it holds that many.
    assert population.cache_group_size(3_200_000, threads=2, budget=24 * 2**20) == 4
    assert population.cache_group_size(100_000, threads=4, budget=2**20) == 4
    assert population.cache_group_size(3_200_000, threads=4, budget=8 * 2**20) == 1
    # The cache is read when asked (the environment overrides sysfs) ...
    monkeypatch.setenv("JAXSPARSE_CPU_CACHE_BYTES", "4000000")
    assert population.last_level_cache_bytes() == 4_000_000
    assert population.cpu_cache_budget() == 2_000_000
    assert population.cache_group_size(100_000) == 2_000_000 * 3 // 400_000 == 15
    # ... and 4 faked CPU devices share the cores and the cache.
    threads, budget = population.cpu_device_share()
    assert budget == 2_000_000 // 4
    assert threads == max(1, len(os.sched_getaffinity(0)) // 4)
    assert population.cpu_device_share(1) == (len(os.sched_getaffinity(0)), 2_000_000)
    assert population.inner_group("auto", None, "cpu", 100_000) == \
        population.cache_group_size(100_000, threads=threads, budget=budget)
    assert population.inner_group("auto", None, "gpu", 10**9) is None
    assert population.inner_group("map", None, "gpu", 10) == 1
    assert population.inner_group("vmap", 3, "cpu", 1) is None
    assert population.inner_group("map", 3, "cpu", 1) == 3
