"""Building populations: grids, stacked hyperparameters, members, padding; the sweep alias."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsparse import population


def test_grid_and_stack_configs():
    g = population.grid(sparsity=[0.5, 0.9], seed=[0, 1, 2])
    assert len(g) == 6 and g[4] == {"sparsity": 0.9, "seed": 1}
    hp = population.stack_configs(g)
    assert hp["sparsity"].dtype == jnp.float32 and hp["seed"].dtype == jnp.int32
    np.testing.assert_array_equal(hp["seed"], [0, 1, 2, 0, 1, 2])
    assert population.stack_configs([{"on": True}, {"on": False}])["on"].dtype == jnp.bool_
    with pytest.raises(ValueError, match="integer index"):
        population.stack_configs(population.grid(criterion=["large_final", "movement"]))
    with pytest.raises(ValueError, match=r"'wd' is missing from configs \[0\]"):
        population.stack_configs([{"lr": 0.1}, {"lr": 0.2, "wd": 1}], ["wd"])
    with pytest.raises(ValueError, match="non-empty list"):
        population.grid(lr=[])


def test_init_population_member_i_is_init_fn_of_key_i():
    init_fn = lambda k: {"w": jax.random.normal(k, (3, 2)), "k": k}  # noqa: E731
    keys = population.member_keys([5, 7, 9])
    pop = population.init_population(init_fn, keys)
    for i, seed in enumerate([5, 7, 9]):
        one = population.take_member(pop, i)
        np.testing.assert_array_equal(one["w"], init_fn(jax.random.key(seed))["w"])
        np.testing.assert_array_equal(jax.random.key_data(one["k"]),
                                      jax.random.key_data(jax.random.key(seed)))
    back = population.stack_members([population.take_member(pop, i) for i in range(3)])
    np.testing.assert_array_equal(back["w"], pop["w"])


def test_population_size_pad_and_unpad():
    tree = {"w": jnp.arange(6.0).reshape(3, 2), "b": jnp.arange(3)}
    assert population.population_size(tree) == 3
    padded = population.pad_population(tree, 5)
    np.testing.assert_array_equal(padded["w"][3:], [[4.0, 5.0], [4.0, 5.0]])  # the last member
    np.testing.assert_array_equal(padded["b"], [0, 1, 2, 2, 2])
    assert population.pad_population(tree, 3) is tree
    back = population.unpad_population(padded, 3)
    np.testing.assert_array_equal(back["w"], tree["w"])
    along1 = population.pad_population(jnp.zeros((2, 3)), 4, axis=1)
    assert along1.shape == (2, 4)
    with pytest.raises(ValueError, match="cannot pad a population of 3 down to 2"):
        population.pad_population(tree, 2)
    with pytest.raises(ValueError, match="disagree"):
        population.population_size({"a": jnp.zeros(3), "b": jnp.zeros(4)})
    with pytest.raises(ValueError, match=r"leaf '.*s.*' of shape \(\) has no population axis"):
        population.population_size({"s": jnp.float32(1.0), "a": jnp.zeros(3)})
    assert population.args_population_size((tree, jnp.zeros(9), {}), (0, None, 0)) == 3


def test_sweep_is_a_deprecated_alias_of_population():
    from jaxsparse import sweep

    for name in ("population_map", "grid", "task_slice", "merge_results", "make_mesh"):
        with pytest.warns(DeprecationWarning, match="jaxsparse.sweep is deprecated; use "
                                                    "jaxsparse.population"):
            assert getattr(sweep, name) is getattr(population, name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="train_population"):
            sweep.train_population  # noqa: B018 - gone: the one trainer is jaxsparse.train
