"""Export and reload of a ticket: masks + starting weights + every other model collection,
over :mod:`jaxsparse.checkpoint`, with the per-layer density report as JSON."""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse import checkpoint
from jaxsparse import masks as masks_lib
from jaxsparse import rules as rules_lib
from jaxsparse.typing import Masks, Params, PyTree

# ---------------------------------------------------------------------------------------
# Export.


_STATE = "model_state/"  # the model state's subtree in a ticket


class Ticket(NamedTuple):
    """A ticket as read back by :func:`read_ticket`.

    Attributes:
      params: the ticket's weights.
      masks: its bool masks (the params' structure).
      model_state: every other collection saved with it (BatchNorm statistics, NNX RNG state,
        ...), ``{}`` when there is none.
      metadata: the ``metadata`` dict given to :func:`export_ticket`.
    """

    params: Params
    masks: Masks
    model_state: PyTree
    metadata: dict[str, Any]


def _ticket_parts(params: PyTree, masks: PyTree, model_state: PyTree | None):
    """``(params, masks, model_state)`` as plain trees, from any of the accepted inputs."""
    from jaxsparse import flax_utils

    if flax_utils.is_nnx_module(params):
        if model_state is not None:
            raise ValueError("export_ticket: got an nnx.Module and model_state=; the module's "
                             "own non-parameter variables are exported, drop model_state=")
        p, rest = flax_utils.split_model(params)
        return p, flax_utils.to_pure(masks), rest
    cols = flax_utils.linen_collections(params)
    if cols:
        if model_state is not None:
            raise ValueError(f"export_ticket: got a Linen variables dict (collections {cols}) "
                             "and model_state=; its collections are exported, drop model_state=")
        return params["params"], masks, {k: v for k, v in params.items() if k != "params"}
    flax_utils.check_params_only(params, where="export_ticket")
    return (flax_utils.to_pure(params), flax_utils.to_pure(masks),
            flax_utils.to_pure(model_state) if model_state is not None else {})


def export_ticket(
    directory: str | os.PathLike,
    params: PyTree,
    masks: PyTree,
    *,
    model_state: PyTree | None = None,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Saves a ticket (masks + weights + every other collection) with orbax, and its report.

    Writes ``directory/ticket`` (:func:`jaxsparse.checkpoint.save_pytree` of ``{"params",
    "masks", "model_state"}``, the params as given), ``directory/density.json`` (per-leaf
    path/shape/kept/total/density, the total, ``metadata`` and the ``contents`` saved, with
    the PRNG implementation of every key leaf of the model state) and ``directory/density.txt``
    (the printable table).

    A network is more than its weights: BatchNorm statistics (Linen ``batch_stats``, NNX
    ``nnx.BatchStat``) and NNX RNG state belong to the ticket, or a model loaded from it
    evaluates with fresh statistics. Pass them by giving ``params`` as

    * an ``nnx.Module``: its ``nnx.Param`` variables are the params, every other variable the
      model state (``masks`` over ``nnx.state(model, nnx.Param)``);
    * a Linen ``variables`` dict ``{"params": ..., "batch_stats": ...}`` (``masks`` over
      ``variables["params"]``);
    * or plain params (a pytree, an ``nnx.Param`` ``State``) with ``model_state=`` (e.g.
      ``jaxsparse.models.functional(model).model_state``, a supermask's ``sm_state["model"]``).

    Args:
      directory: output folder (created; an existing ticket there is replaced).
      params: the ticket's weights (e.g. from :func:`prune_and_rewind`), in one of the forms
        above. An NNX ``State`` holding non-``Param`` variables is refused (name them).
      masks: the ticket's masks (validated against the params).
      model_state: the other collections, for plain ``params``.
      metadata: JSON-serialisable extras (level, config, accuracy, ...).

    Returns:
      The absolute path of the directory.

    >>> import os, tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> params = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0]]), "b": jnp.zeros(2)}
    >>> masks = {"w": jnp.array([[True, False], [False, True]]), "b": jnp.array(True)}
    >>> path = export_ticket(f"{tmp.name}/t", params, masks, metadata={"level": 5})
    >>> sorted(os.listdir(path))
    ['density.json', 'density.txt', 'ticket']
    >>> tmp.cleanup()
    """
    params, masks, model_state = _ticket_parts(params, masks, model_state)
    masks_lib.validate(params, masks, where="export_ticket")
    for what, tree in (("params", params), ("masks", masks)):
        keys = [p for p, x in rules_lib.leaves_with_paths(tree) if checkpoint.is_key(x)]
        if keys:
            raise ValueError(f"export_ticket: {what} leaf {keys[0]!r} holds PRNG keys; keys "
                             "belong to the model state (model_state=)")
    directory = os.path.abspath(os.fspath(directory))
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "ticket")
    impls = checkpoint.save_pytree(
        path, {"params": params, "masks": masks, "model_state": model_state})
    rep = masks_lib.report(masks)
    # The key implementations are recorded by path inside the model state (the format of
    # every ticket written so far).
    contents = {"params": rules_lib.leaf_paths(params),
                "model_state": rules_lib.leaf_paths(model_state),
                "prng_keys": {n.removeprefix(_STATE): v for n, v in impls.items()}}
    with open(os.path.join(directory, "density.json"), "w") as f:
        json.dump({"leaves": [dict(r, shape=list(r["shape"])) for r in rep.as_dicts()],
                   "kept": rep.kept, "total": rep.total, "density": rep.density,
                   "metadata": metadata or {}, "contents": contents}, f, indent=1)
    with open(os.path.join(directory, "density.txt"), "w") as f:
        f.write(str(rep) + "\n")
    return directory


def read_ticket(
    directory: str | os.PathLike,
    *,
    like: PyTree | None = None,
    model_state_like: PyTree | None = None,
) -> Ticket:
    """Everything :func:`export_ticket` saved: ``Ticket(params, masks, model_state, metadata)``.

    Args:
      directory: the folder given to :func:`export_ticket`.
      like: optional params tree whose structure ``params`` and ``masks`` take (leaves matched
        by path, shapes checked).
      model_state_like: optional model-state tree (e.g. ``functional(model).model_state``)
        whose structure ``model_state`` takes; every leaf it has must be in the ticket (a
        ``ValueError`` names the missing ones: a ticket exported without its statistics).

    Returns:
      A :class:`Ticket`. Without ``like`` / ``model_state_like`` the trees are orbax's nested
      dicts (typed PRNG keys rebuilt).

    Raises:
      FileNotFoundError: no ticket in ``directory``. ValueError: an unreadable or corrupt
      ticket (names the file), or a leaf missing or of another shape (names the leaf).
    """
    directory = os.path.abspath(os.fspath(directory))
    path = os.path.join(directory, "ticket")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no ticket at {directory} (expected {path}, written by "
                                "export_ticket)")
    info = {}
    report_path = os.path.join(directory, "density.json")
    if os.path.exists(report_path):
        try:
            with open(report_path) as f:
                info = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read {report_path}: {e}") from None
    impls = info.get("contents", {}).get("prng_keys", {})
    try:
        tree = checkpoint.load_pytree(path, impls={_STATE + n: v for n, v in impls.items()})
        params, masks = tree["params"], tree["masks"]
    except (checkpoint.CheckpointError, KeyError, TypeError) as e:
        raise ValueError(f"cannot read the ticket {path}: it is corrupt, truncated or not "
                         f"written by export_ticket ({type(e).__name__}: {e})") from None
    model_state = tree.get("model_state") or {}
    if like is None:
        params, masks = jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, masks)
    else:
        params = _restructure(params, like, "params")
        masks = _restructure(masks, like, "masks", masks=True)
    if model_state_like is None:
        model_state = jax.tree.map(jnp.asarray, model_state)
    else:
        unused = sorted(set(rules_lib.leaf_paths(model_state))
                        - set(rules_lib.leaf_paths(model_state_like)))
        if unused:
            import warnings

            warnings.warn(f"ticket {path} holds model state {unused[:6]} that the model does not "
                          "have; it is not loaded", UserWarning, stacklevel=3)
        model_state = _restructure(model_state, model_state_like, "model_state",
                                   hint=" (it was exported without it: pass model_state= or the "
                                        "model / variables to export_ticket)")
    masks_lib.validate(params, masks, where=f"ticket {path}")
    return Ticket(params, masks, model_state, dict(info.get("metadata", {})))


def load_ticket(directory: str | os.PathLike, *, like: PyTree | None = None) -> tuple[PyTree,
                                                                                      PyTree]:
    """Loads ``(params, masks)`` written by :func:`export_ticket`; never drops a collection.

    Args:
      directory: the folder given to :func:`export_ticket`.
      like: what to load into:

        * an ``nnx.Module``: the ticket's params **and every other variable** (BatchNorm
          statistics, RNG state) are written into it in place; returns
          ``(nnx.state(model, nnx.Param), masks)`` with masks an NNX ``State`` of the same
          structure (ready for ``jaxsparse.masked`` / ``nnx.Optimizer``). A model variable the
          ticket lacks is a ``ValueError`` naming it (the model would keep its current,
          e.g. freshly initialised, statistics);
        * a Linen ``variables`` dict ``{"params": ..., "batch_stats": ...}``: returns
          ``(variables, masks)`` with every collection from the ticket (a missing one is a
          ``ValueError`` naming it);
        * a params tree: ``(params, masks)`` in its structure (leaves matched by path, shapes
          checked); if the ticket also holds model state, a ``UserWarning`` names it (use
          :func:`read_ticket` or one of the forms above to get it);
        * ``None``: orbax's nested dicts (the same warning).

    Returns:
      ``(params, masks)`` as described.

    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> ticket = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0]]), "b": jnp.zeros(2)}
    >>> masks = {"w": jnp.array([[True, False], [False, True]]), "b": jnp.array(True)}
    >>> path = export_ticket(f"{tmp.name}/t", ticket, masks)
    >>> params, masks = load_ticket(path, like=ticket)
    >>> params["w"], masks["w"]
    (Array([[1., 0.],
           [0., 2.]], dtype=float32), Array([[ True, False],
           [False,  True]], dtype=bool))
    >>> tmp.cleanup()
    """
    import warnings

    from jaxsparse import flax_utils

    if flax_utils.is_nnx_module(like):
        model = like
        p_like, s_like = flax_utils.split_model(model)
        t = read_ticket(directory, like=p_like)
        have = set(rules_lib.leaf_paths(t.model_state))
        # RNG state may be absent (the model keeps its own); statistics may not
        missing = [(p, k) for p, k in flax_utils.non_param_variables(_nnx_rest(model), rng=False)
                   if p not in have]
        if missing:
            kinds = sorted({k for _, k in missing})
            raise ValueError(
                f"ticket {os.fspath(directory)} holds no {', '.join(kinds)} for "
                f"{type(model).__name__} ({[p for p, _ in missing][:6]}): loading it would keep "
                "the model's current values (e.g. fresh BatchNorm statistics). Export the "
                "ticket with export_ticket(dir, model, masks) or model_state=")
        unused = sorted(have - set(rules_lib.leaf_paths(s_like)))
        if unused:
            warnings.warn(f"ticket {os.fspath(directory)} holds model state {unused[:6]} that "
                          f"{type(model).__name__} does not have; it is not loaded", UserWarning,
                          stacklevel=2)
        state = _restructure(t.model_state, s_like, "model_state", fill=True)
        flax_utils.merge_into(model, t.params, state)
        p_state = _nnx_params(model)
        by_path = dict(rules_lib.leaves_with_paths(t.masks))
        masks = rules_lib.map_with_path(lambda path, _: by_path[path], p_state)
        return p_state, masks
    cols = flax_utils.linen_collections(like)
    if cols:
        t = read_ticket(directory, like=like["params"],
                        model_state_like={k: v for k, v in like.items() if k != "params"})
        return {"params": t.params, **t.model_state}, t.masks
    if like is not None:
        flax_utils.check_params_only(like, where="load_ticket(like=...)")
    t = read_ticket(directory, like=flax_utils.to_pure(like) if like is not None else None)
    extra = rules_lib.leaf_paths(t.model_state)
    if extra:
        warnings.warn(
            f"ticket {os.fspath(directory)} also holds model state {extra[:6]}"
            f"{' ...' if len(extra) > 6 else ''} that load_ticket(like=params) does not return: "
            "use read_ticket(dir).model_state, or load_ticket(dir, like=model) (NNX) / "
            "like=variables (Linen)", UserWarning, stacklevel=2)
    if like is not None and flax_utils.is_nnx_state(like):
        by_p = dict(rules_lib.leaves_with_paths(t.params))
        by_m = dict(rules_lib.leaves_with_paths(t.masks))
        return (rules_lib.map_with_path(lambda path, _: by_p[path], like),
                rules_lib.map_with_path(lambda path, _: by_m[path], like))
    return t.params, t.masks


def _nnx_params(model: Any) -> Any:
    from flax import nnx

    return nnx.state(model, nnx.Param)


def _nnx_rest(model: Any) -> Any:
    from flax import nnx

    return nnx.state(model, nnx.Not(nnx.Param))


def _restructure(tree: PyTree, like: PyTree, what: str, masks: bool = False,
                 hint: str = "", fill: bool = False) -> PyTree:
    """``tree``'s leaves in ``like``'s structure, matched by path; ``fill`` takes ``like``'s own
    value for a path ``tree`` lacks (NNX RNG state the ticket does not carry)."""
    by_path = dict(rules_lib.leaves_with_paths(tree))
    out = []
    for path, ref in rules_lib.leaves_with_paths(like):
        if path not in by_path and fill:
            out.append(ref)
            continue
        if path not in by_path:
            raise ValueError(f"ticket {what} has no leaf {path!r}{hint}; it has "
                             f"{sorted(by_path)[:12]}")
        value = by_path[path]
        if not (hasattr(value, "dtype") and jax.dtypes.issubdtype(value.dtype,
                                                                     jax.dtypes.prng_key)):
            value = jnp.asarray(value)
        if not masks or np.ndim(value) > 0:
            if np.shape(value) != np.shape(ref):
                raise ValueError(f"ticket {what} leaf {path!r} has shape {np.shape(value)}, "
                                 f"the model has {np.shape(ref)}")
        out.append(value)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), out)
