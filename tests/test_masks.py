"""Mask pytrees: build, apply, count, report, validate, set operations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse import masks as M

P = {
    "conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.ones(4)},
    "bn": {"scale": jnp.ones(4), "mean": jnp.zeros(4)},
    "embed": {"embedding": jnp.ones((10, 3))},
    "step": jnp.zeros(()),
}


def test_ones_like_default_and_rules():
    m = js.ones_like(P)
    assert jax.tree.structure(m) == jax.tree.structure(P)
    assert M.prunable_paths(m) == ["conv/kernel", "embed/embedding"]
    assert m["conv"]["bias"].shape == () and m["conv"]["bias"].dtype == jnp.bool_
    m2 = js.ones_like(P, rules=[("embed", False), ("bn/scale", True)])
    assert M.prunable_paths(m2) == ["bn/scale", "conv/kernel"]
    with pytest.raises(ValueError, match="scalar leaf 'step'"):
        js.ones_like(P, rules=[("step", True)])


def test_apply_masks_exact_zeros_even_for_nan_and_under_jit():
    p = {"w": jnp.array([[jnp.nan, 2.0], [jnp.inf, -1.0]]), "b": jnp.array([5.0, 6.0])}
    m = {"w": jnp.array([[False, True], [False, True]]), "b": jnp.asarray(True)}
    for out in (js.apply_masks(p, m), jax.jit(js.apply_masks)(p, m)):
        np.testing.assert_array_equal(out["w"], [[0.0, 2.0], [0.0, -1.0]])
        np.testing.assert_array_equal(out["b"], [5.0, 6.0])
    vm = jax.vmap(js.apply_masks)(M.stack([p, p]), M.stack([m, m]))
    np.testing.assert_array_equal(vm["w"][1], [[0.0, 2.0], [0.0, -1.0]])


def test_counts_density_sparsity_report():
    m = js.ones_like(P)
    m["conv"]["kernel"] = m["conv"]["kernel"].at[0].set(False)  # 24 of 72 pruned
    assert js.count_total(m) == 72 + 30
    assert int(js.count_kept(m)) == 48 + 30
    np.testing.assert_allclose(float(js.density(m)), 78 / 102, rtol=1e-6)
    np.testing.assert_allclose(float(js.sparsity(m)), 24 / 102, rtol=1e-6)
    r = js.report(m)
    assert [(x.path, x.kept, x.total) for x in r.rows] == [
        ("conv/kernel", 48, 72), ("embed/embedding", 30, 30)]
    assert r.as_dicts()[0]["density"] == pytest.approx(48 / 72)
    text = str(r)
    assert "conv/kernel" in text and "TOTAL" in text and "0.7647" in text
    assert float(js.density({"b": jnp.asarray(True)})) == 1.0


def test_validate_errors_name_the_leaf():
    m = js.ones_like(P)
    js.validate(P, m)
    bad = jax.tree.map(lambda x: x, m)
    bad["conv"]["kernel"] = jnp.ones((3, 3, 2, 4), jnp.float32)
    with pytest.raises(TypeError, match=r"'conv/kernel'.*float32.*bool"):
        js.validate(P, bad)
    bad["conv"]["kernel"] = jnp.ones((3, 3, 4, 2), bool)
    with pytest.raises(ValueError, match=r"'conv/kernel'.*\(3, 3, 4, 2\).*\(3, 3, 2, 4\)"):
        js.validate(P, bad)
    bad["conv"]["kernel"] = m["conv"]["kernel"]
    bad["conv"]["bias"] = jnp.asarray(False)
    with pytest.raises(ValueError, match="'conv/bias' is False"):
        js.validate(P, bad)
    with pytest.raises(ValueError, match=r"only in params: \['step'\]"):
        js.validate(P, {k: v for k, v in m.items() if k != "step"})
    with pytest.raises(ValueError, match="different tree structures"):
        js.apply_masks(P, {"x": jnp.asarray(True)})


def test_set_operations():
    a = {"w": jnp.array([True, True, False, False]), "b": jnp.asarray(True)}
    b = {"w": jnp.array([True, False, True, False]), "b": jnp.asarray(True)}
    np.testing.assert_array_equal(js.intersect(a, b)["w"], [True, False, False, False])
    np.testing.assert_array_equal(js.union(a, b)["w"], [True, True, True, False])
    np.testing.assert_array_equal(js.difference(a, b)["w"], [False, True, False, False])
    np.testing.assert_array_equal(js.invert(a)["w"], [False, False, True, True])
    assert bool(js.invert(a)["b"]) and js.invert(a)["b"].shape == ()
    assert M.equal(a, a) and not M.equal(a, b)


def test_validate_is_the_one_check_shapes_and_dtypes_under_jit_values_when_concrete():
    p = {"w": jnp.ones((4, 5)), "b": jnp.ones(5)}
    good = {"w": jnp.ones((4, 5), bool), "b": jnp.asarray(True)}

    @jax.jit
    def f(m):
        M.validate(p, m, where="f")
        return js.apply_masks(p, m)["w"].sum()

    assert float(f(good)) == 20.0
    with pytest.raises(TypeError, match=r"f: mask at 'w' has dtype float32"):
        f({"w": jnp.ones((4, 5)), "b": jnp.asarray(True)})  # dtype: static, checked in jit
    with pytest.raises(ValueError, match=r"f: mask at 'w' has shape \(1, 5\)"):
        f({"w": jnp.ones((1, 5), bool), "b": jnp.asarray(True)})  # never broadcast
    # a traced scalar False cannot be seen under jit; concretely it is refused
    assert float(f({"w": good["w"], "b": jnp.asarray(False)})) == 20.0
    with pytest.raises(ValueError, match=r"scalar mask at 'b' is False"):
        M.validate(p, {"w": good["w"], "b": jnp.asarray(False)})
    # the mask tree alone (count / report / set operations)
    M.validate(None, good)
    with pytest.raises(TypeError, match=r"sparsity: mask at 'w' has dtype float32"):
        js.sparsity({"w": jnp.full((2, 2), 0.3)})


def test_nonzero_pruned_counts_per_leaf():
    p = {"a": jnp.array([[1.0, 2.0], [0.0, -0.0]]), "b": jnp.ones(2)}
    m = {"a": jnp.array([[True, False], [False, False]]), "b": jnp.asarray(True)}
    assert M.nonzero_pruned(p, m) == {"a": 1}  # -0.0 == 0.0 counts as zero
    assert M.nonzero_pruned(js.apply_masks(p, m), m) == {}


def test_compact_report_counts_dead_units():
    m = {"fc0": {"kernel": jnp.array([[True, False, False], [False, False, False]])},
         "fc1": {"kernel": jnp.array([[True, True], [True, False], [False, False]]),
                 "bias": jnp.array(True)}}
    r = M.compact_report(m)
    fc0, fc1 = r["layers"]
    assert (fc0["dead_in"], fc0["dead_out"]) == (1, 2)  # input 1 feeds nothing; outs 1,2 empty
    assert (fc1["dead_in"], fc1["dead_out"]) == (1, 0)
    # hidden units 0..2 between fc0 and fc1: 1 has no input, 2 has neither -> 2 removable
    assert r["links"] == [{"from": "fc0/kernel", "to": "fc1/kernel", "units": 3,
                           "removable": 2}]
    assert (r["removable"], r["hidden_units"]) == (2, 3)
    assert js.compact_report is M.compact_report


def test_check_structure_names_the_leaves_only_one_tree_has():
    with pytest.raises(ValueError, match=r"only in scores: \['b'\]"):
        M.check_structure({"w": 0, "b": 0}, {"w": 0}, names=("scores", "masks"))
    M.check_structure({"w": 1}, {"w": 2})  # same structure: no error
