"""Datasets as device-ready arrays: tensorflow-datasets, raw files, scikit-learn digits, synthetic.

Every loader returns a :class:`Dataset` of float32 NHWC images (normalised per channel with
the dataset's constants) and int32 labels, split into train / val / test as the papers do:

==================  =================  ========================================================
name                train / val / test  where val comes from
==================  =================  ========================================================
``mnist``           55,000/5,000/10,000 first 5,000 of the official training set (as TF's
``fashion_mnist``   55,000/5,000/10,000 ``input_data`` and the lottery-ticket code)
``cifar10``         45,000/5,000/10,000 last 5,000 of the official training set
``cifar100``        45,000/5,000/10,000 last 5,000 of the official training set
``digits``          1,197 / 300 / 300   fixed stratified split of scikit-learn's 1,797 digits
==================  =================  ========================================================

Sources, tried in this order by :func:`load` (nothing is ever downloaded):

1. raw files in ``data_dir`` (or ``data_dir/<name>``): MNIST-style IDX files
   (``train-images-idx3-ubyte[.gz]`` ...), the CIFAR python pickles
   (``cifar-10-batches-py/`` / ``cifar-100-python/``), or ``<name>.npz`` with
   ``x_train, y_train, x_test, y_test`` (or ``train.npz`` / ``test.npz`` with ``x``/``y``
   or ``images``/``labels``);
2. a prepared tensorflow-datasets directory ``<root>/<name>/<version>/`` under ``data_dir``,
   ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``, read with
   ``tfds.builder_from_directory(...).as_data_source()`` — no TensorFlow needed to read.

Every dataset is validated when it is made (:func:`validate`: shapes, dtypes, labels in
``[0, num_classes)``, no empty train / test split, no NaN pixels), and raw files are checked as
they are read (uint8-like pixels 0..255, integer labels); every message names the split, the
file and the offending value.

>>> ds = digits()
>>> ds.train.x.shape, ds.train.y.dtype, ds.num_classes
((1197, 8, 8, 1), dtype('int32'), 10)
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import os
import pickle
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Per-channel mean / std of the training images scaled to [0, 1].
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "digits": ((0.3053,), (0.3760,)),  # sklearn digits / 16, all 1,797 images
}
VAL_SIZE = {"mnist": 5000, "fashion_mnist": 5000, "cifar10": 5000, "cifar100": 5000}
NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100, "digits": 10}
NAMES = tuple(VAL_SIZE)


class Split(NamedTuple):
    """One split: ``x`` float32 ``[n, H, W, C]``, ``y`` int32 ``[n]`` (host numpy arrays)."""

    x: np.ndarray
    y: np.ndarray


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train / val / test splits plus what a model needs to know about them.

    Attributes:
      name: dataset name (``"mnist"``, ``"digits"``, ...).
      train, val, test: :class:`Split` ``(x, y)``.
      num_classes: number of labels.
      mean, std: per-channel constants the images were normalised with
        (``x = (pixel / 255 - mean) / std``).
      source: where the data came from (a path, ``"tfds:<dir>"``, ``"sklearn"``, ...).

    Every ``Dataset`` is checked when it is made (:func:`validate`): a malformed one never
    reaches training.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    source: str = ""

    def __post_init__(self) -> None:
        validate(self)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example's shape ``(H, W, C)``."""
        return tuple(self.train.x.shape[1:])

    def __repr__(self) -> str:
        sizes = "/".join(str(len(s.y)) for s in (self.train, self.val, self.test))
        return (f"Dataset({self.name!r}, train/val/test={sizes}, input_shape={self.input_shape},"
                f" num_classes={self.num_classes}, source={self.source!r})")


def _where(ds: Dataset, split: str) -> str:
    src = f" from {ds.source}" if ds.source else ""
    return f"dataset {ds.name!r}{src}, split {split!r}"


def validate(ds: Dataset) -> None:
    """Raises a ``ValueError`` / ``TypeError`` unless ``ds`` is a well-formed dataset.

    Checks, per split: ``x`` a floating ``[n, H, W, C]`` array of finite values (no NaN / inf),
    ``y`` a 1-D integer array of the same length with every label in ``[0, num_classes)``; a
    non-empty train and test split (val may be empty); one example shape across splits; an
    int ``num_classes >= 1``. Messages name the dataset, its source (the file or directory it
    was read from), the split and the offending value or index. :class:`Dataset` runs it on
    construction.

    >>> x = np.zeros((2, 4, 4, 1), np.float32)
    >>> Dataset("mine", Split(x, np.array([0, 3])), Split(x[:0], np.zeros(0, np.int32)),
    ...         Split(x, np.array([0, 1])), num_classes=3)
    Traceback (most recent call last):
    ...
    ValueError: dataset 'mine', split 'train': label 3 at index 1 is outside [0, 3) \
(num_classes=3)
    """
    if isinstance(ds.num_classes, bool) or not isinstance(ds.num_classes, int | np.integer) \
            or ds.num_classes < 1:
        raise ValueError(f"dataset {ds.name!r}: num_classes must be an int >= 1, got "
                         f"{ds.num_classes!r}")
    shapes = {}
    for split in ("train", "val", "test"):
        s = getattr(ds, split)
        where = _where(ds, split)
        if not (isinstance(s, tuple) and len(s) == 2):
            raise TypeError(f"{where}: must be a Split(x, y), got {type(s).__name__}")
        x, y = s
        if not hasattr(x, "shape") or not hasattr(y, "shape"):
            raise TypeError(f"{where}: x and y must be arrays, got {type(x).__name__} and "
                            f"{type(y).__name__}")
        if np.ndim(x) != 4:
            raise ValueError(f"{where}: x has shape {tuple(np.shape(x))}; images must be "
                             "[n, H, W, C] (add a channel axis: x[..., None])")
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{where}: x has dtype {x.dtype}; images must be floating point "
                            "(e.g. data.normalise(uint8_images, mean, std))")
        if np.ndim(y) != 1:
            raise ValueError(f"{where}: y has shape {tuple(np.shape(y))}; labels must be 1-D")
        if not np.issubdtype(y.dtype, np.integer):
            raise TypeError(f"{where}: y has dtype {y.dtype}; labels must be integers")
        if len(x) != len(y):
            raise ValueError(f"{where}: {len(x)} images but {len(y)} labels")
        if len(y) == 0:
            if split != "val":
                raise ValueError(f"{where}: the split is empty")
            continue
        yn = np.asarray(y)
        bad = np.flatnonzero((yn < 0) | (yn >= ds.num_classes))
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"{where}: label {int(yn[i])} at index {i} is outside "
                             f"[0, {ds.num_classes}) (num_classes={ds.num_classes})"
                             + (f"; {len(bad)} such labels" if len(bad) > 1 else ""))
        finite = np.isfinite(np.asarray(x))
        if not finite.all():
            n_bad = int(x.size - finite.sum())
            i = int(np.flatnonzero(~finite.reshape(len(x), -1).all(axis=1))[0])
            raise ValueError(f"{where}: {n_bad} pixel value(s) are NaN or inf (first in image "
                             f"{i})")
        shapes[split] = tuple(x.shape[1:])
    if len(set(shapes.values())) > 1:
        raise ValueError(f"dataset {ds.name!r}: splits have different example shapes {shapes}")


def normalise(images: np.ndarray, mean: Sequence[float], std: Sequence[float],
              scale: float = 255.0) -> np.ndarray:
    """``(images / scale - mean) / std`` per channel, as float32 NHWC."""
    x = images.astype(np.float32) / np.float32(scale)
    return ((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)


def _split_val(name: str, x: np.ndarray, y: np.ndarray, val_size: int) -> tuple[Split, Split]:
    if val_size < 0 or val_size >= len(y):
        raise ValueError(f"{name}: val_size {val_size} must be in [0, {len(y)})")
    if name in ("mnist", "fashion_mnist"):  # first examples, as TF's input_data
        return Split(x[val_size:], y[val_size:]), Split(x[:val_size], y[:val_size])
    n = len(y) - val_size
    return Split(x[:n], y[:n]), Split(x[n:], y[n:])


def _check_raw(name: str, raw: dict[str, np.ndarray], source: str,
               files: dict[str, str] | None) -> None:
    """Pixels and labels as read from files: uint8-like images 0..255, integer labels."""
    for k in ("x_train", "y_train", "x_test", "y_test"):
        where = f"{name}: {k} in {(files or {}).get(k, source)}"
        a = np.asarray(raw[k])
        if a.dtype == object:
            raise TypeError(f"{where} is an object array; expected numbers")
        if len(a) == 0:
            raise ValueError(f"{where} is empty")
        if k.startswith("x"):
            if not np.issubdtype(a.dtype, np.integer):
                raise TypeError(f"{where} has dtype {a.dtype}; raw images must be integer pixels "
                                "0..255 (uint8), which are scaled by 1/255 here")
            lo, hi = int(a.min()), int(a.max())
            if lo < 0 or hi > 255:
                raise ValueError(f"{where} has pixel values in [{lo}, {hi}]; expected 0..255")
        else:
            if a.ndim != 1:
                raise ValueError(f"{where} has shape {a.shape}; labels must be 1-D")
            if not np.issubdtype(a.dtype, np.integer):
                raise TypeError(f"{where} has dtype {a.dtype}; labels must be integers")


def _finish(name: str, raw: dict[str, np.ndarray], val_size: int | None, normalize: bool,
            source: str, files: dict[str, str] | None = None) -> Dataset:
    _check_raw(name, raw, source, files)
    x_tr, y_tr, x_te, y_te = (raw[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    for k, x in (("x_train", x_tr), ("x_test", x_te)):
        if x.ndim == 3:
            raw[k] = x = x[..., None]
        if x.ndim != 4:
            raise ValueError(f"{name}: {k} in {(files or {}).get(k, source)} has shape "
                             f"{x.shape}, expected NHWC")
    x_tr, x_te = raw["x_train"], raw["x_test"]
    if len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
        raise ValueError(f"{name}: images and labels differ in length in {source}: "
                         f"{len(x_tr)} vs {len(y_tr)} (train), {len(x_te)} vs {len(y_te)} (test)")
    mean, std = NORMALISATION.get(name, ((0.0,), (1.0,)))
    if normalize:
        x_tr, x_te = normalise(x_tr, mean, std), normalise(x_te, mean, std)
    else:
        mean, std = (0.0,), (255.0,)
        x_tr, x_te = normalise(x_tr, mean, (1.0,)), normalise(x_te, mean, (1.0,))
    y_tr, y_te = y_tr.astype(np.int32), y_te.astype(np.int32)
    train, val = _split_val(name, x_tr, y_tr, VAL_SIZE.get(name, 0) if val_size is None
                            else val_size)
    num_classes = NUM_CLASSES.get(name, int(max(y_tr.max(), y_te.max())) + 1)
    for k, y in (("y_train", y_tr), ("y_test", y_te)):
        bad = np.flatnonzero((y < 0) | (y >= num_classes))
        if len(bad):
            raise ValueError(
                f"{name}: {k} in {(files or {}).get(k, source)} has label {int(y[bad[0]])} at "
                f"index {int(bad[0])}, outside [0, {num_classes}) for {name} "
                f"({len(bad)} such labels)")
    return Dataset(name, train, val, Split(x_te, y_te), num_classes, tuple(mean), tuple(std),
                   source)


# ---------------------------------------------------------------------------------------
# Raw files


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (MNIST format; ``.gz`` or not) into a numpy array.

    Raises a ``ValueError`` naming the file when the header or size is wrong.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read IDX file {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number "
                         f"{data[:4].hex() if len(data) >= 4 else data.hex()}); re-download it")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise ValueError(f"{path} is truncated or corrupt: header says {dims} = {expected} bytes,"
                         f" file has {len(data) - header}; re-download it")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _find(root: str, stem: str) -> str | None:
    for cand in (stem, stem + ".gz", stem.replace("-idx", ".idx"),
                 stem.replace("-idx", ".idx") + ".gz"):
        p = os.path.join(root, cand)
        if os.path.exists(p):
            return p
    return None


def _read_mnist_dir(root: str) -> dict[str, np.ndarray] | None:
    files = {k: _find(root, s) for k, s in (
        ("x_train", "train-images-idx3-ubyte"), ("y_train", "train-labels-idx1-ubyte"),
        ("x_test", "t10k-images-idx3-ubyte"), ("y_test", "t10k-labels-idx1-ubyte"))}
    if not any(files.values()):
        return None
    missing = [k for k, v in files.items() if v is None]
    if missing:
        raise FileNotFoundError(f"IDX files for {missing} missing in {root} (need train-images-"
                                "idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                                "t10k-labels-idx1-ubyte, optionally .gz)")
    return {**{k: read_idx(v) for k, v in files.items()}, "files": files}


def _unpickle(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise ValueError(f"cannot read CIFAR pickle {path}: {e}; re-download it") from None


def _cifar_arrays(d: dict, label_key: bytes, path: str) -> tuple[np.ndarray, np.ndarray]:
    if b"data" not in d or label_key not in d:
        raise ValueError(f"{path} lacks b'data' / {label_key!r}; is it the python CIFAR pickle?")
    x = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return x, np.asarray(d[label_key])


def _read_cifar_dir(root: str, name: str) -> dict[str, np.ndarray] | None:
    if name == "cifar10":
        for sub in ("cifar-10-batches-py", ""):
            base = os.path.join(root, sub)
            if os.path.exists(os.path.join(base, "data_batch_1")):
                parts = [_cifar_arrays(_unpickle(p), b"labels", p) for p in
                         [os.path.join(base, f"data_batch_{i}") for i in range(1, 6)]]
                p = os.path.join(base, "test_batch")
                x_te, y_te = _cifar_arrays(_unpickle(p), b"labels", p)
                return dict(x_train=np.concatenate([a for a, _ in parts]),
                            y_train=np.concatenate([b for _, b in parts]),
                            x_test=x_te, y_test=y_te)
    if name == "cifar100":
        for sub in ("cifar-100-python", ""):
            base = os.path.join(root, sub)
            if os.path.exists(os.path.join(base, "train")) and \
                    os.path.exists(os.path.join(base, "test")):
                p_tr, p_te = os.path.join(base, "train"), os.path.join(base, "test")
                x_tr, y_tr = _cifar_arrays(_unpickle(p_tr), b"fine_labels", p_tr)
                x_te, y_te = _cifar_arrays(_unpickle(p_te), b"fine_labels", p_te)
                return dict(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    return None


def _load_npz(path: str, keys: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
    """The arrays of the first complete key set in ``keys``; errors name the file."""
    try:  # our own handle: np.load leaks it when the zip is broken
        with open(path, "rb") as fh, np.load(fh) as z:
            for ks in keys:
                if all(k in z for k in ks):
                    return {k: z[k] for k in ks}
            files = sorted(z.files)
    except Exception as e:  # noqa: BLE001 - not a zip, truncated, pickled objects, ...
        raise ValueError(f"cannot read {path}: {type(e).__name__}: {e}; is it an .npz "
                         "written by numpy.savez?") from None
    raise ValueError(f"{path} needs arrays {' or '.join('/'.join(ks) for ks in keys)}, has "
                     f"{files}")


def _npz_xy(path: str) -> tuple[np.ndarray, np.ndarray]:
    z = _load_npz(path, (("x", "y"), ("images", "labels")))
    return tuple(z.values())


def _read_npz_dir(root: str, name: str) -> dict[str, np.ndarray] | None:
    p = os.path.join(root, f"{name}.npz")
    if os.path.exists(p):
        raw = _load_npz(p, (("x_train", "y_train", "x_test", "y_test"),))
        raw["files"] = dict.fromkeys(("x_train", "y_train", "x_test", "y_test"), p)
        return raw
    tr, te = os.path.join(root, "train.npz"), os.path.join(root, "test.npz")
    if os.path.exists(tr) and os.path.exists(te):
        (x_tr, y_tr), (x_te, y_te) = _npz_xy(tr), _npz_xy(te)
        return dict(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te,
                    files=dict(x_train=tr, y_train=tr, x_test=te, y_test=te))
    return None


def _read_raw(root: str, name: str) -> dict[str, np.ndarray] | None:
    if not os.path.isdir(root):
        return None
    raw = _read_npz_dir(root, name)
    if raw is None and name in ("mnist", "fashion_mnist"):
        raw = _read_mnist_dir(root)
    if raw is None and name in ("cifar10", "cifar100"):
        raw = _read_cifar_dir(root, name)
    return raw


# ---------------------------------------------------------------------------------------
# tensorflow-datasets (read without TensorFlow)


def _tfds_roots(data_dir: str | None) -> list[str]:
    roots = [data_dir] if data_dir else []
    if os.environ.get("TFDS_DATA_DIR"):
        roots.append(os.environ["TFDS_DATA_DIR"])
    roots.append(os.path.expanduser("~/tensorflow_datasets"))
    return roots


def _find_tfds_dir(roots: Sequence[str], name: str) -> str | None:
    def version_key(path: str) -> tuple[int, ...]:
        try:
            return tuple(int(v) for v in os.path.basename(os.path.dirname(path)).split("."))
        except ValueError:
            return (-1,)

    for root in roots:
        infos = glob.glob(os.path.join(root, name, "*", "dataset_info.json"))
        if infos:
            return os.path.dirname(max(infos, key=version_key))
    return None


def _read_tfds(path: str) -> dict[str, np.ndarray]:
    import tensorflow_datasets as tfds

    try:
        source = tfds.builder_from_directory(path).as_data_source()
    except Exception as e:  # noqa: BLE001 - report where and why, whatever tfds raised
        raise ValueError(f"cannot read the tensorflow-datasets directory {path}: {e}. It must be"
                         " prepared with file_format='array_record' to be read without "
                         "TensorFlow") from None
    out = {}
    for split, xk, yk in (("train", "x_train", "y_train"), ("test", "x_test", "y_test")):
        if split not in source:
            raise ValueError(f"{path} has no {split!r} split (has {sorted(source)})")
        src = source[split]
        images, labels = [], []
        for start in range(0, len(src), 5000):
            for ex in src.__getitems__(list(range(start, min(start + 5000, len(src))))):
                images.append(ex["image"])
                labels.append(ex["label"])
        out[xk] = np.stack(images).astype(np.uint8)
        out[yk] = np.asarray(labels)
    return out


def _hint(name: str) -> str:
    raw = {
        "mnist": "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                 "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz",
        "fashion_mnist": "the four Fashion-MNIST IDX files (train-images-idx3-ubyte.gz, ...)",
        "cifar10": "cifar-10-python.tar.gz extracted (cifar-10-batches-py/)",
        "cifar100": "cifar-100-python.tar.gz extracted (cifar-100-python/)",
    }[name]
    return (f"Either put the raw files ({raw}) in a directory and pass data_dir=DIR "
            f"(--data-dir DIR), or prepare it once with tensorflow-datasets on a machine with "
            f"internet and TensorFlow: `tfds build {name} --file_format=array_record` "
            f"(then copy ~/tensorflow_datasets/{name} here; reading needs no TensorFlow). "
            "See docs/engine.md.")


def load(
    name: str,
    *,
    data_dir: str | None = None,
    val_size: int | None = None,
    normalize: bool = True,
) -> Dataset:
    """Loads a real dataset from local raw files or a prepared tfds directory (never downloads).

    Args:
      name: ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``, ``"cifar100"`` or ``"digits"``.
      data_dir: directory with raw files (or ``data_dir/<name>/``) or a tfds data dir.
      val_size: validation examples taken from the official training set (default: the
        papers' 5,000; see the module table for which ones).
      normalize: per-channel ``(x/255 - mean) / std`` (else ``x/255``).

    Raises:
      FileNotFoundError: nothing found; the message lists every place looked and what to run.
      ValueError: a file was found but is corrupt (names the file).
    """
    if name == "digits":
        return digits()
    if name not in VAL_SIZE:
        raise ValueError(f"unknown dataset {name!r}; known: {list(NAMES) + ['digits']}")
    looked = []
    if data_dir is not None:
        for root in (data_dir, os.path.join(data_dir, name)):
            looked.append(root)
            raw = _read_raw(root, name)
            if raw is not None:
                files = raw.pop("files", None)
                return _finish(name, raw, val_size, normalize, source=root, files=files)
    roots = _tfds_roots(data_dir)
    path = _find_tfds_dir(roots, name)
    if path is not None:
        return _finish(name, _read_tfds(path), val_size, normalize, source=f"tfds:{path}")
    looked += [os.path.join(r, name, "<version>") for r in roots]
    raise FileNotFoundError(f"no {name} data found. Looked for raw files in "
                            f"{looked[:2] if data_dir else '[] (no data_dir given)'} and for a "
                            f"prepared tensorflow-datasets directory in "
                            f"{[os.path.join(r, name) for r in roots]}. {_hint(name)}")


# ---------------------------------------------------------------------------------------
# Offline data


def digits(*, seed: int = 0, val_size: int = 300, test_size: int = 300) -> Dataset:
    """scikit-learn's 1,797 real 8x8 handwritten digits, a fixed stratified split.

    Default sizes: 1,197 train / 300 val / 300 test (each stratified by class with
    ``seed``; the same seed always gives the same split). Pixels ``0..16`` are scaled to
    ``[0, 1]`` and normalised with mean 0.3053, std 0.3760. ``val_size=0``: no validation
    split (the training split keeps those examples).

    >>> [len(s.y) for s in (digits().train, digits(val_size=0).train, digits(val_size=0).val)]
    [1197, 1497, 0]

    References:
      Alpaydin & Kaynak 1998, UCI "Optical Recognition of Handwritten Digits".
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.images.astype(np.float32)[..., None]
    y = d.target.astype(np.int32)
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=test_size, stratify=y, random_state=seed)
    if val_size == 0:
        train, val = np.random.default_rng(seed + 1).permutation(rest), rest[:0]
    else:
        train, val = train_test_split(rest, test_size=val_size, stratify=y[rest],
                                      random_state=seed + 1)
    mean, std = NORMALISATION["digits"]
    xs = normalise(x, mean, std, scale=16.0)
    return Dataset("digits", Split(xs[train], y[train]), Split(xs[val], y[val]),
                   Split(xs[test], y[test]), 10, mean, std, "sklearn")


def synthetic(
    *,
    num_train: int = 55000,
    num_val: int = 5000,
    num_test: int = 10000,
    shape: Sequence[int] = (28, 28, 1),
    num_classes: int = 10,
    noise: float = 1.0,
    seed: int = 0,
    name: str = "synthetic",
) -> Dataset:
    """A learnable synthetic dataset (MNIST-shaped by default), for benchmarks and tests.

    Each class has a random prototype image; an example is its class prototype plus
    Gaussian noise of standard deviation ``noise`` (prototypes have unit variance), so a
    linear model can learn it and accuracy grows with training. Deterministic in ``seed``.
    """
    rng = np.random.default_rng(seed)
    protos = rng.standard_normal((num_classes, *shape)).astype(np.float32)

    def make(n: int) -> Split:
        y = rng.integers(0, num_classes, n).astype(np.int32)
        x = protos[y] + np.float32(noise) * rng.standard_normal((n, *shape), dtype=np.float32)
        return Split(x.astype(np.float32), y)

    return Dataset(name, make(num_train), make(num_val), make(num_test), num_classes,
                   (0.0,) * shape[-1], (1.0,) * shape[-1], f"synthetic(seed={seed})")


# ---------------------------------------------------------------------------------------
# On-device augmentation


def augment_cifar(x: jax.Array, *, key: jax.Array, pad: int = 4) -> jax.Array:
    """Random horizontal flip and ``pad``-pixel random crop of a batch ``[n, H, W, C]``.

    Zero-pads by ``pad`` (zero = the per-channel mean after normalisation) and crops back to
    ``H x W`` at a uniformly random offset per image. Pure, jittable, usable as the trainer's
    ``augment``.

    >>> augment_cifar(jnp.zeros((2, 32, 32, 3)), key=jax.random.key(0)).shape
    (2, 32, 32, 3)
    """
    n, h, w, c = x.shape
    k_flip, k_dy, k_dx = jax.random.split(key, 3)
    flip = jax.random.bernoulli(k_flip, 0.5, (n,))
    x = jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy = jax.random.randint(k_dy, (n,), 0, 2 * pad + 1)
    dx = jax.random.randint(k_dx, (n,), 0, 2 * pad + 1)
    crop = lambda img, oy, ox: jax.lax.dynamic_slice(img, (oy, ox, 0), (h, w, c))  # noqa: E731
    return jax.vmap(crop)(xp, dy, dx)


def augmentation_for(name: str):
    """The papers' training augmentation for a dataset: CIFAR flip+crop, else ``None``."""
    return augment_cifar if name in ("cifar10", "cifar100") else None
