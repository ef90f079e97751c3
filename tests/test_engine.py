"""The one trainer: a pruner on the step clock inside the compiled step, hooks that read
gradients, one model or a population through the same core, checkpoint / resume bitwise."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsparse as js
from jaxsparse import data, models, train
from jaxsparse.pruners.base import Pruner, at_step, every
from jaxsparse.testing import compilations

DATA = data.digits()
FN = models.functional(models.lenet300(key=jax.random.key(0), input_shape=(8, 8, 1),
                                       hidden=(16, 8)))


class SwapState(NamedTuple):
    count: jax.Array


def swap_pruner(due) -> Pruner:
    """Drops the 3 smallest kept |w| of fc0 and grows the 3 pruned entries of lowest index:
    a toy drop/grow with a known answer (kept count unchanged)."""

    def init(params, masks):
        return SwapState(jnp.zeros((), jnp.int32))

    def update(masks, state, params, *, grads, step, key):
        m = masks["fc0"]["kernel"].reshape(-1)
        w = jnp.abs(params["fc0"]["kernel"]).reshape(-1)
        drop = jnp.argsort(jnp.where(m, w, jnp.inf))[:3]
        grow = jnp.sort(jnp.where(~m, jnp.arange(m.size), m.size))[:3]
        new = m.at[drop].set(False).at[grow].set(True).reshape(masks["fc0"]["kernel"].shape)
        masks = {**masks, "fc0": {**masks["fc0"], "kernel": new}}
        return masks, SwapState(state.count + 1)

    return Pruner(init, update, due)


def half_masks():
    masks = js.ones_like(FN.params)
    return js.prune(js.scores.random(FN.params, key=jax.random.key(3)), masks, sparsity=0.5,
                    scope="layerwise")


@pytest.mark.parametrize("masked", [False, True])
def test_grown_weights_and_moments_are_exactly_zero_after_the_change(masked):
    tx = optax.adam(1e-2)
    tx = js.masked(tx) if masked else tx
    pruner = swap_pruner(at_step(4))
    masks0 = half_masks()
    state = train.init_state(FN.params, tx, key=jax.random.key(1), masks=masks0, pruner=pruner)
    step = jax.jit(train.make_step(FN.apply_fn, tx, pruner=pruner))
    x, y = jnp.asarray(DATA.train.x[:32]), jnp.asarray(DATA.train.y[:32])
    for _ in range(4):
        state, _ = step(state, (x, y))
    before = state
    state, _ = step(state, (x, y))  # iteration 4: the pruner changes the masks
    old, new = before.masks["fc0"]["kernel"], state.masks["fc0"]["kernel"]
    grown, dropped = new & ~old, old & ~new
    assert int(grown.sum()) == 3 and int(dropped.sum()) == 3
    assert int(new.sum()) == int(old.sum())  # drop/grow keeps the count
    w = state.params["fc0"]["kernel"]
    assert np.all(np.asarray(w)[np.asarray(grown)] == 0.0)
    assert np.all(np.asarray(w)[np.asarray(dropped)] == 0.0)
    assert np.all(np.asarray(w)[~np.asarray(new)] == 0.0)
    adam = state.opt_state[0]
    for moment in (adam.mu, adam.nu):
        m = np.asarray(moment["fc0"]["kernel"])
        assert np.all(m[np.asarray(grown)] == 0.0) and np.all(m[np.asarray(dropped)] == 0.0)
    # entries kept in both masks trained as usual (inputs that are 0 in every digit do not)
    both = np.asarray(old & new)
    moved = np.asarray(w)[both] != np.asarray(before.params["fc0"]["kernel"])[both]
    assert moved.mean() > 0.5
    assert int(state.pruner_state.count) == 1
    # the next iteration trains the grown weights
    state, _ = step(state, (x, y))
    assert np.any(np.asarray(state.params["fc0"]["kernel"])[np.asarray(grown)] != 0.0)


def test_pruner_runs_only_on_due_steps_of_the_clock():
    tx = optax.sgd(0.1)
    pruner = swap_pruner(every(5, begin=3, end=14))  # due at 3, 8, 13
    tr = train.Trainer(FN.apply_fn, tx, batch_size=30, pruner=pruner)
    state = tr.init_state(FN.params, key=jax.random.key(1), masks=half_masks())
    out = tr.fit(state, DATA, num_steps=20, eval_every=10)
    assert int(out.state.pruner_state.count) == 3
    assert int(js.count_kept(out.state.masks)) == int(js.count_kept(half_masks()))


def test_hooks_read_gradients_indices_and_the_previous_state():
    tx = optax.sgd(0.1)

    def init(state):
        return (jnp.zeros(()), jnp.zeros((), jnp.int32), jnp.zeros(()))

    def update(hs, state, info):
        g = info.grads["fc0"]["kernel"]
        moved = jnp.sum(jnp.abs(state.params["fc0"]["kernel"] - info.prev.params["fc0"]["kernel"]))
        return (hs[0] + jnp.sum(g), hs[1] + jnp.sum(info.indices), hs[2] + moved)

    hook = train.Hook(init, update)
    state = train.init_state(FN.params, tx, key=jax.random.key(1), hooks=[hook])
    chunk = jax.jit(train.make_train_chunk(FN.apply_fn, tx, batch_size=20, num_steps=3,
                                           hooks=[hook]))
    x, y = jnp.asarray(DATA.train.x), jnp.asarray(DATA.train.y)
    out, _ = chunk(state, x, y)
    # reference: replay the three iterations by hand with the same batches
    idx = train.batch_indices(state.key, state.step, num_examples=x.shape[0], batch_size=20,
                              num_steps=3)
    step = jax.jit(train.make_step(FN.apply_fn, tx))
    ref = train.init_state(FN.params, tx, key=jax.random.key(1))
    gsum, moved = 0.0, 0.0
    for t in range(3):
        xb, yb = x[idx[t]], y[idx[t]]

        def loss(p, ref=ref, xb=xb, yb=yb, t=t):
            key = jax.random.split(jax.random.fold_in(jax.random.fold_in(ref.key, 1), t))[1]
            logits, _ = FN.apply_fn(p, ref.model_state, xb, train=True, key=key)
            return jnp.mean(train.cross_entropy(logits, yb))

        gsum += float(jnp.sum(jax.grad(loss)(ref.params)["fc0"]["kernel"]))
        new, _ = step(ref, (xb, yb))
        moved += float(jnp.sum(jnp.abs(new.params["fc0"]["kernel"] - ref.params["fc0"]["kernel"])))
        ref = new
    np.testing.assert_allclose(float(out.hook_state[0][0]), gsum, rtol=1e-5, atol=1e-6)
    assert int(out.hook_state[0][1]) == int(jnp.sum(idx))
    np.testing.assert_allclose(float(out.hook_state[0][2]), moved, rtol=1e-5)


@pytest.fixture(scope="module")
def population_run():
    tx = js.masked(optax.adam(3e-3))
    pruner = swap_pruner(at_step(7))
    tr = train.Trainer(FN.apply_fn, tx, batch_size=30, pruner=pruner)
    keys = jax.random.split(jax.random.key(5), 3)
    pop = jax.vmap(lambda k: tr.init_state(FN.params, key=k, masks=half_masks()))(keys)
    with compilations() as compiled:
        out = tr.fit(pop, DATA, num_steps=30, eval_every=10)
    return tr, keys, out, compiled


def test_population_members_equal_single_runs(population_run):
    tr, keys, out, compiled = population_run
    assert np.shape(out.history["val_accuracy"]) == (4, 3)
    assert len(out.early_stop["step"]) == 3
    single = tr.fit(tr.init_state(FN.params, key=keys[1], masks=half_masks()), DATA,
                    num_steps=30, eval_every=10)
    member = jax.tree.map(lambda a: a[1], out.state.params)
    for a, b in zip(jax.tree.leaves(member), jax.tree.leaves(single.state.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert np.array_equal(np.asarray(out.state.masks["fc0"]["kernel"][1]),
                          np.asarray(single.state.masks["fc0"]["kernel"]))
    np.testing.assert_allclose(np.asarray(out.history["val_loss"])[:, 1],
                               single.history["val_loss"], rtol=1e-5)
    assert [int(c) for c in out.state.pruner_state.count] == [1, 1, 1]


def test_population_program_compiles_once(population_run):
    tr, keys, out, compiled = population_run
    # three chunks of 10 iterations: one population program, compiled at the first call
    assert len(tr.chunk(10, True).compiled) == 1
    pop = jax.vmap(lambda k: tr.init_state(FN.params, key=k, masks=half_masks()))(keys)
    with compilations() as again:
        tr.fit(pop, DATA, num_steps=20, eval_every=10)
    assert [n for n in again if n in ("chunk", "run", "eval_fn")] == []


def test_resume_with_a_pruner_is_bitwise(tmp_path):
    tx = optax.adam(3e-3)
    pruner = swap_pruner(every(6, begin=2))
    tr = train.Trainer(FN.apply_fn, tx, batch_size=30, pruner=pruner)
    state = tr.init_state(FN.params, key=jax.random.key(2), masks=half_masks())
    full = tr.fit(state, DATA, num_steps=30, eval_every=10)
    ck = str(tmp_path / "ck")
    tr.fit(state, DATA, num_steps=20, eval_every=10, checkpoint_dir=ck)  # "killed" at 20
    resumed = tr.fit(state, DATA, num_steps=30, eval_every=10, checkpoint_dir=ck)
    for a, b in zip(jax.tree.leaves((full.state.params, full.state.masks, full.state.opt_state,
                                     full.state.pruner_state)),
                    jax.tree.leaves((resumed.state.params, resumed.state.masks,
                                     resumed.state.opt_state, resumed.state.pruner_state)),
                    strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    np.testing.assert_equal(resumed.history, full.history)  # NaN train metrics at step 0


def test_mismatched_states_are_refused():
    tx = optax.sgd(0.1)
    pruner = swap_pruner(at_step(1))
    tr = train.Trainer(FN.apply_fn, tx, batch_size=30, pruner=pruner)
    plain = train.init_state(FN.params, tx, key=jax.random.key(0))
    with pytest.raises(ValueError, match="pruner_state does not match"):
        tr.fit(plain, DATA, num_steps=10, eval_every=10)
    keys = jax.random.split(jax.random.key(0), 2)
    pop = jax.vmap(lambda k: tr.init_state(FN.params, key=k))(keys)
    pop = pop._replace(step=jnp.array([0, 3], jnp.int32))
    with pytest.raises(ValueError, match=r"different steps \[0, 3\]"):
        tr.fit(pop, DATA, num_steps=10, eval_every=10)
    with pytest.raises(TypeError, match="must be a jaxsparse.pruners.Pruner"):
        train.make_step(FN.apply_fn, tx, pruner=lambda *a: a)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        train.Trainer(FN.apply_fn, tx, batch_size=0)


@pytest.mark.parametrize("group", [1, 2])
def test_cpu_groups_carry_the_state_in_place_and_equal_one_vmap(group):
    # One device running 4 members in groups (what a CPU gets): the fori_loop that writes
    # each group's new state back into the carried population equals one plain vmap.
    from jaxsparse import population

    tx = optax.adam(3e-3)
    pruner = swap_pruner(at_step(2))
    chunk = train.make_train_chunk(FN.apply_fn, tx, batch_size=30, num_steps=4, pruner=pruner)
    keys = jax.random.split(jax.random.key(9), 4)
    pop = jax.vmap(lambda k: train.init_state(FN.params, tx, key=k, masks=half_masks(),
                                              pruner=pruner))(keys)
    x, y = jnp.asarray(DATA.train.x), jnp.asarray(DATA.train.y)
    args = (pop, x, y, jnp.int32(0))
    ref = population.population_map(chunk, in_axes=(0, None, None, None), backend="vmap",
                                    inner="vmap")(*args)
    grouped = population.population_map(chunk, in_axes=(0, None, None, None), backend="vmap",
                                        inner="map", inner_chunk=group)
    out = grouped(*args)
    keyless = lambda o: (o[0]._replace(key=jax.random.key_data(o[0].key)), o[1])  # noqa: E731
    for a, b in zip(jax.tree.leaves(keyless(ref)), jax.tree.leaves(keyless(out)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_eval_with_sequence_labels_averages_over_time():
    # a language model's [batch, time] targets: per-example means, padding weighted out
    w = jax.random.normal(jax.random.key(0), (3, 5))
    apply_fn = lambda p, ms, x, *, train, key: (x @ p["w"], ms)  # noqa: E731
    x = jax.random.normal(jax.random.key(1), (7, 4, 3))
    y = jax.random.randint(jax.random.key(2), (7, 4), 0, 5)
    loss_fn = lambda logits, labels: train.cross_entropy(logits, labels)  # noqa: E731
    out = train.make_eval(apply_fn, batch_size=3, loss_fn=loss_fn)(
        {"w": w}, {}, {"w": jnp.ones((3, 5), bool)}, x, y)
    logits = np.asarray(x @ w)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ref_loss = -np.take_along_axis(logp, np.asarray(y)[..., None], -1)[..., 0].mean()
    ref_acc = (logits.argmax(-1) == np.asarray(y)).mean()
    np.testing.assert_allclose(float(out["loss"]), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(float(out["accuracy"]), ref_acc, rtol=1e-6)
