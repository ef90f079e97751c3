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

import json
import os
import re
import shutil
import warnings
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxsparse import rules as rules_lib
from jaxsparse.typing import PyTree

_TMP = re.compile(r"\.orbax-checkpoint-tmp")
FORMAT = "jaxsparse.checkpoint/2"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or whose contents are not what was saved."""


def is_key(x: Any) -> bool:
    """Whether ``x`` (an array or a ``ShapeDtypeStruct``) holds typed PRNG keys."""
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def leaf_names(tree: PyTree) -> list[str]:
    """One unique name per leaf, in flattening order: the ``/``-joined path string
    (``jaxsparse.rules.path_str``), or ``jax.tree_util.keystr`` where two path strings agree.

    >>> leaf_names({"fc0": {"kernel": 0, "bias": 0}, "step": 0})
    ['fc0/bias', 'fc0/kernel', 'step']
    """
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    names = [rules_lib.path_str(kp) for kp, _ in flat]
    if len(set(names)) == len(names):
        return names
    seen: dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    return [jax.tree_util.keystr(kp) if seen[n] > 1 else n
            for (kp, _), n in zip(flat, names, strict=True)]


def _key_impl(x: Any) -> str | None:
    try:
        return str(jax.random.key_impl(x))
    except (TypeError, AttributeError):  # a ShapeDtypeStruct: no impl to read
        return None


def flatten(tree: PyTree) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The one key-aware flatten: ``({name: numpy array}, {name: PRNG impl})``.

    The arrays are in flattening order, named by :func:`leaf_names`; a typed PRNG key leaf
    (e.g. NNX RNG state, a train state's ``key``) becomes its raw ``uint32`` key data and its
    implementation's name goes into the second dict, so :func:`unflatten` can rebuild it. Every
    store of this module (:class:`Checkpointer`, :func:`save_tree`, :func:`save_pytree`) writes
    what this returns.

    >>> arrays, impls = flatten({"w": jnp.ones(2), "key": jax.random.key(0)})
    >>> {k: v.dtype.name for k, v in arrays.items()}, impls
    ({'key': 'uint32', 'w': 'float32'}, {'key': 'threefry2x32'})
    """
    leaves = jax.tree_util.tree_leaves(jax.device_get(tree))
    arrays, impls = {}, {}
    for name, x in zip(leaf_names(tree), leaves, strict=True):
        if is_key(x):
            impls[name] = _key_impl(x)
            x = jax.random.key_data(x)
        arrays[name] = np.asarray(x)
    return arrays, impls


def unflatten(
    arrays: Mapping[str, Any] | Sequence[Any],
    like: PyTree,
    *,
    impls: Mapping[str, str] | None = None,
    where: str = "tree",
) -> PyTree:
    """Undoes :func:`flatten`: the arrays in ``like``'s structure, PRNG keys rebuilt.

    Args:
      arrays: ``{name: array}`` (matched to ``like``'s leaves by :func:`leaf_names`) or a
        sequence in flattening order (matched by position).
      like: arrays or ``ShapeDtypeStruct`` giving the structure and the shapes (checked); a key
        leaf of ``like`` is rebuilt with its own implementation (else ``impls``' entry, else
        the default).
      impls: ``{name: PRNG impl}`` from :func:`flatten`.
      where: what the arrays are (for errors).

    Returns:
      ``like``'s structure with numpy leaves (typed key arrays for keys). Dtypes are the saved
      ones: cast if needed.

    Raises:
      ValueError: a leaf missing, of another shape, or another number of leaves (names the
        leaf).
    """
    impls = dict(impls or {})
    names = leaf_names(like)
    refs = jax.tree_util.tree_leaves(like)
    if isinstance(arrays, Mapping):
        missing = [n for n in names if n not in arrays]
        if missing:
            raise ValueError(f"{where}: no leaf {missing[0]!r} ({len(missing)} missing); it has "
                             f"{sorted(arrays)[:8]}")
        values = [arrays[n] for n in names]
        if len(arrays) != len(names):
            extra = sorted(set(arrays) - set(names))
            raise ValueError(f"{where}: {len(arrays)} leaves saved, {len(names)} expected "
                             f"(not expected: {extra[:8]})")
    else:
        values = list(arrays)
        if len(values) != len(names):
            raise ValueError(f"{where}: {len(values)} leaves saved, {len(names)} expected")
    out = []
    for name, ref, a in zip(names, refs, values, strict=True):
        a = np.asarray(a)
        if is_key(ref):
            impl = _key_impl(ref) or impls.get(name)
            a = (jax.random.wrap_key_data(a) if impl is None
                 else jax.random.wrap_key_data(a, impl=impl))
        elif a.shape != tuple(np.shape(ref)):
            raise ValueError(f"{where}: leaf {name!r} saved with shape {a.shape}, expected "
                             f"{tuple(np.shape(ref))}")
        out.append(a)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), out)


def _abstract(tree: PyTree) -> dict[str, jax.ShapeDtypeStruct]:
    """What :func:`flatten` writes for ``tree`` (concrete or abstract), keyed by index."""
    out = {}
    for i, leaf in enumerate(jax.tree_util.tree_leaves(tree)):
        if is_key(leaf):
            leaf = jax.eval_shape(jax.random.key_data, leaf)
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        out[f"{i:05d}"] = jax.ShapeDtypeStruct(np.shape(leaf), dtype)
    return out


def _crc(x: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(x).view(np.uint8).reshape(-1).data)


def _restore_like(flat: dict[str, Any], target: PyTree, meta: dict, where: str) -> PyTree:
    """The checkpoint's arrays (index-keyed) in ``target``'s structure and dtypes."""
    values = [flat[f"{i:05d}"] for i in range(len(flat))]
    tree = unflatten(values, target, impls=meta.get("prng_keys"), where=where)
    return jax.tree.map(
        lambda v, t: v if is_key(v) else jax.numpy.asarray(
            v, dtype=t.dtype if hasattr(t, "dtype") else np.asarray(t).dtype),
        tree, target)


def _check_against_target(step_dir: str, meta: dict, target: PyTree) -> None:
    """A ``ValueError`` naming the first leaf where the checkpoint's tree differs."""
    saved_paths = meta["paths"]
    abstract = _abstract(target)
    t_paths = leaf_names(target)
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
        arrays, impls = flatten(tree)
        leaves = [{"shape": list(v.shape), "dtype": str(v.dtype), "crc32": _crc(v)}
                  for v in arrays.values()]
        meta = {"format": FORMAT, "metadata": metadata or {}, "paths": list(arrays),
                "leaves": leaves, "prng_keys": impls}
        # On disk the arrays are keyed by index (format 2): orbax item names stay plain.
        flat = {f"{i:05d}": v for i, v in enumerate(arrays.values())}
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
        return _restore_like(flat, target, meta, step_dir), dict(meta["metadata"])

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


# --------------------------------------------------------------------------- npz tree store


_NPZ_KEYS = "__prng_keys__"  # the {name: impl} JSON of a tree store with PRNG keys
_OLD_NPZ = re.compile(r"leaf_\d{5}")  # written before leaves were named: matched by position


def save_tree(path: str | os.PathLike, tree: PyTree) -> None:
    """Writes a pytree of arrays to ``path`` (``.npz``) atomically (tmp file + rename).

    One entry per leaf, named by :func:`leaf_names` (so ``np.load(path)["fc0/kernel"]`` reads
    a leaf without jaxsparse); typed PRNG keys are stored as their key data, with their
    implementation in a ``__prng_keys__`` entry, and :func:`load_tree` wraps them again.

    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> tree = {"w": jnp.arange(3.0), "key": jax.random.key(0)}
    >>> save_tree(f"{tmp.name}/t.npz", tree)
    >>> back = load_tree(f"{tmp.name}/t.npz", like=tree)
    >>> back["w"], jax.random.key_data(back["key"]).tolist()
    (array([0., 1., 2.], dtype=float32), [0, 0])
    >>> sorted(np.load(f"{tmp.name}/t.npz").files)
    ['__prng_keys__', 'key', 'w']
    >>> tmp.cleanup()
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays, impls = flatten(tree)
    if _NPZ_KEYS in arrays:
        raise ValueError(f"{path}: a leaf is named {_NPZ_KEYS!r}, the name of the key record")
    if impls:
        arrays[_NPZ_KEYS] = np.asarray(json.dumps(impls))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def load_tree(path: str | os.PathLike, like: PyTree) -> PyTree:
    """Reads a tree written by :func:`save_tree`; ``like`` (arrays or ``ShapeDtypeStruct``)
    gives the structure, shapes and dtypes, and is checked leaf by leaf (a ``ValueError``
    names a leaf of another shape, or another number of leaves). Leaves are matched by name,
    or by position when the names differ (the older index-named format ``leaf_00000``, ...,
    or a template of another container type with the same leaves)."""
    with np.load(path) as data:
        files = [k for k in data.files if k != _NPZ_KEYS]
        impls = json.loads(str(data[_NPZ_KEYS])) if _NPZ_KEYS in data.files else {}
        names = leaf_names(like)
        if set(files) == set(names):
            arrays: Any = {k: data[k] for k in files}
        elif files and all(_OLD_NPZ.fullmatch(k) for k in files):
            arrays = [data[k] for k in sorted(files)]
        else:  # another container type with the same leaves (a tuple for a NamedTuple, ...)
            arrays = [data[k] for k in files]  # in the order written
            impls = dict(zip(names, (impls.get(k) for k in files), strict=False))
    return unflatten(arrays, like, impls=impls, where=os.fspath(path))


# --------------------------------------------------------------------------- nested orbax trees


def save_pytree(path: str | os.PathLike, tree: PyTree) -> dict[str, str]:
    """Writes a nested pytree with orbax (``PyTreeCheckpointer``) at ``path``, replacing it.

    The leaves are :func:`flatten`'s numpy arrays (typed PRNG keys as key data) in the tree's
    own nesting, so the directory reads back without a template (:func:`load_pytree`).

    Returns:
      ``{name: PRNG impl}`` of the key leaves: keep it (e.g. in a JSON beside the tree) and
      give it to :func:`load_pytree` to get typed keys back.

    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> impls = save_pytree(f"{tmp.name}/t", {"w": jnp.ones(2), "rng": jax.random.key(1)})
    >>> back = load_pytree(f"{tmp.name}/t", impls=impls)
    >>> back["w"], jax.random.key_data(back["rng"]).tolist()
    (array([1., 1.], dtype=float32), [0, 1])
    >>> tmp.cleanup()
    """
    import orbax.checkpoint as ocp

    arrays, impls = flatten(tree)
    data = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(tree), list(arrays.values()))
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(os.fspath(path)), data, force=True)
    return impls


def load_pytree(path: str | os.PathLike, *, impls: Mapping[str, str] | None = None) -> PyTree:
    """Reads a tree written by :func:`save_pytree`: orbax's nested containers, numpy leaves,
    the leaves named in ``impls`` rebuilt as typed PRNG keys.

    Raises:
      CheckpointError: the directory cannot be read (names it and what orbax said).
    """
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(path))
    try:
        with ocp.PyTreeCheckpointer() as ckptr:
            tree = ckptr.restore(path)
    except Exception as e:  # noqa: BLE001 - whatever orbax raised, name the file
        raise CheckpointError(f"cannot read {path}: it is corrupt, truncated or not written by "
                              f"save_pytree ({type(e).__name__}: {_first_line(e)})") from None
    if not impls:
        return tree
    names = leaf_names(tree)
    leaves = jax.tree_util.tree_leaves(tree)
    out = [jax.random.wrap_key_data(np.asarray(x), impl=impls[n]) if n in impls else x
           for n, x in zip(names, leaves, strict=True)]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(tree), out)
