"""jaxsparse.oneshot: SparseGPT / Wanda / magnitude against float64 NumPy references of the
papers' algorithms, N:M legality, exact counts, sequential calibration, sharding, OWL, the
capture of linear inputs, and clear errors on bad input."""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import Mesh

import jaxsparse as js
from jaxsparse import models, oneshot, select
from jaxsparse.models import transformer as tf

# ---------------------------------------------------------------------------------------
# NumPy float64 references, written from the papers.


def np_num_pruned(s: float, n: int) -> int:
    return math.floor(s * n + 0.5)


def np_sparsegpt(w, h, *, sparsity=None, nm=None, blocksize=128, percdamp=0.01):
    """SparseGPT (Frantar & Alistarh 2023, Algorithm 1) on W [K, N], float64."""
    w = np.array(w, np.float64)
    h = np.array(h, np.float64)
    k, cols = w.shape
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead, :] = 0.0
    h += percdamp * np.mean(np.diag(h)) * np.eye(k)
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: H^-1 = U^T U
    q_all, keep_all = np.zeros_like(w), np.zeros(w.shape, bool)
    for i1 in range(0, k, blocksize):
        i2 = min(i1 + blocksize, k)
        bs = i2 - i1
        w1, u1, err1 = w[i1:i2].copy(), u[i1:i2, i1:i2], np.zeros((bs, cols))
        d = np.diag(u1)
        keep = np.zeros((bs, cols), bool)
        if nm is None:  # prune the smallest w^2 / U_ii^2 of the block; ties keep lower index
            n_prune = np_num_pruned(sparsity, i2 * cols) - np_num_pruned(sparsity, i1 * cols)
            order = np.argsort(-(w1 ** 2 / d[:, None] ** 2).ravel(), kind="stable")
            flat = np.zeros(bs * cols, bool)
            flat[order[: bs * cols - n_prune]] = True
            keep = flat.reshape(bs, cols)
        for i in range(bs):
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                score = w1[i:i + m] ** 2 / d[i:i + m, None] ** 2
                for c in range(cols):
                    keep[i + np.argsort(-score[:, c], kind="stable")[:n], c] = True
            row = w1[i].copy()
            q = np.where(keep[i], row, 0.0)
            q_all[i1 + i] = q
            err = (row - q) / u1[i, i]
            w1[i:] -= np.outer(u1[i, i:], err)
            err1[i] = err
        w[i2:] -= u[i1:i2, i2:].T @ err1
        keep_all[i1:i2] = keep
    return q_all, keep_all


def np_wanda(w, x, *, sparsity=None, nm=None):
    """Wanda (Sun et al. 2023): |W| * ||X_j||_2, compared per output (column of W [K, N])."""
    w = np.asarray(w, np.float64)
    score = np.abs(w) * np.linalg.norm(np.asarray(x, np.float64), axis=0)[:, None]
    keep = np.zeros(w.shape, bool)
    k, cols = w.shape
    for c in range(cols):
        if nm is None:
            order = np.argsort(-score[:, c], kind="stable")
            keep[order[: k - np_num_pruned(sparsity, k)], c] = True
        else:
            n, m = nm
            for g in range(0, k, m):
                keep[g + np.argsort(-score[g:g + m, c], kind="stable")[:n], c] = True
    return keep


@pytest.fixture(scope="module")
def layer():
    """A well-conditioned layer: correlated inputs (so OBS updates matter), 3 blocks of 16."""
    rng = np.random.default_rng(0)
    k, cols = 48, 12
    x = rng.normal(size=(256, k)) @ (np.eye(k) + 0.3 * rng.normal(size=(k, k)))
    w = rng.normal(size=(k, cols))
    return w, x


SETTINGS = [({"sparsity": 0.5}, None), ({"structure": js.NM(2, 4)}, (2, 4)),
            ({"structure": js.NM(4, 8)}, (4, 8))]


@pytest.mark.parametrize("kw,nm", SETTINGS, ids=["50%", "2:4", "4:8"])
def test_sparsegpt_matches_float64_reference(layer, kw, nm):
    w, x = layer
    h = x.T @ x
    q_ref, keep_ref = np_sparsegpt(w, h, sparsity=kw.get("sparsity"), nm=nm, blocksize=16)
    out = oneshot.sparsegpt(jnp.float32(w), jnp.float32(h), blocksize=16, **kw)
    np.testing.assert_array_equal(np.asarray(out.mask), keep_ref)
    np.testing.assert_allclose(np.asarray(out.weight), q_ref, rtol=0,
                               atol=2e-5 * np.abs(q_ref).max())
    assert np.all(np.asarray(out.weight)[~keep_ref] == 0.0)  # exact zeros
    assert int((~np.asarray(out.mask)).sum()) == w.size // 2  # exact count
    kept = keep_ref & (np.abs(w) > 0)
    assert np.abs(np.asarray(out.weight)[kept] - w[kept]).max() > 1e-2  # kept weights moved
    if nm is not None:
        assert js.is_nm({"kernel": out.mask}, *nm, exact=True)


def test_sparsegpt_dead_inputs_and_other_sparsity(layer):
    w, x = layer
    x = x.copy()
    x[:, [3, 17, 40]] = 0.0  # never-active inputs: H_jj = 0
    h = x.T @ x
    q_ref, keep_ref = np_sparsegpt(w, h, sparsity=0.7, blocksize=16)
    out = oneshot.sparsegpt(jnp.float32(w), jnp.float32(h), sparsity=0.7, blocksize=16)
    np.testing.assert_array_equal(np.asarray(out.mask), keep_ref)
    np.testing.assert_allclose(np.asarray(out.weight), q_ref, atol=2e-5 * np.abs(q_ref).max())
    assert np.all(np.asarray(out.weight)[[3, 17, 40]] == 0.0)
    assert int((~np.asarray(out.mask)).sum()) == np_num_pruned(0.7, w.size)


@pytest.mark.parametrize("kw,nm", SETTINGS[:2], ids=["50%", "2:4"])
def test_wanda_and_magnitude_match_reference(layer, kw, nm):
    w, x = layer
    out = oneshot.wanda(jnp.float32(w), jnp.float32((x ** 2).sum(0)), **kw)
    np.testing.assert_array_equal(np.asarray(out.mask), np_wanda(w, x, sparsity=kw.get(
        "sparsity"), nm=nm))
    np.testing.assert_array_equal(np.asarray(out.weight), np.where(out.mask, np.float32(w), 0))
    mag = oneshot.magnitude(jnp.float32(w), **kw)
    if nm is None:  # per layer: the global median of |w|
        thresh = np.sort(np.abs(w).ravel())[w.size // 2]
        np.testing.assert_array_equal(np.asarray(mag.mask), np.abs(w) >= thresh)
        assert (np.asarray(out.mask).sum(0) == w.shape[0] // 2).all()  # wanda: per output
    else:
        np.testing.assert_array_equal(np.asarray(mag.mask), np.asarray(js.nm_mask(w, 2, 4)))


def test_top_along_ties_keep_lower_index():
    keep = select.top_along(jnp.array([[2.0, 1.0], [1.0, 1.0]]), 2)
    np.testing.assert_array_equal(np.asarray(keep), [[True, True], [False, False]])
    rng = np.random.default_rng(1)
    s = rng.integers(-3, 4, size=(40, 6)).astype(np.float32) * 0.5  # many ties, -0.0 and 0.0
    s[3, 2], s[5, 1] = np.nan, -np.inf
    top = jax.jit(select.top_along, static_argnums=2)
    for k in (0, 1, 17, 120, 240):  # flat: stable order of (-score), NaN last
        order = np.argsort(-np.where(np.isnan(s), -np.inf, s).ravel(), kind="stable")
        ref = np.zeros(s.size, bool)
        ref[order[:k]] = True
        np.testing.assert_array_equal(np.asarray(top(s, k, None)), ref.reshape(s.shape))
    order = np.argsort(-np.where(np.isnan(s), -np.inf, s), axis=0, kind="stable")
    ref = np.zeros(s.shape, bool)
    np.put_along_axis(ref, order[:13], True, axis=0)
    np.testing.assert_array_equal(np.asarray(top(s, 13, 0)), ref)


# ---------------------------------------------------------------------------------------
# The sequential pipeline on a small transformer.


@pytest.fixture(scope="module")
def gpt():
    """A 2-block GPT whose LayerNorm gains are log-normal (outlier input features, as in
    LLMs), and 2 calibration batches of 8 sequences of 16 bytes."""
    model = tf.gpt(key=jax.random.key(0), d_model=32, num_layers=2, num_heads=2, d_ff=64,
                   max_len=16)
    params = models.functional(model).params
    key = jax.random.key(3)
    for i in range(2):
        for ln in ("ln1", "ln2"):
            key, sub = jax.random.split(key)
            params[f"block{i}"][ln]["scale"] = jnp.exp(jax.random.normal(sub, (32,)))
    tokens = jax.random.randint(jax.random.key(1), (2, 8, 16), 0, 256)
    return model, oneshot.gpt_blocks(model), params, tokens


@pytest.fixture(scope="module")
def pruned(gpt):
    model, blocks, params, tokens = gpt
    return {type(m).__name__: oneshot.prune(blocks, params, tokens, m, sparsity=0.5)
            for m in (oneshot.Magnitude(), oneshot.Wanda(), oneshot.SparseGPT())}


def test_reconstruction_error_order(pruned):
    """Per layer, on a fixed seed: SparseGPT <= Wanda <= magnitude (||XW - XŴ||_F)."""
    for path in pruned["Magnitude"].layers:
        e = [pruned[n].layers[path].error for n in ("SparseGPT", "Wanda", "Magnitude")]
        assert e[0] <= e[1] <= e[2], (path, e)
    assert len(pruned["Magnitude"].layers) == 12  # q, k, v, out, fc1, fc2 of two blocks


def test_prune_result_structure(gpt, pruned):
    _, _, params, _ = gpt
    res = pruned["SparseGPT"]
    js.validate(res.params, res.masks)
    assert float(js.sparsity(res.masks)) == 0.5
    assert res.masks["embed"]["embedding"].shape == ()  # untouched leaves: scalar True
    np.testing.assert_array_equal(res.params["head"]["kernel"], params["head"]["kernel"])
    for path, r in res.layers.items():
        w, mk = oneshot.get_subtree(res.params, path), oneshot.get_subtree(res.masks, path)
        assert r.sparsity == 0.5 and mk.dtype == bool
        assert np.all(np.asarray(w)[~np.asarray(mk)] == 0)
    assert res.block_sparsity == (0.5, 0.5)


def test_sequential_uses_pruned_upstream_inputs(gpt, pruned):
    """Block 1's statistics come from the output of the already-pruned block 0."""
    _, blocks, params, tokens = gpt
    res = pruned["SparseGPT"]
    upstream = oneshot.set_subtree(params, "block0", res.params["block0"])
    seq = oneshot.calibrate(blocks, upstream, tokens)
    dense = oneshot.calibrate(blocks, params, tokens)
    path = "block1/mlp/fc1/kernel"
    w = np.asarray(oneshot.get_subtree(params, path), np.float64)
    delta = w - np.asarray(oneshot.get_subtree(res.params, path), np.float64)
    for stats, same in ((seq, True), (dense, False)):
        err = math.sqrt(np.sum(delta * (np.asarray(stats[path].xtx, np.float64) @ delta)))
        assert math.isclose(err, res.layers[path].error, rel_tol=1e-4) is same


def test_nm_pipeline_is_legal_and_exports(gpt):
    _, blocks, params, tokens = gpt
    res = oneshot.prune(blocks, params, tokens, oneshot.Wanda(), structure=js.NM(2, 4),
                        errors=False)
    rules = [(lambda p, x: p in res.layers, True), (".*", False)]
    assert js.is_nm(res.masks, 2, 4, exact=True, rules=rules)
    w = res.params["block1"]["mlp"]["fc2"]["kernel"]
    mk = res.masks["block1"]["mlp"]["fc2"]["kernel"]
    c = js.nm.compress(w, 2, 4, mask=mk)
    np.testing.assert_array_equal(js.nm.decompress(c), jnp.where(mk, w, 0))
    assert math.isnan(res.layers["block0/attn/query/kernel"].error)


def test_one_pass_equals_dense_blocks_and_sharding(gpt):
    """A whole-model apply_fn gives the dense statistics; 4 devices give the 1-device sums."""
    model, blocks, params, tokens = gpt
    fn = models.functional(model)
    apply_fn = lambda p, x: fn.apply_fn(p, {}, x, train=False)[0]  # noqa: E731
    rules = [(lambda p, x: not p.startswith("block"), False)]
    one = oneshot.calibrate(apply_fn, params, tokens, rules=rules)
    seq = oneshot.calibrate(blocks, params, tokens,
                            mesh=Mesh(np.asarray(jax.devices()[:1]), ("data",)))
    assert sorted(one) == sorted(seq) and len(one) == 12
    assert oneshot.data_mesh(8).devices.size == 4  # the default: batches split over 4 devices
    for p in one:
        np.testing.assert_allclose(one[p].xtx, seq[p].xtx, rtol=2e-5, atol=1e-3)
        np.testing.assert_allclose(one[p].sq_norm, seq[p].sq_norm, rtol=2e-5)
        assert int(one[p].count) == 2 * 8 * 16


def test_owl(gpt):
    _, blocks, params, tokens = gpt
    res = oneshot.owl(blocks, params, tokens, sparsity=0.6, lam=0.1, errors=False)
    assert len(res.outlier_ratios) == 2 and res.outlier_ratios[0] != res.outlier_ratios[1]
    np.testing.assert_allclose(np.mean(res.block_sparsity), 0.6, atol=1e-9)
    # the block with more outliers is pruned less
    lo, hi = np.argmax(res.outlier_ratios), np.argmin(res.outlier_ratios)
    assert res.block_sparsity[lo] < res.block_sparsity[hi]
    for path, r in res.layers.items():
        block = int(path[5])
        assert r.target == res.block_sparsity[block]
        k = oneshot.get_subtree(params, path).shape[0]  # Wanda: per output column
        assert r.sparsity == np_num_pruned(r.target, k) / k
    # outlier ratio of block 0 against NumPy
    stats = oneshot.calibrate(blocks, params, tokens, needs="norms")
    scores = np.concatenate([
        (np.abs(np.asarray(oneshot.get_subtree(params, p), np.float64))
         * np.sqrt(np.asarray(stats[p].sq_norm, np.float64))[:, None]).ravel()
        for p in stats if p.startswith("block0/")])
    assert math.isclose(res.outlier_ratios[0], np.mean(scores > 5 * scores.mean()),
                        abs_tol=1e-6)


def test_owl_sparsities():
    sp = oneshot.owl_sparsities([0.01, 0.02, 0.03, 0.09], 0.7, lam=0.08)
    assert math.isclose(sp.mean(), 0.7, abs_tol=1e-9)
    assert np.all(sp >= 0.62 - 1e-12) and np.all(sp <= 0.78 + 1e-12)
    assert np.all(np.diff(sp) <= 0)  # more outliers -> lower sparsity
    # inside the band: exactly the OWL code's normalise-and-centre values
    r = np.array([0.01, 0.02, 0.03])
    d = 0.16 * (r - r.min()) / (r.max() - r.min())
    np.testing.assert_allclose(oneshot.owl_sparsities(r, 0.5, 0.08), 0.5 - (d - d.mean()))
    np.testing.assert_array_equal(oneshot.owl_sparsities([0.2, 0.2], 0.5), [0.5, 0.5])
    with pytest.raises(ValueError, match="lam"):
        oneshot.owl_sparsities([0.1, 0.2], 0.95, lam=0.08)


# ---------------------------------------------------------------------------------------
# Capture.


def test_capture_through_jit_remat_casts_and_linen():
    @jax.jit
    def inner(x, k):
        return jax.nn.relu(x @ k)

    def f(p, x):
        h = inner(x, p["a"])
        h = jax.checkpoint(lambda a: a @ p["b"].astype(jnp.bfloat16).astype(jnp.float32))(h)
        return jnp.einsum("btd,df->btf", h, p["c"])

    p = {"a": jnp.ones((4, 3)), "b": jnp.ones((3, 5)), "c": jnp.ones((5, 2))}
    x = jax.random.normal(jax.random.key(0), (2, 6, 4))
    out, acts = jax.jit(lambda p, x: oneshot.linear_inputs(f, p, x, targets=["a", "b", "c"]))(
        p, x)
    np.testing.assert_allclose(out, f(p, x), rtol=1e-6)
    np.testing.assert_allclose(acts["a"][0], x.reshape(12, 4))
    np.testing.assert_allclose(acts["c"][0], (jax.nn.relu(x @ p["a"]) @ p["b"]).reshape(12, 5),
                               rtol=1e-5)
    dense = nn.Dense(3)
    lp = dense.init(jax.random.key(0), jnp.ones((1, 4)))
    _, acts = oneshot.linear_inputs(lambda v, x: dense.apply(v, x), lp, x,
                                    targets=["params/kernel"])
    np.testing.assert_allclose(acts["params/kernel"][0], x.reshape(12, 4))


# ---------------------------------------------------------------------------------------
# Bad input.


def _dense_model():
    params = {"l": {"kernel": jax.random.normal(jax.random.key(0), (8, 4)),
                    "bias": jnp.zeros(4)}}
    return (lambda p, x: x @ p["l"]["kernel"] + p["l"]["bias"][None]), params


def test_bad_calibration_batches(gpt):
    _, blocks, params, tokens = gpt
    with pytest.raises(TypeError, match="integer ids, got dtype float32"):
        oneshot.prune(blocks, params, tokens.astype(jnp.float32), oneshot.Wanda(),
                      sparsity=0.5)
    with pytest.raises(ValueError, match=r"batch 1 has shape \(8, 15\)"):
        oneshot.prune(blocks, params, [tokens[0], tokens[1][:, :15]], oneshot.Wanda(),
                      sparsity=0.5)
    with pytest.raises(ValueError, match=r"must be \[batch, time\], got shape \(8, 16, 1\)"):
        oneshot.prune(blocks, params, tokens[..., None], oneshot.Wanda(), sparsity=0.5)
    with pytest.raises(ValueError, match="num_batches, batch"):
        oneshot.prune(blocks, params, tokens[0, 0], oneshot.Wanda(), sparsity=0.5)
    with pytest.raises(KeyError, match="'block7'"):
        oneshot.prune(blocks._replace(paths=("block0", "block7")), params, tokens,
                      oneshot.Wanda(), sparsity=0.5)


def test_singular_hessian_without_dampening():
    apply_fn, params = _dense_model()
    xs = jax.random.normal(jax.random.key(1), (1, 4, 8))  # 4 rows < 8 inputs: rank 4
    with pytest.raises(ValueError, match="'l/kernel'.*percdamp=0.0.*singular"):
        oneshot.prune(apply_fn, params, xs, oneshot.SparseGPT(percdamp=0.0), sparsity=0.5)
    out = oneshot.prune(apply_fn, params, xs, oneshot.SparseGPT(), sparsity=0.5)  # dampened
    assert np.isfinite(np.asarray(out.params["l"]["kernel"])).all()


def test_nm_on_non_divisible_axis():
    w = jnp.ones((6, 4))
    with pytest.raises(ValueError, match=r"'l/kernel'.*\(6, 4\).*size 6, not divisible by m=4"):
        oneshot.wanda(w, jnp.ones(6), structure=js.NM(2, 4), path="l/kernel")
    apply_fn = lambda p, x: x @ p["l"]["kernel"]  # noqa: E731
    with pytest.raises(ValueError, match=r"'l/kernel'.*not divisible by m=8"):
        oneshot.prune(apply_fn, {"l": {"kernel": jnp.ones((12, 4))}}, jnp.ones((1, 2, 12)),
                      oneshot.SparseGPT(), structure=js.NM(4, 8))


def test_layer_never_reached():
    apply_fn, params = _dense_model()
    params["unused"] = {"kernel": jnp.ones((8, 8))}
    xs = jnp.ones((1, 2, 8))
    with pytest.raises(ValueError, match="'unused/kernel' is never reached.*never used"):
        oneshot.prune(apply_fn, params, xs, oneshot.Wanda(), sparsity=0.5)
    del params["unused"]
    reshaped = lambda p, x: x @ p["l"]["kernel"].reshape(4, 8).T  # noqa: E731
    with pytest.raises(ValueError, match="'l/kernel' is never reached.*reshape"):
        oneshot.prune(reshaped, params, xs, oneshot.Wanda(), sparsity=0.5)
    transposed = lambda p, x: jax.lax.dot_general(  # noqa: E731
        x, p["l"]["kernel"], (((1,), (1,)), ((), ())))
    with pytest.raises(ValueError, match=r"'l/kernel' of shape \(8, 4\) is contracted along"):
        oneshot.prune(transposed, {"l": {"kernel": jnp.ones((8, 4))}}, jnp.ones((1, 2, 4)),
                      oneshot.Wanda(), sparsity=0.5)


def test_driver_rejects_bad_config_before_any_work(tmp_path, capsys):
    from experiments import oneshot as driver

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    config = os.path.join(root, "experiments", "configs", "oneshot", "oneshot_stdlib.py")
    for bad, says in ((["settings=('0.5', '2:x')"], "'2:x' is neither a sparsity"),
                      (["methods=('wanda', 'obs')"], "unknown ['obs']"),
                      (["owl_sparsity=0.95"], "owl_lam=0.08 must be in"),
                      (["calib_batch=48"], "not a multiple of calib_batch=48")):
        with pytest.raises(SystemExit) as e:
            driver.main(["--config", config, "--out", str(tmp_path), "--set", *bad])
        assert e.value.code == 2 and says in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # no run directory
