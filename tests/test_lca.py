"""Loss Change Allocation: exactness on a quadratic, a float64 NumPy reference on a small MLP,
the telescoping sum and its convergence in sub-steps, the streaming recorder in the trainer
(per parameter / neuron / layer / iteration, helping counts, pruned entries, mask changes),
the analyses and the bad-input errors."""

from __future__ import annotations

import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsparse import lca, train
from jaxsparse.pruners.base import Pruner, at_step

D, H, C, N = 5, 7, 3, 48


# ---------------------------------------------------------------------------------------
# A small tanh MLP, in JAX (float32) and in NumPy (float64, hand-written backward pass).


def apply_fn(params, model_state, x, *, train, key):
    del train, key
    a = jnp.tanh(x @ params["l1"]["kernel"] + params["l1"]["bias"][None, :])
    return a @ params["l2"]["kernel"] + params["l2"]["bias"][None, :], model_state


def np_loss_grad(p, x, y):
    w1, b1 = p["l1"]["kernel"], p["l1"]["bias"]
    w2, b2 = p["l2"]["kernel"], p["l2"]["bias"]
    a = np.tanh(x @ w1 + b1)
    z = a @ w2 + b2
    z = z - z.max(1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    n = len(y)
    loss = float(np.mean(-np.log(prob[np.arange(n), y])))
    dz = prob.copy()
    dz[np.arange(n), y] -= 1.0
    dz /= n
    da = dz @ w2.T
    dz1 = da * (1.0 - a**2)
    grads = {"l1": {"kernel": x.T @ dz1, "bias": dz1.sum(0)},
             "l2": {"kernel": a.T @ dz, "bias": dz.sum(0)}}
    return loss, grads


def np_tree(p):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), p)


def np_lca(p0, p1, x, y, substeps=1):
    """Composite Simpson LCA in float64 (weights written out independently of the library)."""
    n = substeps
    p0, p1 = np_tree(p0), np_tree(p1)
    delta = jax.tree.map(np.subtract, p1, p0)
    gbar = jax.tree.map(np.zeros_like, p0)
    for k in range(2 * n + 1):
        w = (1.0 if k in (0, 2 * n) else 4.0 if k % 2 else 2.0) / (6 * n)
        point = jax.tree.map(lambda a, d, s=k / (2 * n): a + s * d, p0, delta)
        _, g = np_loss_grad(point, x, y)
        gbar = jax.tree.map(lambda acc, gi, w=w: acc + w * gi, gbar, g)
    return jax.tree.map(np.multiply, delta, gbar)


def tree_sum(t):
    return sum(float(np.sum(a)) for a in jax.tree.leaves(t))


def random_params(rng, scale):
    return {"l1": {"kernel": rng.standard_normal((D, H)) * scale,
                   "bias": rng.standard_normal(H) * scale},
            "l2": {"kernel": rng.standard_normal((H, C)) * scale,
                   "bias": rng.standard_normal(C) * scale}}


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D)).astype(np.float32)
    y = rng.integers(0, C, N).astype(np.int32)
    t0 = jax.tree.map(lambda a: a.astype(np.float32), random_params(rng, 0.7))
    t1 = jax.tree.map(lambda a, b: (a + b).astype(np.float32), t0, random_params(rng, 0.15))
    return x, y, t0, t1


def jax_loss(x, y):
    def loss(p):
        logits, _ = apply_fn(p, {}, jnp.asarray(x), train=False, key=None)
        return jnp.mean(train.cross_entropy(logits, jnp.asarray(y)))

    return loss


# ---------------------------------------------------------------------------------------
# One step


def test_simpson_weights():
    s, w = lca.simpson_weights(1)
    assert s.tolist() == [0.0, 0.5, 1.0] and np.allclose(w, [1 / 6, 4 / 6, 1 / 6])
    for n in (1, 2, 5):
        assert np.isclose(lca.simpson_weights(n)[1].sum(), 1.0)
    with pytest.raises(ValueError, match="substeps"):
        lca.simpson_weights(0)


@pytest.mark.parametrize("substeps", [1, 3])
def test_quadratic_equals_closed_form(substeps):
    rng = np.random.default_rng(1)
    m = rng.standard_normal((7, 7))
    a = (m @ m.T + np.eye(7)).astype(np.float32)
    flat = lambda p: jnp.concatenate([p["u"], p["v"].reshape(-1)])  # noqa: E731
    loss = lambda p: 0.5 * flat(p) @ jnp.asarray(a) @ flat(p)  # noqa: E731
    t0 = {"u": rng.standard_normal(3).astype(np.float32),
          "v": rng.standard_normal((2, 2)).astype(np.float32)}
    t1 = jax.tree.map(lambda z: (z + rng.standard_normal(z.shape)).astype(np.float32), t0)
    got = lca.lca_of_step(loss, t0, t1, substeps=substeps)
    # Closed form: the gradient A θ is linear along the path, its mean is A (θ0 + θ1) / 2.
    f0 = np.concatenate([t0["u"], t0["v"].ravel()]).astype(np.float64)
    f1 = np.concatenate([t1["u"], t1["v"].ravel()]).astype(np.float64)
    want = (f1 - f0) * (a.astype(np.float64) @ (f0 + f1) / 2)
    got_flat = np.concatenate([np.asarray(got["u"]), np.asarray(got["v"]).ravel()])
    np.testing.assert_allclose(got_flat, want, rtol=1e-5, atol=1e-5)
    change = 0.5 * f1 @ a @ f1 - 0.5 * f0 @ a @ f0
    assert abs(got_flat.sum() - change) < 1e-4 * abs(change)


def test_mlp_matches_float64_numpy(problem):
    x, y, t0, t1 = problem
    for n in (1, 2):
        got = lca.lca_of_step(jax_loss(x, y), t0, t1, substeps=n)
        want = np_lca(t0, t1, x.astype(np.float64), y, substeps=n)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(g), w, rtol=1e-4, atol=2e-7)


def test_sum_is_loss_change_and_error_shrinks_with_substeps(problem):
    x, y, t0, _ = problem
    rng = np.random.default_rng(2)
    t1 = jax.tree.map(lambda a, b: (a + b).astype(np.float32), t0, random_params(rng, 0.3))
    loss = jax_loss(x, y)
    change64 = (np_loss_grad(np_tree(t1), x.astype(np.float64), y)[0]
                - np_loss_grad(np_tree(t0), x.astype(np.float64), y)[0])
    # float64 reference: the composite-Simpson error falls by ~2^4 per doubling.
    ref = [abs(tree_sum(np_lca(t0, t1, x.astype(np.float64), y, n)) - change64)
           for n in (1, 2, 4, 8)]
    assert all(b < a / 8 for a, b in zip(ref, ref[1:], strict=False)), ref
    # The library (float32): the same errors, decreasing towards float32's floor (~1e-7).
    errors = [abs(tree_sum(lca.lca_of_step(loss, t0, t1, substeps=n)) - change64)
              for n in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[0] > 1e-4 and errors[2] < 3e-6, errors
    assert abs(errors[0] - ref[0]) < 1e-6 and abs(errors[1] - ref[1]) < 1e-6


# ---------------------------------------------------------------------------------------
# The recorder inside the trainer


def run_steps(rec, params, steps, *, masks=None, pruner=None, lr=0.5):
    """Trains with the trainer's own step (jitted once), returns the states θ_0..θ_T."""
    tx = optax.sgd(lr)
    x, y = rec.x, rec.y
    state = train.init_state(params, tx, key=jax.random.key(3), masks=masks,
                             hooks=[rec.hook], pruner=pruner)
    step = jax.jit(train.make_step(apply_fn, tx, hooks=[rec.hook], pruner=pruner))
    states = [state]
    for t in range(steps):
        ix = (jnp.arange(16) + 16 * t) % x.shape[0]
        state, _ = step(state, (x[ix], y[ix]))
        states.append(state)
    return states


@pytest.fixture(scope="module")
def recorded(problem):
    x, y, t0, _ = problem
    masks = jax.tree.map(lambda a: jnp.ones((), bool), t0)
    masks["l1"]["kernel"] = jnp.asarray(np.random.default_rng(5).random((D, H)) < 0.6)
    masks["l2"]["kernel"] = jnp.ones((H, C), bool)
    rec = lca.recorder(apply_fn, (x, y), num_steps=6, keep=lca.KEEP_OPTIONS,
                       neuron_axis=[("l1/kernel", 0)])
    states = run_steps(rec, t0, 5, masks=masks)
    refs = [np_lca(a.params, b.params, x.astype(np.float64), y)
            for a, b in zip(states[:-1], states[1:], strict=True)]
    return rec, states, refs, masks


def test_recorder_matches_reference(recorded):
    rec, states, refs, masks = recorded
    x, y = np.asarray(rec.x, np.float64), np.asarray(rec.y)
    res = lca.summarise(rec, states[-1].hook_state[0])
    assert res.steps == 5 and res.layers == ("l1", "l2")
    want = jax.tree.map(lambda *a: sum(a), *refs)
    for g, w in zip(jax.tree.leaves(res.per_param), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
    # per layer per iteration, per iteration, and the exact loss changes
    ref_layer = np.array([[tree_sum(r["l1"]), tree_sum(r["l2"])] for r in refs])
    np.testing.assert_allclose(res.per_layer, ref_layer, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.per_iteration, ref_layer.sum(1), rtol=1e-4, atol=1e-6)
    losses = [np_loss_grad(np_tree(s.params), x, y)[0] for s in states]
    np.testing.assert_allclose(res.loss_change, np.diff(losses), rtol=1e-4, atol=1e-6)
    assert abs(res.loss_start - losses[0]) < 1e-5 and abs(res.loss_end - losses[-1]) < 1e-5
    # telescoping: Σ LCA = L(θ_T) - L(θ_0) within Simpson's error on these steps
    assert abs(res.error) < 1e-3 * abs(res.loss_end - res.loss_start)
    assert abs(res.total - tree_sum(want)) < 1e-5
    # per neuron: l1/kernel per input (axis 0, by rule), the rest per output unit
    np.testing.assert_allclose(res.per_neuron["l1"]["kernel"], want["l1"]["kernel"].sum(1),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.per_neuron["l2"]["kernel"], want["l2"]["kernel"].sum(0),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(lca.input_image(res, "l1/kernel", (D,)),
                               want["l1"]["kernel"].sum(1), rtol=1e-4, atol=1e-6)


def test_helping_counts_and_pruned_zero(recorded):
    rec, states, refs, masks = recorded
    res = lca.summarise(rec, states[-1].hook_state[0])
    kept = np.asarray(masks["l1"]["kernel"])
    # pruned entries: exactly zero allocation, never moved
    assert np.all(np.asarray(res.per_param["l1"]["kernel"])[~kept] == 0.0)
    assert int(states[-1].hook_state[0].pruned_moved) == 0
    in_force = np.array([kept.sum() + H, H * C + C])
    assert (res.active == in_force[None, :]).all()
    for t, r in enumerate(refs):
        for j, layer in enumerate(("l1", "l2")):
            vals = np.concatenate([np.ravel(a) for a in jax.tree.leaves(r[layer])])
            if layer == "l1":
                vals = np.concatenate([r["l1"]["bias"], r["l1"]["kernel"][kept]])
            clear = np.abs(vals) > 1e-9  # sign decided well above float32 noise
            assert abs(res.helping[t, j] - (vals < 0).sum()) <= (~clear).sum()
            assert abs(res.hurting[t, j] - (vals > 0).sum()) <= (~clear).sum()
    frac = lca.fraction_helping(res)
    np.testing.assert_allclose(frac, res.helping.sum(1) / in_force.sum())
    assert set(lca.layer_totals(res)) == {"l1", "l2"}


def test_keep_subset_and_missing_aggregate_error(problem):
    x, y, t0, _ = problem
    rec = lca.recorder(apply_fn, (x, y), num_steps=3, keep=("per_layer",))
    hs = train.init_state(t0, optax.sgd(0.1), key=jax.random.key(0),
                          hooks=[rec.hook]).hook_state[0]
    assert hs.per_param == {} and hs.helping == {} and hs.per_layer.shape == (3, 2)
    res = lca.summarise(rec, hs)
    assert res.per_param is None and res.steps == 0
    with pytest.raises(ValueError, match="helping"):
        lca.fraction_helping(res)
    with pytest.raises(ValueError, match="unknown keep"):
        lca.recorder(apply_fn, (x, y), num_steps=3, keep=("per_pixel",))


class DropState(NamedTuple):
    count: jax.Array


def drop_first_weight_at(step: int) -> Pruner:
    """A pruner that drops l1/kernel[0, 0] at iteration ``step``."""
    def init(params, masks):
        return DropState(jnp.zeros((), jnp.int32))

    def update(masks, state, params, *, grads, step, key):
        l1 = {**masks["l1"], "kernel": masks["l1"]["kernel"].at[0, 0].set(False)}
        return {**masks, "l1": l1}, DropState(state.count + 1)

    return Pruner(init, update, at_step(step))


def test_mask_changes_need_history(problem):
    x, y, t0, _ = problem
    pruner = drop_first_weight_at(2)
    with pytest.raises(ValueError, match="mask_history=True"):
        lca.recorder(apply_fn, (x, y), num_steps=4, pruner=pruner)
    # Not told about the pruner: the change is detected on device and reading it back fails.
    rec = lca.recorder(apply_fn, (x, y), num_steps=4)
    states = run_steps(rec, t0, 4, pruner=pruner)
    with pytest.raises(ValueError, match=r"masks changed at 1 iterations \(first at iteration 2"):
        lca.summarise(rec, states[-1].hook_state[0])
    # With the history: the dropped weight's move to 0 is allocated, and the sum still telescopes.
    rec = lca.recorder(apply_fn, (x, y), num_steps=4, pruner=pruner, mask_history=True,
                       keep=lca.KEEP_OPTIONS)
    states = run_steps(rec, t0, 4, pruner=pruner)
    res = lca.summarise(rec, states[-1].hook_state[0])
    assert res.mask_steps == 1
    assert res.dropped.tolist() == [0, 0, 1, 0] and res.grown.tolist() == [0, 0, 0, 0]
    assert float(states[3].params["l1"]["kernel"][0, 0]) == 0.0
    ref = np_lca(states[2].params, states[3].params, x.astype(np.float64), y)
    assert abs(res.pruning[2] - ref["l1"]["kernel"][0, 0]) < 1e-6
    assert res.pruning[[0, 1, 3]].tolist() == [0.0, 0.0, 0.0]
    assert res.active[2, 0] == D * H + H and res.active[3, 0] == D * H + H - 1
    assert abs(res.error) < 1e-3 * abs(res.loss_end - res.loss_start)


def test_bad_inputs(problem):
    x, y, t0, _ = problem
    tx = optax.sgd(0.1)
    with pytest.raises(ValueError, match="does not fit"):  # the set itself
        lca.recorder(apply_fn, (x, y), num_steps=2, memory_bytes=x.nbytes)
    rec = lca.recorder(apply_fn, (x, y), num_steps=2, memory_bytes=2 * x.nbytes + 2000)
    with pytest.raises(ValueError, match="does not fit.*recorder state"):  # set + state
        train.init_state(t0, tx, key=jax.random.key(0), hooks=[rec.hook])
    rec = lca.recorder(apply_fn, (x[:, :4], y), num_steps=2)
    with pytest.raises(ValueError, match=r"does not accept inputs of shape \(4,\)"):
        train.init_state(t0, tx, key=jax.random.key(0), hooks=[rec.hook])
    with pytest.raises(ValueError, match="expected x"):
        lca.recorder(apply_fn, (x, y[:-1]), num_steps=2)
    with pytest.raises(ValueError, match="integers"):
        lca.recorder(apply_fn, (x, y.astype(np.float32)), num_steps=2)
    # a run longer than the buffers
    rec = lca.recorder(apply_fn, (x, y), num_steps=2)
    states = run_steps(rec, t0, 3)
    with pytest.raises(ValueError, match="num_steps >= 3"):
        lca.summarise(rec, states[-1].hook_state[0])


def test_population_and_checkpoint_resume(problem, tmp_path):
    """Under the trainer's population (vmap) each member records its own run; a run killed
    after a checkpoint resumes to the same allocation as an uninterrupted one."""
    from jaxsparse import population

    x, y, t0, t1 = problem
    rec = lca.recorder(apply_fn, (x, y), num_steps=4, keep=("per_layer", "per_iteration"))
    trainer = train.Trainer(apply_fn, optax.sgd(0.3), batch_size=16, hooks=[rec.hook])
    keys = jax.random.split(jax.random.key(0), 2)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), t0, t1)
    pop = trainer.fit(jax.vmap(lambda p, k: trainer.init_state(p, key=k))(stacked, keys),
                      {"train": (x, y)}, num_steps=4, eval_every=2)
    d = str(tmp_path / "ckpt")
    state = trainer.init_state(t1, key=keys[1])
    one = lca.summarise(rec, trainer.fit(state, {"train": (x, y)}, num_steps=4,
                                         eval_every=2).state.hook_state[0])
    member = lca.summarise(rec, population.take_member(pop.state.hook_state[0], 1))
    np.testing.assert_allclose(member.per_layer, one.per_layer, rtol=1e-5, atol=1e-7)
    other = lca.summarise(rec, population.take_member(pop.state.hook_state[0], 0))
    assert abs(other.error) < 1e-3 * abs(other.loss_end - other.loss_start)
    assert not np.allclose(other.per_layer, member.per_layer)  # members are not mixed up
    trainer.fit(state, {"train": (x, y)}, num_steps=2, eval_every=2, checkpoint_dir=d)
    resumed = lca.summarise(rec, trainer.fit(state, {"train": (x, y)}, num_steps=4,
                                             eval_every=2, checkpoint_dir=d).state.hook_state[0])
    assert (resumed.per_layer == one.per_layer).all() and resumed.total == one.total


# ---------------------------------------------------------------------------------------
# Analyses


def test_peaks_and_synchrony():
    series = np.zeros(50)
    series[[4, 17, 30, 41]] = [-2.0, -3.0, -1.0, -2.5]
    assert lca.learning_peaks(series, top=0.1).tolist() == [4, 17, 30, 41]
    assert lca.learning_peaks(series, top=0.04).tolist() == [17, 41]
    layers = np.zeros((50, 3))
    layers[[4, 17, 30, 41], 0] = -1.0
    layers[[5, 17, 29, 41], 1] = -1.0  # within ±1 of layer 0's peaks
    layers[[10, 23, 35, 47], 2] = -1.0  # never near the others
    out = lca.peak_synchrony(layers, top=0.1, tolerance=1, shifts=50)
    assert out["observed"][0, 1] == 1.0 and out["observed"][1, 0] == 1.0
    assert out["observed"][0, 2] == 0.0 and out["observed"][2, 1] == 0.0
    assert 0.0 < out["null"][0, 1] < 0.5


def test_layer_totals_and_hurting():
    per_layer = np.array([[-1.0, 0.5, 0.1], [-0.5, 0.2, -0.3]])
    res = lca.LCAResult(2, ("a", "b", "c"), 1.0, 0.0, 0, 0, None, None, per_layer, None, None,
                        None, None, None, 0, None, None, None)
    assert lca.layer_totals(res) == pytest.approx({"a": -1.5, "b": 0.7, "c": -0.2})
    assert lca.hurting_layers(res) == ["b"]


def test_driver_smoke(tmp_path):
    """experiments/lca.py end to end on digits (tiny): results, arrays and the four pictures."""
    from experiments import common
    from experiments import lca as driver

    config = common.load_config("experiments/configs/lca/lan2019_lca_lenet300_mnist.py")
    common.apply_overrides(config, ["dataset=digits", "image_shape=(8, 8)", "num_steps=12",
                                    "eval_every=12", "model_kwargs.hidden=(16, 8)"])
    out = driver.run(config, str(tmp_path), show_progress=False)
    assert out["steps"] == 12 and out["layers"] == ["fc0", "fc1", "head"]
    tel = out["telescoping"]
    assert abs(tel["error"]) < 1e-3 * abs(tel["loss_change"])
    assert 0.0 < out["fraction_helping"]["mean"] < 1.0
    (run_dir,) = tmp_path.iterdir()
    for name in ("lca.npz", "fraction_helping.png", "per_layer.png", "peaks.png",
                 "input_pixels.png", "curves.png"):
        assert (run_dir / name).exists(), name
    with np.load(run_dir / "lca.npz") as z:
        assert z["per_layer"].shape == (12, 3) and z["first_layer"].shape == (64, 16)
    again = driver.run(config, str(tmp_path), show_progress=False)  # finished: skipped
    assert again["telescoping"] == json.loads((run_dir / "results.json").read_text())[
        "telescoping"]
