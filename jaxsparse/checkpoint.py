"""A thin orbax wrapper: async save, restore into a template, newest step, keep-N, integrity.

A checkpoint is one step directory ``<dir>/<step>/`` written by an
``orbax.checkpoint.CheckpointManager``: the pytree's leaves (flattened in ``jax.tree_util``
order, so NamedTuples, empty dicts/tuples and typed PRNG keys all round-trip) plus a JSON
``meta`` item: the caller's ``metadata`` dict (e.g. the metrics history), and per leaf its
path, shape, dtype and CRC-32. Restoring needs a *target* of the same structure (e.g. the
freshly initialised state), which gives the tree structure and dtypes.

Crash safety: orbax writes a step into a temporary directory and renames it when complete,
so a kill leaves at most a ``*.orbax-checkpoint-tmp*`` directory, never a half step. Such stale
temporaries are removed when a :class:`Checkpointer` opens the directory and are never taken
for a step.

Integrity: a step that cannot be read (truncated or deleted files, broken JSON, a directory
orbax did not write) or whose bytes differ from what was saved (CRC-32 per leaf) raises a
:class:`CheckpointError` naming the step directory and the file or leaf. Restoring the
*newest* step falls back to the previous kept one with a ``UserWarning``, and moves the bad
step aside to ``<step>.corrupt`` so that training can write that step again. A checkpoint of a
*different* tree (another model or config) is a ``ValueError`` naming the first differing leaf,
with no fall-back (every kept step would differ the same way).

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
import warnings
import zlib
from typing import Any

import jax
import numpy as np

from jaxsparse.typing import PyTree

_TMP = re.compile(r"\.orbax-checkpoint-tmp")
FORMAT = "jaxsparse.checkpoint/2"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or whose contents are not what was saved."""


def _is_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _paths(tree: PyTree) -> list[str]:
    return [jax.tree_util.keystr(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _flatten(tree: PyTree) -> tuple[dict[str, Any], list[str]]:
    leaves = jax.tree_util.tree_leaves(tree)
    out = {}
    for i, leaf in enumerate(leaves):
        # Typed PRNG keys are stored as their raw uint32 data.
        out[f"{i:05d}"] = np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
    return out, _paths(tree)


def _abstract(tree: PyTree) -> dict[str, jax.ShapeDtypeStruct]:
    out = {}
    for i, leaf in enumerate(jax.tree_util.tree_leaves(tree)):
        if _is_key(leaf):
            leaf = jax.eval_shape(jax.random.key_data, leaf)
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        out[f"{i:05d}"] = jax.ShapeDtypeStruct(np.shape(leaf), dtype)
    return out


def _crc(x: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(x).view(np.uint8).reshape(-1).data)


def _unflatten(flat: dict[str, Any], target: PyTree) -> PyTree:
    leaves, treedef = jax.tree_util.tree_flatten(target)
    out = []
    for i, t in enumerate(leaves):
        v = flat[f"{i:05d}"]
        if _is_key(t):
            v = jax.random.wrap_key_data(np.asarray(v), impl=jax.random.key_impl(t))
        else:
            t_dtype = t.dtype if hasattr(t, "dtype") else np.asarray(t).dtype
            v = jax.numpy.asarray(v, dtype=t_dtype)
        out.append(v)
    return jax.tree_util.tree_unflatten(treedef, out)


def _check_against_target(step_dir: str, meta: dict, target: PyTree) -> None:
    """A ``ValueError`` naming the first leaf where the checkpoint's tree differs."""
    saved_paths = meta["paths"]
    abstract = _abstract(target)
    t_paths = _paths(target)
    if len(saved_paths) != len(t_paths):
        only_c = [p for p in saved_paths if p not in set(t_paths)]
        only_t = [p for p in t_paths if p not in set(saved_paths)]
        raise ValueError(
            f"checkpoint {step_dir} holds a different tree than the target: "
            f"{len(saved_paths)} leaves vs {len(t_paths)} (only in the checkpoint: {only_c[:4]};"
            f" only in the target: {only_t[:4]}); restore it with the target it was saved from")
    leaves = meta.get("leaves")
    for i, path in enumerate(t_paths):
        want = abstract[f"{i:05d}"]
        if leaves is None:
            continue
        # shapes must agree; dtypes may differ (the value is cast to the target's, as ever)
        shape, dtype = tuple(leaves[i]["shape"]), leaves[i]["dtype"]
        if shape != tuple(want.shape):
            raise ValueError(
                f"checkpoint {step_dir} holds a different tree than the target: leaf {i} "
                f"{saved_paths[i]!r} is {dtype}{list(shape)} in the checkpoint, "
                f"{np.dtype(want.dtype)}{list(want.shape)} in the target ({path!r})")


def _saved_abstract(meta: dict, target: PyTree) -> dict[str, jax.ShapeDtypeStruct]:
    """What was written (shape and dtype per leaf), so the CRC sees the bytes saved."""
    leaves = meta.get("leaves")
    if leaves is None:  # written before per-leaf records: read as the target
        return _abstract(target)
    return {f"{i:05d}": jax.ShapeDtypeStruct(tuple(x["shape"]), jax.numpy.dtype(x["dtype"]))
            for i, x in enumerate(leaves)}


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


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = (text[0] if text else "").split(" [tensorstore_spec=")[0]  # drop the JSON spec dump
    return line if len(line) <= 300 else line[:300] + "..."


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
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise NotADirectoryError(f"checkpoint directory {self.directory} is a file")
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
        leaves = [{"shape": list(v.shape), "dtype": str(v.dtype), "crc32": _crc(v)}
                  for v in flat.values()]
        meta = {"format": FORMAT, "metadata": metadata or {}, "paths": paths, "leaves": leaves}
        self._mngr.save(
            int(step),
            args=self._ocp.args.Composite(
                tree=self._ocp.args.StandardSave(flat), meta=self._ocp.args.JsonSave(meta)
            ),
        )

    def step_dir(self, step: int) -> str:
        """The directory of checkpoint ``step``."""
        return os.path.join(self.directory, str(int(step)))

    def restore(self, step: int | None = None, *, target: PyTree) -> tuple[PyTree, dict]:
        """``(tree, metadata)`` of checkpoint ``step`` (default newest), shaped like ``target``.

        Restoring the newest step (``step=None`` or the newest step number) falls back to the
        previous kept step when it is corrupt: a ``UserWarning`` names the bad step directory
        and why, and that directory is moved aside to ``<step>.corrupt``. An older step given
        explicitly is restored or raises.

        Raises:
          FileNotFoundError: no checkpoint (names the directory), or ``step`` is not one.
          CheckpointError: the step (or, when falling back, every kept step) is corrupt,
            truncated or not a jaxsparse checkpoint; names the directory and the file or leaf.
          ValueError: the checkpoint holds a different tree than ``target`` (names the leaf).
        """
        self._mngr.wait_until_finished()
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step is not None and int(step) not in steps:
            raise FileNotFoundError(
                f"no checkpoint {step} in {self.directory} (it has steps {steps})")
        if step is not None and int(step) != steps[-1]:
            return self._read(int(step), target)
        errors = []
        for s in reversed(steps):
            try:
                out = self._read(s, target)
            except CheckpointError as e:
                errors.append(str(e))
                moved = self._quarantine(s)
                older = [t for t in steps if t < s]
                nxt = f"falling back to step {older[-1]}" if older else "no older step is kept"
                warnings.warn(f"{e}; moved it to {moved}; {nxt}", UserWarning, stacklevel=2)
                continue
            return out
        raise CheckpointError(
            f"every kept checkpoint in {self.directory} is unreadable: " + " | ".join(errors))

    def _read(self, step: int, target: PyTree) -> tuple[PyTree, dict]:
        ocp = self._ocp
        step_dir = self.step_dir(step)
        try:
            raw = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            meta = dict(raw["meta"])
        except Exception as e:  # noqa: BLE001 - whatever orbax raised, name the file
            raise CheckpointError(
                f"checkpoint {step_dir} is corrupt, truncated or not a jaxsparse checkpoint: "
                f"cannot read {os.path.join(step_dir, 'meta', 'metadata')} "
                f"({type(e).__name__}: {_first_line(e)})") from None
        if not isinstance(meta.get("paths"), list) or "metadata" not in meta:
            raise CheckpointError(
                f"checkpoint {step_dir} is not a jaxsparse checkpoint: "
                f"{os.path.join(step_dir, 'meta', 'metadata')} has keys {sorted(meta)}, not "
                "'paths' and 'metadata'")
        _check_against_target(step_dir, meta, target)
        try:
            out = self._mngr.restore(step, args=ocp.args.Composite(
                tree=ocp.args.StandardRestore(_saved_abstract(meta, target))))
            flat = {k: np.asarray(v) for k, v in dict(out["tree"]).items()}
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(
                f"checkpoint {step_dir} is corrupt or truncated: cannot read the arrays in "
                f"{os.path.join(step_dir, 'tree')} ({type(e).__name__}: {_first_line(e)})"
            ) from None
        for i, info in enumerate(meta.get("leaves") or []):
            v = flat[f"{i:05d}"]
            if _crc(v) != info["crc32"]:
                raise CheckpointError(
                    f"checkpoint {step_dir} is corrupt: leaf {i} {meta['paths'][i]!r} in "
                    f"{os.path.join(step_dir, 'tree')} does not match the CRC-32 recorded when it "
                    "was saved")
        return _unflatten(flat, target), dict(meta["metadata"])

    def _quarantine(self, step: int) -> str:
        src = self.step_dir(step)
        dst, i = f"{src}.corrupt", 1
        while os.path.exists(dst):
            dst, i = f"{src}.corrupt{i}", i + 1
        if jax.process_index() == 0:
            os.replace(src, dst)
        self._mngr.reload()
        return dst

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
