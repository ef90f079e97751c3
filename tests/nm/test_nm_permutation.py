"""Channel permutations (jaxsparse.nm.permutation): more kept magnitude, same network function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsparse import nm


def test_permutation_improves_and_mlp_outputs_unchanged():
    k = jax.random.split(jax.random.key(0), 3)
    # a consumer whose strong input channels sit together, so 2:4 wastes magnitude
    scale = jnp.repeat(jnp.array([4.0, 0.1]), 8)[:, None]
    params = {
        "Dense_0": {"kernel": jax.random.normal(k[0], (5, 16)),
                    "bias": jax.random.normal(k[1], (16,))},
        "Dense_1": {"kernel": scale * jax.random.normal(k[2], (16, 3))},
    }

    def mlp(p, x):
        h = jax.nn.relu(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"][None])
        return h @ p["Dense_1"]["kernel"]

    perm, info = nm.search_permutation(params["Dense_1"]["kernel"], 2, 4)
    assert sorted(perm.tolist()) == list(range(16))
    assert info["after"] > info["before"] * 1.2 and info["swaps"] > 0
    new = nm.permute(params, perm, [("Dense_1/kernel", 0), ("Dense_0/kernel", 1),
                                             ("Dense_0/bias", 0)])
    np.testing.assert_allclose(
        float(nm.retained_magnitude(new["Dense_1"]["kernel"])), info["after"], rtol=1e-5)
    x = jax.random.normal(jax.random.key(9), (7, 5))
    np.testing.assert_allclose(mlp(new, x), mlp(params, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="match no leaf"):
        nm.permute(params, perm, [("Dense_9/kernel", 0)])


def test_permutation_conv_pair_outputs_unchanged():
    k = jax.random.split(jax.random.key(1), 3)
    p = {"c0": {"kernel": jax.random.normal(k[0], (3, 3, 3, 8)), "bias": jnp.arange(8.0)},
         "c1": {"kernel": jax.random.normal(k[1], (3, 3, 8, 4))}}

    def net(q, x):
        dn = ("NHWC", "HWIO", "NHWC")
        h = jax.lax.conv_general_dilated(x, q["c0"]["kernel"], (1, 1), "SAME",
                                         dimension_numbers=dn) + q["c0"]["bias"][None, None, None]
        return jax.lax.conv_general_dilated(jax.nn.relu(h), q["c1"]["kernel"], (1, 1), "SAME",
                                            dimension_numbers=dn)

    perm, info = nm.search_permutation(p["c1"]["kernel"], 2, 4, path="c1/kernel")
    assert info["after"] >= info["before"]
    q = nm.permute(p, perm, [("c1/kernel", -2), ("c0/kernel", -1), ("c0/bias", 0)])
    x = jax.random.normal(k[2], (2, 5, 5, 3))
    np.testing.assert_allclose(net(q, x), net(p, x), rtol=1e-4, atol=1e-4)
