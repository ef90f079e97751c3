"""population_map: a per-member training scan gives the single runs' results on every layout.

4 faked CPU devices (conftest.py). The per-member function is a ``lax.scan`` of Adam steps
(what :meth:`jaxsparse.train.Trainer.chunk` is), so the in-place groups of the CPU strategy
(the state carried and written back group by group) are exercised, not only a plain vmap.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsparse import population, testing

STEPS, BATCH, DIN, DH, DOUT = 6, 8, 12, 16, 4
TX = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)


def init_fn(key):
    k1, k2 = jax.random.split(key)
    return {
        "h": {"w": jax.random.normal(k1, (DIN, DH)) / DIN**0.5, "b": jnp.zeros(DH)},
        "o": {"w": jax.random.normal(k2, (DH, DOUT)) / DH**0.5, "b": jnp.zeros(DOUT)},
    }


def loss_fn(params, x, y):
    h = jax.nn.relu(x @ params["h"]["w"] + params["h"]["b"][None])
    logits = h @ params["o"]["w"] + params["o"]["b"][None]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def init_member(key, lr):
    params = init_fn(key)
    opt = TX.init(params)
    # The learning rate lives in the optimizer state: a traced per-member value.
    opt.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
    return params, opt


def step(state, batch):
    params, opt = state
    loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
    updates, opt = TX.update(grads, opt, params)
    return (optax.apply_updates(params, updates), opt), loss


def train(state, batches):
    """ONE member: ``STEPS`` steps in a scan -> (state, losses [STEPS])."""
    return jax.lax.scan(step, state, batches)


@pytest.fixture(scope="module")
def pop():
    members = population.grid(lr=[1e-2, 3e-2], seed=[0, 1, 2, 3])
    hp = population.stack_configs(members)
    state = jax.vmap(init_member)(population.member_keys(hp["seed"]), hp["lr"])
    data_key = jax.random.key(42)
    # member-major: every member its own data order [P, T, B, ...]
    x = jax.random.normal(data_key, (len(members), STEPS, BATCH, DIN))
    y = jax.random.randint(jax.random.fold_in(data_key, 1), (len(members), STEPS, BATCH), 0,
                           DOUT)
    return state, (x, y)


@pytest.fixture(scope="module")
def single_runs(pop):
    state, (x, y) = pop
    run = jax.jit(train)
    outs = [run(population.take_member(state, i), (x[i], y[i])) for i in range(x.shape[0])]
    return population.stack_members(outs)


def first(tree, n):
    return jax.tree.map(lambda a: a[:n], tree)


def assert_trees_close(a, b, exact=False):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    flat_a, flat_b = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)
    for (path, u), v in zip(flat_a, flat_b, strict=True):
        if exact:
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=str(path))
        else:
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=2e-5, atol=2e-6,
                                       err_msg=str(path))


LAYOUTS = {
    "vmap": dict(backend="vmap", inner="vmap"),
    "sharding": dict(backend="sharding", inner="vmap"),
    "explicit": dict(backend="sharding", inner="vmap", explicit=True),
    "pmap": dict(backend="pmap", inner="vmap"),
    "chunks": dict(backend="sharding", inner="vmap", chunk_size=3),  # 3 -> 4; 2 chunks
    # Inner strategy "map": members one after another inside each device's program.
    "map": dict(backend="sharding", inner="map"),  # shard_map, 2 unbatched members / device
    "map_pmap": dict(backend="pmap", inner="map"),
    "map_1dev": dict(backend="vmap", inner="map"),  # 8 unbatched members in one fori_loop
    "map_groups": dict(backend="vmap", inner="map", inner_chunk=2),  # 4 groups of 2
    "auto": dict(),  # the defaults: on this CPU, cache-sized groups per device
}


@pytest.fixture(scope="module")
def layouts(pop):
    state, batches = pop
    out, maps = {}, {}
    for name, kw in LAYOUTS.items():
        kw = dict(kw)
        if kw.pop("explicit", False):
            kw["mesh"] = population.make_mesh(axis_type="explicit")
        maps[name] = population.population_map(train, **kw)
        out[name] = maps[name](state, batches)
    return out, maps


def test_population_of_8_equals_8_single_runs(layouts, single_runs):
    out, _ = layouts
    assert jax.device_count() == 4
    for name in LAYOUTS:
        assert_trees_close(out[name], single_runs)
    # The members really differ (lr and seed are traced per member).
    losses = np.asarray(out["vmap"][1])
    assert losses.shape == (8, STEPS)
    assert len({round(float(v), 6) for v in losses[:, -1]}) == 8


def test_same_program_on_every_layout_is_bitwise_equal(layouts):
    out, _ = layouts
    # The same per-device program sharded, pmapped or with explicit axes: bitwise on XLA:CPU.
    assert_trees_close(out["sharding"], out["pmap"], exact=True)
    assert_trees_close(out["sharding"], out["explicit"], exact=True)
    # Unbatched members run the same per-member program on every layout.
    assert_trees_close(out["map"], out["map_1dev"], exact=True)
    assert_trees_close(out["map"], out["map_pmap"], exact=True)


def test_outputs_are_laid_out_over_the_population_axis(layouts):
    out, _ = layouts
    for name in ("sharding", "map"):
        leaf = out[name][0][0]["h"]["w"]
        assert leaf.sharding.spec[0] == population.POPULATION_AXIS
        assert len(leaf.sharding.device_set) == 4


def test_each_layout_compiles_once_and_plans_its_groups(layouts, pop):
    _, maps = layouts
    state, batches = pop
    for name, f in maps.items():
        assert len(f.compiled) == 1, name
        if f.backend != "pmap":
            assert testing.cache_size(next(iter(f.compiled.values()))) == 1, name
    # chunk_size=3 on 4 devices: chunks of 4, two calls of one executable
    lay = maps["chunks"].layout(state, batches)
    assert (lay.chunk, lay.num_chunks, lay.devices, lay.plain) == (4, 2, 4, False)
    assert maps["map_groups"].layout(state, batches).group == 2
    assert maps["vmap"].layout(state, batches).group is None
    with testing.compilations() as names:
        maps["map"](state, batches)  # a second call compiles nothing (not even a reshape)
        maps["chunks"](state, batches)
    assert names == []


def test_auto_groups_come_from_the_cache_and_are_held_by_the_map(pop, monkeypatch):
    state, batches = pop
    member_bytes = population.tree_bytes((population.take_member(state, 0),
                                          population.take_member(batches, 0)))
    threads, budget = population.cpu_device_share()
    f = population.population_map(train)
    assert f.layout(state, batches).group == population.cache_group_size(
        member_bytes, threads=threads, budget=budget)
    # The cache size is read when a map first plans, and the plan lives on the map.
    monkeypatch.setenv("JAXSPARSE_CPU_CACHE_BYTES", "1024")
    tiny = population.population_map(train).layout(state, batches)
    assert tiny.group == 1 and not tiny.plain
    assert f.layout(state, batches).group == population.cache_group_size(
        member_bytes, threads=threads, budget=budget)


def test_inner_map_without_a_carried_state(pop):
    # Outputs that are not a state (losses and a bias: lax.map over the groups); an empty
    # per-member dict (a model without batch-norm state) rides along untouched; shared data.
    state, (x, y) = pop
    fn = lambda s, ms, xb, yb: (train(s, (xb, yb))[1], s[0]["o"]["b"])  # noqa: E731
    ax = (0, 0, None, None)
    args = (state, {}, x[0], y[0])
    ref = population.population_map(fn, in_axes=ax, inner="vmap")(*args)
    for kw in (dict(), dict(chunk_size=3), dict(inner_chunk=2), dict(backend="pmap"),
               dict(backend="vmap")):
        assert_trees_close(population.population_map(fn, in_axes=ax, inner="map", **kw)(*args),
                           ref)
    losses, bias = population.population_map(fn, in_axes=ax, out_axes=1, inner="map")(*args)
    assert losses.shape == (STEPS, 8) and bias.shape == (DOUT, 8)
    np.testing.assert_allclose(np.asarray(losses).T, np.asarray(ref[0]), rtol=2e-5, atol=2e-6)


def test_shared_batches_equal_per_member_copies(pop):
    state, (x, y) = pop
    copies = (jnp.repeat(x[:1], 8, axis=0), jnp.repeat(y[:1], 8, axis=0))
    ref = population.population_map(train, backend="vmap", inner="vmap")(state, copies)
    for inner in ("vmap", "map"):
        shared = population.population_map(train, in_axes=(0, None), inner=inner)
        assert_trees_close(shared(state, (x[0], y[0])), ref)


def test_donated_state_is_consumed_and_results_match(pop, single_runs):
    state, batches = pop
    # One device, and sharded over 4 (a state already laid out over the population axis).
    for kw, mine in ((dict(backend="vmap"), jax.tree.map(jnp.copy, state)),
                     (dict(), population.shard_population(jax.tree.map(jnp.copy, state)))):
        f = population.population_map(train, donate_argnums=(0,), **kw)
        assert_trees_close(f(mine, batches), single_runs)
        assert all(leaf.is_deleted() for leaf in jax.tree.leaves(mine))
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(state))


def test_population_of_1_is_a_single_run(pop, single_runs):
    state, batches = pop
    out = population.population_map(train)(first(state, 1), first(batches, 1))
    assert_trees_close(out, first(single_runs, 1))


def test_population_of_6_on_4_devices_is_padded(pop, single_runs):
    state, batches = pop
    for kw in (dict(), dict(backend="pmap"), dict(inner="map"), dict(chunk_size=4)):
        f = population.population_map(train, **kw)
        out = f(first(state, 6), first(batches, 6))
        assert out[1].shape == (6, STEPS)
        assert_trees_close(out, first(single_runs, 6))
    assert f.layout(first(state, 6), first(batches, 6)).num_chunks == 2


def test_fewer_members_than_devices_use_a_sub_mesh(pop, single_runs):
    # 3 members on 4 devices: the first 3 devices, one member each, nothing padded.
    state, batches = pop
    for mesh in (None, population.make_mesh(axis_type="explicit")):
        f = population.population_map(train, mesh=mesh)
        out = f(first(state, 3), first(batches, 3))
        assert_trees_close(out, first(single_runs, 3))
        leaf = out[0][0]["h"]["w"]
        assert leaf.shape[0] == 3 and len(leaf.sharding.device_set) == 3
        assert leaf.sharding.spec[0] == population.POPULATION_AXIS
        assert f.layout(first(state, 3), first(batches, 3)).mesh.size == 3


def test_shared_clock_keeps_cond_a_cond():
    def member(w, step_count):
        return jax.lax.cond(step_count % 10 == 0, lambda: jnp.sort(w), lambda: w)

    ws = jnp.zeros((8, 5))
    shared = jax.make_jaxpr(jax.vmap(member, in_axes=(0, None)))(ws, 3)
    per_member = jax.make_jaxpr(jax.vmap(member))(ws, jnp.arange(8))
    assert "cond[" in str(shared)
    # A batched predicate runs both branches every step (the sort included) then selects.
    assert "cond[" not in str(per_member) and "select_n" in str(per_member)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="inner"):
        population.population_map(lambda a: a, inner="pmap")
    with pytest.raises(ValueError, match="backend"):
        population.population_map(lambda a: a, backend="tpu")
    with pytest.raises(ValueError, match="disagree"):
        population.population_map(lambda a, b: a + b)(jnp.zeros(3), jnp.zeros(4))
    with pytest.raises(ValueError, match="2 entries for 1 arguments"):
        population.population_map(lambda a: a, in_axes=(0, None))(jnp.zeros(3))
