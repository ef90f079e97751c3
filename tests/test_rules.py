"""Path rules: path strings, first match wins, resolve, defaults."""

import jax.numpy as jnp
import pytest

from jaxsparse import rules as R

TREE = {"Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)},
        "layers": [{"w": jnp.ones((2, 2))}, {"w": jnp.ones((2, 2))}]}


def test_paths_for_dicts_and_lists():
    assert R.leaf_paths(TREE) == ["Dense_0/bias", "Dense_0/kernel", "layers/0/w", "layers/1/w"]
    got = R.map_with_path(lambda p, x: p, TREE)
    assert got["layers"][1]["w"] == "layers/1/w"


def test_first_match_wins_and_resolve():
    rules = [("layers/1", 0.1), ("layers", 0.2), (lambda p, x: x.ndim == 2, 0.3)]
    assert R.match(rules, "layers/1/w") == 0.1
    assert R.match(rules, "layers/0/w") == 0.2
    assert R.match(rules, "Dense_0/kernel", jnp.ones((2, 3))) == 0.3
    assert R.match(rules, "Dense_0/bias", jnp.ones(3), default=-1) == -1
    assert R.match_index(rules, "layers/0/w") == 1
    out = R.resolve(rules, TREE, default=0.0)
    assert out["Dense_0"]["bias"] == 0.0 and out["layers"][1]["w"] == 0.1
    assert R.resolve({"kernel": 1}, TREE, default=0)["Dense_0"]["kernel"] == 1


def test_resolve_require_all_used_and_bad_rules():
    with pytest.raises(ValueError, match=r"\['nothing'\] match no leaf"):
        R.resolve([("kernel", 1), ("nothing", 2)], TREE, require_all_used=True)
    with pytest.raises(ValueError, match="invalid regex"):
        R.check_rules([("(", 1)])
    with pytest.raises(ValueError, match="pair"):
        R.check_rules([("a", 1, 2)])
    with pytest.raises(ValueError, match="predicate"):
        R.check_rules([(3, 1)])


def test_default_prunable():
    assert R.default_prunable("Dense_0/kernel", jnp.ones((2, 3)))
    assert R.default_prunable("Embed_0/embedding", jnp.ones((10, 3)))
    assert not R.default_prunable("Dense_0/bias", jnp.ones(3))
    assert not R.default_prunable("BatchNorm_0/scale", jnp.ones((3, 3)))
    assert not R.default_prunable("x", jnp.ones(()))
    assert R.prunable([("bias", True)], "Dense_0/bias", jnp.ones(3))
    with pytest.raises(ValueError, match="scalar"):
        R.prunable([("s", True)], "s", jnp.ones(()))
