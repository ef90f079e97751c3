"""A thin orbax wrapper: async save, restore into a template, newest step, keep-N.

A checkpoint is one step directory ``<dir>/<step>/`` written by an
``orbax.checkpoint.CheckpointManager``: the pytree's leaves (flattened in ``jax.tree_util``
order, so NamedTuples, empty dicts/tuples and typed PRNG keys all round-trip) plus a JSON
``metadata`` dict (e.g. the metrics history). Restoring needs a *target* of the same
structure (e.g. the freshly initialised state), which gives the tree structure and dtypes.

Crash safety: orbax writes a step into a temporary directory and renames it when complete,
so a kill leaves at most a ``*.orbax-checkpoint-tmp*`` directory, never a half step. Such stale
temporaries are removed when a :class:`Checkpointer` opens the directory and are never taken
for a step.

>>> import tempfile
>>> tmp = tempfile.TemporaryDirectory()
>>> state = {"w": jnp.arange(3.0), "key": jax.random.key(0), "step": jnp.array(100)}
>>> ckpt = Checkpointer(f"{tmp.name}/ckpt", keep=2)
>>> ckpt.save(100, state, metadata={"history": [0.5, 0.25]})  # returns at once (async)
>>> ckpt.latest_step()
100
>>> restored, meta = ckpt.restore(100, target=state)
>>> restored["w"], meta
(Array([0., 1., 2.], dtype=float32), {'history': [0.5, 0.25]})
>>> ckpt.close()  # waits for pending writes
>>> tmp.cleanup()
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

import jax
import numpy as np

PyTree = Any

_TMP = re.compile(r"\.orbax-checkpoint-tmp")


def _is_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _flatten(tree: PyTree) -> tuple[dict[str, Any], list[str]]:
    leaves = jax.tree_util.tree_leaves(tree)
    out = {}
    for i, leaf in enumerate(leaves):
        # Typed PRNG keys are stored as their raw uint32 data.
        out[f"{i:05d}"] = np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
    paths = [jax.tree_util.keystr(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    return out, paths


def _unflatten(flat: dict[str, Any], target: PyTree) -> PyTree:
    leaves, treedef = jax.tree_util.tree_flatten(target)
    if len(flat) != len(leaves):
        raise ValueError(f"checkpoint holds {len(flat)} leaves but the target has {len(leaves)}")
    out = []
    for i, t in enumerate(leaves):
        v = flat[f"{i:05d}"]
        if _is_key(t):
            v = jax.random.wrap_key_data(np.asarray(v), impl=jax.random.key_impl(t))
        else:
            t_shape = np.shape(t)
            t_dtype = t.dtype if hasattr(t, "dtype") else np.asarray(t).dtype
            if np.shape(v) != t_shape:
                raise ValueError(f"checkpoint leaf {i} has shape {np.shape(v)}, target {t_shape}")
            v = jax.numpy.asarray(v, dtype=t_dtype)
        out.append(v)
    return jax.tree_util.tree_unflatten(treedef, out)


def remove_stale_tmp(directory: str) -> list[str]:
    """Deletes temporary step directories left by a killed writer; returns their names."""
    if not os.path.isdir(directory):
        return []
    removed = []
    for name in sorted(os.listdir(directory)):
        if _TMP.search(name):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
            removed.append(name)
    return removed


class Checkpointer:
    """Saves and restores pytrees by step under ``directory`` (async, keeps ``keep`` newest).

    Args:
      directory: where the step directories live (created if missing).
      keep: how many newest checkpoints to keep (``None`` = all).
      async_save: write in a background thread (``save`` returns at once).
    """

    def __init__(self, directory: str, *, keep: int | None = 2, async_save: bool = True):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = os.path.abspath(os.fspath(directory))
        os.makedirs(self.directory, exist_ok=True)
        self.removed_tmp = remove_stale_tmp(self.directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True
        )
        self._mngr = ocp.CheckpointManager(
            self.directory, options=options, item_names=("tree", "meta")
        )

    def all_steps(self) -> list[int]:
        """Steps with a complete checkpoint, ascending."""
        return sorted(int(s) for s in self._mngr.all_steps())

    def latest_step(self) -> int | None:
        """Newest complete step, or ``None``."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, tree: PyTree, *, metadata: dict | None = None) -> None:
        """Starts saving ``tree`` (and JSON-able ``metadata``) as checkpoint ``step``."""
        flat, paths = _flatten(tree)
        meta = {"metadata": metadata or {}, "paths": paths}
        self._mngr.save(
            int(step),
            args=self._ocp.args.Composite(
                tree=self._ocp.args.StandardSave(flat), meta=self._ocp.args.JsonSave(meta)
            ),
        )

    def restore(self, step: int | None = None, *, target: PyTree) -> tuple[PyTree, dict]:
        """``(tree, metadata)`` of checkpoint ``step`` (default newest), shaped like ``target``."""
        self._mngr.wait_until_finished()
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint in {self.directory}")
        flat_t, _ = _flatten(target)
        abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat_t.items()}
        out = self._mngr.restore(
            int(step),
            args=self._ocp.args.Composite(
                tree=self._ocp.args.StandardRestore(abstract), meta=self._ocp.args.JsonRestore()
            ),
        )
        return _unflatten(dict(out["tree"]), target), dict(out["meta"]["metadata"])

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._mngr.wait_until_finished()
        self._mngr.close()


def save(directory: str, step: int, tree: PyTree, *, metadata: dict | None = None,
         keep: int | None = None) -> None:
    """Saves ``tree`` as checkpoint ``step`` under ``directory`` and waits until written."""
    c = Checkpointer(directory, keep=keep, async_save=False)
    try:
        c.save(step, tree, metadata=metadata)
    finally:
        c.close()


def restore(directory: str, *, target: PyTree, step: int | None = None) -> tuple[PyTree, dict]:
    """``(tree, metadata)`` of checkpoint ``step`` (default newest) under ``directory``."""
    c = Checkpointer(directory, keep=None, async_save=False)
    try:
        return c.restore(step, target=target)
    finally:
        c.close()


def latest_step(directory: str) -> int | None:
    """Newest complete checkpoint step under ``directory`` (``None`` if none)."""
    if not os.path.isdir(directory):
        return None
    c = Checkpointer(directory, keep=None, async_save=False)
    try:
        return c.latest_step()
    finally:
        c.close()
