"""N:M training recipes: STE / SR-STE sparse weights, and transposable N:M masks.

* **One-shot + fine-tune (NVIDIA ASP)**: ``masks = nm_masks(trained_params, 2, 4)`` then train
  with those fixed masks (the engine's masked training / :func:`jaxsparse.masked`) on the
  original schedule. Nothing new is needed here beyond :func:`jaxsparse.nm.nm_masks`.
* **STE / SR-STE** (Zhou et al. 2021): the forward pass uses ``w * m(w)`` with the mask
  recomputed from ``|w|`` every step; the backward pass is straight-through, plus
  ``lambda_w * (1 - m) * w`` added to the dense weights' gradient (SR-STE; ``lambda_w = 0``
  is plain STE). :func:`sparse_weight` is a ``jax.custom_vjp`` leaf function and
  :func:`sr_ste` applies it to every prunable leaf of a params tree, so it drops into any
  loss: ``loss(sr_ste(params), batch)``. :func:`sr_ste_decay` is the same regulariser as an
  optax gradient transformation, for a forward pass that already uses plain STE.
* **Transposable N:M** (Hubara et al. 2021): both ``W`` and ``W^T`` are N:M along their
  reduction axes, so the backward (data-gradient) GEMM ``dX = dY @ W^T`` is sparse too. Masks
  are chosen per ``m x m`` block with every row and every column keeping ``n``.

References:
  Zhou et al. 2021 (ICLR), "Learning N:M Fine-grained Structured Sparse Neural Networks From
  Scratch" (SR-STE).
  Hubara et al. 2021 (NeurIPS), "Accelerated Sparse Neural Training: A Provable and Efficient
  Method to Find N:M Transposable Masks".
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse import rules as rules_lib
from jaxsparse.nm import NM, AxisRules, _check_nm, nm_mask, reduction_axis
from jaxsparse.typing import PyTree

SR_STE_LAMBDA = 2e-4  # lambda_w of Zhou et al. 2021


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def sparse_weight(w: jax.Array, n: int, m: int, axis: int, lambda_w: float) -> jax.Array:
    """``w`` with all but the ``n`` largest ``|w|`` per group of ``m`` along ``axis`` zeroed;
    straight-through gradient plus ``lambda_w * (1 - mask) * w`` (SR-STE).

    Args:
      w: a weight array.
      n, m, axis: the N:M structure (static).
      lambda_w: SR-STE decay of the pruned weights; ``0.0`` gives plain STE (static).

    Returns:
      ``where(mask, w, 0)``; its VJP maps a cotangent ``g`` to ``g + lambda_w * (1-mask) * w``.

    >>> g = jax.grad(lambda w: sparse_weight(w, 1, 2, 0, 0.5).sum())(jnp.array([1.0, 3.0]))
    >>> g  # kept: 1; pruned: 1 + 0.5 * 1.0
    Array([1.5, 1. ], dtype=float32)

    References:
      Zhou et al. 2021 (ICLR), SR-STE.
    """
    mask = nm_mask(w, n, m, axis=axis)
    return jnp.where(mask, w, jnp.zeros((), w.dtype))


def _sparse_weight_fwd(w, n, m, axis, lambda_w):
    mask = nm_mask(w, n, m, axis=axis)
    return jnp.where(mask, w, jnp.zeros((), w.dtype)), (mask, w)


def _sparse_weight_bwd(n, m, axis, lambda_w, res, g):
    mask, w = res
    if lambda_w == 0:
        return (g,)
    decay = jnp.where(mask, jnp.zeros((), w.dtype), w)
    return (g + jnp.asarray(lambda_w, g.dtype) * decay.astype(g.dtype),)


sparse_weight.defvjp(_sparse_weight_fwd, _sparse_weight_bwd)


def sr_ste(
    params: PyTree,
    n: int = 2,
    m: int = 4,
    *,
    lambda_w: float = SR_STE_LAMBDA,
    rules: rules_lib.Rules | None = None,
    axis_rules: AxisRules | None = None,
) -> PyTree:
    """Applies :func:`sparse_weight` to every prunable leaf (along its reduction axis).

    Use inside the loss: ``logits = apply_fn(sr_ste(params), x)``; the optimizer updates the
    dense ``params``; export ``sr_ste(params)`` (or ``nm_masks(params)``) at the end.

    Args:
      params: any pytree of arrays.
      n, m: N:M structure.
      lambda_w: SR-STE decay (2e-4 in the paper); ``0.0`` = plain STE (see :func:`ste`).
      rules: which leaves are prunable (as :func:`jaxsparse.ones_like`).
      axis_rules: per-path reduction-axis overrides (see :class:`jaxsparse.NM`).

    >>> p = sr_ste({"kernel": jnp.arange(8.0).reshape(4, 2), "bias": jnp.ones(2)})
    >>> p["kernel"][:, 0]
    Array([0., 0., 4., 6.], dtype=float32)

    References:
      Zhou et al. 2021 (ICLR), SR-STE.
    """
    structure = NM(n, m, axis_rules=tuple(axis_rules or ()))
    rules = rules_lib.check_rules(rules)

    def one(path: str, p: Any) -> Any:
        if not rules_lib.prunable(rules, path, p):
            return p
        axis = structure.axis_for(path, np.shape(p))
        return sparse_weight(p, n, m, axis, float(lambda_w))

    return rules_lib.map_with_path(one, params)


def ste(params: PyTree, n: int = 2, m: int = 4, **kwargs) -> PyTree:
    """Plain straight-through N:M (:func:`sr_ste` with ``lambda_w=0``)."""
    return sr_ste(params, n, m, lambda_w=0.0, **kwargs)


class SRSTEDecayState(NamedTuple):
    count: jax.Array


def sr_ste_decay(
    n: int = 2,
    m: int = 4,
    *,
    lambda_w: float = SR_STE_LAMBDA,
    rules: rules_lib.Rules | None = None,
    axis_rules: AxisRules | None = None,
):
    """Optax transformation adding ``lambda_w * (1 - m(w)) * w`` to the updates (gradients).

    Chain it *before* the optimizer (``optax.chain(sr_ste_decay(), optax.sgd(...))``) with a
    forward pass that uses :func:`ste`; the result equals :func:`sr_ste`'s gradient.
    """
    import optax  # optax is a core dependency; imported here to keep module import light

    _check_nm(n, m)
    structure = NM(n, m, axis_rules=tuple(axis_rules or ()))
    rules = rules_lib.check_rules(rules)

    def init(params):
        del params
        return SRSTEDecayState(count=jnp.zeros((), jnp.int32))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("sr_ste_decay needs params: call update(updates, state, params)")

        def one(path, u, p):
            if not rules_lib.prunable(rules, path, p):
                return u
            mask = nm_mask(p, n, m, axis=structure.axis_for(path, np.shape(p)))
            return u + lambda_w * jnp.where(mask, jnp.zeros((), p.dtype), p).astype(u.dtype)

        return rules_lib.map_with_path(one, updates, params), SRSTEDecayState(state.count + 1)

    return optax.GradientTransformation(init, update)


# ---------------------------------------------------------------------------------------
# Transposable N:M masks.


@functools.cache
def transposable_patterns(n: int = 2, m: int = 4) -> np.ndarray:
    """All ``m x m`` 0/1 blocks with exactly ``n`` ones in every row and every column.

    Returned as a bool array ``(count, m * m)`` in lexicographic order of the rows'
    column choices (the order that breaks ties in :func:`transposable_mask`). 2:4 has 90.
    """
    _check_nm(n, m)
    if m > 5:
        raise ValueError(f"exact transposable masks enumerate patterns; m={m} > 5 is too many")
    rows = list(itertools.combinations(range(m), n))
    out = []

    def rec(prefix, cols):
        if len(prefix) == m:
            out.append(prefix)
            return
        left = m - len(prefix)  # rows still to place, including this one
        for r in rows:
            new = cols.copy()
            new[list(r)] += 1
            # every column must still be able to reach exactly n with the remaining rows
            if (new <= n).all() and (n - new <= left - 1).all():
                rec(prefix + [r], new)

    rec([], np.zeros(m, int))
    pats = np.zeros((len(out), m, m), bool)
    for i, choice in enumerate(out):
        for row, cols in enumerate(choice):
            pats[i, row, list(cols)] = True
    pats = pats.reshape(len(out), m * m)
    pats.setflags(write=False)  # cached: callers must not mutate it
    return pats


def _blocks(x: jax.Array, m: int, axes: tuple[int, int]):
    x = jnp.moveaxis(x, axes, (-2, -1))
    lead, (k, c) = x.shape[:-2], x.shape[-2:]
    b = x.reshape(lead + (k // m, m, c // m, m))
    b = jnp.swapaxes(b, -3, -2).reshape(-1, m * m)  # (blocks, m*m), row-major in (k, c)

    def unblock(bm):
        y = bm.reshape(lead + (k // m, c // m, m, m))
        y = jnp.swapaxes(y, -3, -2).reshape(lead + (k, c))
        return jnp.moveaxis(y, (-2, -1), axes)

    return b, unblock


def _transposable_axes(path: str, shape: tuple[int, ...]) -> tuple[int, int]:
    ndim = len(shape)
    if ndim == 2:
        return (0, 1)
    if ndim == 4:
        return (2, 3)  # HWIO: C_in, C_out
    try:
        k = reduction_axis(path, shape)
    except ValueError:
        k = None
    if k != ndim - 2:
        raise ValueError(
            f"transposable mask at {path!r}: cannot tell the two GEMM axes of a {ndim}-D "
            f"{'array' if path == '<array>' else 'leaf'} of shape {tuple(shape)}; pass "
            "axes=(K, N): the forward reduction axis and the axis the transposed GEMM reduces")
    return (ndim - 2, ndim - 1)


def transposable_mask(
    w: jax.Array,
    n: int = 2,
    m: int = 4,
    *,
    method: str = "exact",
    axes: tuple[int, int] | None = None,
    path: str = "<array>",
) -> jax.Array:
    """N:M mask valid for both ``W`` (groups along ``axes[0]``) and ``W^T`` (along ``axes[1]``).

    Args:
      w: a kernel; default ``axes`` are ``(0, 1)`` for a 2-D Dense ``(in, out)`` and
        ``(-2, -1)`` (``C_in``, ``C_out``) for a 4-D HWIO array or any leaf whose
        :func:`jaxsparse.nm.reduction_axis` (from ``path``) is ``-2`` (convs, the attention
        output projection). Any other shape needs ``axes=`` (an error says so, never a guess).
      n, m: keep ``n`` per group of ``m`` in both orientations.
      method: ``"exact"`` picks, per ``m x m`` block, the max-magnitude pattern among all
        :func:`transposable_patterns` (ties -> lowest pattern index; ``m <= 5``);
        ``"greedy"`` visits the block's entries by decreasing ``|w|`` (ties -> lower flat
        index) and keeps one while its row and column have fewer than ``n``. Greedy can stop
        with fewer than ``n`` in a row (still hardware-legal: at most ``n``).
      path: used in error messages.

    Returns:
      Bool mask of ``w.shape``; exact keeps exactly ``n`` per row and column of each block.

    References:
      Hubara et al. 2021 (NeurIPS), N:M transposable masks.
    """
    _check_nm(n, m)
    w = jnp.asarray(w)
    if w.ndim < 2:
        raise ValueError(f"transposable mask at {path!r}: need ndim >= 2, got shape {w.shape}")
    if axes is None:
        axes = _transposable_axes(path, w.shape)
    axes = tuple(a % w.ndim for a in axes)
    for a in axes:
        if w.shape[a] % m:
            raise ValueError(
                f"transposable mask at {path!r}: dimension {a} of shape {w.shape} is not "
                f"divisible by m={m}"
            )
    # NaN counts as 0 and inf as the largest float so that pattern sums stay finite.
    mag = jnp.nan_to_num(jnp.abs(w).astype(jnp.float32), nan=0.0)
    blocks, unblock = _blocks(mag, m, axes)
    if method == "exact":
        pats = jnp.asarray(transposable_patterns(n, m))
        # kept magnitude of every pattern; HIGHEST so TPUs/GPUs do not round through bf16/tf32
        score = jnp.matmul(blocks, pats.T.astype(jnp.float32), precision="highest")
        best = jnp.argmax(score, axis=-1)  # first max = lowest pattern index
        return unblock(pats[best])
    if method == "greedy":
        order = jnp.argsort(-blocks, axis=-1, stable=True)
        rows = jnp.zeros((blocks.shape[0], m), jnp.int32)
        cols = jnp.zeros((blocks.shape[0], m), jnp.int32)
        keep = jnp.zeros(blocks.shape, bool)
        idx = jnp.arange(blocks.shape[0])
        for t in range(m * m):
            e = order[:, t]
            r, c = e // m, e % m
            ok = (rows[idx, r] < n) & (cols[idx, c] < n)
            rows = rows.at[idx, r].add(ok.astype(jnp.int32))
            cols = cols.at[idx, c].add(ok.astype(jnp.int32))
            keep = keep.at[idx, e].set(ok)
        return unblock(keep)
    raise ValueError(f"method must be 'exact' or 'greedy', got {method!r}")
