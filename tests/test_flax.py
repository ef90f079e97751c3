"""Flax integration: Linen params, NNX state, nnx.Optimizer, TrainState, tickets, docs/flax.md."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsparse as js

flax = pytest.importorskip("flax")
from flax import linen as nn  # noqa: E402
from flax import nnx  # noqa: E402

X = jax.random.normal(jax.random.key(0), (6, 5, 5, 1))
TOK = jnp.arange(12).reshape(6, 2) % 10
Y = jnp.arange(6) % 3


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x, tokens, train: bool = False):
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x)))
        x = x.mean(axis=(1, 2)) + nn.Embed(10, 4)(tokens).mean(axis=1)
        return nn.Dense(3)(x)


class NNXCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.embed = nnx.Embed(10, 4, rngs=rngs)
        self.dense = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x, tokens):
        x = nnx.relu(self.bn(self.conv(x)))
        return self.dense(x.mean(axis=(1, 2)) + self.embed(tokens).mean(axis=1))


def _check_masks(params, masks, want_paths):
    assert jax.tree.structure(masks) == jax.tree.structure(params)
    assert js.masks.prunable_paths(masks) == want_paths
    total = js.count_total(masks)
    assert int(js.count_kept(masks)) == total - js.num_pruned(0.6, total)
    js.validate(params, masks)


def test_linen_params_dict():
    model = LinenCNN()
    variables = model.init(jax.random.key(1), X, TOK)
    params, stats = variables["params"], variables["batch_stats"]
    masks = js.prune(js.scores.magnitude(params), js.ones_like(params), sparsity=0.6)
    _check_masks(params, masks, ["Conv_0/kernel", "Dense_0/kernel", "Embed_0/embedding"])
    tx = js.masked(optax.adamw(1e-2, weight_decay=0.1))
    p = js.apply_masks(params, masks)
    st = tx.init(p)

    def loss(p, stats):
        logits, upd = model.apply({"params": p, "batch_stats": stats}, X, TOK, train=True,
                                  mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean(), upd

    @jax.jit
    def step(p, stats, st):
        (lv, upd), g = jax.value_and_grad(loss, has_aux=True)(p, stats)
        u, st = tx.update(g, st, p, masks=masks)
        return optax.apply_updates(p, u), upd["batch_stats"], st, lv

    l0 = None
    for _ in range(20):
        p, stats, st, lv = step(p, stats, st)
        l0 = lv if l0 is None else l0
    assert float(lv) < float(l0)
    for w, m in zip(jax.tree.leaves(p), jax.tree.leaves(masks), strict=True):
        if np.ndim(m):
            assert np.all(np.asarray(w)[~np.asarray(m)] == 0.0)
    out = model.apply({"params": p, "batch_stats": stats}, X, TOK)
    assert out.shape == (6, 3) and np.all(np.isfinite(np.asarray(out)))


def test_nnx_state_from_split():
    model = NNXCNN(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    masks = js.ones_like(params)
    masks = js.prune(js.scores.magnitude(params), masks, sparsity=0.6)
    _check_masks(params, masks, ["conv/kernel", "dense/kernel", "embed/embedding"])
    lin = js.prune(js.scores.magnitude(params), js.ones_like(params), sparsity=0.6,
                   scope="layerwise")
    assert [r.kept for r in js.report(lin).rows] == [
        n - js.num_pruned(0.6, n) for n in (36, 12, 40)]
    # Train the NNX module the idiomatic way (nnx.jit + nnx.value_and_grad), masked optax.
    nnx.update(model, js.apply_masks(params, masks))
    tx = js.masked(optax.adam(1e-2))
    st = tx.init(nnx.state(model, nnx.Param))

    @nnx.jit
    def step(model, st):
        def loss_fn(model):  # BatchNorm in training mode updates its stats
            return optax.softmax_cross_entropy_with_integer_labels(model(X, TOK), Y).mean()

        lv, grads = nnx.value_and_grad(loss_fn)(model)
        params = nnx.state(model, nnx.Param)
        u, st = tx.update(grads, st, params, masks=masks)
        nnx.update(model, optax.apply_updates(params, u))
        return lv, st

    l0, st = step(model, st)
    for _ in range(20):
        lv, st = step(model, st)
    assert float(lv) < float(l0)
    graphdef, p, rest = nnx.split(model, nnx.Param, ...)
    k = np.asarray(nnx.merge(graphdef, p, rest).conv.kernel[...])
    mk = np.asarray(masks["conv"]["kernel"][...])
    assert np.all(k[~mk] == 0.0) and np.any(k[mk] != 0.0)
    st2 = js.reset_moments(st, masks)
    mu = np.asarray(st2[0].mu["dense"]["kernel"][...])
    assert np.all(mu[~np.asarray(masks["dense"]["kernel"][...])] == 0.0)
    out = nnx.merge(graphdef, p, rest)(X, TOK)
    assert out.shape == (6, 3)


# --------------------------------------------------------------------------- docs/flax.md

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "flax.md"


def doc_program(name):
    blocks = dict(re.findall(r"<!-- tested: (\w+) -->\n```python\n(.*?)```", DOC.read_text(),
                             re.S))
    return blocks[name]


@pytest.mark.parametrize("name", ["nnx", "linen"])
def test_docs_flax_programs_train_sparse_and_reload_the_same_accuracy(name, capsys):
    """The two programs of docs/flax.md, as a user runs them: BatchNorm + Dropout CNNs on the
    digits, 90% sparse, pruned entries exactly 0, the ticket reloaded at the same accuracy."""
    ns = {"__name__": f"docs_flax_{name}"}
    exec(compile(doc_program(name), f"{DOC}:{name}", "exec"), ns)  # noqa: S102
    title = {"nnx": "NNX", "linen": "Linen"}[name]
    assert f"{title} CNN, 90% sparse" in capsys.readouterr().out
    masks = ns["masks"]
    assert js.count_total(masks) == 144 + 10240  # conv + head kernels
    assert int(js.count_kept(masks)) == 10384 - js.num_pruned(0.9, 10384)
    assert ns["acc"] > 0.85  # trained (chance is 0.1); the doc asserts the reload equality
    if name == "nnx":
        fresh, model = ns["fresh"], ns["model"]
        # the BatchNorm statistics came from the ticket, not from the fresh init
        np.testing.assert_array_equal(np.asarray(fresh.bn.mean[...]),
                                      np.asarray(model.bn.mean[...]))
        assert np.any(np.asarray(fresh.bn.var[...]) != 1.0)
    else:
        np.testing.assert_array_equal(
            np.asarray(ns["loaded"]["batch_stats"]["BatchNorm_0"]["mean"]),
            np.asarray(ns["trained"]["batch_stats"]["BatchNorm_0"]["mean"]))


# ------------------------------------------------------------------- masks over params only


class BNNet(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.head = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x, *, train: bool = False):
        x = self.drop(nnx.relu(self.bn(self.conv(x))), deterministic=not train)
        return self.head(x.mean(axis=(1, 2)))


def test_ones_like_refuses_non_parameter_state_and_names_it():
    model = BNNet(rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"BatchStat.*'bn/mean'.*nnx.Param"):
        js.ones_like(nnx.state(model))
    with pytest.raises(ValueError, match="BatchStat"):
        js.ones_like(nnx.split(model)[1])
    with pytest.raises(TypeError, match=r"nnx.Module \(BNNet\)"):
        js.ones_like(model)
    variables = LinenCNN().init(jax.random.key(0), X, TOK)
    with pytest.raises(ValueError, match=r"Linen variables dict.*\['batch_stats'\]"):
        js.ones_like(variables)
    masks = js.ones_like(nnx.state(model, nnx.Param))
    assert js.masks.prunable_paths(masks) == ["conv/kernel", "head/kernel"]


def test_nnx_optimizer_passes_masks_and_refuses_to_run_without_them():
    model = BNNet(rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    masks = js.prune(js.scores.magnitude(params), js.ones_like(params), sparsity=0.5)
    nnx.update(model, js.apply_masks(params, masks))
    opt = nnx.Optimizer(model, js.masked(optax.sgd(0.1, momentum=0.9)), wrt=nnx.Param)
    loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
        m(X, train=True), Y).mean()
    grads = nnx.jit(nnx.grad(loss))(model)
    with pytest.raises(TypeError, match=r"masks.*optimizer.update\(model, grads, masks=masks\)"):
        opt.update(model, grads)
    step = nnx.jit(lambda model, opt, masks: opt.update(model, nnx.grad(loss)(model),
                                                         masks=masks))
    for _ in range(3):
        step(model, opt, masks)
    assert js.masks.nonzero_pruned(nnx.state(model, nnx.Param), masks) == {}
    k = np.asarray(model.conv.kernel[...])
    assert np.count_nonzero(k) == int(masks["conv"]["kernel"][...].sum())  # kept ones moved


def test_linen_train_state_masked_apply_gradients():
    from flax.training import train_state

    params = {"dense": {"kernel": jnp.arange(1.0, 7.0).reshape(2, 3), "bias": jnp.ones(3)}}
    masks = js.ones_like(params)
    masks["dense"]["kernel"] = jnp.array([[True, False, True], [False, True, False]])
    st = train_state.TrainState.create(apply_fn=None, params=js.apply_masks(params, masks),
                                       tx=js.masked(optax.adamw(0.1, weight_decay=0.5)))
    grads = jax.tree.map(jnp.ones_like, params)
    with pytest.raises(TypeError, match="masked_apply_gradients"):
        st.apply_gradients(grads=grads)
    step = jax.jit(js.optim.masked_apply_gradients)
    for _ in range(3):
        st = step(st, grads=grads, masks=masks)
    assert int(st.step) == 3
    k = np.asarray(st.params["dense"]["kernel"])
    np.testing.assert_array_equal(k[~np.asarray(masks["dense"]["kernel"])], 0.0)
    # the kept entries got exactly the plain optimizer's updates
    ref = train_state.TrainState.create(apply_fn=None, params=params,
                                        tx=optax.adamw(0.1, weight_decay=0.5))
    for _ in range(3):
        ref = ref.apply_gradients(grads=grads)
    m = np.asarray(masks["dense"]["kernel"])
    np.testing.assert_allclose(k[m], np.asarray(ref.params["dense"]["kernel"])[m], rtol=1e-6)
    with pytest.raises(TypeError, match="TrainState-like state with a 'params' field, got dict"):
        js.optim.masked_apply_gradients(params, grads=grads, masks=masks)


# ----------------------------------------------------------- tickets keep every collection


def _bn_functional():
    from jaxsparse import models

    model = BNNet(rngs=nnx.Rngs(0))
    return models.functional(model, init=lambda key: BNNet(rngs=nnx.Rngs(key)))


def test_ticket_of_a_functional_model_round_trips_model_state(tmp_path):
    fn = _bn_functional()
    _, model_state = fn.apply_fn(fn.params, fn.model_state, X, train=True)  # stats move
    masks = js.prune(js.scores.magnitude(fn.params), js.ones_like(fn.params), sparsity=0.5)
    params = js.apply_masks(fn.params, masks)
    js.export_ticket(tmp_path / "t", params, masks, model_state=model_state)
    t = js.lottery.read_ticket(tmp_path / "t", like=fn.params, model_state_like=fn.model_state)
    want, _ = fn.apply_fn(params, model_state, X, train=False)
    got, _ = fn.apply_fn(t.params, t.model_state, X, train=False)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert js.masks.equal(t.masks, masks)
    np.testing.assert_array_equal(jax.random.key_data(t.model_state["drop"]["rngs"]["key"]),
                                  jax.random.key_data(model_state["drop"]["rngs"]["key"]))
    # params only: the (params, masks) form warns that it leaves the statistics behind
    with pytest.warns(UserWarning, match=r"also holds model state \['bn/mean'"):
        js.load_ticket(tmp_path / "t", like=fn.params)
    # a ticket exported without its statistics cannot be read into a model that has them
    js.export_ticket(tmp_path / "bare", params, masks)
    with pytest.raises(ValueError, match=r"model_state has no leaf 'bn/mean'.*exported without"):
        js.lottery.read_ticket(tmp_path / "bare", like=fn.params, model_state_like=model_state)
    with pytest.raises(ValueError, match=r"holds no BatchStat for BNNet \(\['bn/mean', 'bn/var'\]"):
        js.load_ticket(tmp_path / "bare", like=BNNet(rngs=nnx.Rngs(3)))


def test_supermask_subnetwork_exports_with_its_batch_statistics(tmp_path):
    from jaxsparse import supermask

    fn = _bn_functional()
    sm = supermask.supermask(fn.apply_fn, estimator="topk", sparsity=0.5)
    sm_params, sm_state = sm.init(fn.params, fn.model_state, key=jax.random.key(0))
    _, sm_state = sm.apply(sm_params, sm_state, X, train=True, key=jax.random.key(1))
    params, masks = sm.export(sm_params, sm_state)
    js.export_ticket(tmp_path / "sm", params, masks, model_state=sm_state["model"])
    t = js.lottery.read_ticket(tmp_path / "sm", like=fn.params, model_state_like=fn.model_state)
    want, _ = sm.apply(sm_params, sm_state, X, train=False, deterministic=True)
    got, _ = fn.apply_fn(t.params, t.model_state, X, train=False)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    assert not np.array_equal(np.asarray(t.model_state["bn"]["mean"]), np.zeros(4))
