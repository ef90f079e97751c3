"""Path rules: which leaves of a pytree are prunable, frozen, or grouped.

A *rule list* is a sequence of ``(pattern, value)`` pairs. ``pattern`` is a regular
expression searched (``re.search``) in the leaf's path string, or a predicate
``f(path: str, leaf) -> bool``. The **first match wins**; a leaf no rule matches gets the
default. The same rules drive pruning, freezing and per-layer rates.

Path strings join the keys of a leaf's key path with ``/``: a Linen params dict gives
``"Dense_0/kernel"``, a list gives ``"layers/0/w"``, an NNX ``State`` gives
``"linear/kernel"`` (the trailing ``value`` attribute of an ``nnx.Variable`` is dropped so
that Linen and NNX trees match the same rules).

>>> import jax.numpy as jnp
>>> params = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}}
>>> leaf_paths(params)
['dense/bias', 'dense/kernel']
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxsparse.typing import PyTree

Pattern = str | Callable[[str, Any], bool]
Rules = Sequence[tuple[Pattern, Any]]

# Attribute names that wrap the actual array in Flax variable containers.
_WRAPPER_KEYS = ("value", "raw_value")
# Leaf names that are never prunable by default (biases, norm parameters, ...).
_NOT_PRUNABLE_NAMES = re.compile(
    r"(^|/)(bias|biases|b|scale|gamma|beta|mean|var|offset|running_mean|running_var)$"
)


def _key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def path_str(key_path: Sequence[Any]) -> str:
    """The ``/``-joined path string of a ``jax.tree_util`` key path."""
    names = [_key_name(k) for k in key_path]
    while len(names) > 1 and names[-1] in _WRAPPER_KEYS:
        names.pop()
    return "/".join(names)


def leaves_with_paths(tree: PyTree) -> list[tuple[str, Any]]:
    """``[(path string, leaf), ...]`` in ``jax.tree_util`` flattening order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(path_str(kp), leaf) for kp, leaf in flat]


def leaf_paths(tree: PyTree) -> list[str]:
    """The path string of every leaf, in flattening order."""
    return [p for p, _ in leaves_with_paths(tree)]


def map_with_path(fn: Callable[[str, Any], Any], tree: PyTree, *rest: PyTree) -> PyTree:
    """``jax.tree.map`` whose function also receives the leaf's path string first."""
    return jax.tree_util.tree_map_with_path(
        lambda kp, x, *r: fn(path_str(kp), x, *r), tree, *rest
    )


def _matches(pattern: Pattern, path: str, leaf: Any) -> bool:
    if callable(pattern):
        return bool(pattern(path, leaf))
    return re.search(pattern, path) is not None


def check_rules(rules: Rules | None, name: str = "rules") -> list[tuple[Pattern, Any]]:
    """Validates a rule list and returns it as a list (``None`` gives ``[]``)."""
    if rules is None:
        return []
    if isinstance(rules, dict):
        rules = list(rules.items())
    out = []
    for i, rule in enumerate(rules):
        if not (isinstance(rule, tuple | list) and len(rule) == 2):
            raise ValueError(f"{name}[{i}] must be a (pattern, value) pair, got {rule!r}")
        pattern, value = rule
        if isinstance(pattern, str):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"{name}[{i}]: invalid regex {pattern!r}: {e}") from None
        elif not callable(pattern):
            raise ValueError(f"{name}[{i}]: pattern must be a regex string or a predicate")
        out.append((pattern, value))
    return out


def match(rules: Rules | None, path: str, leaf: Any = None, default: Any = None) -> Any:
    """The value of the first rule whose pattern matches ``path`` (else ``default``)."""
    for pattern, value in check_rules(rules):
        if _matches(pattern, path, leaf):
            return value
    return default


def match_index(rules: Rules | None, path: str, leaf: Any = None) -> int | None:
    """Index of the first rule matching ``path``, or ``None``."""
    for i, (pattern, _) in enumerate(check_rules(rules)):
        if _matches(pattern, path, leaf):
            return i
    return None


def resolve(
    rules: Rules | None,
    tree: PyTree,
    default: Callable[[str, Any], Any] | Any = None,
    *,
    name: str = "rules",
    require_all_used: bool = False,
) -> PyTree:
    """A tree of per-leaf values: first matching rule, else ``default``.

    ``default`` may be a callable ``(path, leaf) -> value``. With ``require_all_used``, a
    rule that matches no leaf is an error naming the rule (a typo in a path regex must not
    silently do nothing).
    """
    rules = check_rules(rules, name)
    used = [False] * len(rules)

    def pick(path: str, leaf: Any) -> Any:
        for i, (pattern, value) in enumerate(rules):
            if _matches(pattern, path, leaf):
                used[i] = True
                return value
        return default(path, leaf) if callable(default) else default

    values = [pick(p, leaf) for p, leaf in leaves_with_paths(tree)]
    if require_all_used:
        unused = [rules[i][0] for i, u in enumerate(used) if not u]
        if unused:
            raise ValueError(
                f"{name}: pattern(s) {unused!r} match no leaf; leaf paths are "
                f"{leaf_paths(tree)!r}"
            )
    treedef = jax.tree_util.tree_structure(tree)
    return jax.tree_util.tree_unflatten(treedef, values)


def default_prunable(path: str, leaf: Any) -> bool:
    """The default rule: weight matrices and conv kernels (``ndim >= 2``) are prunable.

    Biases, norm scales/offsets, batch statistics and scalars are not. Embedding tables
    (2-D) are prunable; exclude them with a rule such as ``("embedding", False)``.
    """
    ndim = np.ndim(leaf)
    if ndim < 2:
        return False
    return _NOT_PRUNABLE_NAMES.search(path) is None


def prunable(rules: Rules | None, path: str, leaf: Any) -> bool:
    """Whether the leaf at ``path`` is prunable under ``rules`` (first match wins)."""
    value = match(rules, path, leaf, default=None)
    if value is None:
        return default_prunable(path, leaf)
    if value and np.ndim(leaf) == 0:
        raise ValueError(f"rule makes scalar leaf {path!r} prunable; scalars cannot be pruned")
    return bool(value)
