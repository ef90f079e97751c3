"""Populations: same per-member results as single runs, on every layout (4 faked CPU devices)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsparse import sweep, testing

STEPS, BATCH, DIN, DH, DOUT = 6, 8, 12, 16, 4


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


TX = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)


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


@pytest.fixture(scope="module")
def population():
    members = sweep.grid(lr=[1e-2, 3e-2], seed=[0, 1, 2, 3])
    hp = sweep.stack_configs(members)
    keys = sweep.member_keys(hp["seed"])
    state = jax.vmap(init_member)(keys, hp["lr"])
    data_key = jax.random.key(42)
    x = jax.random.normal(data_key, (STEPS, len(members), BATCH, DIN))
    y = jax.random.randint(jax.random.fold_in(data_key, 1), (STEPS, len(members), BATCH), 0, DOUT)
    return members, state, (x, y)


@pytest.fixture(scope="module")
def single_runs(population):
    _, state, (x, y) = population
    run = jax.jit(lambda s, b: jax.lax.scan(step, s, b))
    outs = [run(sweep.take_member(state, i), (x[:, i], y[:, i])) for i in range(x.shape[1])]
    return sweep.stack_members(outs)


def assert_trees_close(a, b, exact=False):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    flat_a, flat_b = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)
    for (path, u), v in zip(flat_a, flat_b, strict=True):
        if exact:
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=str(path))
        else:
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=2e-5, atol=2e-6,
                                       err_msg=str(path))


@pytest.fixture(scope="module")
def layouts(population):
    _, state, batches = population
    out = {}
    for name, kw in {
        "vmap": dict(backend="vmap"),
        "sharding": dict(backend="sharding"),
        "explicit": dict(backend="sharding", mesh=sweep.make_mesh(axis_type="explicit")),
        "pmap": dict(backend="pmap"),
        "chunks": dict(backend="sharding", chunk_size=3),
        # Inner strategy "map": members one after another inside each device's program.
        "map": dict(backend="sharding", inner="map"),  # shard_map, 2 members per device
        "map_pmap": dict(backend="pmap", inner="map"),
        "map_1dev": dict(backend="vmap", inner="map"),  # 8 members in one lax.map
        "map_groups": dict(backend="vmap", inner="map", inner_chunk=4),  # 2 groups of 4
    }.items():
        kw.setdefault("chunk_size", None)
        out[name] = sweep.train_population(step, state, batches, **kw)
    return out


def test_population_of_8_equals_8_single_runs(layouts, single_runs):
    assert jax.device_count() == 4
    assert_trees_close(layouts["vmap"], single_runs)
    # The members really differ (lr and seed are traced per member).
    losses = np.asarray(layouts["vmap"][1])
    assert losses.shape == (8, STEPS)
    assert len({round(float(v), 6) for v in losses[:, -1]}) == 8


def test_sharded_equals_unsharded_equals_pmap(layouts):
    ref = layouts["vmap"]
    for name in ("sharding", "explicit", "pmap", "chunks"):
        assert_trees_close(layouts[name], ref)
    # Same per-device program on every layout: bitwise on XLA:CPU.
    assert_trees_close(layouts["sharding"], layouts["pmap"], exact=True)
    assert_trees_close(layouts["sharding"], layouts["explicit"], exact=True)


def test_inner_map_equals_vmap_equals_single_runs(layouts, single_runs):
    for name in ("map", "map_pmap", "map_1dev", "map_groups"):
        assert_trees_close(layouts[name], single_runs)
        assert_trees_close(layouts[name], layouts["vmap"])
    # Unbatched members run the same per-member program on every layout.
    assert_trees_close(layouts["map"], layouts["map_1dev"], exact=True)
    assert_trees_close(layouts["map"], layouts["map_pmap"], exact=True)
    leaf = layouts["map"][0][0]["h"]["w"]
    assert leaf.sharding.spec[0] == sweep.POPULATION_AXIS and len(leaf.sharding.device_set) == 4


def test_population_map_inner_map_generic(population):
    # The IMP driver's call shape: state per member, shared data, out_axes 0 and 1.
    _, state, (x, y) = population
    # An empty per-member dict (a model without batch-norm state) rides along untouched.
    fn = lambda s, ms, xb, yb: (jax.lax.scan(step, s, (xb, yb))[1], s[0]["o"]["b"])  # noqa: E731
    ax = (0, 0, None, None)
    ref = sweep.population_map(fn, in_axes=ax, inner="vmap")(state, {}, x[:, 0], y[:, 0])
    for kw in (dict(inner="map"), dict(inner="map", chunk_size=3), dict(inner="map", inner_chunk=2),
               dict(inner="map", backend="pmap")):
        f = sweep.population_map(fn, in_axes=ax, **kw)
        assert_trees_close(f(state, {}, x[:, 0], y[:, 0]), ref)
        assert len(f.compiled) == 1
        if kw.get("backend") != "pmap":
            assert testing.cache_size(next(iter(f.compiled.values()))) == 1
    g = sweep.population_map(fn, in_axes=ax, out_axes=1, inner="map")
    losses, bias = g(state, {}, x[:, 0], y[:, 0])
    assert losses.shape == (STEPS, 8) and bias.shape == (DOUT, 8)
    np.testing.assert_allclose(np.asarray(losses).T, np.asarray(ref[0]), rtol=2e-5, atol=2e-6)


def test_auto_inner_strategy_on_cpu(monkeypatch):
    assert jax.default_backend() == "cpu"
    # Working set 4/3 of the state; as many members as the budget holds ...
    assert sweep.cache_group_size(3_200_000, budget=8 * 2**20) == 1
    assert sweep.cache_group_size(100_000, budget=2**20) == 2**20 * 3 // 400_000 == 7
    # ... rounded down to a multiple of the device's threads once it holds that many.
    assert sweep.cache_group_size(3_200_000, threads=2, budget=24 * 2**20) == 4
    assert sweep.cache_group_size(100_000, threads=4, budget=2**20) == 4
    assert sweep.cache_group_size(3_200_000, threads=4, budget=8 * 2**20) == 1
    # 4 faked CPU devices share the cores and the cache.
    threads, budget = sweep._cpu_threads_and_budget()
    assert budget == sweep.CPU_CACHE_BUDGET_BYTES // 4
    assert threads == max(1, len(os.sched_getaffinity(0)) // 4)
    assert sweep._group("auto", None, "cpu", 3_200_000) == sweep.cache_group_size(
        3_200_000, threads=threads, budget=budget)
    assert sweep._group("auto", None, "gpu", 10**9) is None
    assert sweep._group("map", None, "gpu", 10) == 1 and sweep._group("vmap", 3, "cpu", 1) is None
    with pytest.raises(ValueError, match="inner"):
        sweep.population_map(lambda a: a, inner="pmap")
    monkeypatch.setenv("JAXSPARSE_CPU_CACHE_BYTES", "1234")
    assert sweep._last_level_cache_bytes() == 1234


def test_grouped_trainer_equals_single_runs(population, single_runs):
    # Groups of 2 vmapped members, one after another in the per-device fori_loop, and the
    # unbatched group of 1, on one device and sharded; every layout compiles once.
    _, state, batches = population
    for kw in (dict(backend="vmap", inner_chunk=2), dict(backend="vmap", inner_chunk=1),
               dict(backend="sharding", inner_chunk=1)):
        out = sweep.train_population(step, state, batches, chunk_size=None, inner="map", **kw)
        assert_trees_close(out, single_runs)
    one = sweep.train_population(step, state, batches, backend="vmap", chunk_size=None,
                                 inner="map")
    assert_trees_close(one, out, exact=True)  # same unbatched program sharded or not


def test_donated_state_is_consumed_and_results_match(population, single_runs):
    _, state, batches = population
    # One device, and sharded over 4 (a state already laid out over the population axis).
    for kw, mine in ((dict(backend="vmap"), jax.tree.map(jnp.copy, state)),
                     (dict(), sweep.shard_population(jax.tree.map(jnp.copy, state)))):
        out = sweep.train_population(step, mine, batches, chunk_size=None, donate=True, **kw)
        assert_trees_close(out, single_runs)
        assert all(leaf.is_deleted() for leaf in jax.tree.leaves(mine))
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(state))


def test_sharded_output_is_laid_out_over_the_population_axis(layouts):
    leaf = layouts["sharding"][0][0]["h"]["w"]
    assert leaf.sharding.spec[0] == sweep.POPULATION_AXIS
    assert len(leaf.sharding.device_set) == 4


def test_population_of_1_equals_a_single_run(population, single_runs):
    _, state, (x, y) = population
    one = jax.tree.map(lambda a: a[:1], state)
    out = sweep.train_population(step, one, (x[:, :1], y[:, :1]), chunk_size=None)
    assert_trees_close(out, jax.tree.map(lambda a: a[:1], single_runs))


def test_population_of_6_on_4_devices(population, single_runs):
    _, state, (x, y) = population
    six = jax.tree.map(lambda a: a[:6], state)
    for backend, inner in (("sharding", "auto"), ("pmap", "auto"), ("sharding", "map")):
        out = sweep.train_population(step, six, (x[:, :6], y[:, :6]), backend=backend,
                                     chunk_size=None, inner=inner)
        assert out[1].shape == (6, STEPS)
        assert_trees_close(out, jax.tree.map(lambda a: a[:6], single_runs))


def test_fewer_members_than_devices_use_a_sub_mesh(population, single_runs):
    # 3 members on 4 devices: the first 3 devices, one member each, nothing padded.
    _, state, (x, y) = population
    three = jax.tree.map(lambda a: a[:3], state)
    for mesh in (None, sweep.make_mesh(axis_type="explicit")):
        out = sweep.train_population(step, three, (x[:, :3], y[:, :3]), chunk_size=None,
                                     mesh=mesh)
        assert_trees_close(out, jax.tree.map(lambda a: a[:3], single_runs))
        leaf = out[0][0]["h"]["w"]
        assert leaf.shape[0] == 3 and len(leaf.sharding.device_set) == 3
        assert leaf.sharding.spec[0] == sweep.POPULATION_AXIS


def test_chunks_compile_once(population):
    _, state, (x, y) = population
    f = sweep.population_map(lambda s, b: jax.lax.scan(step, s, b), in_axes=(0, 1), chunk_size=4)
    f(state, (x, y))
    (jitted,) = f.compiled.values()
    assert testing.cache_size(jitted) == 1  # two chunks of 4, one executable


def test_shared_batches_match_per_member_copies(population):
    _, state, (x, y) = population
    shared = sweep.train_population(step, state, (x[:, 0], y[:, 0]), shared_batches=True,
                                    chunk_size=None)
    copies = (jnp.repeat(x[:, :1], 8, axis=1), jnp.repeat(y[:, :1], 8, axis=1))
    assert_trees_close(shared, sweep.train_population(step, state, copies, chunk_size=None))
    shared_map = sweep.train_population(step, state, (x[:, 0], y[:, 0]), shared_batches=True,
                                        chunk_size=None, inner="map")
    assert_trees_close(shared_map, shared)


def test_shared_clock_keeps_cond_a_cond():
    def member(w, step_count):
        return jax.lax.cond(step_count % 10 == 0, lambda: jnp.sort(w), lambda: w)

    ws = jnp.zeros((8, 5))
    shared = jax.make_jaxpr(jax.vmap(member, in_axes=(0, None)))(ws, 3)
    per_member = jax.make_jaxpr(jax.vmap(member))(ws, jnp.arange(8))
    assert "cond[" in str(shared)
    # A batched predicate runs both branches every step (the sort included) then selects.
    assert "cond[" not in str(per_member) and "select_n" in str(per_member)


def test_memory_plan_and_refusal(population):
    _, state, (x, y) = population
    member = lambda s, b: jax.lax.scan(step, s, b)  # noqa: E731
    plan = sweep.memory_plan(member, state, (x, y), in_axes=(0, 1), device_bytes=2**30)
    param_bytes = sum(a[0].nbytes for a in jax.tree.leaves(state[0]))
    assert plan.source == "compiled"
    assert plan.bytes_per_member >= 3 * param_bytes  # params + two Adam moments at least
    assert plan.max_population == plan.devices * plan.max_members_per_device > 8
    sweep.check_fits(plan, 8)
    tiny = sweep.memory_plan(member, state, (x, y), in_axes=(0, 1),
                             device_bytes=plan.fixed_bytes + 2 * plan.bytes_per_member,
                             headroom=1.0)
    assert tiny.max_members_per_device == 2 and tiny.max_population == 8
    with pytest.raises(sweep.PopulationTooLarge, match="at most 8 members"):
        sweep.check_fits(tiny, 12)
    sweep.check_fits(tiny, 12, chunk_size=8)
    assert sweep.auto_chunk_size(tiny, 12) <= 8


def test_grid_stack_and_errors():
    g = sweep.grid(sparsity=[0.5, 0.9], seed=[0, 1, 2])
    assert len(g) == 6 and g[4] == {"sparsity": 0.9, "seed": 1}
    hp = sweep.stack_configs(g)
    assert hp["sparsity"].dtype == jnp.float32 and hp["seed"].dtype == jnp.int32
    with pytest.raises(ValueError, match="integer index"):
        sweep.stack_configs(sweep.grid(criterion=["large_final", "movement"]))
    with pytest.raises(ValueError, match="disagree"):
        sweep.population_map(lambda a, b: a + b)(jnp.zeros(3), jnp.zeros(4))


def test_task_slice_covers_grid_once():
    g = sweep.grid(lr=[1, 2, 3], seed=[0, 1, 2, 3, 4])
    parts = [sweep.task_slice(g, i, 4) for i in range(4)]
    assert [len(p) for p in parts] == [3, 4, 4, 4]
    assert sum(parts, []) == g
    with pytest.raises(ValueError, match="task_index"):
        sweep.task_slice(g, 4, 4)


def test_merge_results_mean_std(tmp_path):
    rows = [dict(c, acc=0.5 + 0.1 * c["seed"] + c["lr"]) for c in sweep.grid(lr=[0, 1],
                                                                             seed=[0, 1, 2])]
    for i in range(2):
        sweep.write_results(tmp_path / f"task{i}", sweep.task_slice(rows, i, 2))
    table = sweep.merge_results([tmp_path / "task0", tmp_path / "task1"], metrics=["acc"])
    assert [(r["lr"], r["n"]) for r in table] == [(0, 3), (1, 3)]
    assert table[1]["acc_mean"] == pytest.approx(1.6)
    assert table[0]["acc_std"] == pytest.approx(0.1)  # sample std of 0.5, 0.6, 0.7
    assert "±" in sweep.format_table(table, ["acc"])


def test_save_load_and_resumable(tmp_path, population):
    _, state, _ = population
    tree = {"state": state, "key": sweep.member_keys([1, 2])}
    sweep.save_tree(tmp_path / "a.npz", tree)
    back = sweep.load_tree(tmp_path / "a.npz", jax.eval_shape(lambda: tree))
    assert_trees_close(back["state"], tree["state"], exact=True)
    assert (jax.random.key_data(back["key"]) == jax.random.key_data(tree["key"])).all()
    calls = []
    work = lambda: calls.append(1) or {"x": jnp.arange(3)}  # noqa: E731
    like = jax.eval_shape(work)
    calls.clear()
    _, loaded = sweep.resumable(tmp_path / "c.npz", work, like)
    again, loaded2 = sweep.resumable(tmp_path / "c.npz", work, like)
    assert (loaded, loaded2, len(calls)) == (False, True, 1)
    np.testing.assert_array_equal(again["x"], np.arange(3))


def test_use_cpu_devices_in_a_fresh_process():
    # Before any JAX operation it sets the count; an explicit XLA_FLAGS count wins; after
    # the backend started it is too late and it reports what there is.
    import subprocess
    import sys

    code = (
        "import jax\nfrom jaxsparse import sweep\n"
        "n = sweep.use_cpu_devices(3)\n"
        "print(n, jax.device_count(), sweep.use_cpu_devices(2), jax.device_count())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    run = lambda e: subprocess.run([sys.executable, "-c", code], env=e, check=True,  # noqa: E731
                                   capture_output=True, text=True).stdout.split()
    assert run(env) == ["3", "3", "3", "3"]
    flags = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=5")
    assert run(flags) == ["5", "5", "5", "5"]
    with pytest.raises(ValueError, match="count >= 1"):
        sweep.use_cpu_devices(0)
