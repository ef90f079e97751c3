"""Shared experiment plumbing: configs, data, builders, run directories, tables, progress.

Every driver (``experiments/*.py``) builds on this module and on :mod:`experiments.cli`; the
model / optimizer / dataset-from-config builders live here and nowhere else.

* A config is a Python file with ``get_config()`` returning an ``ml_collections.ConfigDict``
  (or a dict); its docstring starts with the command that runs it and what it should reach.
  :func:`apply_overrides` applies ``--set key=value`` strings, type-checked against the
  config's existing values (:class:`ConfigError` names the key, the value and the type).
* Data (:func:`load_dataset`): a dataset name (``digits`` offline, ``mnist`` / ``cifar10`` ...
  from ``data_dir``), one ``.npz`` (``data_file``: split into train / val / test), separate
  ``train_file`` / ``test_file`` ``.npz`` files, or a ``data_dir`` holding ``train.npz`` +
  ``test.npz``. The validation split is drawn from the training data, stratified by class
  and shuffled with ``split_seed`` (default 0, independent of the training ``seed``). Bad
  files raise :class:`DataError` naming the file; a split missing classes warns
  (:class:`DataWarning`).
* A run directory is ``<out>/<config name>-<hash>``: the hash covers every hyperparameter
  (not where data or outputs live) AND the content hash of the data
  (:func:`data_fingerprint`), so the same config on the same data lands in the same
  directory, a relaunch skips finished work and an interrupted run resumes from its
  checkpoints, while other data gets another directory. ``config.json`` and ``data.json``
  (source, sha256, split sizes, class counts) are written into it.
* Spread over replicates / seeds is ONE definition everywhere (tables, CSV, plots): the
  sample standard deviation (ddof = 1; :func:`mean_std`), labelled :data:`SPREAD`.

>>> [round(v, 4) for v in mean_std([0.5, 0.7])]
[0.6, 0.1414]
"""

from __future__ import annotations

import ast
import csv
import difflib
import hashlib
import importlib.util
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

# Keys that say where things live or what runs them, not what is computed: not in the run hash.
NON_HASHED = ("data_dir", "out", "name", "driver")
# Where the data lives: excluded too when the run hash has the data's content hash instead
# (``run_dir(..., dataset=...)``); without it they stay in (the old, weaker identity).
DATA_LOCATION_KEYS = ("data_dir", "data_file", "train_file", "test_file")

# Optional keys every driver understands even when a config does not define them
# (``--set val_size=500`` works on any config), with their types.
OPTIONAL_KEYS: dict[str, tuple[type, ...]] = {
    "data_dir": (str,), "data_file": (str,), "train_file": (str,), "test_file": (str,),
    "val_size": (int,), "test_size": (int,), "split_seed": (int,), "num_classes": (int,),
}

SPREAD = "sample std (ddof=1)"
MODELS = ("lenet300", "conv2", "conv4", "conv6", "resnet20", "vgg16")
OPTIMIZERS = ("adam", "sgd")


class ConfigError(ValueError):
    """A config file or override that cannot be used (names the file / key / value)."""


class UnknownKeyError(ConfigError, KeyError):
    """``--set`` of a key the config does not have (also a ``KeyError``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DataError(ValueError):
    """A data file or dataset that cannot be used (names the file and what is wrong)."""


class DataWarning(UserWarning):
    """Usable data with a likely problem (a split missing classes)."""


# ---------------------------------------------------------------------------------------
# Configs


def load_config(path: str, arg: str | None = None, *, driver: str | None = None) -> Any:
    """Imports the config file at ``path`` and returns ``get_config()`` (or ``get_config(arg)``).

    ``path`` may end in ``:arg`` (``.../frankle2019_cifar10.py:conv4``, big_vision's form) for
    a file whose ``get_config(arg)`` holds several variants. With ``driver``, a config whose
    ``driver`` key names another driver is a :class:`ConfigError` (naming the file, its
    driver and ``driver``); a config without the key is not checked.
    """
    if arg is None and not os.path.exists(path) and ":" in os.path.basename(path):
        path, arg = path.rsplit(":", 1)
    if not os.path.exists(path):
        raise ConfigError(f"config file {path} does not exist")
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"_jaxsparse_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ConfigError(f"config file {path} has no get_config()")
        config = module.get_config() if arg is None else module.get_config(arg)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of the user's file is a config error
        where = path if arg is None else f"{path}:{arg}"
        raise ConfigError(f"config file {where} failed to load: {type(e).__name__}: {e}") from e
    made_for = config.get("driver")
    if driver is not None and made_for is not None and made_for != driver:
        raise ConfigError(f"config file {path} is for the {made_for} driver "
                          f"(driver={made_for!r}), not {driver}: run it with python -m "
                          f"experiments.{made_for}")
    if isinstance(config, dict):
        config.setdefault("name", name)
    elif not config.get("name"):
        config.name = name
    return config


def to_dict(config: Any) -> dict:
    """A plain JSON-able dict of a ``ConfigDict`` / dict config."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return json.loads(json.dumps(config, sort_keys=True, default=list))


def _field_type(target: Any, key: str) -> type | None:
    """The declared type of a ``FieldReference(None, field_type=...)`` entry, if any."""
    get_type = getattr(target, "get_type", None)
    if get_type is None:
        return None
    try:
        t = get_type(key)
    except (KeyError, AttributeError, TypeError):
        return None
    return None if t is type(None) else t


def _typename(types: Sequence[type]) -> str:
    return " | ".join(t.__name__ for t in types)


def check_value(key: str, value: Any, old: Any, declared: Sequence[type] | None = None) -> Any:
    """``value`` converted to the type of the config's current value ``old`` (or ``declared``).

    Rules: ``None`` is accepted where the current value is ``None`` or a declared optional
    field; a bool only replaces a bool; an int replaces an int or a float (converted); a
    float never replaces an int; a list / tuple replaces a list / tuple (converted to the
    old kind); a dict replaces a dict; a str replaces a str. Raises :class:`ConfigError`
    naming the key, the value and the expected type.

    >>> check_value("lr", 1, 0.1), check_value("rates", [1, 2], (0,))
    (1.0, (1, 2))
    """
    if declared:
        types = tuple(declared)
    elif old is None:
        return value
    else:
        types = (type(old),)

    def fail() -> ConfigError:
        return ConfigError(f"--set {key}={value!r}: expected {_typename(types)} (the config's "
                           f"value is {old!r}), got {type(value).__name__}")

    if value is None:
        if old is None:
            return None
        raise fail()
    for t in types:
        if t is bool:
            if isinstance(value, bool):
                return value
        elif t is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif t is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        elif t in (list, tuple):
            if isinstance(value, list | tuple):
                return t(value)
        elif issubclass(t, Mapping) or hasattr(t, "to_dict"):
            if isinstance(value, Mapping):
                return value
        elif t is str:
            if isinstance(value, str):
                return value
        elif isinstance(value, t):
            return value
    raise fail()


def _parse(raw: str, types: Sequence[type]) -> Any:
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw  # a bare string: `--set optimizer=sgd`
    if types == (str,) and not isinstance(value, str) and value is not None:
        return raw  # a str field keeps the text: `--set name=123`
    return value


def apply_overrides(config: Any, overrides: Iterable[str],
                    optional: Mapping[str, Sequence[type]] | None = None) -> Any:
    """Applies ``key=value`` strings (Python literals; dotted keys for nesting) to ``config``.

    Each value is type-checked against the config's current value (:func:`check_value`)
    before it is set, so a typo fails here, before any training. ``optional`` (default
    :data:`OPTIONAL_KEYS`) names top-level keys that may be set although the config lacks
    them, with their types.

    Raises:
      ConfigError: not ``key=value``, an unknown key (with the closest known keys), or a
        value of the wrong type.
    """
    optional = OPTIONAL_KEYS if optional is None else optional
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        target = config
        parts = key.split(".")
        for i, p in enumerate(parts[:-1]):
            if not isinstance(target, Mapping) and not hasattr(target, "keys"):
                raise ConfigError(f"--set {key}: {'.'.join(parts[:i])} is not a nested config")
            if p not in target:
                raise UnknownKeyError(f"--set {key}: the config has no key "
                                      f"{'.'.join(parts[:i + 1])!r}")
            target = target[p]
        last = parts[-1]
        if last in target:
            old = target[last]
            declared = _field_type(target, last) if old is None else None
            types = (declared,) if declared else ((type(old),) if old is not None else ())
            value = check_value(key, _parse(raw, types), old, types if declared else None)
        elif len(parts) == 1 and last in optional:
            types = tuple(optional[last])
            value = _parse(raw, types)
            if value is not None:
                value = check_value(key, value, None, types)
        else:
            known = sorted(target.keys())
            close = difflib.get_close_matches(last, known, n=3)
            hint = f"; did you mean {close}?" if close else ""
            raise UnknownKeyError(f"--set {key}: the config has no key {last!r}{hint} "
                                  f"(keys: {known})")
        try:
            target[last] = value
        except (TypeError, ValueError) as e:  # ConfigDict's own type check
            raise ConfigError(f"--set {key}={value!r}: {e}") from None
    return config


def config_hash(config: Any, exclude: Sequence[str] = NON_HASHED,
                extra: Mapping[str, Any] | None = None) -> str:
    """First 10 hex digits of the SHA-256 of the config's hyperparameters (sorted JSON).

    ``extra`` adds entries that are part of the identity without being config keys (the
    data's content hash).
    """
    d = {k: v for k, v in to_dict(config).items() if k not in exclude}
    if extra:
        d.update(extra)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def run_dir(out: str, config: Any, *, dataset: Any = None,
            exclude: Sequence[str] = NON_HASHED) -> str:
    """``<out>/<config name>-<hash>``, created, with ``config.json`` (and ``data.json``).

    With ``dataset`` (a :class:`jaxsparse.data.Dataset`; every driver passes it) the hash
    includes the data's content hash (:func:`data_fingerprint`) instead of the data's location
    keys (:data:`DATA_LOCATION_KEYS`): other data -> another directory, never reused results;
    the same data moved elsewhere -> the same directory.
    """
    extra = None
    if dataset is not None:
        extra = {"data_sha256": data_fingerprint(dataset)}
        exclude = (*exclude, *DATA_LOCATION_KEYS)
    name = to_dict(config).get("name", "run")
    path = os.path.join(out, f"{name}-{config_hash(config, exclude, extra)}")
    os.makedirs(path, exist_ok=True)
    write_json(os.path.join(path, "config.json"), to_dict(config))
    if dataset is not None:
        write_json(os.path.join(path, "data.json"), data_summary(dataset))
    return path


# ---------------------------------------------------------------------------------------
# Data


def data_fingerprint(dataset: Any) -> str:
    """SHA-256 (16 hex digits) of a dataset's content: every split's arrays and dtypes."""
    h = hashlib.sha256()
    for split in (dataset.train, dataset.val, dataset.test):
        for a in split:
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(memoryview(a).cast("B"))
    h.update(str(dataset.num_classes).encode())
    return h.hexdigest()[:16]


def data_summary(dataset: Any) -> dict:
    """What ``data.json`` records: name, source, content hash, split sizes, class counts."""
    out = {"name": dataset.name, "source": dataset.source, "sha256": data_fingerprint(dataset),
           "num_classes": int(dataset.num_classes), "input_shape": list(dataset.input_shape)}
    for name in ("train", "val", "test"):
        y = np.asarray(getattr(dataset, name).y)
        out[f"{name}_size"] = len(y)
        out[f"{name}_class_counts"] = np.bincount(y, minlength=dataset.num_classes).tolist() \
            if len(y) else []
    return out


def stratified_split(y: np.ndarray, size: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(rest, taken)``: ``size`` examples drawn stratified by class, both shuffled.

    Each class contributes ``floor(size * n_c / n)`` examples, the remainder going to the
    classes with the largest fractional parts (then the lower class id); which examples of a
    class are taken is a permutation with ``seed``. Deterministic in ``(y, size, seed)``.

    >>> rest, val = stratified_split(np.array([0, 0, 0, 0, 1, 1, 1, 1]), 4, seed=0)
    >>> sorted(np.array([0, 0, 0, 0, 1, 1, 1, 1])[val].tolist()), len(rest)
    ([0, 0, 1, 1], 4)
    """
    y = np.asarray(y)
    n = len(y)
    if not 0 < int(size) < n:
        raise DataError(f"cannot draw {size} examples from {n}: need 0 < size < {n}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    # exact integer arithmetic: quota = size * n_c / n = base + remainder / n
    base, remainder = np.divmod(int(size) * counts.astype(np.int64), n)
    order = sorted(range(len(classes)), key=lambda i: (-int(remainder[i]), classes[i]))
    for i in order[: int(size - base.sum())]:
        base[i] += 1
    taken, rest = [], []
    for c, k in zip(classes, base, strict=True):
        idx = rng.permutation(np.flatnonzero(y == c))
        taken.append(idx[:k])
        rest.append(idx[k:])
    return rng.permutation(np.concatenate(rest)), rng.permutation(np.concatenate(taken))


def read_npz(path: str, *, num_classes: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of a data ``.npz``: ``{"x", "y"}`` or ``{"x_train", "y_train", "x_test",
    "y_test"}``, validated (shapes, integer labels, label range), errors naming the file.

    Accepted keys: ``images`` / ``labels``, ``x`` / ``y``, or ``x_train, y_train, x_test,
    y_test``. Images are ``[n, H, W]`` or ``[n, H, W, C]``.
    """
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise DataError(f"data file {path} does not exist")
    try:  # our own handle: np.load leaves it open when the zip is truncated
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - any failure to read means a bad file
        raise DataError(f"cannot read data file {path} (corrupt, truncated or not an .npz): "
                        f"{type(e).__name__}: {e}") from None
    if all(k in arrays for k in ("x_train", "y_train", "x_test", "y_test")):
        pairs = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}
    else:
        for xk, yk in (("images", "labels"), ("x", "y")):
            if xk in arrays and yk in arrays:
                pairs = {"": (xk, yk)}
                break
        else:
            raise DataError(f"data file {path} needs arrays images/labels, x/y or x_train/"
                            f"y_train/x_test/y_test; it has {sorted(arrays)}")
    out = {}
    for split, (xk, yk) in pairs.items():
        x, y = arrays[xk], arrays[yk]
        where = f"data file {path} ({xk}/{yk})"
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4:
            raise DataError(f"{where}: images have shape {x.shape}; expected [n, H, W] or "
                            "[n, H, W, C]")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{where}: {len(x)} images but labels of shape {y.shape}")
        if len(y) == 0:
            raise DataError(f"{where}: no examples")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{where}: labels have dtype {y.dtype}; expected integers")
        if y.min() < 0 or (num_classes is not None and y.max() >= num_classes):
            bad = int(y.min()) if y.min() < 0 else int(y.max())
            raise DataError(f"{where}: label {bad} outside [0, {num_classes or 'n'})")
        if not np.issubdtype(x.dtype, np.number):
            raise DataError(f"{where}: images have dtype {x.dtype}; expected numbers")
        out["x" + (f"_{split}" if split else "")] = x
        out["y" + (f"_{split}" if split else "")] = y.astype(np.int32)
    return out


def check_classes(dataset: Any, where: str = "") -> list[str]:
    """Warns (:class:`DataWarning`) for every split that lacks some of the classes.

    Returns the warning messages (empty when every split has every class).
    """
    msgs = []
    for name in ("train", "val", "test"):
        y = np.asarray(getattr(dataset, name).y)
        if not len(y):
            continue
        missing = sorted(set(range(dataset.num_classes)) - set(np.unique(y).tolist()))
        if missing:
            msgs.append(f"{dataset.name}{where}: the {name} split ({len(y)} examples) has no "
                        f"example of class(es) {missing} of {dataset.num_classes}")
            warnings.warn(msgs[-1], DataWarning, stacklevel=2)
    return msgs


def _normalise(x: np.ndarray, name: str, x_train: np.ndarray):
    """Integer images: /255 then the dataset's per-channel constants (or the training
    split's own mean / std for an unknown name); float images are taken as they are."""
    from jaxsparse import data

    if not np.issubdtype(x.dtype, np.integer):
        return x.astype(np.float32), (0.0,), (1.0,)
    if name in data.NORMALISATION and name != "digits":
        mean, std = data.NORMALISATION[name]
    else:
        t = x_train.astype(np.float32) / 255.0
        mean = tuple(float(v) for v in t.mean(axis=(0, 1, 2)))
        std = tuple(float(max(v, 1e-6)) for v in t.std(axis=(0, 1, 2)))
    return data.normalise(x, mean, std), tuple(mean), tuple(std)


def _val_size(config: Any, name: str, n: int, num_classes: int) -> int:
    from jaxsparse import data

    v = config.get("val_size")
    if v is not None:
        return int(v)
    if name in data.VAL_SIZE and data.VAL_SIZE[name] <= n // 4:
        return data.VAL_SIZE[name]
    return max(num_classes, round(0.1 * n))


def _from_arrays(config: Any, name: str, x_tr, y_tr, x_te, y_te, source: str) -> Any:
    from jaxsparse import data

    classes = config.get("num_classes") or data.NUM_CLASSES.get(name)
    classes = int(classes or max(int(y_tr.max()), int(y_te.max())) + 1)
    for what, y in (("training", y_tr), ("test", y_te)):
        if int(y.max()) >= classes:
            raise DataError(f"{source}: {what} label {int(y.max())} outside [0, {classes}) "
                            f"for dataset {name!r}")
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(f"{source}: training images {x_tr.shape[1:]} and test images "
                        f"{x_te.shape[1:]} differ in shape")
    seed = int(config.get("split_seed", 0) or 0)
    n_val = _val_size(config, name, len(y_tr), classes)
    if n_val == 0:  # no validation split (e.g. Lan et al.'s train / test protocol)
        rest, val = np.random.default_rng(seed).permutation(len(y_tr)), np.arange(0)
    else:
        rest, val = stratified_split(y_tr, n_val, seed=seed)
    x_all, mean, std = _normalise(np.concatenate([x_tr, x_te]), name, x_tr[rest])
    x_tr_n, x_te_n = x_all[: len(x_tr)], x_all[len(x_tr):]
    split = lambda x, y, i: data.Split(x[i], y[i])  # noqa: E731
    return data.Dataset(name, split(x_tr_n, y_tr, rest), split(x_tr_n, y_tr, val),
                        data.Split(x_te_n, y_te), classes, mean, std, source)


def load_dataset(config: Any) -> Any:
    """The config's :class:`jaxsparse.data.Dataset` (see the module docstring for sources).

    Config keys: ``dataset`` (name; also picks the normalisation constants), ``data_file``
    (one ``.npz``: a stratified test split of ``test_size`` (default 1,000, at most a fifth of
    the file) then the validation split), ``train_file`` + ``test_file``, ``data_dir``
    (``train.npz`` + ``test.npz`` or ``<dataset>.npz`` there, else raw files / tfds via
    :func:`jaxsparse.data.load`), ``val_size`` (default: the dataset's 5,000 when known and
    the training set is large enough, else 10% of the training examples; 0: none), ``split_seed``
    (default 0), ``num_classes`` (default: the dataset's, else max label + 1). ``digits``
    keeps :func:`jaxsparse.data.digits`'s own stratified split.

    Raises:
      DataError: a missing, corrupt or inconsistent file (the message names it).
    """
    from jaxsparse import data

    name = config.get("dataset") or "data"
    classes = config.get("num_classes") or data.NUM_CLASSES.get(name)
    train_file, test_file = config.get("train_file"), config.get("test_file")
    data_file, data_dir = config.get("data_file"), config.get("data_dir")
    if data_dir and not (train_file or data_file):
        d = os.path.expanduser(data_dir)
        if not os.path.isdir(d):
            raise DataError(f"data directory {data_dir} does not exist")
        for root in (d, os.path.join(d, name)):
            if os.path.exists(os.path.join(root, "train.npz")):
                train_file = os.path.join(root, "train.npz")
                test_file = os.path.join(root, "test.npz")
                if not os.path.exists(test_file):
                    raise DataError(f"{root} has train.npz but no test.npz")
                break
            if os.path.exists(os.path.join(root, f"{name}.npz")):
                data_file = os.path.join(root, f"{name}.npz")
                break
    if train_file or test_file:
        if not (train_file and test_file):
            raise DataError("train_file and test_file go together (--train-file and "
                            "--test-file); got only "
                            f"{'train_file' if train_file else 'test_file'}")
        tr, te = read_npz(train_file, num_classes=classes), read_npz(test_file,
                                                                      num_classes=classes)
        if "x" not in tr or "x" not in te:
            raise DataError(f"{train_file} / {test_file}: a train or test file holds one split "
                            "(images/labels or x/y)")
        source = f"{os.path.abspath(train_file)} + {os.path.abspath(test_file)}"
        ds = _from_arrays(config, name, tr["x"], tr["y"], te["x"], te["y"], source)
    elif data_file:
        arrays = read_npz(data_file, num_classes=classes)
        source = os.path.abspath(os.path.expanduser(data_file))
        if "x" in arrays:
            x, y = arrays["x"], arrays["y"]
            test_size = config.get("test_size")
            test_size = int(min(1000, round(0.2 * len(y))) if test_size is None else test_size)
            rest, test = stratified_split(y, test_size, seed=int(config.get("split_seed", 0)
                                                                  or 0) + 1)
            ds = _from_arrays(config, name, x[rest], y[rest], x[test], y[test], source)
        else:
            ds = _from_arrays(config, name, arrays["x_train"], arrays["y_train"],
                              arrays["x_test"], arrays["y_test"], source)
    elif name == "digits":
        kw = {} if config.get("val_size") is None else {"val_size": int(config.val_size)}
        ds = data.digits(**kw)
    else:
        try:
            raw = data.load(name, data_dir=os.path.expanduser(data_dir) if data_dir else None,
                            val_size=0)
        except (FileNotFoundError, ValueError) as e:
            raise DataError(str(e)) from None
        ds = _from_arrays(config, name, raw.train.x, raw.train.y, raw.test.x, raw.test.y,
                          raw.source)
    check_classes(ds)
    return ds


# ---------------------------------------------------------------------------------------
# Builders: the model, the learning rate, the optimizer of a config.


def build_model(config: Any, dataset: Any, *, key: Any = None,
                model_kwargs: Mapping[str, Any] | None = None) -> Any:
    """``jaxsparse.models.functional`` of the config's ``model`` (+ ``model_kwargs``).

    ``key`` initialises the template params (``fn.params``; default ``key(0)``); every run
    draws its own init with ``fn.init_fn(key)``.
    """
    import jax

    from jaxsparse import models

    name = config.get("model", "lenet300")
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known: {list(MODELS)}")
    kwargs = dict(config.get("model_kwargs", {}) or {}) if model_kwargs is None \
        else dict(model_kwargs)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    key = jax.random.key(0) if key is None else key
    model = getattr(models, name)(key=key, input_shape=dataset.input_shape,
                                  num_classes=dataset.num_classes, **kwargs)
    return models.functional(model)


def learning_rate(config: Any, num_steps: int | None = None) -> Callable[[Any], Any]:
    """The config's schedule ``step -> lr``: ``schedule="cosine"`` (decay to 0 over
    ``num_steps``), else piecewise constant (x ``lr_gamma`` at each of ``lr_milestones``)."""
    import optax

    lr = float(config.learning_rate)
    if config.get("schedule", "constant") == "cosine":
        return optax.cosine_decay_schedule(lr, int(num_steps or config.num_steps))
    if config.get("schedule", "constant") not in ("constant", "piecewise"):
        raise ConfigError(f"unknown schedule {config.schedule!r} (constant | cosine)")
    milestones = [int(m) for m in config.get("lr_milestones", ()) or ()]
    if not milestones:
        return optax.constant_schedule(lr)
    return optax.piecewise_constant_schedule(
        lr, {m: float(config.get("lr_gamma", 0.1)) for m in milestones})


def build_tx(config: Any, *, offset: int = 0, finetune: bool = False, masked: bool = True,
             num_steps: int | None = None):
    """The optimizer of a run that starts at iteration ``offset`` (schedule shifted to match).

    optax counts from 0 in a fresh optimizer state, so a run restarted at iteration k (late
    rewinding, learning-rate rewinding) reads the schedule at ``count + k``. ``finetune``:
    constant at the schedule's final value. ``masked``: wrapped in ``jaxsparse.masked``
    (pruned moments stay zero); ``weight_decay`` is applied before the optimizer (to every
    trainable param; for supermasks the scores). ``num_steps`` (default ``config.num_steps``)
    is the length of a cosine schedule and the step whose rate fine-tuning keeps.
    """
    import optax

    import jaxsparse

    sched = learning_rate(config, num_steps)
    constant = (config.get("schedule", "constant") != "cosine"
                and not (config.get("lr_milestones", ()) or ()))
    if constant:  # a plain float: the optimizer state has no schedule counter
        lr = float(config.learning_rate)
    elif finetune:
        lr = float(sched(int(num_steps or config.num_steps)))
    elif offset:
        lr = lambda count: sched(count + offset)  # noqa: E731
    else:
        lr = sched
    if config.optimizer == "adam":
        tx = optax.adam(lr)
    elif config.optimizer == "sgd":
        tx = optax.sgd(lr, momentum=config.get("momentum", 0.0) or None)
    else:
        raise ConfigError(f"unknown optimizer {config.optimizer!r} ({' | '.join(OPTIMIZERS)})")
    if config.get("weight_decay", 0.0):
        tx = optax.chain(optax.add_decayed_weights(config.weight_decay), tx)
    return jaxsparse.masked(tx) if masked else tx


def replicate_keys(seed: int, replicates: int, num: int = 3) -> Any:
    """``[replicates, num]`` keys, row ``i`` = ``split(fold_in(key(seed), i), num)``.

    Row ``i`` does not depend on ``replicates``: replicate ``i`` trains the same in a
    population of any size.
    """
    import jax
    import jax.numpy as jnp

    root = jax.random.key(seed)
    return jax.vmap(lambda i: jax.random.split(jax.random.fold_in(root, i), num))(
        jnp.arange(replicates, dtype=jnp.uint32))


# ---------------------------------------------------------------------------------------
# Populations on CPU


CPU_DEVICES_HELP = (
    "JAX CPU devices a population shards over: 'auto' = the most devices <= the cores "
    "that pad the population by at most 1/8 (padded members cost as much as real ones), "
    "or a number. "
    "No effect on a GPU/TPU run, nor when XLA_FLAGS already fixes a count. Must be chosen "
    "before JAX starts (jaxsparse.population.use_cpu_devices)."
)


def cpu_devices(flag: str, members: int) -> int:
    """Applies ``--cpu-devices`` for a population of ``members``; returns the device count.

    On a CPU one device per core runs whole members side by side (LeNet-300-100: 1.3x the
    one-device population, ``benchmarks/bench_population.py --cpu-devices 2``), but a
    population the device count does not divide is padded with members that cost as much as
    real ones (3 replicates on 2 devices: the digits demo ran 1.6x slower), so ``"auto"``
    takes the most devices, at most the core count, that pad the population by at most
    1/8 (a divisor of ``members`` needs no padding; 1 device never does).
    """
    from jaxsparse.population import cpu_cores, use_cpu_devices

    if flag == "auto":
        cores = cpu_cores()  # the affinity-aware core count
        members = max(1, members)
        count = max(d for d in range(1, min(cores, members) + 1)
                    if (-(-members // d) * d - members) * 8 <= members)
    elif str(flag).isdigit() and int(flag) >= 1:
        count = int(flag)
    else:
        raise ConfigError(f"--cpu-devices must be 'auto' or a positive integer, got {flag!r}")
    return use_cpu_devices(count)


def fit(trainer: Any, state: Any, dataset: Any, config: Any, *, checkpoint_dir: str,
        tag: str, show_progress: bool = True) -> tuple[Any, float]:
    """``trainer.fit`` as the drivers run it: the config's ``num_steps`` / ``eval_every`` /
    ``checkpoint_every`` / ``keep_checkpoints``, a progress bar, :func:`pause_for_tests` at
    ``"<tag>:<step>"`` after each checkpoint; returns ``(FitResult, seconds)``."""
    bar, bar_cb = (progress(int(config.num_steps), 0, f"{config.name} {tag}")
                   if show_progress else (None, None))
    t0 = time.perf_counter()
    try:
        out = trainer.fit(state, dataset, num_steps=int(config.num_steps),
                          eval_every=int(config.eval_every), callback=bar_cb,
                          checkpoint_dir=checkpoint_dir,
                          checkpoint_every=config.get("checkpoint_every") or config.eval_every,
                          keep=int(config.get("keep_checkpoints", 2)),
                          on_checkpoint=lambda step: pause_for_tests(f"{tag}:{step}"))
    finally:
        if bar is not None:
            bar.close()
    return out, time.perf_counter() - t0


def pause_for_tests(tag: str) -> None:
    """Fault injection for kill-and-resume tests; a no-op unless ``$JAXSPARSE_PAUSE_AT``.

    When ``$JAXSPARSE_PAUSE_AT == tag`` (e.g. ``"dense:40"``: a driver calls this once the
    checkpoint of that run and step is on disk) it writes ``$JAXSPARSE_PAUSE_FILE`` and waits
    to be killed.
    """
    if os.environ.get("JAXSPARSE_PAUSE_AT") != tag:
        return
    import signal

    with open(os.environ["JAXSPARSE_PAUSE_FILE"], "w") as f:
        f.write(tag)
    while True:
        signal.pause()


# ---------------------------------------------------------------------------------------
# Results files


def is_finished(path: str, marker: str = "results.json") -> bool:
    """Whether a run directory already holds its final results."""
    return os.path.exists(os.path.join(path, marker))


def finished_results(path: str) -> Any:
    """A finished run's ``results.json`` (and a line saying so), or ``None`` if unfinished."""
    if not is_finished(path):
        return None
    results_path = os.path.join(path, "results.json")
    print(f"finished already: {results_path}")
    return read_json(results_path)


def _clean(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        return _clean(x.item())
    return x


def write_json(path: str, obj: Any) -> None:
    """Writes JSON atomically (temp file + rename), NaN as null."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_clean(obj), f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def write_csv(path: str, history: dict[str, list]) -> None:
    """Writes a column-per-metric CSV of an equal-length history dict."""
    keys = list(history)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for row in zip(*(history[k] for k in keys), strict=True):
            w.writerow(row)
    os.replace(tmp, path)


def write_rows(path: str, rows: Sequence[dict]) -> None:
    """Writes a list of dicts as a CSV (columns: the union of keys, in first-seen order)."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and :data:`SPREAD` (sample std, ddof=1; ``nan`` for a single value)."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan


def fmt_mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """``"mean±std"`` (std = :data:`SPREAD`); just the mean for a single value."""
    m, s = mean_std(values)
    if math.isnan(s):
        return f"{scale * m:.{digits}f}"
    return f"{scale * m:.{digits}f}±{scale * s:.{digits}f}"


def format_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A right-aligned plain-text table with a rule under the header."""
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    fmt = lambda x: "  ".join(c.rjust(w) for c, w in zip(x, widths, strict=True))  # noqa: E731
    return "\n".join([fmt(head), "-" * len(fmt(head)), *map(fmt, body)])


def subplots(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """``matplotlib.pyplot.subplots`` on the Agg backend (drivers write PNGs, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig: Any, path: str, *, dpi: int = 110) -> str:
    """Lays out, writes and closes ``fig``; returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_curves(path: str, history: dict[str, list], *, title: str = "",
                early_stop: int | None = None) -> None:
    """Loss and accuracy against iteration (train / val / test), PNG via matplotlib Agg.

    A metric recorded per replicate (one list of per-replicate values per evaluation) is
    drawn as the mean over replicates with a ± :data:`SPREAD` band.
    """

    fig, axes = subplots(1, 2, figsize=(10, 3.8))
    steps = history["step"]
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for split in ("train", "val", "test"):
            key = f"{split}_{metric}"
            if key not in history:
                continue
            values = np.asarray(history[key], np.float64)
            if values.ndim == 1:
                ax.plot(steps, values, label=split)
                continue
            mean = values.mean(axis=1)  # [evaluations, replicates]
            (line,) = ax.plot(steps, mean, label=f"{split} (mean)")
            if values.shape[1] > 1:
                std = values.std(axis=1, ddof=1)
                ax.fill_between(steps, mean - std, mean + std, color=line.get_color(),
                                alpha=0.2, lw=0, label=f"{split} ± {SPREAD}")
        if early_stop is not None:
            ax.axvline(early_stop, color="gray", ls="--", lw=0.8, label="early stop")
        ax.set_xlabel("iteration")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def progress(
    total: int, initial: int = 0, desc: str = ""
) -> tuple[Any, Callable[[int, dict], None]]:
    """A tqdm bar over iterations; returns ``(bar, callback(step, record))``.

    ``record`` values may be per-member lists (a population): the bar shows their mean.
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, desc=desc, unit="it", dynamic_ncols=True)
    last = [initial]

    def show(v: Any) -> str:
        v = float(np.nanmean(v)) if isinstance(v, list | tuple) and len(v) else v
        return f"{v:.4f}" if isinstance(v, float) else "nan"

    def callback(step: int, record: dict) -> None:
        bar.update(step - last[0])
        last[0] = step
        bar.set_postfix(val_acc=show(record.get("val_accuracy", math.nan)),
                        test_acc=show(record.get("test_accuracy", math.nan)))

    return bar, callback
