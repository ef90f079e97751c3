"""The reduction (K) axis of every layer type: the axis N:M groups must run along.

Sparse tensor cores (NVIDIA Ampere / Hopper / Blackwell, AMD MI300) run an N:M sparse GEMM
only when every group of ``m`` **consecutive elements along the reduction (K) dimension** of
the sparse operand keeps at most ``n``. This module says which axis of a kernel that is.

Reduction axis per layer type (:func:`reduction_axis`; override with ``axis=`` or path rules).
It is **never guessed**: a leaf none of these rules covers is an error that names the leaf, its
shape and the rule to add.

==============================================  ==========================  ===============
leaf (path)                                     shape                       N:M axis (K)
==============================================  ==========================  ===============
any 2-D leaf (Dense / nnx.Linear ``x @ W``)     ``(in, out)``               ``0`` (``in``)
``<conv-like>/kernel``, rank >= 3 (*)           ``(*spatial, C_in, C_out)`` ``-2`` (``C_in``)
any 4-D ``.../kernel`` (HWIO 2-D conv)          ``(H, W, C_in, C_out)``     ``-2`` (``C_in``)
``query|key|value|q|k|v[_proj]/kernel``, 3-D    ``(in, heads, head_dim)``   ``0`` (``in``)
``out|o|out_proj|o_proj/kernel``, 3-D           ``(heads, head_dim, out)``  ``-2`` (``head_dim``)
==============================================  ==========================  ===============

(*) the kernel's module name contains ``conv`` (any case): ``Conv_0``, ``conv1``, ``conv1d``,
``s0b0/conv2`` — Conv 1-D / 2-D / 3-D, Linen and NNX. A 4-D leaf named ``kernel`` is taken as
HWIO wherever it is (Flax's only 4-D ``kernel`` is a 2-D conv's; a 4-D ``DenseGeneral`` kernel
needs its rule).

Anything else of rank >= 3 — a bare array (path ``"<array>"``), an einsum / ``DenseGeneral``
kernel such as ``wq`` of shape ``(in, heads, head_dim)``, a fused qkv, a 5-D kernel outside a
conv-like path — needs its axis: ``axis=`` for one array, or
``NM(2, 4, axis_rules=[("attn/wq", 0)])`` / ``axis_rules=`` of :func:`jaxsparse.nm.nm_masks` /
:func:`jaxsparse.nm.is_nm` for a tree.

* Conv: the hardware sees the im2col GEMM with ``K = prod(spatial) * C_in`` ordered
  ``(*spatial, C_in)`` (channels fastest, the NHWC / HWIO order XLA and cuDNN use), so groups of
  ``m`` consecutive ``C_in`` entries at a fixed spatial tap are consecutive in ``K``.
* Attention (Flax ``MultiHeadDotProductAttention`` / ``nnx.MultiHeadAttention``): the
  q/k/v projections are ``DenseGeneral(features=(heads, head_dim), axis=-1)`` contracting the
  ``in`` axis; the output projection is ``DenseGeneral(axis=(-2, -1))`` contracting
  ``(heads, head_dim)``; flattened row-major that is ``K = heads * head_dim`` with
  ``head_dim`` fastest, so groups along ``head_dim`` are consecutive in ``K`` (needs
  ``head_dim % m == 0``).
* Any other ``DenseGeneral`` / einsum kernel (fused qkv, ``wq``, 4-D ``DenseGeneral``, ...):
  give the axis with a rule, e.g. ``NM(2, 4, axis_rules=[("proj/kernel", 1)])`` — the axis to
  use is the *last* (fastest) of the contracted axes in the order the GEMM flattens them.

References:
  Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks" (NVIDIA 2:4, ASP).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from jaxsparse import rules as rules_lib

# ``[(path regex or predicate, axis), ...]``: per-path reduction-axis overrides, first match wins.
AxisRules = Sequence[tuple[rules_lib.Pattern, int]]

# Flax attention q/k/v projections: DenseGeneral kernels (in, heads, head_dim) contracting `in`.
_QKV = re.compile(r"(^|/)(query|key|value|q|k|v)(_proj)?/kernel$")
# Flax attention output projection: DenseGeneral kernel (heads, head_dim, out).
_OUT = re.compile(r"(^|/)(out|o|out_proj|o_proj)/kernel$")
# A conv kernel: the module's name contains "conv" (Conv_0, conv1, conv1d, s0b0/conv2, ...).
_CONV = re.compile(r"(^|/)[^/]*conv[^/]*/kernel$", re.IGNORECASE)
_KERNEL = re.compile(r"(^|/)kernel$")


def reduction_axis(
    path: str, shape: Sequence[int], axis_rules: AxisRules | None = None
) -> int:
    """The (non-negative) axis of a kernel along which N:M groups must run.

    Never guessed: a leaf of rank >= 3 that no rule of the module table (nor ``axis_rules``)
    covers is an error naming the leaf, its shape and the rule to add.

    Args:
      path: the leaf's path string (``"Dense_0/kernel"``, ``"attn/query/kernel"``).
      shape: the leaf's shape.
      axis_rules: ``[(regex or predicate, axis), ...]`` on paths, first match wins; they
        override the defaults in the module docstring.

    Returns:
      The axis as a non-negative int.

    Raises:
      ValueError: a leaf of rank < 2, an unknown leaf of rank >= 3, or an axis out of range.

    >>> reduction_axis("conv/kernel", (3, 3, 16, 32))
    2
    >>> reduction_axis("attn/wq", (64, 4, 16), [("attn/wq", 0)])
    0
    """
    ndim = len(shape)
    axis = rules_lib.match(axis_rules, path, None, default=None)
    if axis is None:
        axis = _default_axis(path, tuple(shape))
    if isinstance(axis, bool) or not isinstance(axis, int | np.integer):
        raise TypeError(f"N:M at {path!r}: axis rule gave {axis!r}; an axis is an int")
    if not -ndim <= axis < ndim:
        raise ValueError(f"N:M at {path!r}: axis {axis} out of range for shape {tuple(shape)}")
    return int(axis) % ndim


def group_axis(what: str, path: str, shape: Sequence[int], m: int,
               axis: int | None = None) -> int:
    """The axis N:M groups of ``m`` run along (``axis``, else :func:`reduction_axis`), checked
    to divide into whole groups; ``what`` names the caller in the error.

    >>> group_axis("compress", "dense/kernel", (8, 3), 4)
    0
    """
    ndim = len(shape)
    axis = reduction_axis(path, shape) if axis is None else axis
    axis %= ndim
    if shape[axis] % m:
        raise ValueError(f"{what} at {path!r}: dimension {axis} of shape {tuple(shape)} is not "
                         f"divisible by m={m}")
    return axis


def _default_axis(path: str, shape: tuple[int, ...]) -> int:
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(
            f"N:M at {path!r}: leaf of shape {shape} has no reduction axis "
            "(need ndim >= 2 or an axis rule)"
        )
    if ndim == 2:
        return 0  # (in, out): y = x @ W contracts `in`
    if ndim == 3 and _QKV.search(path):
        return 0  # (in, heads, head_dim)
    if ndim == 3 and _OUT.search(path):
        return 1  # (heads, head_dim, out): head_dim is the fastest contracted axis
    if _CONV.search(path) or (ndim == 4 and _KERNEL.search(path)):
        return ndim - 2  # (*spatial, C_in, C_out)
    bare = path == "<array>"
    rule = "axis=AXIS" if bare else f"axis_rules=[({re.escape(path) + '$'!r}, AXIS)]"
    raise ValueError(
        f"N:M at {path!r}: cannot tell the reduction axis of a {ndim}-D "
        f"{'array' if bare else 'leaf'} of shape {shape} (known: 2-D (in, out) kernels, "
        "'<conv>/kernel' (*spatial, C_in, C_out), 4-D 'kernel' HWIO, attention "
        "'query|key|value/kernel' (in, heads, head_dim) and 'out/kernel' (heads, head_dim, out)); "
        f"give it: {rule}, AXIS = the fastest contracted axis of the GEMM"
        f"{' (or path= with a known kernel name)' if bare else ''}"
    )
