"""Flax helpers: NNX variables and Linen collections, told apart without a hard flax import.

jaxsparse functions take any pytree of arrays. Two Flax containers hold more than trainable
weights, and masks must never cover the rest:

* an NNX ``State`` from ``nnx.state(model)`` / ``nnx.split(model)`` also holds
  ``nnx.BatchStat`` (BatchNorm statistics), ``nnx.RngState`` (Dropout keys and counts),
  ``nnx.Cache``, ...: build masks over ``nnx.state(model, nnx.Param)`` (or the ``params`` of
  ``graphdef, params, rest = nnx.split(model, nnx.Param, ...)``);
* a Linen ``variables`` dict ``{"params": ..., "batch_stats": ...}``: build masks over
  ``variables["params"]``.

:func:`check_params_only` raises a clear error for both (``jaxsparse.ones_like`` calls it);
:func:`split_model` / :func:`merge_into` move a whole NNX model (every collection) to and from
plain nested dicts, which is how tickets are exported and loaded (``jaxsparse.lottery``).
Nothing here imports flax unless flax is already imported by the caller.

>>> from flax import nnx
>>> model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.BatchNorm(3, rngs=nnx.Rngs(0)))
>>> non_param_variables(nnx.state(model))
[('layers/1/mean', 'BatchStat'), ('layers/1/var', 'BatchStat')]
>>> non_param_variables(nnx.state(model, nnx.Param))
[]
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import jax

from jaxsparse import rules as rules_lib
from jaxsparse.typing import PyTree

# Linen collections that are never trainable weights (``variables[...]`` besides "params").
LINEN_COLLECTIONS = ("batch_stats", "cache", "intermediates", "perturbations", "spectral_stats",
                     "losses")


def _nnx() -> Any | None:
    """``flax.nnx`` if the caller already imported flax (never imports it on its own)."""
    if "flax" not in sys.modules:
        return None
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - a broken flax install
        return None
    return nnx


def is_nnx_module(x: Any) -> bool:
    """Whether ``x`` is an ``nnx.Module``."""
    nnx = _nnx()
    return nnx is not None and isinstance(x, nnx.Module)


def is_nnx_state(x: Any) -> bool:
    """Whether ``x`` is an NNX ``State`` (what ``nnx.state`` / ``nnx.split`` return)."""
    nnx = _nnx()
    return nnx is not None and isinstance(x, nnx.State)


def _is_variable(x: Any) -> bool:
    nnx = _nnx()
    return nnx is not None and isinstance(x, nnx.Variable)


def variables(tree: PyTree) -> list[tuple[str, str]]:
    """``[(path, variable type name), ...]`` of the NNX ``Variable`` leaves of ``tree``."""
    if _nnx() is None:
        return []
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_variable)
    return [(rules_lib.path_str(kp), type(v).__name__) for kp, v in flat if _is_variable(v)]


def non_param_variables(tree: PyTree, *, rng: bool = True) -> list[tuple[str, str]]:
    """``[(path, type name), ...]`` of the NNX variables in ``tree`` that are not ``nnx.Param``.

    BatchNorm statistics (``BatchStat``), Dropout RNG state (``RngKey`` / ``RngCount``; left
    out with ``rng=False``), caches, intermediates, ... Empty for plain pytrees and for
    ``nnx.state(model, nnx.Param)``.
    """
    nnx = _nnx()
    if nnx is None:
        return []
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_variable)
    return [(rules_lib.path_str(kp), type(v).__name__) for kp, v in flat
            if _is_variable(v) and not isinstance(v, nnx.Param)
            and (rng or not isinstance(v, nnx.RngState))]


def linen_collections(tree: PyTree) -> list[str]:
    """The non-``params`` collections of a Linen ``variables`` dict (``[]`` for anything else).

    A mapping is taken as a Linen ``variables`` dict when it has a ``"params"`` key next to one
    of :data:`LINEN_COLLECTIONS` (``"batch_stats"``, ``"cache"``, ...).
    """
    if not isinstance(tree, Mapping) or "params" not in tree:
        return []
    others = [str(k) for k in tree if k != "params"]
    return others if any(k in LINEN_COLLECTIONS for k in others) else []


def check_params_only(tree: PyTree, *, where: str) -> None:
    """Raises unless ``tree`` holds trainable weights only (what masks may cover).

    Errors: an ``nnx.Module`` (pass its ``nnx.Param`` state); an NNX ``State`` with
    non-``Param`` variables (names them); a Linen ``variables`` dict (names the collections).
    """
    if is_nnx_module(tree):
        raise TypeError(
            f"{where}: got an nnx.Module ({type(tree).__name__}); pass its parameters: "
            "nnx.state(model, nnx.Param) (or `params` of nnx.split(model, nnx.Param, ...))")
    extra = non_param_variables(tree)
    if extra:
        kinds = sorted({t for _, t in extra})
        shown = [p for p, _ in extra[:4]]
        raise ValueError(
            f"{where}: this NNX State holds non-parameter variables ({', '.join(kinds)} at "
            f"{shown}{' ...' if len(extra) > 4 else ''}); masks cover nnx.Param only: use "
            "nnx.state(model, nnx.Param) or `graphdef, params, rest = nnx.split(model, "
            "nnx.Param, ...)`")
    cols = linen_collections(tree)
    if cols:
        raise ValueError(
            f"{where}: this looks like a Linen variables dict with collections {cols} besides "
            "'params'; masks cover the params only: pass variables['params']")


def to_pure(state: Any) -> PyTree:
    """A ``State`` as nested dicts of arrays (``nnx.to_pure_dict``; ``State.to_pure_dict`` on
    flax 0.11). Anything else is returned unchanged."""
    if not is_nnx_state(state):
        return state
    nnx = _nnx()
    fn = getattr(nnx, "to_pure_dict", None)
    return fn(state) if fn is not None else state.to_pure_dict()


def replace_by_pure(state: Any, pure: PyTree) -> None:
    """Writes nested dicts of arrays into a ``State`` in place (``nnx.replace_by_pure_dict``;
    ``State.replace_by_pure_dict`` on flax 0.11)."""
    nnx = _nnx()
    fn = getattr(nnx, "replace_by_pure_dict", None)
    if fn is not None:
        fn(state, pure)
    else:
        state.replace_by_pure_dict(pure)


def split_model(model: Any) -> tuple[PyTree, PyTree]:
    """``(params, rest)`` of an NNX module as nested dicts: the ``nnx.Param`` variables, and every
    other variable (BatchNorm statistics, RNG state, ...)."""
    nnx = _nnx()
    _, params, rest = nnx.split(model, nnx.Param, ...)
    return to_pure(params), to_pure(rest)


def merge_into(model: Any, params: PyTree, rest: PyTree | None = None) -> None:
    """Writes nested-dict ``params`` (and ``rest``: every other variable) into an NNX module in
    place; each must have exactly the module's paths and shapes (``ValueError`` names a
    missing or extra path)."""
    nnx = _nnx()
    _, p_state, r_state = nnx.split(model, nnx.Param, ...)
    for what, state, pure in (("params", p_state, params), ("model state", r_state, rest)):
        if pure is None:
            continue
        want = dict(rules_lib.leaves_with_paths(to_pure(state)))
        have = dict(rules_lib.leaves_with_paths(pure))
        if set(want) != set(have):
            raise ValueError(
                f"cannot load {what} into {type(model).__name__}: missing "
                f"{sorted(set(want) - set(have))[:6]}, unexpected "
                f"{sorted(set(have) - set(want))[:6]}")
        for path, ref in want.items():
            if jax.numpy.shape(have[path]) != jax.numpy.shape(ref):
                raise ValueError(
                    f"cannot load {what} into {type(model).__name__}: {path!r} has shape "
                    f"{jax.numpy.shape(have[path])}, the model has {jax.numpy.shape(ref)}")
        replace_by_pure(state, pure)
        nnx.update(model, state)
