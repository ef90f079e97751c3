"""Building populations: grids of configurations, stacked hyperparameters, stacked members.

A *population* is a pytree whose leaves carry a leading member axis: params, optimizer
states, masks, keys and per-member hyperparameters (sparsity target, learning rate, seed,
rewind step, criterion index, ...). Anything that does not change array shapes can vary per
member, as a traced value, so the whole grid compiles once.

>>> hp = stack_configs(grid(lr=[1e-3, 3e-3], seed=[0, 1]))
>>> hp["lr"].shape, hp["seed"].dtype
((4,), dtype('int32'))
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse import rules as rules_lib
from jaxsparse.typing import Key, PyTree

AxisSpec = int | None | Sequence[int | None]


def in_axes_tuple(in_axes: AxisSpec, n: int) -> tuple[int | None, ...]:
    """``in_axes`` as one entry per positional argument (an int or ``None`` is broadcast).

    >>> in_axes_tuple(0, 3), in_axes_tuple((0, None), 2)
    ((0, 0, 0), (0, None))
    """
    if in_axes is None or isinstance(in_axes, int):
        return (in_axes,) * n
    in_axes = tuple(in_axes)
    if len(in_axes) != n:
        raise ValueError(f"in_axes has {len(in_axes)} entries for {n} arguments")
    return in_axes


def grid(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """The cartesian product of hyperparameter axes, one dict per member (last axis fastest).

    >>> grid(sparsity=[0.5, 0.9], seed=[0, 1])[1]
    {'sparsity': 0.5, 'seed': 1}
    """
    for name, values in axes.items():
        if isinstance(values, str) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"grid axis {name!r} must be a non-empty list, got {values!r}")
    names = list(axes)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes.values())]


def stack_configs(
    configs: Sequence[dict[str, Any]], fields: Sequence[str] | None = None
) -> dict[str, jax.Array]:
    """Per-member hyperparameters as stacked arrays (traced inside the compiled program).

    Floats become float32, ints int32, bools bool. Strings are refused: map them to an index
    first (e.g. ``criterion_index = names.index(cfg["criterion"])``) so the value stays traced.

    Args:
      configs: one dict per member, e.g. from :func:`grid`.
      fields: which keys to stack; all keys of the first config when ``None``.

    Returns:
      ``{field: array of shape (population,)}``.

    >>> stack_configs(grid(lr=[0.1, 0.2]))["lr"].dtype
    dtype('float32')
    """
    if not configs:
        raise ValueError("stack_configs needs at least one config")
    fields = list(configs[0]) if fields is None else list(fields)
    out = {}
    for f in fields:
        missing = [i for i, c in enumerate(configs) if f not in c]
        if missing:
            raise ValueError(f"field {f!r} is missing from configs {missing[:5]}")
        values = [c[f] for c in configs]
        if any(isinstance(v, str) for v in values):
            raise ValueError(
                f"field {f!r} holds strings {sorted(set(map(str, values)))[:5]}: map them to an "
                "integer index so the value can be traced (one compile for the whole grid)"
            )
        arr = np.asarray(values)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        elif arr.dtype.kind in "iu":
            arr = arr.astype(np.int32)
        elif arr.dtype.kind != "b":
            raise ValueError(f"field {f!r} has values of dtype {arr.dtype}; give numbers/bools")
        out[f] = jnp.asarray(arr)
    return out


def member_keys(seeds: Sequence[int] | jax.Array) -> Key:
    """One PRNG key per member from integer seeds (``jax.random.key(seed)`` for each).

    >>> member_keys([0, 1, 2]).shape
    (3,)
    """
    return jax.vmap(jax.random.key)(jnp.asarray(seeds, dtype=jnp.uint32))


def init_population(init_fn: Callable[[Key], PyTree], keys: Key) -> PyTree:
    """``init_fn`` vmapped over one key per member: a population pytree.

    Member ``i`` equals ``init_fn(keys[i])`` exactly (same random bits).

    >>> pop = init_population(lambda k: jax.random.normal(k, (3,)), member_keys([0, 1]))
    >>> pop.shape
    (2, 3)
    """
    return jax.jit(jax.vmap(init_fn))(keys)


def population_size(tree: PyTree, axis: int = 0) -> int:
    """The member count of a population pytree; a clear error if the leaves disagree.

    >>> population_size({"w": jnp.zeros((5, 3)), "b": jnp.zeros(5)})
    5
    """
    fast = {np.shape(x)[axis] for x in jax.tree.leaves(tree) if len(np.shape(x)) > axis}
    if len(fast) == 1 and all(len(np.shape(x)) > axis for x in jax.tree.leaves(tree)):
        return fast.pop()  # the common case, without building leaf paths
    sizes = {}
    for path, leaf in rules_lib.leaves_with_paths(tree):
        shape = np.shape(leaf)
        if len(shape) <= axis:
            raise ValueError(f"leaf {path!r} of shape {shape} has no population axis {axis}")
        sizes.setdefault(shape[axis], path)
    if len(sizes) != 1:
        raise ValueError(f"population leaves disagree on the member count: {sizes}")
    return next(iter(sizes))


def args_population_size(args: Sequence[PyTree], in_axes: Sequence[int | None]) -> int:
    """The member count shared by the positional ``args`` whose ``in_axes`` entry is not None.

    A leafless argument (e.g. an empty ``model_state`` dict) carries no member count.

    >>> args_population_size((jnp.zeros((3, 2)), jnp.zeros(5), {}), (0, None, 0))
    3
    """
    sizes = {population_size(a, ax) for a, ax in zip(args, in_axes, strict=True)
             if ax is not None and jax.tree.leaves(a)}
    if not sizes:
        raise ValueError("no argument has a population axis (every in_axes entry is None)")
    if len(sizes) != 1:
        raise ValueError(f"arguments disagree on the population size: {sorted(sizes)}")
    return sizes.pop()


def take_member(tree: PyTree, i: int, axis: int = 0) -> PyTree:
    """Member ``i`` of a population pytree (the member axis removed).

    >>> take_member({"w": jnp.arange(6).reshape(3, 2)}, 1)["w"].tolist()
    [2, 3]
    """
    # indexing, not jnp.take: jax 0.7 cannot take from PRNG-key arrays
    return jax.tree.map(lambda a: a[(slice(None),) * (axis % a.ndim) + (i,)], tree)


def stack_members(trees: Sequence[PyTree], axis: int = 0) -> PyTree:
    """Stacks single-member pytrees into a population (inverse of :func:`take_member`).

    >>> stack_members([{"w": jnp.zeros(2)}, {"w": jnp.ones(2)}])["w"].shape
    (2, 2)
    """
    return jax.tree.map(lambda *a: jnp.stack(a, axis=axis), *trees)


def pad_population(tree: PyTree, size: int, *, axis: int = 0) -> PyTree:
    """Pads the member axis to ``size`` by repeating the last member (finite, never NaN).

    One compiled program pads the whole pytree (an eager concatenate per leaf compiles and
    dispatches one op per leaf shape, which dominated small populations' runs). Traceable:
    :func:`jaxsparse.population.population_map` compiles it with the layout of its chunk.

    >>> pad_population(jnp.arange(3), 5).tolist()
    [0, 1, 2, 2, 2]
    """
    if not jax.tree.leaves(tree):  # e.g. an empty model_state: nothing to pad
        return tree
    n = population_size(tree, axis)
    if size < n:
        raise ValueError(f"cannot pad a population of {n} down to {size}")
    if size == n:
        return tree
    return _pad(tree, int(size), int(axis))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _pad(tree: PyTree, size: int, axis: int) -> PyTree:
    def one(a):
        n = a.shape[axis]
        last = jax.lax.slice_in_dim(a, n - 1, n, axis=axis)
        shape = a.shape[:axis] + (size - n,) + a.shape[axis + 1 :]
        return jnp.concatenate([a, jnp.broadcast_to(last, shape)], axis=axis)

    return jax.tree.map(one, tree)


def unpad_population(tree: PyTree, size: int, *, axis: int = 0) -> PyTree:
    """The first ``size`` members (drops the members :func:`pad_population` added).

    >>> unpad_population(jnp.arange(5), 3).tolist()
    [0, 1, 2]
    """
    return jax.tree.map(lambda a: jax.lax.slice_in_dim(a, 0, size, 1, axis), tree)
