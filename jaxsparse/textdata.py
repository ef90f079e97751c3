"""An offline byte-level text corpus: the Python standard library's own source files.

Every machine with Python has it, so language-model experiments and tests need no download.
The files are the ``*.py`` files under ``sysconfig.get_paths()["stdlib"]`` (``site-packages``,
``dist-packages`` and ``__pycache__`` excluded), sorted by their path relative to that
directory. The split is by file and fixed: file ``i`` of the sorted list is validation when
``i % val_every == 0``, training otherwise. Each split is the concatenation of its files'
bytes, each file followed by a ``\\n`` separator. The corpus is the *installed* Python's
standard library: numbers are comparable between machines with the same Python version
(``Corpus.python`` records it).

>>> corpus = stdlib(max_files=20)
>>> corpus.train.dtype, len(corpus.val_files), len(corpus.train_files)
(dtype('uint8'), 2, 18)
>>> windows(corpus.val, 64)[:2].shape  # [N, seq_len + 1] int32 token windows
(2, 65)
"""

from __future__ import annotations

import os
import platform
import sysconfig
from typing import NamedTuple

import numpy as np

_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}


class Corpus(NamedTuple):
    """Byte-level train / validation text (``uint8`` arrays) and where it came from."""

    train: np.ndarray
    val: np.ndarray
    train_files: tuple[str, ...]
    val_files: tuple[str, ...]
    root: str
    python: str


def stdlib_files(root: str | None = None) -> list[str]:
    """The sorted relative paths of the standard library's ``*.py`` files."""
    root = sysconfig.get_paths()["stdlib"] if root is None else root
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _EXCLUDED_DIRS]
        for name in filenames:
            if name.endswith(".py"):
                out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(out)


def stdlib(*, val_every: int = 10, max_files: int | None = None,
           root: str | None = None) -> Corpus:
    """The standard-library corpus, split by file.

    Args:
      val_every: file ``i`` (sorted order) is validation when ``i % val_every == 0``.
      max_files: use only the first ``max_files`` files of the sorted list (small tests).
      root: another directory of ``*.py`` files instead of the standard library.

    Returns:
      :class:`Corpus`.
    """
    if val_every < 2:
        raise ValueError(f"val_every must be >= 2, got {val_every}")
    root = sysconfig.get_paths()["stdlib"] if root is None else root
    files = stdlib_files(root)
    if max_files is not None:
        files = files[:max_files]
    if not files:
        raise FileNotFoundError(f"no *.py files under {root!r}")
    splits: dict[bool, list[bytes]] = {True: [], False: []}
    names: dict[bool, list[str]] = {True: [], False: []}
    for i, rel in enumerate(files):
        with open(os.path.join(root, rel), "rb") as f:
            is_val = i % val_every == 0
            splits[is_val].append(f.read() + b"\n")
            names[is_val].append(rel)
    as_array = lambda chunks: np.frombuffer(b"".join(chunks), np.uint8)  # noqa: E731
    return Corpus(as_array(splits[False]), as_array(splits[True]), tuple(names[False]),
                  tuple(names[True]), root, platform.python_version())


def windows(data: np.ndarray, seq_len: int, *, max_windows: int | None = None,
            stride: int | None = None, offset: int = 0) -> np.ndarray:
    """Token windows ``[N, seq_len + 1]`` (int32) of a byte array.

    Window ``i`` is ``data[offset + i * stride : offset + i * stride + seq_len + 1]``. With the
    default ``stride = seq_len`` consecutive windows share one byte, so the ``N * seq_len``
    next-token targets tile the data; a larger stride spreads ``max_windows`` windows over a
    long text. A language model trains on ``x = w[:, :-1]``, ``y = w[:, 1:]``.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    stride = seq_len if stride is None else int(stride)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    data = np.asarray(data)[offset:]
    n = (len(data) - seq_len - 1) // stride + 1 if len(data) > seq_len else 0
    if max_windows is not None:
        n = min(n, max_windows)
    if n <= 0:
        raise ValueError(f"{len(data)} bytes are too few for one window of {seq_len + 1}")
    idx = np.arange(n)[:, None] * stride + np.arange(seq_len + 1)[None, :]
    return data[idx].astype(np.int32)
